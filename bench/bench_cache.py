"""Benchmark of cached distillation (teacher_cache.py) against plain CE training and live distillation.

    OMP_NUM_THREADS=1 python bench/bench_cache.py           # 58M student, two 58M teachers, batch 8 x 128 (~5 min)
    OMP_NUM_THREADS=1 python bench/bench_cache.py --small   # tiny sizes, a quick check (~1 min)
    OMP_NUM_THREADS=1 python bench/bench_cache.py --loss_impl=plain   # the losses on the whole micro-batch's logits
(One thread: on a shared 2-core machine two OpenMP threads stall whenever another process holds a core.)

Variants (same student init, batch and AdamW):
    ce       next-token CE (train.CausalLM)
    live     distill.Distillation: two teacher forwards + distill_loss, eager
    cached   teacher_cache.CachedDistillation: its inputs() read the memory-mapped cache (inside the timed step),
             then sparse_distill_loss
    build    teacher_cache.build_cache with teacher_cache.teacher_block over a few blocks: seconds per window of the one-off pass
Each loss as training computes it with --loss_impl (default chunked: loss_chunk 256 positions at a time, chunked_loss.py;
plain: on the whole micro-batch's logits).
Speeds: the three step variants run interleaved step by step in one process (the machine is shared: load
from other processes then slows all of them alike), medians of the timed steps. Peak RSS: each variant
alone in its own process for two steps (the cached one without any teacher in memory). The 8-epoch projection for a corpus of --corpus_tokens tokens:
    live   = 8 x tokens / live tok/s
    cached = tokens x build s/token + 8 x tokens / cached tok/s
Targets (the issue): cached >= 0.9x CE step speed, end-to-end >= 1.4x faster than live, cached peak RSS
<= 1.1x the CE step's. MFU against the fp32 2048 x 2048 matmul rate measured in the same run.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_distill import SIZES  # noqa: E402
from config import InputError, flat_defaults, load_config, measure_matmul_flops, peak_rss_mb, run_main  # noqa: E402
from distill import Distillation, ensemble_log_probs  # noqa: E402
from model import Llama, ModelConfig  # noqa: E402
from teacher_cache import CACHE_KEYS, CachedDistillation, TeacherCache, build_cache, cache_bytes, teacher_block  # noqa: E402
from train import Batch, CausalLM, Windows  # noqa: E402

CACHE_DEFAULTS = flat_defaults(CACHE_KEYS)

RT = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext(), rank=0, world=1, dtype="float32", master=True, ddp=False)


KEYS = {"benchmark": {
    "small": (False, "the tiny size (--size=tiny): a quick check"),
    "size": ("58m", "model size (bench_distill.py's SIZES)", tuple(SIZES)),
    "batch": (8, "sequences per step (one micro-batch)", "1..4096"),
    "seq_len": (128, "tokens per sequence", "1..4096"),
    "k": (CACHE_DEFAULTS["cache_k"], "cache slots per position", "1..65536"),
    "loss_impl": ("chunked", "distill.py's loss_impl for every variant", ("chunked", "plain")),
    "loss_chunk": (256, "positions per chunk of the chunked loss (train.py's loss_chunk)", "1..65536"),
    "steps": (5, "timed steps (their median counts)", "1..1000"),
    "warmup": (2, "untimed first steps", "1..100"),
    "build_blocks": (3, "blocks of batch windows in the timed build", "1..1000"),
    "corpus_tokens": (13e6, "for the 8-epoch projection (BabyLM 10M words ~ 13M tokens)", ">0"),
    "variant": ("", "internal: run one part in this process"),
    "work": ("", "internal: the child's work folder"),
    "windows": (0, "windows of the synthetic train.bin; 0 = enough for the build's blocks and 4 batches", "0..100000"),
}}


def loss_cfg(args):
    return SimpleNamespace(alpha=0.5, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_chunk=args.loss_chunk, teachers=["t1", "t2"],
                           loss_impl=args.loss_impl, seq_len=args.seq_len, **{**CACHE_DEFAULTS, "cache_k": args.k, "cache_block": args.batch})


def header_of(args, n_windows):
    """A cache header for synthetic data (the real one hashes files: teacher_cache.cache_header)."""
    return {"format": "bench", "teacher_sha256": [], "teacher_weights": [0.5, 0.5], "tokenizer": {}, "train_sha256": "", "train_tokens": 0,
            "seq_len": args.seq_len, "n_windows": n_windows, "temperature": 2.0, "ensemble": "logits", "method": "sampled",
            "k": args.k, "proposal_temperature": 1.0, "seed": 0, "info": {}}


def models(args):
    torch.manual_seed(0)
    mcfg = ModelConfig(**SIZES[args.size], max_seq_len=max(256, args.seq_len))
    return mcfg, Llama(mcfg)


def teachers_of(mcfg):
    return [Llama(mcfg).eval().requires_grad_(False) for _ in range(2)]


def windows_of(args, vocab):
    """Random tokens in a train.bin in the work folder, cut into windows like the trainer does."""
    path = os.path.join(args.work, "train.bin")
    if not os.path.isfile(path):
        rng = np.random.default_rng(0)
        rng.integers(0, vocab, args.windows * args.seq_len + 1, dtype=np.uint16).tofile(path)
    return Windows(path, args.seq_len)


def step_fn(variant, args, student, windows, cfg, teachers=None):
    """One training step (loss, backward, AdamW) of a variant, as a function of the batch's window indices."""
    opt = student.configure_optimizer(2.5e-4, 0.1, (0.9, 0.999), 1e-8)
    if variant == "ce":
        objective = CausalLM(student, cfg)
    elif variant == "live":
        objective = Distillation(student, teachers, [0.5, 0.5], cfg)
    else:
        cache = TeacherCache(os.path.join(args.work, "cache"), expect=header_of(args, windows.n))
        objective = CachedDistillation(student, cache, cfg)
    # as the training loop calls it: the objective's inputs (the cached one reads the cache), then its loss
    loss_of = lambda idx: objective.loss(student, *objective.inputs(Batch(*windows.get(idx, RT.device), idx, 0, 0, 0)))[0]

    def step(idx):
        loss = loss_of(idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def run_variant(args):
    mcfg, student = models(args)
    windows = windows_of(args, mcfg.vocab_size)
    cfg = loss_cfg(args)
    rss = peak_rss_mb
    gen = torch.Generator().manual_seed(0)
    batch = lambda: torch.randperm(windows.n, generator=gen)[: args.batch]
    if args.variant == "build":
        teachers = teachers_of(mcfg)
        stamps = [time.perf_counter()]
        header = header_of(args, windows.n)
        target = lambda z: ensemble_log_probs(z, [0.5, 0.5], cfg.temperature, cfg.ensemble)
        build_cache(lambda lo, hi: teacher_block(teachers, target, windows, lo, hi, header, RT, cfg.loss_chunk), header,
                    os.path.join(args.work, "cache"), RT, cfg.cache_block, on_block=lambda b: stamps.append(time.perf_counter()))
        per_block = sorted(np.diff(stamps)[1:] if len(stamps) > 2 else np.diff(stamps))  # the first block warms up
        return {"s_per_window": per_block[len(per_block) // 2] / args.batch, "peak_rss_mb": rss()}
    if args.variant.startswith("mem-"):  # peak memory of one variant alone: a couple of steps
        variant = args.variant[4:]
        step = step_fn(variant, args, student, windows, cfg, teachers_of(mcfg) if variant == "live" else None)
        for _ in range(2):
            step(batch())
        return {"peak_rss_mb": rss()}
    # speed: the three variants interleaved step by step in one process, so that load from other
    # processes on a shared machine slows all of them alike; each its own student copy and optimizer
    teachers = teachers_of(mcfg)
    steps = {}
    for variant in ("ce", "live", "cached"):
        copy = Llama(mcfg)
        copy.load_state_dict(student.state_dict())
        steps[variant] = step_fn(variant, args, copy, windows, cfg, teachers)
    times = {v: [] for v in steps}
    for i in range(args.warmup + args.steps):
        idx = batch()
        for variant, step in steps.items():
            t0 = time.perf_counter()
            step(idx)
            if i >= args.warmup:
                times[variant].append(time.perf_counter() - t0)
    flops = {"ce": student.flops_per_token(args.seq_len), "cached": student.flops_per_token(args.seq_len),
             "live": student.flops_per_token(args.seq_len) + sum(t.flops_per_token(args.seq_len, backward=False) for t in teachers)}
    out = {}
    for variant, ts in times.items():
        dt = sorted(ts)[len(ts) // 2]
        out[variant] = {"ms_per_step": 1000 * dt, "tok_per_s": args.batch * args.seq_len / dt, "flops_per_token": flops[variant]}
    return out


def main(argv=None):
    args = load_config(KEYS, sys.argv[1:] if argv is None else argv, __doc__)
    parts = ("build", "speed", "mem-ce", "mem-live", "mem-cached")
    if args.variant and args.variant not in parts:
        raise InputError(f"--variant: unknown part {args.variant!r}; expected one of {', '.join(parts)}")
    if args.variant and (not os.path.isdir(args.work) or args.windows < args.batch):
        raise InputError(f"--variant={args.variant}: a part needs --work (an existing folder, the parent makes it) and --windows >= --batch")
    if args.variant:  # a child: one part, its numbers as JSON on the last line
        print(json.dumps(run_variant(args)))
        return
    if args.small:
        args.size = "tiny"
    windows = args.windows or max(args.build_blocks * args.batch, args.batch * 4)
    peak = measure_matmul_flops()
    print(f"fp32 2048x2048 matmul: {peak / 1e9:.1f} GFLOP/s | torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"size {args.size}, batch {args.batch} x {args.seq_len}, two teachers of the student's size, T=2, k={args.k} sampled, loss_impl {args.loss_impl} "
          f"(loss_chunk {args.loss_chunk}), "
          f"{args.steps} timed steps (median)")
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for variant in parts:
            cmd = [sys.executable, __file__, f"--variant={variant}", f"--work={work}", f"--windows={windows}", f"--size={args.size}",
                   f"--batch={args.batch}", f"--seq_len={args.seq_len}", f"--k={args.k}", f"--steps={args.steps}", f"--warmup={args.warmup}", f"--loss_impl={args.loss_impl}", f"--loss_chunk={args.loss_chunk}"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise InputError(f"part {variant} failed: {(out.stderr or out.stdout).strip().splitlines()[-1]}")
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("ce", "live", "cached"):
        rows[name] = {**rows["speed"][name], "peak_rss_mb": rows[f"mem-{name}"]["peak_rss_mb"]}
    peak = max(peak, measure_matmul_flops())  # the machine's rate drifts; take the better of two readings
    ce = rows["ce"]
    print(f"{'variant':<8}{'ms/step':>10}{'tok/s':>9}{'vs CE':>8}{'MFU':>7}{'peak RSS MB':>13}{'vs CE':>8}")
    for name in ("ce", "live", "cached"):
        r = rows[name]
        mfu = r["flops_per_token"] * r["tok_per_s"] / peak
        print(f"{name:<8}{r['ms_per_step']:>10.0f}{r['tok_per_s']:>9.1f}{r['tok_per_s'] / ce['tok_per_s']:>7.2f}x{100 * mfu:>6.1f}%"
              f"{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / ce['peak_rss_mb']:>7.2f}x")
    build_s_tok = rows["build"]["s_per_window"] / args.seq_len
    bytes_tok = cache_bytes(header_of(args, 1)) / args.seq_len
    print(f"cache build: {1000 * rows['build']['s_per_window']:.0f} ms/window ({1 / build_s_tok:,.0f} tok/s, peak RSS {rows['build']['peak_rss_mb']:.0f} MB); "
          f"cache size {bytes_tok:.0f} bytes/token = {bytes_tok:.0f} MB per million tokens at k={args.k}")
    n = args.corpus_tokens
    live_s = 8 * n / rows["live"]["tok_per_s"]
    cached_s = n * build_s_tok + 8 * n / rows["cached"]["tok_per_s"]
    print(f"8 epochs of {n / 1e6:.1f}M tokens: live {live_s / 3600:.1f} h, cached {cached_s / 3600:.1f} h "
          f"(build {n * build_s_tok / 3600:.1f} h + train {(cached_s - n * build_s_tok) / 3600:.1f} h): {live_s / cached_s:.2f}x faster end to end; "
          f"cache {n * bytes_tok / 1e9:.2f} GB")
    print(f"targets: cached step {rows['cached']['tok_per_s'] / ce['tok_per_s']:.2f}x CE (>= 0.9), end to end {live_s / cached_s:.2f}x (>= 1.4), "
          f"cached peak RSS {rows['cached']['peak_rss_mb'] / ce['peak_rss_mb']:.2f}x CE (<= 1.1)")


if __name__ == "__main__":
    run_main(main)
