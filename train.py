"""
The training loop shared by train_teacher.py and distill.py: what every run does, whatever it learns.

    python train_teacher.py configs/tiny_teacher1.py      # a teacher: this loop with the causal-LM objective
    python distill.py configs/tiny_student.py             # a student: this loop with the distillation objective

(This file has no command of its own; `python train_teacher.py --help` lists every key it reads.)

Top to bottom:
1. TRAIN_KEYS: every key of a training run, with its default and meaning.
2. Data: train.bin is cut into non-overlapping windows of seq_len + 1 tokens (inputs and shifted targets).
   Each epoch visits every window once, in a fresh order drawn from (seed, epoch). Batch contents are a
   pure function of the step number, so resuming needs no data-loader state. (BabyLlama's final models were
   also trained on fixed windows without random offsets: Timiryasov & Tastet, arXiv 2308.02019.)
   plan_run() fixes the run's shape (gradient accumulation, steps, BabyLM's words seen and milestones:
   babylm.py) and checks it, before any work.
3. The objective: CausalLM below is the plain one (next-token cross-entropy). An objective gives the loss
   inputs of a micro-batch (inputs) and its loss (loss, through its formula); AntLM (train_teacher.py) and
   distillation (distill.py) are objectives too, so the loop itself has no branch for either.
4. train(): its every-step section is the learning (the learning rate, gradients over micro-batches, one AdamW
   step); around it, one named call each: milestones (chck_<words>/ckpt.pt), logging, validation with
   checkpoints (ckpt.pt when validation improves, then last.pt), and a clean stop on Ctrl-C or SIGTERM
   (preemption) that saves last.pt first. Owning out_dir (start, resume, the lock, signals) is run_dir.py's;
   measuring the machine for MFU is config.py's.

Global batch = batch_size sequences per optimizer step, whatever the number of processes:
grad_accum = batch_size / (micro_batch_size * world_size).
"""

import math
import os
import time
from collections import namedtuple
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from babylm import BABYLM_MILESTONES, check_track, plan_milestones, unreached_list, words_seen
from checkpoint import append_log, check_writable_dir, model_checkpoint, read_log, save_checkpoint, unwrap, write_log
from chunked_loss import chunked_loss
from config import GPU_PEAK_FLOPS, RUNTIME_KEYS, InputError, flat_defaults, memory_bytes, merge_keys, peak_flops, print0
from data import read_bin, split_words
from gpt2 import GPT2Config
from model import ModelConfig
from run_dir import RESUMABLE_KEYS, running

TRAIN_KEYS = merge_keys({
    "data and output": {
        "data_dir": ("data/babylm10m", "prepared data folder (prepare_data.py --out)"),
        "out_dir": ("out/teacher", "where ckpt.pt (best validation), last.pt (latest) and log.jsonl go"),
        "resume": (False, "continue the run in out_dir from its last.pt (same config; see README)"),
        "overwrite": (False, "start afresh in an out_dir that already holds a run, replacing it"),
    },
    "model (see model.ModelConfig and gpt2.GPT2Config)": {
        "arch": ("llama", "'llama' (model.py) or 'gpt2' (gpt2.py: BabyLlama's GPT-2 teacher; it has none of the Llama-only keys below)", ("llama", "gpt2")),
        "vocab_size": (0, "0 = the tokenizer's vocabulary size", ">=0"),
        "dim": (512, "width of the residual stream", ">0"),
        "n_layers": (8, "transformer blocks", ">0"),
        "n_heads": (8, "query heads; head_dim = dim / n_heads", ">0"),
        "n_kv_heads": (0, "key/value heads (grouped-query attention); 0 = n_heads (Llama only)", ">=0"),
        "hidden_dim": (0, "SwiGLU width; 0 = Llama's rule (8/3 dim rounded up to multiple_of) (Llama only; GPT-2: 4 x dim)", ">=0"),
        "multiple_of": (256, "rounding of the Llama SwiGLU rule (Llama only)", ">0"),
        "norm_eps": (1e-6, "RMSNorm epsilon (the released BabyLlama checkpoints: 1e-6); LayerNorm's for GPT-2 (1e-5)", ">0"),
        "rope_theta": (10000.0, "RoPE base (Llama only)", ">0"),
        "max_seq_len": (256, "longest sequence the RoPE tables (GPT-2: the learned positions) cover (BabyLlama: 2 x seq_len)", ">0"),
        "tie_embeddings": (False, "share the input embedding and the output head (Llama only; GPT-2 always does)"),
    },
    "optimisation": {
        "seq_len": (128, "tokens per training window (both papers: 128)", ">0"),
        "batch_size": (128, "sequences per optimizer step, all processes together (BabyLlama-2: 128)", ">0"),
        "micro_batch_size": (32, "sequences per forward pass per process (memory, not the recipe)", ">0"),
        "epochs": (8.0, "passes over the training windows, used when max_iters is 0 (BabyLlama-2: 8)", ">0"),
        "max_iters": (0, "optimizer steps; 0 = epochs x steps per epoch", ">=0"),
        "lr": (7e-4, "peak learning rate (BabyLlama-2's sweep: 7e-4)", ">0"),
        "min_lr": (0.0, "learning rate at the end of the cosine (HF Trainer: 0)", ">=0"),
        "warmup_iters": (600, "linear warmup steps (BabyLlama-2: 600)", ">=0"),
        "weight_decay": (5.0, "decoupled AdamW decay on 2-D weights (BabyLlama-2's sweep chose 5.0)", ">=0"),
        "beta1": (0.9, "AdamW beta1 (HF default)", "0..1"),
        "beta2": (0.999, "AdamW beta2 (HF default)", "0..1"),
        "adam_eps": (1e-8, "AdamW epsilon (HF default)", ">0"),
        "grad_clip": (1.0, "clip the global gradient norm to this; 0 = no clipping (HF default 1.0)", ">=0"),
        "seed": (1337, "initialisation, data order and masks all follow from it", "0..2147483647"),
        "nonfinite": ("stop", "a non-finite loss or gradient: 'stop' (keep the last good checkpoint) or 'skip' the step", ("stop", "skip")),
    },
    "the loss at scale (chunked_loss.py; either way the same values and gradients)": {
        "loss_impl": ("chunked", "'chunked': the loss loss_chunk positions at a time, each chunk differentiated by autograd, never "
                                 "the whole (B, T, vocab) logits; 'plain': on the whole micro-batch's logits ('fused': chunked, its old name)",
                      ("chunked", "plain", "fused")),
        "loss_chunk": (256, "positions per chunk (whole sequences, at least one; a micro-batch within one chunk is computed whole; "
                            "0 = all at once); also the positions per teacher pass of a cache build", ">=0"),
    },
    "evaluation and logging": {
        "eval_interval": (200, "steps between validation losses and checkpoints", ">0"),
        "eval_windows": (1024, "validation windows, spread evenly over val.bin (the same for every model)", ">0"),
        "log_interval": (10, "steps between log lines", ">0"),
        "stop_at": (0, "save last.pt and exit after this step (a time-limited job); 0 = never", ">=0"),
        "wandb_log": (False, "also log to Weights & Biases (needs `pip install wandb`); log.jsonl stays the record"),
        "wandb_project": ("babydistill", "the W&B project"),
        "wandb_run_name": ("", "the W&B run name; empty = the out_dir's name"),
    },
    "BabyLM rules (README: Submitting to BabyLM)": {
        "checkpoints_at": ([], "save out_dir/chck_<words>/ckpt.pt when words_seen first reaches each: counts with "
                               "k/M/B (1M,2M,500k), or 'babylm' (the 19 strict-small milestones 1M..10M, 20M..100M) "
                               "or 'babylm_strict' (28, to 1000M)"),
        "track": ("none", "refuse a run that breaks the track's rules: 'strict-small' (10M words of data), "
                          "'strict' (100M); both at most 10 epochs; 'none'", ("none", "strict-small", "strict")),
    },
}, RUNTIME_KEYS)

def check_train_config(cfg):
    """Mistakes that involve several keys, caught before any work (those that also involve the data and the
    number of processes are plan_run's)."""
    if cfg.seq_len > cfg.max_seq_len:
        raise InputError(f"seq_len={cfg.seq_len} is longer than the model's max_seq_len={cfg.max_seq_len}: lower --seq_len or raise --max_seq_len")
    if cfg.min_lr > cfg.lr:
        raise InputError(f"min_lr={cfg.min_lr} is larger than lr={cfg.lr}: lower --min_lr")
    if cfg.loss_impl == "fused":
        print0("note: loss_impl='fused' is now 'chunked' (the same loss, chunked and differentiated by autograd): running chunked")
        cfg.loss_impl = "chunked"
    if cfg.wandb_log:
        wandb_module()  # a missing package is a one-line error now, not after the first steps
    check_writable_dir(cfg.out_dir, "out_dir")  # empty, a file, under a file or read-only: now, not at the first checkpoint
    try:
        arch = architecture_config(cfg, vocab_size=cfg.vocab_size or 1)
    except ValueError as e:
        raise InputError(str(e)) from None
    check_fits_memory(cfg, arch)
    if cfg.arch == "gpt2":  # a Llama config turned into a GPT-2 with --arch=gpt2: say which of its keys do not apply
        defaults = flat_defaults(TRAIN_KEYS)
        unused = [f"{k}={getattr(cfg, k)!r}" for k in LLAMA_ONLY_KEYS if getattr(cfg, k) != defaults[k]]
        if unused:
            print0(f"note: arch='gpt2' does not use {', '.join(unused)} (Llama-only keys: GPT-2 has multi-head attention, "
                   "an MLP of 4 x dim, learned positions and a tied head)")
    cfg.data_dir = os.path.abspath(cfg.data_dir)  # recorded in checkpoints: evaluation may run from elsewhere


def check_fits_memory(cfg, arch):
    """A model too large for this machine is refused before it is built (a dim or n_layers of 10**30 would hang in
    the constructor or fail deep inside torch): an upper estimate of its parameters from the shape keys (embedding
    and head at the tokenizer's largest vocabulary, 65,536, when vocab_size is 0; each layer's attention and MLP;
    the position or RoPE table), times 16 bytes (fp32 weights, gradients, two AdamW moments), against this machine."""
    vocab, dim = cfg.vocab_size or 65536, arch.dim
    hidden = arch.ffn_hidden_dim() if hasattr(arch, "ffn_hidden_dim") else 4 * dim
    params = 2 * vocab * dim + arch.n_layers * (4 * dim * dim + 3 * dim * hidden) + arch.max_seq_len * dim
    need, have = 16 * params, memory_bytes(cfg.device)
    if need > have:
        raise InputError(f"dim={cfg.dim}, n_layers={cfg.n_layers}, hidden_dim={hidden}, max_seq_len={cfg.max_seq_len}: a model of about "
                         f"{params:.3g} parameters needs {need / 1e9:.3g} GB for weights, gradients and AdamW state; this machine has "
                         f"{have / 1e9:.3g} GB")


def wandb_module():
    """The wandb package, imported only when wandb_log=True (it is optional, not a requirement)."""
    try:
        import wandb
    except ImportError:
        raise InputError("wandb_log=True needs the wandb package: pip install wandb (or drop --wandb_log)") from None
    return wandb


LLAMA_ONLY_KEYS = ("n_kv_heads", "hidden_dim", "multiple_of", "rope_theta", "tie_embeddings")


def architecture_config(cfg, vocab_size):
    """The model's config object from a run's keys: a gpt2.GPT2Config for arch='gpt2', else a model.ModelConfig.
    (checkpoint.build_model builds the model of either.)"""
    if cfg.arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, norm_eps=cfg.norm_eps,
                          max_seq_len=cfg.max_seq_len)
    return ModelConfig(vocab_size=vocab_size, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                       hidden_dim=cfg.hidden_dim, multiple_of=cfg.multiple_of, norm_eps=cfg.norm_eps,
                       rope_theta=cfg.rope_theta, max_seq_len=cfg.max_seq_len, tie_embeddings=cfg.tie_embeddings)


def model_config(cfg, tok_info):
    vocab = cfg.vocab_size or tok_info["vocab_size"]
    if vocab != tok_info["vocab_size"]:
        raise InputError(f"vocab_size={cfg.vocab_size} but the tokenizer in {cfg.data_dir} has {tok_info['vocab_size']} tokens: "
                         "use --vocab_size=0 (the tokenizer's)")
    return architecture_config(cfg, vocab)


# -----------------------------------------------------------------------------------------------
# Data: fixed windows, a fresh order per epoch, batches as a pure function of the step


class Windows:
    """Non-overlapping windows of seq_len + 1 tokens over a token file: x = w[:-1], y = w[1:]."""

    def __init__(self, path, seq_len, vocab_size=None):
        self.tokens, self.seq_len = read_bin(path), seq_len
        self.n = (len(self.tokens) - 1) // seq_len
        if self.n < 1:
            raise InputError(f"{path}: {len(self.tokens)} tokens is less than one window of seq_len+1={seq_len + 1}: lower --seq_len")
        if vocab_size is not None:  # an id past the vocabulary was an IndexError deep in the embedding
            largest = int(self.tokens.max())
            if largest >= vocab_size:
                raise InputError(f"{path}: holds token id {largest}, past the tokenizer's vocabulary of {vocab_size}: "
                                 "not this folder's tokens (run prepare_data.py again)")

    def get(self, idx, device, pin_memory=False):
        rows = np.stack([self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1] for i in idx.tolist()])
        w = torch.from_numpy(rows.astype(np.int64))  # (B, seq_len + 1)
        if pin_memory:  # page-locked host memory: the copy to the GPU overlaps with compute
            w = w.pin_memory().to(device, non_blocking=True)
        return w[:, :-1].to(device), w[:, 1:].to(device)


class EpochSampler:
    """Which windows make up (step, micro-step, rank): every epoch is a permutation seeded by (seed, epoch),
    cut into global batches; each process takes its own micro-batches of each global batch."""

    def __init__(self, n_windows, batch_size, micro_batch_size, world, seed):
        self.n, self.batch, self.micro, self.world, self.seed = n_windows, batch_size, micro_batch_size, world, seed
        self.steps_per_epoch = n_windows // batch_size
        if self.steps_per_epoch < 1:
            raise InputError(f"batch_size={batch_size} is more than the {n_windows} training windows: lower --batch_size")
        self._epoch, self._perm = None, None

    def indices(self, step, micro_step, rank):
        epoch = step // self.steps_per_epoch
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
def evaluate(model, windows, idx, batch_size, rt, desc="validation"):
    """Mean next-token cross-entropy (nats/token) of a bare model on the windows idx. Under DDP each
    process takes a share and the sums are all-reduced: every rank runs it, none waits on another.
    The first process shows a bar named desc (cleared when done; desc=None: no bar)."""
    was_training = model.training
    model.eval()
    mine = idx[rt.rank :: rt.world]
    total = torch.zeros(2, dtype=torch.float64, device=rt.device)
    for i in tqdm(range(0, len(mine), batch_size), desc=desc, disable=desc is None or not rt.master, leave=False, mininterval=1):
        x, y = windows.get(mine[i : i + batch_size], rt.device)
        with rt.autocast:
            logits = model(x)
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


def plan_run(cfg, world, n_windows, epochs=None, corpus=None):
    """The run's shape, and every check of it (the one place): the global batch against the micro-batches of
    all processes and against the data, the number of steps against the warmup. `epochs` is the objective's
    own run length (AntLM's schedule), else cfg.epochs. `corpus` = (words, tokens) of train.bin
    (data.split_words): the words seen per step, BabyLM's rules (track) and the milestone steps
    (checkpoints_at). Called before any work, and again by train()."""
    if cfg.batch_size % (cfg.micro_batch_size * world):
        per_step = f"micro_batch_size*world_size={cfg.micro_batch_size * world}" if world > 1 else f"micro_batch_size={cfg.micro_batch_size}"
        raise InputError(f"batch_size={cfg.batch_size} is not a multiple of {per_step}: choose a micro_batch_size that divides it")
    sampler = EpochSampler(n_windows, cfg.batch_size, cfg.micro_batch_size, world, cfg.seed)  # refuses batch_size > windows
    max_iters = cfg.max_iters or max(1, round((epochs or cfg.epochs) * sampler.steps_per_epoch))
    if max_iters <= cfg.warmup_iters:
        steps = f"max_iters={cfg.max_iters}" if cfg.max_iters else f"the run's {max_iters} steps (epochs={epochs or cfg.epochs:g})"
        raise InputError(f"{steps} is not larger than warmup_iters={cfg.warmup_iters}: lower --warmup_iters or train longer")
    plan = SimpleNamespace(sampler=sampler, max_iters=max_iters, grad_accum=cfg.batch_size // (cfg.micro_batch_size * world),
                           corpus=corpus, words_per_step=None, milestones={})
    if corpus is None:
        if cfg.track != "none" or cfg.checkpoints_at:
            raise ValueError("plan_run: track and checkpoints_at need corpus=(words, tokens) of train.bin")
        return plan
    plan.words_per_step = Fraction(cfg.batch_size * cfg.seq_len * corpus[0], corpus[1])
    check_track(cfg, plan, corpus[0])
    plan.milestones = plan_milestones(cfg, plan)
    return plan


# -----------------------------------------------------------------------------------------------
# The plain objective. Others subclass it and change what they need.

Batch = namedtuple("Batch", "x y idx step micro rank")  # a micro-batch and where it comes from (window indices, step, micro-step, rank)


class CausalLM:
    """Next-token cross-entropy: what a teacher or a baseline learns. What an objective gives the loop:

    epochs                  None, or the run length in epochs when the objective has a schedule (AntLM)
    record                  fixed numbers added to every validation entry and checkpoint (distillation: the
                            teachers' validation losses)
    flops_per_token(L)      for MFU
    inputs(batch)           the loss inputs of one micro-batch (a Batch: each objective reads what it needs)
    loss(model, *inputs)    -> (loss, {name: scalar tensor to log}); compiled when rt.compile, so it must not
                            take the step number (a Python int argument would recompile at every step)
    log_fields(step)        plain values added to the log line of a step (AntLM: the phase)

    formula(logits, ...)    -> (loss, logs): the loss itself, on logits and the tensors that go with them; loss()
                            gives it to apply(), which runs it on the whole micro-batch (loss_impl="plain") or a
                            chunk of sequences at a time (loss_impl="chunked", the default: chunked_loss.py), the
                            same values and gradients without (B, L, vocab) tensors."""

    epochs = None
    record = {}

    def __init__(self, model, cfg):
        self.model = model
        self.chunk = 0 if cfg.loss_impl == "plain" or not cfg.loss_chunk else max(1, cfg.loss_chunk // cfg.seq_len)  # sequences; 0 = plain

    def flops_per_token(self, seq_len):
        return self.model.flops_per_token(seq_len)

    def inputs(self, batch):
        return batch.x, batch.y

    def loss(self, model, x, y, causal=True):
        if not causal:  # masked LM (AntLM): the CE averages over the selected positions (the others are -1), not per sequence
            return self.formula(model(x, causal), y)
        return self.apply(model, x, [y])

    def formula(self, logits, y):
        """The loss on logits (b, L, V) and their inputs: next-token CE (targets of -1 are ignored)."""
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1), {}

    def apply(self, model, x, per_sequence):
        """self.formula(logits, *per_sequence), a mean over the sequences it is given, on the model's logits of x
        (through the DDP wrapper's forward): all at once when the micro-batch fits one chunk (or loss_impl="plain"),
        else chunked_loss.py cuts x's sequences and every tensor of per_sequence into chunks."""
        if not self.chunk or len(x) <= self.chunk:
            return self.formula(model(x), *per_sequence)
        return chunked_loss(self.formula, model(x, return_hidden=True), unwrap(model).output.weight, per_sequence, self.chunk)

    def log_fields(self, step):
        return {}


def micro_batch_seed(seed, step, micro, rank):
    """The seed of a micro-batch's random draws (GPT-2's dropout masks, AntLM's masking): a function of where it
    is, so a resumed run draws what the uninterrupted run drew. Within the 64 bits torch.manual_seed takes."""
    return (((seed * 1_000_003 + step) * 1_009 + micro) * 1_013 + rank) % 2**63


# -----------------------------------------------------------------------------------------------
# The training loop


def train(cfg, rt, model, objective, train_w, tok_info, start=None, inputs=None):
    """Train `model` (a bare Llama or GPT2, on rt.device) on the windows train_w with `objective`, resuming from the
    checkpoint dict `start` (its weights already loaded) if given; `inputs` (run_dir.run_inputs) go into every
    checkpoint, for resume to compare. Returns a summary dict."""
    run = Run(cfg, rt, model, objective, train_w, tok_info, start, inputs)
    with running(cfg, rt) as stop:
        try:
            while run.step < run.plan.max_iters:
                # ---- every step: the learning rate, gradients over grad_accum micro-batches, one AdamW step
                lr = lr_at(run.step, cfg, run.plan.max_iters)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                logs, grad_norm, stop_asked = forward_backward(run, stop)
                if run.finite(logs, grad_norm):  # never a step with a NaN: the weights stay good
                    run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
                run.step += 1
                run.bar.update(1)
                # ---- around the learning, each at its own interval
                run.save_milestones()  # BabyLM's chck_<words>/ckpt.pt, when this step reaches one
                run.log_step(logs, lr)  # every log_interval steps: the losses, the learning rate, speed and MFU
                run.validate_and_save()  # every eval_interval steps: validation CE, then ckpt.pt and last.pt
                if stop_asked and run.step < run.plan.max_iters:  # Ctrl-C, SIGTERM (any rank) or stop_at: save last.pt, leave
                    run.save_and_stop()
                    break
        finally:
            run.close()
    return {"best_val_loss": run.best_val, "steps": run.step, "max_iters": run.plan.max_iters,
            "seconds": time.perf_counter() - run.t_start, "signal": stop.signum}


def forward_backward(run, stop):
    """Gradients of one optimizer step over plan.grad_accum micro-batches, clipped. Returns the logged means
    ({"loss": ..., **logs}), the gradient norm, and whether any rank asked to stop (a signal, or stop_at)."""
    cfg, rt, plan = run.cfg, run.rt, run.plan
    loss_sum, logs_sum = 0.0, {}
    for micro in range(plan.grad_accum):
        idx = plan.sampler.indices(run.step, micro, rt.rank)
        x, y = run.train_w.get(idx, rt.device, rt.pin_memory)
        inputs = run.objective.inputs(Batch(x, y, idx, run.step, micro, rt.rank))
        torch.manual_seed(micro_batch_seed(cfg.seed, run.step, micro, rt.rank))  # dropout draws from the global generator
        if rt.ddp:  # all-reduce gradients on the last micro-step only
            run.ddp_model.require_backward_grad_sync = micro == plan.grad_accum - 1
        with rt.autocast:
            loss, logs = run.loss_fn(run.ddp_model, *inputs)
        (loss / plan.grad_accum).backward()
        loss_sum = loss_sum + loss.detach() / plan.grad_accum
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + v.detach() / plan.grad_accum
    # clip_grad_norm_ also returns the norm: a non-finite gradient is caught even when the loss is finite
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip or float("inf"))
    # One tensor, one all-reduce and one host sync per step: loss and logs (means over the global batch, as in
    # one process), the gradient norm (already global under DDP), and the stop request of any rank.
    stats = torch.stack([loss_sum, *logs_sum.values(), grad_norm.to(loss_sum.device), torch.tensor(float(stop.signum), device=loss_sum.device)]).float()
    if rt.ddp:
        dist.all_reduce(stats)
        stats /= rt.world
    *values, norm, stop_value = stats.tolist()
    return dict(zip(["loss", *logs_sum], values)), norm, stop_value > 0 or run.step + 1 == cfg.stop_at


class Run:
    """A run's state (the plan, the optimizer, the step, the best validation loss) and the operations that happen
    around the learning: the non-finite policy, milestones, logging, validation, checkpoints and stopping."""

    def __init__(self, cfg, rt, model, objective, train_w, tok_info, start, inputs):
        self.cfg, self.rt, self.model, self.objective, self.train_w, self.tok_info = cfg, rt, model, objective, train_w, tok_info
        self.plan = plan_run(cfg, rt.world, train_w.n, objective.epochs, split_words(cfg.data_dir))
        self.plan.inputs = inputs or {}
        self.val_w = Windows(os.path.join(cfg.data_dir, "val.bin"), cfg.seq_len, tok_info["vocab_size"])
        self.val_idx = eval_indices(self.val_w.n, cfg.eval_windows)
        self.optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.adam_eps)
        self.step, self.best_val = 0, float("inf")
        if start is not None:
            self.optimizer.load_state_dict(start["optimizer"])
            self.step, self.best_val = start["step"], start["best_val_loss"]
        if 0 < cfg.stop_at <= self.step:  # it would never be reached: the run would train to the end instead
            raise InputError(f"--stop_at={cfg.stop_at}: the run is already at step {self.step}; give a later step, or 0")
        self.log = RunLog(cfg, rt, self.step if start is not None else None)
        self.ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None) if rt.ddp else model
        self.loss_fn = torch.compile(objective.loss) if rt.compile else objective.loss
        self.flops_per_step = objective.flops_per_token(cfg.seq_len) * cfg.batch_size * cfg.seq_len
        self.peak = peak_flops(rt.device) * rt.world
        print_header(cfg, rt, model, self.plan, self.peak)
        self.bar = tqdm(total=self.plan.max_iters, initial=self.step, desc="train", disable=not rt.master, mininterval=1, dynamic_ncols=True)
        self.t_start = self.t0 = time.perf_counter()
        self.t0_step = self.step  # speed is measured over the steps since t0

    def finite(self, logs, grad_norm):
        """Whether the step may be taken: a non-finite loss or gradient stops the run (nonfinite="stop": the last good
        checkpoint stays the last) or skips the step ("skip")."""
        if all(map(math.isfinite, [*logs.values(), grad_norm])):
            return True
        if self.cfg.nonfinite == "stop":
            raise FloatingPointError(f"non-finite loss or gradient at step {self.step}; the last good checkpoint is "
                                     f"{os.path.join(self.cfg.out_dir, 'last.pt')} (--nonfinite=skip skips such steps)")
        print0(f"step {self.step}: non-finite loss or gradient, step skipped")
        return False

    def save_milestones(self):
        """BabyLM's intermediate checkpoints: out_dir/chck_<words>/ckpt.pt for each milestone first reached at this step
        (several when one step passes several). Weights, step, words seen and the recipe; no optimizer state (they are
        for evaluation, and 19 of them add up). The recipe leaves out the keys that only say how this process was
        launched (RESUMABLE_KEYS: out_dir, resume, stop_at, ...), so that a stopped and resumed run writes the very
        bytes an uninterrupted run writes. Each file is written whole (atomic_write): a kill leaves none or all of it."""
        cfg, plan, step = self.cfg, self.plan, self.step
        for label in plan.milestones.get(step, ()):
            if self.rt.master:
                path = os.path.join(cfg.out_dir, label, "ckpt.pt")
                recipe = {k: v for k, v in vars(cfg).items() if k not in RESUMABLE_KEYS}
                save_checkpoint(path, model_checkpoint(self.model, self.tok_info, step=step, words_seen=words_seen(plan, step), config=recipe))
                tqdm.write(f"saved {path} at step {step} ({words_seen(plan, step):,} words seen)")
            if self.rt.ddp:
                dist.barrier()

    def log_step(self, logs, lr):
        """Every log_interval steps (and the last): the losses, the learning rate, the speed and the MFU."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_interval and step != self.plan.max_iters:
            return
        dt = (time.perf_counter() - self.t0) / (step - self.t0_step)
        if self.flops_per_step / dt > self.peak:  # the first reading of the peak was low (a busy machine)
            self.peak = max(self.peak, peak_flops(self.rt.device) * self.rt.world)
        self.log(self.bar, {"step": step, "words_seen": words_seen(self.plan, step), **logs, "lr": lr, **self.objective.log_fields(step - 1),
                            "ms_per_step": 1000 * dt, "tok_per_s": cfg.batch_size * cfg.seq_len / dt, "mfu": self.flops_per_step / dt / self.peak})
        self.t0, self.t0_step = time.perf_counter(), step

    def validate_and_save(self):
        """Every eval_interval steps (and the last): the validation loss, then ckpt.pt (when it improved) and last.pt."""
        cfg, step = self.cfg, self.step
        if step % cfg.eval_interval and step != self.plan.max_iters:
            return
        val = evaluate(self.model, self.val_w, self.val_idx, cfg.micro_batch_size, self.rt)
        if not math.isfinite(val):
            raise FloatingPointError(f"non-finite validation loss at step {step}; the last good checkpoint is {os.path.join(cfg.out_dir, 'last.pt')}")
        improved, self.best_val = val < self.best_val, min(self.best_val, val)
        self.log(self.bar, {"step": step, "words_seen": words_seen(self.plan, step), "val_loss": val, **self.objective.record},
                 shown={"best val_loss": self.best_val})
        # ckpt.pt before last.pt: a kill between the two resumes from the older last.pt and writes both again,
        # so the best checkpoint is never left behind by a resumed run.
        if improved:
            self.save("ckpt.pt", val)
        self.save("last.pt", val)
        self.t0, self.t0_step = time.perf_counter(), step  # evaluation time is not training time

    def save_and_stop(self):
        """A stop was asked for: last.pt now, so that --resume=True continues from this very step."""
        self.save("last.pt", None)
        self.bar.close()
        print0(f"saved {os.path.join(self.cfg.out_dir, 'last.pt')} at step {self.step}; resume with --resume=True")

    def save(self, name, val_loss):
        """ckpt.pt or last.pt of the run: everything resume needs (rank 0 writes, every rank waits)."""
        if self.rt.master:
            ckpt = model_checkpoint(self.model, self.tok_info, optimizer=self.optimizer.state_dict(), step=self.step,
                                    words_seen=words_seen(self.plan, self.step), best_val_loss=self.best_val, val_loss=val_loss,
                                    config=vars(self.cfg), inputs=self.plan.inputs, **self.objective.record)
            save_checkpoint(os.path.join(self.cfg.out_dir, name), ckpt)
        if self.rt.ddp:
            dist.barrier()

    def close(self):
        self.bar.close()
        self.log.close()


# -----------------------------------------------------------------------------------------------
# What the run prints and logs


class RunLog:
    """log.jsonl (the record; rank 0 writes it) and, with wandb_log=True, the same numbers to W&B. A resumed
    run's log is first cut back to its checkpoint's step, so that it then equals an uninterrupted run's
    (a resumed run logs to a new W&B run; log.jsonl holds the whole history)."""

    def __init__(self, cfg, rt, resumed_step=None):
        self.path, self.master, self.wandb = os.path.join(cfg.out_dir, "log.jsonl"), rt.master, None
        if rt.master:
            write_log(self.path, [e for e in read_log(self.path) if resumed_step is not None and e["step"] <= resumed_step])
            if cfg.wandb_log:
                name = cfg.wandb_run_name or os.path.basename(os.path.normpath(cfg.out_dir))
                self.wandb = wandb_module().init(project=cfg.wandb_project, name=name, config=vars(cfg))

    def __call__(self, bar, entry, shown=None):
        """Append entry to the log, and print it (with `shown`, numbers for the terminal only) above the bar."""
        if self.master:
            append_log(self.path, entry, self.wandb)
            bar.write(format_entry({**entry, **(shown or {})}))

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()


def print_header(cfg, rt, model, plan, peak):
    print0(f"{model.num_params():,} parameters | {plan.max_iters} steps ({plan.sampler.steps_per_epoch} per epoch) | "
           f"global batch {cfg.batch_size} x {cfg.seq_len} tokens, grad_accum {plan.grad_accum}, world {rt.world}"
           + (f" (DDP, {dist.get_backend()})" if rt.ddp else "") + " | "
           f"device {rt.device} {rt.dtype}, compile {rt.compile}")
    print0(f"MFU is measured against {peak / 1e12:.3g} TFLOP/s: " + ("the data sheet's dense bf16 peak" if peak / rt.world in GPU_PEAK_FLOPS.values()
           else "the best fp32 matmul reading so far on this machine (re-measured when a reading would exceed 100%)"))
    words, tokens = plan.corpus
    print0(f"words seen = tokens seen x {words:,} words / {tokens:,} tokens of train.bin: {float(plan.words_per_step):,.0f} a step, "
           f"{words_seen(plan, plan.max_iters):,} in all" + (f" | track {cfg.track}" if cfg.track != "none" else ""))
    if plan.milestones:
        print0("milestones: " + ", ".join(f"{label} at step {step}" for step, labels in plan.milestones.items() for label in labels))
    for entry in cfg.checkpoints_at:  # an official list the run is too short for (under a track, plan_milestones refused it)
        if entry in BABYLM_MILESTONES and (short := unreached_list(entry, words_seen(plan, plan.max_iters))):
            print0(f"note: checkpoints_at={entry}: {short}: no milestone will be written")
    if not cfg.checkpoints_at and cfg.track != "none":
        print0("note: a BabyLM submission needs the intermediate checkpoints: --checkpoints_at=babylm (README: Submitting to BabyLM)")


def format_entry(entry):
    """One log line for the terminal: losses first, then the schedule and the speed."""
    speed = {"lr": "lr {:.2e}", "ms_per_step": "{:.0f} ms/step", "tok_per_s": "{:,.0f} tok/s", "mfu": "MFU {:.1%}"}
    shown = lambda k, v: f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v:,}" if k == "words_seen" else f"{k} {v}"
    parts = [shown(k, v) for k, v in entry.items() if k not in speed]
    return " | ".join(parts + [fmt.format(entry[k]) for k, fmt in speed.items() if k in entry])


def finish(summary, what, out_dir):
    """The last line of a run; a run stopped by a signal exits with 128 + its number, so `a && b` stops too."""
    if summary["steps"] < summary["max_iters"]:
        best = f"best val_loss {summary['best_val_loss']:.4f}" if math.isfinite(summary["best_val_loss"]) else "no evaluation yet"
        print0(f"stopped at step {summary['steps']} of {summary['max_iters']} ({best}); checkpoints in {out_dir}")
        if summary["signal"]:
            raise SystemExit(128 + summary["signal"])
        return
    print0(f"done: {summary['steps']} steps in {summary['seconds']:.0f}s, best {what + ' ' if what else ''}val_loss {summary['best_val_loss']:.4f}, "
           f"checkpoints in {out_dir}")
