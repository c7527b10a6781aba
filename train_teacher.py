"""
Stage 2: pretrain a Llama (a teacher, or a same-size baseline) on the prepared BabyLM tokens.

    python train_teacher.py configs/tiny_teacher1.py                     # CPU, tiny, a few minutes
    python train_teacher.py configs/teacher1.py                          # one GPU: BabyLlama-2 345M teacher
    torchrun --nproc_per_node=8 train_teacher.py configs/teacher1.py     # 8 GPUs, same global batch
    python train_teacher.py configs/teacher1.py --lr=5e-4 --out_dir=out/t1b  # --key=value overrides
    python train_teacher.py configs/teacher1.py --resume=True            # continue from out_dir/last.pt
    python train_teacher.py configs/tiny_antlm.py                        # AntLM: CLM and MLM epochs alternate
    python train_teacher.py configs/teacher1.py --objective=clm:4,mlm:16,clm:4   # AntLM's BabyLlama schedule

What happens, top to bottom (nanoGPT's loop, made importable and resumable):
1. The config: DEFAULTS below < the config file < --key=value (load_config; unknown keys and wrong
   types are one-line errors).
2. runtime(): the one place where CPU and CUDA differ (device, bf16 autocast, DDP backend, compile).
3. Data: train.bin is cut into non-overlapping windows of seq_len + 1 tokens (inputs and shifted
   targets). Each epoch visits every window once in a fresh order drawn from (seed, epoch). Batch
   contents are a pure function of the step number, so resuming needs no data-loader state: the run
   continues exactly where it stopped. (BabyLlama's final models were trained without random window
   offsets, babyllama.md 2.3.)
4. train(): AdamW (decay on 2-D weights), linear warmup then cosine decay, gradient accumulation
   (DDP syncs gradients on the last micro-step only), clipping, a validation loss on a fixed set of
   windows every eval_interval steps, checkpoints (last.pt always, ckpt.pt when validation improves),
   atomic writes, Ctrl-C saves and exits. distill.py calls the same train() with its own loss.
5. The objective (bottom of the file): causal LM by default, or masked LM, or AntLM's alternation of
   CLM and MLM epochs (arXiv 2412.03275), set by objective="clm:4,mlm:16,clm:4".

Global batch = batch_size sequences per optimizer step, whatever the number of processes:
grad_accum = batch_size / (micro_batch_size * world_size).
"""

import ast
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from model import InputError, Llama, ModelConfig, atomic_write, check_same_tokenizer, model_checkpoint, peak_flops, read_checkpoint, save_checkpoint
from prepare_data import load_tokenizer, read_bin

DEFAULTS = dict(
    # data and output
    data_dir="data/babylm10m",  # made by prepare_data.py
    out_dir="out/teacher",
    # model (see model.ModelConfig); vocab_size 0 = take it from the tokenizer
    vocab_size=0, dim=512, n_layers=8, n_heads=8, n_kv_heads=0, hidden_dim=0, multiple_of=256,
    norm_eps=1e-6, rope_theta=10000.0, max_seq_len=256, tie_embeddings=False,
    # optimisation
    seq_len=128,  # tokens per training window (BabyLlama: 128)
    batch_size=128,  # sequences per optimizer step, all processes together
    micro_batch_size=32,  # sequences per forward pass per process
    epochs=8.0,  # used when max_iters == 0
    max_iters=0,
    lr=7e-4, min_lr=0.0, warmup_iters=600, weight_decay=5.0, beta1=0.9, beta2=0.999, adam_eps=1e-8, grad_clip=1.0,
    seed=1337,
    # evaluation, logging, checkpoints
    eval_interval=200, eval_windows=1024, log_interval=10,
    resume=False,
    stop_at=0,  # >0: save last.pt and exit after this step (a time-limited job); the schedule still follows max_iters
    objective="clm",  # "clm", "mlm", or an AntLM schedule of epochs per phase, e.g. "clm:4,mlm:16,clm:4"
    mlm_probability=0.15,  # share of positions selected in MLM phases (BERT: 15%, then 80/10/10)
    nonfinite="stop",  # what to do on a non-finite loss: "stop" (keep the last good checkpoint) or "skip" the step
    # runtime: "auto" picks CUDA + bf16 autocast + compile when a GPU is there, CPU + fp32 otherwise
    device="auto", dtype="auto", compile="auto",
)


# -----------------------------------------------------------------------------------------------
# Configuration: a pure function, testable on its own


def _parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --out_dir=out/t1


def _check_type(key, value, default, where):
    if default is None:
        return value
    if default == "auto" and isinstance(value, bool):  # device/dtype/compile: "auto" or an explicit choice
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if type(value) is not bool or type(default) is not bool:
            raise InputError(f"{where}: {key}={value!r} has type {type(value).__name__}, expected {type(default).__name__}")
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if not isinstance(value, type(default)):
        raise InputError(f"{where}: {key}={value!r} has type {type(value).__name__}, expected {type(default).__name__}")
    return value


def load_config(defaults, argv):
    """defaults < config file (argv[0] if it is not a --flag) < --key=value overrides.
    The file is run in a fresh namespace; every name it assigns must be a key of defaults."""
    cfg = dict(defaults)
    args = list(argv)
    if args and not args[0].startswith("--"):
        path = args.pop(0)
        if not os.path.isfile(path):
            raise InputError(f"{path}: config file not found")
        namespace = {}
        exec(compile(open(path).read(), path, "exec"), namespace)
        for key, value in namespace.items():
            if key.startswith("_") or type(value).__name__ in ("module", "function", "type"):
                continue
            if key not in cfg:
                raise InputError(f"{path}: unknown config key {key!r}")
            cfg[key] = _check_type(key, value, defaults[key], path)
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise InputError(f"argument {arg!r}: expected --key=value")
        key, text = arg[2:].split("=", 1)
        if key not in cfg:
            raise InputError(f"--{key}: unknown config key")
        cfg[key] = _check_type(key, _parse_value(text), defaults[key], f"--{key}")
    return SimpleNamespace(**cfg)


def check_config(cfg):
    """Mistakes that would otherwise surface as a crash hours later."""
    parse_objective(cfg.objective)
    if cfg.nonfinite not in ("stop", "skip"):
        raise InputError(f"nonfinite={cfg.nonfinite!r}: expected 'stop' or 'skip'")
    if cfg.max_iters and cfg.max_iters <= cfg.warmup_iters:
        raise InputError(f"max_iters={cfg.max_iters} is not larger than warmup_iters={cfg.warmup_iters}")
    if cfg.seq_len > cfg.max_seq_len:
        raise InputError(f"seq_len={cfg.seq_len} is longer than the model's max_seq_len={cfg.max_seq_len}")
    for key in ("batch_size", "micro_batch_size", "seq_len", "eval_interval", "log_interval"):
        if getattr(cfg, key) <= 0:
            raise InputError(f"{key}={getattr(cfg, key)}: expected a positive number")
    for key in ("device", "dtype", "compile"):
        allowed = {"device": ("auto", "cpu", "cuda"), "dtype": ("auto", "float32", "bfloat16"), "compile": ("auto", True, False)}[key]
        if getattr(cfg, key) not in allowed:
            raise InputError(f"{key}={getattr(cfg, key)!r}: expected one of {allowed}")


# -----------------------------------------------------------------------------------------------
# Runtime: the one small place where the CPU and the CUDA paths differ


def runtime(cfg):
    """device, dtype, autocast context, compile flag and DDP ranks for this process."""
    ddp = "RANK" in os.environ
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("device='cuda' but no GPU is visible")
    rank, local_rank, world = 0, 0, 1
    if ddp:
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # bf16 autocast on GPU; plain fp32 on CPU, where bf16 matmuls are ~100x slower here.
    dtype = ("bfloat16" if cuda else "float32") if cfg.dtype == "auto" else cfg.dtype
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    compile_ = cuda if cfg.compile == "auto" else cfg.compile  # CPU compile costs ~30-80 s: opt-in
    return SimpleNamespace(device=device, dtype=dtype, autocast=autocast, compile=compile_,
                           ddp=ddp, rank=rank, world=world, master=rank == 0)


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs)


# -----------------------------------------------------------------------------------------------
# Data: fixed windows, a fresh order per epoch, batches as a pure function of the step


class Windows:
    """Non-overlapping windows of seq_len + 1 tokens over a token file: x = w[:-1], y = w[1:]."""

    def __init__(self, path, seq_len):
        self.tokens, self.seq_len = read_bin(path), seq_len
        self.n = (len(self.tokens) - 1) // seq_len
        if self.n < 1:
            raise InputError(f"{path}: {len(self.tokens)} tokens is less than one window of seq_len+1={seq_len + 1}")

    def get(self, idx, device):
        rows = np.stack([self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1] for i in idx.tolist()])
        w = torch.from_numpy(rows.astype(np.int64))
        if device.type == "cuda":
            w = w.pin_memory().to(device, non_blocking=True)
        return w[:, :-1], w[:, 1:]


class EpochSampler:
    """Which windows make up (step, micro-step, rank): every epoch is a permutation seeded by (seed, epoch),
    cut into global batches; each process takes its own micro-batches of each global batch."""

    def __init__(self, n_windows, batch_size, micro_batch_size, world, seed):
        self.n, self.batch, self.micro, self.world, self.seed = n_windows, batch_size, micro_batch_size, world, seed
        self.steps_per_epoch = n_windows // batch_size
        if self.steps_per_epoch < 1:
            raise InputError(f"batch_size={batch_size} is more than the {n_windows} training windows")
        self._epoch, self._perm = None, None

    def epoch_of(self, step):
        return step // self.steps_per_epoch

    def indices(self, step, micro_step, rank):
        epoch = self.epoch_of(step)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        start = (step % self.steps_per_epoch) * self.batch + (micro_step * self.world + rank) * self.micro
        return self._perm[start : start + self.micro]


def eval_indices(n_windows, n_eval):
    """A fixed, evenly spread set of validation windows (the same for every model and run)."""
    if n_eval >= n_windows:
        return torch.arange(n_windows)
    return torch.linspace(0, n_windows - 1, n_eval).round().long()


@torch.no_grad()
def evaluate(model, windows, idx, batch_size, rt, causal=True):
    """Mean next-token cross-entropy (nats/token) of a bare model on the windows idx. Under DDP each
    process takes a share and the sums are all-reduced: every rank runs it, none waits on another."""
    was_training = model.training
    model.eval()
    mine = idx[rt.rank :: rt.world]
    total = torch.zeros(2, dtype=torch.float64, device=rt.device)
    for i in range(0, len(mine), batch_size):
        x, y = windows.get(mine[i : i + batch_size], rt.device)
        with rt.autocast:
            logits = model(x, causal=causal)[0]
        total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        total[1] += y.numel()
    if rt.ddp:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def lr_at(step, cfg, max_iters):
    """Linear warmup to cfg.lr over warmup_iters, then cosine decay to min_lr at max_iters."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    progress = min(1.0, (step - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# -----------------------------------------------------------------------------------------------
# Building blocks shared with distill.py


def model_config(cfg, tok_info):
    vocab = cfg.vocab_size or tok_info["vocab_size"]
    if vocab != tok_info["vocab_size"]:
        raise InputError(f"vocab_size={cfg.vocab_size} but the tokenizer in {cfg.data_dir} has {tok_info['vocab_size']} tokens")
    return ModelConfig(vocab_size=vocab, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                       hidden_dim=cfg.hidden_dim, multiple_of=cfg.multiple_of, norm_eps=cfg.norm_eps,
                       rope_theta=cfg.rope_theta, max_seq_len=cfg.max_seq_len, tie_embeddings=cfg.tie_embeddings)


def max_iters_of(cfg, sampler, objective=None):
    """max_iters if set, else the epochs of the AntLM schedule if it has any, else cfg.epochs."""
    epochs = objective.total_epochs if objective is not None and objective.total_epochs else cfg.epochs
    return cfg.max_iters or max(1, round(epochs * sampler.steps_per_epoch))


def read_log(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Logger:
    """log.jsonl in out_dir: one JSON object per logged step or evaluation (rank 0 only). On resume
    it is rewritten to stop at the checkpoint's step, so the log of a resumed run equals that of an
    uninterrupted one."""

    def __init__(self, path, master, keep_until=None):
        self.path, self.master = path, master
        if master:
            entries = [e for e in read_log(path) if keep_until is not None and e["step"] <= keep_until]
            atomic_write(path, lambda f: f.writelines(json.dumps(e) + "\n" for e in entries), mode="w")

    def __call__(self, entry):
        if self.master:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")


class _StopFlag:
    """Ctrl-C (SIGINT) sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self):
        self.set = False

    def __call__(self, signum, frame):
        if self.set:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True
        print0("\ninterrupt: finishing this step, saving a checkpoint, then exiting (Ctrl-C again to abort)")


# -----------------------------------------------------------------------------------------------
# The training loop (used by this script and by distill.py)


def train(cfg, rt, model, loss_fn, tok_info, flops_per_token, extra_eval=None, ckpt_extra=None, start=None, objective=None):
    """Train `model` (bare Llama, already on rt.device) with loss_fn(model, x, y) -> (loss, logs).

    With an `objective` (AntLM, below), each batch goes through objective.batch() (masking in MLM
    phases) and the loss is called as loss_fn(model, x, y, causal=...) for the phase of the step.
    The step number never enters the (compiled) loss function: a Python int argument would make
    torch.compile recompile, while the causal flag has two values and so at most two graphs.

    `logs` is a dict of scalar tensors to log beside the loss (e.g. CE and KL). `extra_eval()` returns a
    dict of additional validation numbers; `ckpt_extra` is merged into every checkpoint. `start` is
    the checkpoint dict to resume from (its model weights are already loaded) or None.
    Returns the final summary (best validation loss, steps, wall time)."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    if rt.master:  # a run killed mid-write leaves a *.tmp beside the intact file: drop it
        for name in os.listdir(cfg.out_dir):
            if name.endswith(".tmp"):
                os.remove(os.path.join(cfg.out_dir, name))
    train_w = Windows(os.path.join(cfg.data_dir, "train.bin"), cfg.seq_len)
    val_w = Windows(os.path.join(cfg.data_dir, "val.bin"), cfg.seq_len)
    val_idx = eval_indices(val_w.n, cfg.eval_windows)
    per_step = cfg.micro_batch_size * rt.world
    if cfg.batch_size % per_step:
        raise InputError(f"batch_size={cfg.batch_size} is not a multiple of micro_batch_size*world_size={per_step}")
    grad_accum = cfg.batch_size // per_step
    sampler = EpochSampler(train_w.n, cfg.batch_size, cfg.micro_batch_size, rt.world, cfg.seed)
    max_iters = max_iters_of(cfg, sampler, objective)
    if max_iters <= cfg.warmup_iters:
        raise InputError(f"the run has {max_iters} steps, not more than warmup_iters={cfg.warmup_iters}")

    optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.adam_eps, rt.device.type)
    step, best_val = 0, float("inf")
    if start is not None:
        optimizer.load_state_dict(start["optimizer"])
        step, best_val = start["step"], start["best_val_loss"]
    log = Logger(os.path.join(cfg.out_dir, "log.jsonl"), rt.master, keep_until=step if start is not None else None)

    ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None) if rt.ddp else model
    step_fn = torch.compile(loss_fn) if rt.compile else loss_fn
    peak = peak_flops(rt.device) * rt.world
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def save(name, val_loss):
        if rt.master:
            ckpt = model_checkpoint(model, tok_info, optimizer=optimizer.state_dict(), step=step, best_val_loss=best_val,
                                    val_loss=val_loss, config=vars(cfg), **(ckpt_extra or {}))
            save_checkpoint(os.path.join(cfg.out_dir, name), ckpt)
        if rt.ddp:
            dist.barrier()

    def run_eval():
        nonlocal best_val
        val = evaluate(model, val_w, val_idx, cfg.micro_batch_size, rt)
        entry = {"step": step, "val_loss": val, **(extra_eval() if extra_eval else {})}
        log(entry)
        improved = val < best_val
        best_val = min(best_val, val)
        save("last.pt", val)
        if improved:
            save("ckpt.pt", val)
        return entry

    stop = _StopFlag()
    old_handler = signal.signal(signal.SIGINT, stop)
    print0(f"{model.num_params():,} parameters | {max_iters} steps ({sampler.steps_per_epoch} per epoch) | "
           f"global batch {cfg.batch_size} x {cfg.seq_len} tokens, grad_accum {grad_accum}, world {rt.world} | "
           f"device {rt.device} {rt.dtype}, compile {rt.compile}")
    bar = tqdm(total=max_iters, initial=step, desc="train", disable=not rt.master, mininterval=1, dynamic_ncols=True)
    t_run = time.perf_counter()
    t0, t0_step = time.perf_counter(), step
    try:
        while step < max_iters:
            lr = lr_at(step, cfg, max_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, logs_sum = 0.0, {}
            for micro in range(grad_accum):
                x, y = train_w.get(sampler.indices(step, micro, rt.rank), rt.device)
                kwargs = {}
                if objective is not None:
                    x, y = objective.batch(x, y, step, micro, rt.rank)
                    kwargs["causal"] = objective.phase(step) == "clm"
                if rt.ddp:  # all-reduce gradients on the last micro-step only
                    ddp_model.require_backward_grad_sync = micro == grad_accum - 1
                with rt.autocast:
                    loss, logs = step_fn(ddp_model, x, y, **kwargs)
                (loss / grad_accum).backward()
                loss_sum = loss_sum + loss.detach() / grad_accum
                for k, v in logs.items():
                    logs_sum[k] = logs_sum.get(k, 0.0) + v.detach() / grad_accum
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            # One tensor, one all-reduce per step: the loss and logs (means over the global batch, as in a
            # single process) and, last, the stop request (Ctrl-C on any rank, or stop_at reached).
            stop_flag = torch.tensor(float(stop.set or step + 1 == cfg.stop_at), device=loss_sum.device)
            stats = torch.stack([loss_sum, *logs_sum.values(), stop_flag]).float()
            if rt.ddp:
                dist.all_reduce(stats)
                stats /= rt.world
            stop_requested = bool(stats[-1] > 0)
            stats = stats[:-1]
            if not bool(torch.isfinite(stats[0])):  # one host sync per step: the price of never saving a NaN model
                optimizer.zero_grad(set_to_none=True)
                if cfg.nonfinite == "stop":
                    raise FloatingPointError(f"non-finite loss at step {step}; the last good checkpoint is {os.path.join(cfg.out_dir, 'last.pt')}")
                print0(f"step {step}: non-finite loss, step skipped")
                step += 1
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % cfg.log_interval == 0 or step == max_iters:
                dt = (time.perf_counter() - t0) / (step - t0_step)
                tok_s = tokens_per_step / dt
                named = dict(zip(["loss", *logs_sum], stats.tolist()))
                entry = {"step": step, **named, "lr": lr, **({"phase": objective.phase(step - 1)} if objective else {}), "ms_per_step": 1000 * dt, "tok_per_s": tok_s, "mfu": flops_per_token * tok_s / peak}
                log(entry)
                if rt.master:
                    losses = " | ".join(f"{k} {v:.4f}" for k, v in named.items()) + (f" | {entry['phase']}" if objective else "")
                    bar.write(f"step {step} | {losses} | lr {lr:.2e} | {entry['ms_per_step']:.0f} ms/step | "
                              f"{tok_s:,.0f} tok/s | MFU {100 * entry['mfu']:.1f}%")
                t0, t0_step = time.perf_counter(), step
            if step % cfg.eval_interval == 0 or step == max_iters:
                entry = run_eval()
                if rt.master:
                    bar.write(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items())
                              + f" | best val_loss {best_val:.4f}")
                t0, t0_step = time.perf_counter(), step  # evaluation time is not training time
            if stop_requested:
                save("last.pt", None)
                print0(f"saved {os.path.join(cfg.out_dir, 'last.pt')} at step {step}; resume with --resume=True")
                break
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    return {"best_val_loss": best_val, "steps": step, "max_iters": max_iters, "seconds": time.perf_counter() - t_run,
            "interrupted": stop.set}


# -----------------------------------------------------------------------------------------------
# The teacher's objective: causal LM, masked LM, or AntLM's alternation of the two
#
# AntLM (Yu et al., arXiv 2412.03275) trains one model alternately with the causal-LM objective (causal
# attention) and a masked-LM objective (bidirectional attention), whole epochs at a time; for BabyLlama
# the reported schedule is 4 epochs CLM, 16 epochs MLM, 4 epochs CLM ("clm:4,mlm:16,clm:4"), about +1
# point of BabyLM macro-average over the baseline at equal epochs (babyllama.md section 4).
# MLM here: 15% of the input positions (never position 0) are selected; of those 80% become <|mask|>,
# 10% a random token, 10% stay; attention is bidirectional and the loss covers selected positions only.
# The read-out is shifted, as in GPT-BERT's masked next-token prediction: the output at position t
# predicts the original token at t+1 (so the output head keeps one meaning, "the next token", in both
# phases). The paper's own read-out is not public. Evaluation (validation CE, BLiMP) is always causal.


def clm_loss(model, x, y, causal=True):
    """Cross-entropy of the model's predictions of y; targets of -1 (unselected MLM positions) are ignored."""
    return model(x, y, causal=causal, ignore_index=-1)[1], {}


def parse_objective(text):
    """[(phase, epochs or None)]: "clm" -> [("clm", None)]; "clm:4,mlm:16" -> [("clm", 4.0), ("mlm", 16.0)]."""
    if text in ("clm", "mlm"):
        return [(text, None)]
    schedule = []
    for part in text.split(","):
        name, _, epochs = part.strip().partition(":")
        try:
            value = float(epochs)
        except ValueError:
            value = -1.0
        if name not in ("clm", "mlm") or value <= 0:
            raise InputError(f"objective={text!r}: expected 'clm', 'mlm' or phases like 'clm:4,mlm:16,clm:4' (bad part {part.strip()!r})")
        schedule.append((name, value))
    return schedule


def mask_tokens(x, y, probability, mask_id, n_regular, generator):
    """MLM inputs and targets from a window (x, y = x shifted by one), shifted read-out (see above)."""
    select = torch.rand(x.shape, generator=generator) < probability
    select[:, 0] = False  # position 0 is never predicted by an earlier output
    action = torch.rand(x.shape, generator=generator)
    random_tokens = torch.randint(0, n_regular, x.shape, generator=generator)
    x = x.clone()
    x[select & (action < 0.8)] = mask_id
    swap = select & (action >= 0.8) & (action < 0.9)
    x[swap] = random_tokens[swap]
    targets = torch.full_like(y, -1)
    targets[:, :-1] = torch.where(select[:, 1:], y[:, :-1], -1)  # output t predicts the original token t+1
    return x, targets


class Objective:
    """Which objective a step trains, and its batches. Everything is a function of the step (and micro-step
    and rank), so a resumed run continues in the right phase, at the right step, with the same masks."""

    def __init__(self, text, steps_per_epoch, tok_info, probability, seed):
        self.schedule = parse_objective(text)
        self.total_epochs = sum(e for _, e in self.schedule) if self.schedule[0][1] is not None else None
        self.steps_per_epoch, self.probability, self.seed = steps_per_epoch, probability, seed
        if "mask_id" not in tok_info:
            raise InputError("the tokenizer has no <|mask|> token: re-run prepare_data.py")
        self.mask_id, self.n_regular = tok_info["mask_id"], tok_info["bos_id"]  # ranks 0..bos_id-1 are BPE tokens

    def phase(self, step):
        if self.total_epochs is None:
            return self.schedule[0][0]
        boundary = 0.0
        for name, epochs in self.schedule:
            boundary += epochs
            if step < round(boundary * self.steps_per_epoch):
                return name
        return self.schedule[-1][0]

    def batch(self, x, y, step, micro, rank):
        if self.phase(step) == "clm":
            return x, y
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 1_009 + micro) * 1_013 + rank)
        xm, ym = mask_tokens(x.cpu(), y.cpu(), self.probability, self.mask_id, self.n_regular, g)
        return xm.to(x.device), ym.to(y.device)


def resume_checkpoint(cfg, tok_info, device):
    """The last.pt of out_dir, if cfg.resume, after checking it matches the data's tokenizer."""
    if not cfg.resume:
        return None
    path = os.path.join(cfg.out_dir, "last.pt")
    if not os.path.isfile(path):
        raise InputError(f"{path}: nothing to resume from (run without --resume=True to start)")
    try:
        ckpt = read_checkpoint(path, device)
    except InputError as e:
        best = os.path.join(cfg.out_dir, "ckpt.pt")
        hint = f"; {best} (best validation) may still be good: copy it to last.pt to resume from it" if os.path.isfile(best) else ""
        raise InputError(f"{e}{hint}") from None
    check_same_tokenizer(ckpt["tokenizer"], tok_info, path, f"the data in {cfg.data_dir}")
    return ckpt


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    check_config(cfg)
    rt = runtime(cfg)
    _, tok_info = load_tokenizer(cfg.data_dir)
    torch.manual_seed(cfg.seed)
    start = resume_checkpoint(cfg, tok_info, rt.device)
    mcfg = ModelConfig(**start["model_config"]) if start else model_config(cfg, tok_info)
    model = Llama(mcfg).to(rt.device)
    if start:
        model.load_state_dict(start["model"])
    objective = None
    if cfg.objective != "clm":
        steps_per_epoch = Windows(os.path.join(cfg.data_dir, "train.bin"), cfg.seq_len).n // cfg.batch_size
        objective = Objective(cfg.objective, steps_per_epoch, tok_info, cfg.mlm_probability, cfg.seed)
    summary = train(cfg, rt, model, clm_loss, tok_info, model.flops_per_token(cfg.seq_len), start=start, objective=objective)
    print0(f"done: {summary['steps']} steps in {summary['seconds']:.0f}s, best val_loss {summary['best_val_loss']:.4f}, "
           f"checkpoints in {cfg.out_dir}")
    if rt.ddp:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    try:
        main()
    except (InputError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
