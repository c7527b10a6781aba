"""
The GPU path, checked and measured in one short script: run it once on a CUDA machine (meant to take about
5 minutes, most of it torch.compile; not yet run on a GPU).

    python bench/gpu_check.py                            # on a GPU; without one it says so and exits 0
    python bench/gpu_check.py --out bench/results/h200   # results.json and results.md there (default bench/results/gpu_check)
    python bench/gpu_check.py --parts ddp,blimp          # only these parts (data, tests, ddp, step, blimp)
    python bench/gpu_check.py --rehearse                 # every part on this CPU at tiny sizes, eager: checks the script, not a GPU

Nothing here has run on a GPU yet, so it is written to be run blind: every part runs in its own process with a
time limit, inside try/except; a failure (an exception, an exit status, out of memory, a timeout) becomes a row
of the table with its last lines, and the script goes on to the next part. The table is rewritten after every
part, and the script ends with one line `error: ...` (exit status 1) if any part failed. The two checks (tests,
ddp) run at the same time, the measurements (step, blimp) one after another.
  data     a prepared data folder: --data_dir, else experiments/work_gpu/data (reproduce_gpu.py's) or data/mini,
           else prepare_data.py on babylm_2024_mini into OUT/data (~40 s).
  tests    tests/test_bf16.py on the GPU (BABYDISTILL_TEST_DEVICE=cuda): teacher steps under bf16 autocast,
           distillation with bf16 teachers, BLiMP scoring under autocast, and the compiled teacher and
           distillation steps (the test marked slow).
  ddp      train_teacher.py for a few steps under torchrun, one process: runtime() must choose NCCL (the log's
           header says which backend), with the GPU defaults (bf16 autocast, torch.compile) under DDP.
  step     one distillation step (student forward + backward + clipping + AdamW, two teachers' forwards) at 58M
           (configs/babyllama_58m.py, batch 128 x 128, as experiments/reproduce_gpu.py) and at 345M
           (configs/student.py, micro-batch 32 x 128), two ways in the same run:
             ours    distill.Distillation.loss with what config.runtime() decides on the device (on a GPU:
                     torch.compile, bf16 autocast, bf16 teachers), fused AdamW, as train.py runs it;
             papers  the BabyLlama code's way: transformers LlamaForCausalLM (its default sdpa attention), eager,
                     bf16 autocast over fp32 weights, full logits, CE from the model plus
                     T^2 KLDivLoss(batchmean) to the teachers' mean logits, torch AdamW;
           tokens/s, MFU against config.peak_flops (the data-sheet dense bf16 peak on a known GPU), peak memory,
           and the warm-up (the compile) time. FLOPs per token: model.py's count, the same for both.
  blimp    BLiMP pairs/s at 345M: eval_blimp.score_sentences in fp32 (eval_blimp.py's default) on 60 pairs of each
           paradigm, at batch_tokens 2048 (eval_blimp.py's default) and 16384 (reproduce_gpu.py's).
Random weights throughout: speed does not depend on them. --rehearse runs the same parts on this CPU: tiny models
(the step at batch 8 under bf16 autocast, eager: a CPU compiles for minutes), the tests but the slow compiled
one, gloo for DDP; its numbers say nothing about a GPU.
"""

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from checkpoint import check_writable_dir  # noqa: E402
from config import GPU_PEAK_FLOPS, InputError, load_config, merge_keys, peak_flops, read_config_file, run_main, runtime  # noqa: E402
from model import Llama, ModelConfig  # noqa: E402

SHAPE_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim")


def shape(config_file):
    cfg = read_config_file(os.path.join(ROOT, "configs", config_file))
    return {k: cfg.get(k, 0) for k in SHAPE_KEYS}


# size -> (model shape, batch of the step, vocabulary: BabyLlama's 16k BPE); "tiny" is the rehearsal's
SIZES = {"58m": (shape("babyllama_58m.py"), 128, 16000), "345m": (shape("student.py"), 32, 16000),
         "tiny": (dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=192), 8, 1024)}
SEQ_LEN, ALPHA, T = 128, 0.5, 1.0  # BabyLlama-2: windows of 128, alpha 0.5, T 1
PARTS = ("data", "tests", "ddp", "step", "blimp")
TIMEOUT_S = {"data": 300, "tests": 300, "ddp": 240, "step 58m": 300, "step 345m": 360, "blimp": 240}
KEYS = {"gpu check": {
    "out": ("bench/results/gpu_check", "folder for results.json and results.md"),
    "data_dir": ("", "a prepared data folder (for the tokenizer); empty = found (reproduce_gpu.py's, data/mini) or prepared"),
    "parts": (list(PARTS), "the parts to run: " + ", ".join(PARTS)),
    "rehearse": (False, "every part on this CPU at tiny sizes, eager (checks this script, not a GPU)"),
}}
# A part in its child process: python bench/gpu_check.py --_part=step --_size=58m --_variant=ours (not for users)
CHILD_KEYS = merge_keys(KEYS, {"child": {
    "_part": ("", "the part this child runs", ("step", "blimp")),
    "_size": ("tiny", "the step's size", tuple(SIZES)),
    "_variant": ("ours", "the step's implementation", ("ours", "papers")),
}})


# -----------------------------------------------------------------------------------------------
# The parts that run in a child process (python bench/gpu_check.py --_part ...): one JSON line at the end


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device):
    """Peak memory of this process: allocated on the GPU, or resident on a CPU (both in GB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def ours(shape_, vocab, rt):
    """distill.Distillation as distill.py + train.py run it: teachers frozen (bf16 under bf16 autocast), the loss
    compiled when runtime() compiles, fused AdamW with decay on 2-D weights, the gradient clipped."""
    from distill import Distillation

    mcfg = ModelConfig(vocab_size=vocab, max_seq_len=2 * SEQ_LEN, **shape_)
    student = Llama(mcfg).to(rt.device)
    teachers = [Llama(mcfg).to(rt.device).eval().requires_grad_(False) for _ in range(2)]
    if rt.dtype == "bfloat16":
        teachers = [t.to(torch.bfloat16) for t in teachers]  # as distill.load_teachers
    cfg = SimpleNamespace(alpha=ALPHA, temperature=T, ensemble="logits", kl_reduction="paper", loss_impl="chunked", loss_chunk=256, seq_len=SEQ_LEN)
    objective = Distillation(student, teachers, [0.5, 0.5], cfg)
    loss_fn = torch.compile(objective.loss) if rt.compile else objective.loss
    opt = student.configure_optimizer(7e-4, 5.0, (0.9, 0.999), 1e-8)

    def step(x, y):
        with rt.autocast:
            loss, _ = loss_fn(student, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, objective.flops_per_token(SEQ_LEN), {"dtype": rt.dtype + " autocast" + ", bf16 teachers" * (rt.dtype == "bfloat16"),
                                                      "compile": rt.compile}


def papers(shape_, vocab, rt):
    """The BabyLlama code's step (github.com/timinar/BabyLlama, DistillationTrainer.compute_loss under the HF
    Trainer with bf16=True): Hugging Face Llamas in fp32 under bf16 autocast, eager, full logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hcfg = LlamaConfig(vocab_size=vocab, hidden_size=shape_["dim"], intermediate_size=shape_["hidden_dim"],
                       num_hidden_layers=shape_["n_layers"], num_attention_heads=shape_["n_heads"],
                       num_key_value_heads=shape_["n_kv_heads"] or shape_["n_heads"], max_position_embeddings=2 * SEQ_LEN,
                       rms_norm_eps=1e-6, tie_word_embeddings=False)
    student = LlamaForCausalLM(hcfg).to(rt.device)
    teachers = [LlamaForCausalLM(hcfg).to(rt.device).eval() for _ in range(2)]
    opt = torch.optim.AdamW(student.parameters(), lr=7e-4, weight_decay=5.0)  # the HF Trainer's adamw_torch
    autocast = torch.autocast(rt.device.type, dtype=torch.bfloat16)

    def step(x, y):
        with autocast:
            out = student(input_ids=x, labels=x)  # the model shifts the labels itself
            with torch.no_grad():
                teacher_logits = torch.stack([t(input_ids=x).logits for t in teachers]).mean(0)
            kl = F.kl_div(F.log_softmax(out.logits / T, dim=-1), F.softmax(teacher_logits / T, dim=-1), reduction="batchmean")
            loss = ALPHA * out.loss + (1 - ALPHA) * T**2 * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    with torch.device("meta"):  # the same architecture: model.py's FLOPs count
        reference = Llama(ModelConfig(vocab_size=vocab, max_seq_len=2 * SEQ_LEN, **shape_))
    flops = reference.flops_per_token(SEQ_LEN) + 2 * reference.flops_per_token(SEQ_LEN, backward=False)
    return step, flops, {"dtype": "bfloat16 autocast, fp32 weights", "compile": False, "attention": hcfg._attn_implementation}


def part_step(size, variant, rehearse):
    # what runtime() decides on the device; the rehearsal adds bf16 autocast (not compile: minutes on a CPU)
    rt = runtime(SimpleNamespace(device="cpu" if rehearse else "cuda", dtype="bfloat16" if rehearse else "auto", compile="auto"))
    shape_, batch, vocab = SIZES[size]
    warmup, steps = (1, 2) if rehearse else (3, 10)
    torch.manual_seed(0)
    step, flops_per_token, how = (ours if variant == "ours" else papers)(shape_, vocab, rt)
    x = torch.randint(0, vocab, (batch, SEQ_LEN), device=rt.device)
    y = torch.randint(0, vocab, (batch, SEQ_LEN), device=rt.device)
    t0 = time.perf_counter()
    for _ in range(warmup):  # the first step compiles
        loss = step(x, y)
    sync(rt.device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step(x, y)
        sync(rt.device)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    tok_s = batch * SEQ_LEN / dt
    peak = peak_flops(rt.device)
    return {"tokens_per_s": tok_s, "mfu": flops_per_token * tok_s / peak, "peak_flops": peak, "ms_per_step": 1000 * dt,
            "peak_memory_gb": peak_memory_gb(rt.device), "warmup_s": warmup_s, "loss": loss.item(), "batch": f"{batch} x {SEQ_LEN}",
            "flops_per_token": flops_per_token, **how}


def part_blimp(data_dir, rehearse, per_paradigm=60):
    from data import load_tokenizer
    from eval_blimp import read_tasks, score_sentences

    rt = runtime(SimpleNamespace(device="cpu" if rehearse else "cuda", dtype="float32", compile=False))  # as eval_blimp.py
    enc, info = load_tokenizer(data_dir)
    tasks = read_tasks(os.path.join(SHARED, "blimp_filtered"))
    pairs = [p for name in sorted(tasks) for p in tasks[name][: 2 if rehearse else per_paradigm]]
    sentences = [s for p in pairs for s in (p["good"], p["bad"])]
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=info["vocab_size"], max_seq_len=2 * SEQ_LEN, **SIZES["tiny" if rehearse else "345m"][0]))
    model = model.to(rt.device).eval()
    score_sentences(model, enc, info, sentences[:64], "2024", rt.device, progress=False)  # warm up (cuBLAS, allocator)
    out = {"pairs": len(pairs), "unique_sentences": len(set(sentences))}
    for batch_tokens in (2048, 16384):
        sync(rt.device)
        t0 = time.perf_counter()
        score_sentences(model, enc, info, sentences, "2024", rt.device, batch_tokens, progress=False)
        sync(rt.device)
        out[f"pairs_per_s_{batch_tokens}"] = len(pairs) / (time.perf_counter() - t0)
    out["peak_memory_gb"] = peak_memory_gb(rt.device)
    return out


# -----------------------------------------------------------------------------------------------
# The parent: each part in a child process with a time limit; a failure is a row, and the run goes on


def child(cmd, timeout, env=None):
    """stdout of a command run from the repository root; an exit status or a timeout raises with the last lines.
    The child gets its own process group, so a timeout also ends what it started (torchrun's workers)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise RuntimeError(f"timed out after {timeout} s; last output: {tail(out)}") from None
    except BaseException:  # Ctrl-C or SIGTERM of the check: its part ends with it (its own session would outlive it)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}: {tail(out)}")
    return out


def tail(text, n=12):
    return " / ".join(line.strip() for line in (text or "").strip().splitlines()[-n:] if line.strip())[-1500:]


def json_part(args, part, *extra, timeout):
    out = child([sys.executable, __file__, f"--_part={part}", *extra, *(["--rehearse"] if args.rehearse else [])], timeout)  # CHILD_KEYS
    return json.loads(out.strip().splitlines()[-1])


def find_data(args, out_dir, timeout):
    """A prepared data folder with a tokenizer: --data_dir, reproduce_gpu.py's, data/mini, or prepared now."""
    for path in ([args.data_dir] if args.data_dir else [os.path.join(ROOT, "experiments", "work_gpu", "data"), os.path.join(ROOT, "data", "mini"),
                                                        os.path.join(out_dir, "data")]):
        if os.path.isfile(os.path.join(path, "meta.json")):
            return {"data_dir": path, "note": "found"}
    if args.data_dir:
        raise RuntimeError(f"--data_dir={args.data_dir}: no meta.json there (prepare_data.py --out writes one)")
    path = os.path.join(out_dir, "data")
    child([sys.executable, "prepare_data.py", "--src", os.path.join(SHARED, "babylm_2024_mini"), "--out", path], timeout)
    return {"data_dir": path, "note": "prepared now"}


def run_tests(args, timeout):
    marks = "not slow" if args.rehearse else "slow or not slow"  # a CPU compiles for minutes: the rehearsal skips that test
    out = child([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_bf16.py", "-m", marks], timeout,
                env={"BABYDISTILL_TEST_DEVICE": "cpu" if args.rehearse else "cuda", "OMP_NUM_THREADS": "1"})
    return {"note": out.strip().splitlines()[-1]}


def run_ddp(args, data_dir, out_dir, timeout):
    """train_teacher.py under torchrun with one process: the header must name the backend runtime() chose."""
    backend = "gloo" if args.rehearse else "nccl"
    run_out = os.path.join(out_dir, "ddp_run")
    settings = dict(data_dir=data_dir, out_dir=run_out, overwrite=True, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=192,
                    batch_size=16, micro_batch_size=16, max_iters=10, warmup_iters=2, eval_interval=5, eval_windows=16, log_interval=5,
                    **({"device": "cpu"} if args.rehearse else {}))
    out = child([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_teacher.py",
                 *[f"--{k}={v}" for k, v in settings.items()]], timeout, env={"OMP_NUM_THREADS": "1"})
    if f"world 1 (DDP, {backend})" not in out:
        raise RuntimeError(f"the header does not say 'world 1 (DDP, {backend})': {tail(out)}")
    from checkpoint import read_log
    steps = [e for e in read_log(os.path.join(run_out, "log.jsonl")) if "loss" in e]
    if [e["step"] for e in steps] != [5, 10] or not all(e["loss"] == e["loss"] for e in steps):
        raise RuntimeError(f"expected finite losses at steps 5 and 10, the log has {steps}")
    header = next(line for line in out.splitlines() if "world 1" in line)
    return {"note": f"backend {backend}, 10 steps, loss {steps[-1]['loss']:.3f}; " + header.split("| ")[-1].strip()}


def environment(args):
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rehearsal": args.rehearse}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = "not installed (pip install transformers): the papers' step is skipped"
    if torch.cuda.is_available() and not args.rehearse:
        name = torch.cuda.get_device_name(0)
        env.update(device=name, peak=next((f"{k}: {v / 1e12:.0f} TFLOP/s (data sheet, dense bf16)" for k, v in GPU_PEAK_FLOPS.items() if k in name),
                                          "not in config.GPU_PEAK_FLOPS: MFU against a measured fp32 matmul"),
                   memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1), bf16=torch.cuda.is_bf16_supported(),
                   gpus=torch.cuda.device_count())
    else:
        env.update(device=f"CPU, {os.cpu_count()} cores (rehearsal)")
    return env


def cell(row, key, fmt):
    return format(row[key], fmt) if key in row else ""


def write_results(out_dir, env, rows):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"environment": env, "parts": rows}, f, indent=1)
    lines = ["# GPU check" + (" (rehearsal on a CPU: not GPU numbers)" if env["rehearsal"] else ""), "",
             "Written by `python bench/gpu_check.py`. " + ", ".join(f"{k}: {v}" for k, v in env.items()), "",
             "| part | status | s | tokens/s | MFU | peak memory GB | warm-up s | ms/step | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else ""
        note = r.get("error") or r.get("note", "")
        if "pairs_per_s_2048" in r:
            note = (f"{r['pairs_per_s_2048']:,.0f} pairs/s at batch_tokens 2048, {r['pairs_per_s_16384']:,.0f} at 16384 "
                    f"({r['pairs']:,} pairs, {r['unique_sentences']:,} unique sentences)")
        elif "batch" in r:
            note = (f"batch {r['batch']}, {r['dtype']}, compile {r['compile']}" + (f", {r['attention']} attention" if "attention" in r else "")
                    + f", loss {r['loss']:.3f}" + (f"; {r['vs']}" if "vs" in r else ""))
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']:.0f} | {cell(r, 'tokens_per_s', ',.0f')} | {mfu} | "
                     f"{cell(r, 'peak_memory_gb', '.1f')} | {cell(r, 'warmup_s', '.1f')} | {cell(r, 'ms_per_step', '.1f')} | {note.replace('|', '/')} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    child_part = any(a.startswith("--_part") for a in argv)
    args = load_config(CHILD_KEYS if child_part else KEYS, argv, __doc__)
    if child_part:  # a child: one part, its result as the last line
        print(json.dumps(part_step(args._size, args._variant, args.rehearse) if args._part == "step" else part_blimp(args.data_dir, args.rehearse)))
        return 0
    parts = args.parts
    if not parts or set(parts) - set(PARTS):
        raise InputError(f"--parts={','.join(map(str, parts))}: expected some of {', '.join(PARTS)}")
    # Paths are relative to the working folder, as in every other script; absolute from here on, because the parts
    # run as children in the repository root.
    args.out = os.path.abspath(args.out)
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else args.data_dir
    check_writable_dir(args.out, "--out")
    if not args.rehearse and not torch.cuda.is_available():
        print("no CUDA device is visible: nothing to check on this machine (bench/gpu_check.py checks the GPU path; "
              "run it on a GPU machine, or --rehearse to try the script on this CPU)")
        return 0

    out_dir = os.path.abspath(args.out)
    env, rows = environment(args), []
    print(f"GPU check: {env['device']}, torch {env['torch']} (CUDA {env['cuda']}); results in {out_dir}", flush=True)

    def try_part(name, fn):
        """fn(timeout)'s result as a row of the table, or its failure; either way the next part runs."""
        t0 = time.perf_counter()
        try:
            row = {"part": name, "status": "ok", **fn(TIMEOUT_S.get(name.rsplit(" ", 1)[0] if name.startswith("step") else name, 300))}
        except Exception as e:  # anything: recorded, and the next part runs
            row = {"part": name, "status": "failed", "error": f"{type(e).__name__}: {e}"[-1500:]}
        row["seconds"] = time.perf_counter() - t0
        print(f"  {name}: {row['status']} in {row['seconds']:.0f} s" + (f": {row['error']}" if "error" in row else ""), flush=True)
        return row

    def record(row):
        rows.append(row)
        write_results(out_dir, env, rows)  # after every part: a crash of this script keeps what ran
        return row

    attempt = lambda name, fn: record(try_part(name, fn))

    data_dir = ""
    if {"data", "ddp", "blimp"} & set(parts):  # the parts that need data or a tokenizer: find them first
        data_dir = attempt("data", lambda timeout: find_data(args, out_dir, timeout)).get("data_dir", "")
    # the two checks at once (nothing in them is timed; their compiles overlap), then the measurements one by one
    checks = {"tests": lambda timeout: run_tests(args, timeout), "ddp": lambda timeout: run_ddp(args, data_dir, out_dir, timeout)}
    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(try_part, name, fn) for name, fn in checks.items() if name in parts]
    for future in running:
        record(future.result())
    for size in (["tiny"] if args.rehearse else ["58m", "345m"]) if "step" in parts else []:
        mine = attempt(f"step {size} ours", lambda timeout: json_part(args, "step", f"--_size={size}", "--_variant=ours", timeout=timeout))
        theirs = attempt(f"step {size} papers", lambda timeout: json_part(args, "step", f"--_size={size}", "--_variant=papers", timeout=timeout))
        if "tokens_per_s" in mine and "tokens_per_s" in theirs:
            mine["vs"] = f"{mine['tokens_per_s'] / theirs['tokens_per_s']:.2f}x the papers' tokens/s, {mine['peak_memory_gb'] / theirs['peak_memory_gb']:.2f}x their memory"
    if "blimp" in parts:
        attempt("blimp", lambda timeout: json_part(args, "blimp", f"--data_dir={data_dir}", timeout=timeout))
    print(write_results(out_dir, env, rows))
    failed = [r["part"] for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(failed)} of {len(rows)} parts ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise InputError(f"{len(failed)} of {len(rows)} parts failed ({', '.join(failed)}): their rows in {os.path.join(out_dir, 'results.md')} say why")
    return 0


if __name__ == "__main__":
    run_main(main)
