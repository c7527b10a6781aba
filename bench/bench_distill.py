"""Benchmark of one distillation step (student forward + backward + AdamW, teachers forward) on this machine:
the plain loss that trains by default against the fused one (loss_impl="fused").

    python bench/bench_distill.py                       # 58M student, two 58M teachers, batch 8 x 128, CPU
    python bench/bench_distill.py --size tiny --steps 5
    python bench/bench_distill.py --variants plain,fused --steps 10      # eager only (no compile wait)

Variants at the same sizes, each in its own process (so peak memory is its own):
    reference  the way the papers' code computes it: an eager model, full fp32 (B, T, V) logits for every
               teacher, kl_div(log_softmax(s/T), softmax(mean teacher logits/T), reduction="batchmean")
    plain      this project's default: distill.Distillation.loss (distill_loss on full logits), eager
    fused      loss_impl="fused": distill.FusedDistillation.loss (chunked head + CE + KL, hand-written gradient), eager
    plain-compiled, fused-compiled   the same under torch.compile (as distill.py runs on CUDA by default)
    fused-compiled-autotune  with mode="max-autotune-no-cudagraphs" (GEMM template search; slow to compile)
FLOPs per token = 6 N (student) + 2 N per teacher, N = matmul parameters (output head included, embedding
lookup excluded); MFU is against the fp32 2048 x 2048 matmul rate measured in the same run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from distill import Distillation, FusedDistillation  # noqa: E402
from model import Llama, ModelConfig  # noqa: E402
from config import keep_freed_memory, measure_matmul_flops  # noqa: E402

SIZES = {
    "58m": dict(vocab_size=16000, dim=512, n_layers=16, n_heads=8, hidden_dim=1024),  # configs/babyllama_58m.py
    "tiny": dict(vocab_size=16000, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384),
}


def reference_loss(student, teachers, x, y, alpha, T):
    with torch.no_grad():
        teacher_logits = torch.stack([t.logits(x) for t in teachers]).mean(0)  # (B, T, V) for each teacher, then mean
    logits = student.logits(x)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    kl = F.kl_div(F.log_softmax(logits / T, dim=-1), F.softmax(teacher_logits / T, dim=-1), reduction="batchmean")
    return alpha * ce + (1 - alpha) * T**2 * kl


def run_variant(variant, size, batch, seq_len, steps, warmup):
    torch.manual_seed(0)
    mcfg = ModelConfig(**SIZES[size], max_seq_len=max(256, seq_len))
    student = Llama(mcfg)
    teachers = [Llama(mcfg).eval().requires_grad_(False) for _ in range(2)]
    opt = student.configure_optimizer(2.5e-4, 0.1, (0.9, 0.999), 1e-8)
    cfg = SimpleNamespace(alpha=0.5, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_chunk=256, teachers=["t1", "t2"])
    if variant == "reference":
        fn = lambda s, x, y: reference_loss(s, teachers, x, y, 0.5, 2.0)
    else:
        ours = (FusedDistillation if variant.startswith("fused") else Distillation)(student, teachers, [0.5, 0.5], cfg).loss
        if "compiled" in variant:
            ours = torch.compile(ours, mode="max-autotune-no-cudagraphs" if variant.endswith("autotune") else None)
        fn = lambda s, x, y: ours(s, x, y)[0]
    x, y = torch.randint(0, mcfg.vocab_size, (2, batch, seq_len))
    times = []
    t_first = time.perf_counter()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = fn(student, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if i == warmup - 1:
            t_warm = time.perf_counter() - t_first
    dt = sorted(times[warmup:])[len(times[warmup:]) // 2]  # median step
    n_s = student.num_params(matmul_only=True)
    flops = 6 * n_s + 2 * sum(t.num_params(matmul_only=True) for t in teachers)
    return {"variant": variant, "ms_per_step": 1000 * dt, "tok_per_s": batch * seq_len / dt, "flops_per_token": flops,
            "warmup_s": t_warm, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "loss": loss.item()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="58m", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", default="reference,plain,fused,plain-compiled,fused-compiled")
    p.add_argument("--default_malloc", action="store_true", help="skip config.keep_freed_memory (what training does on a CPU), to see its effect")
    p.add_argument("--_variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._variant:  # child process: one variant, result as JSON on the last line
        if not args.default_malloc:
            keep_freed_memory()  # as config.runtime() does on a CPU
        print(json.dumps(run_variant(args._variant, args.size, args.batch, args.seq_len, args.steps, args.warmup)))
        return
    peak = measure_matmul_flops()
    print(f"fp32 2048x2048 matmul: {peak / 1e9:.1f} GFLOP/s | torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"size {args.size}, batch {args.batch} x {args.seq_len}, two teachers of the student's size, {args.steps} timed steps (median)")
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, f"--_variant={variant}", f"--size={args.size}", f"--batch={args.batch}",
               f"--seq_len={args.seq_len}", f"--steps={args.steps}", f"--warmup={args.warmup}", *(["--default_malloc"] if args.default_malloc else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    peak = max(peak, measure_matmul_flops())  # the machine's rate drifts; take the better of two readings
    by_name = {r["variant"]: r for r in rows}
    base = by_name.get("fused", rows[0])  # speeds are given relative to the fused loss, the fastest eager one on a CPU
    print(f"{'variant':<16}{'ms/step':>10}{'tok/s':>9}{'vs ' + base['variant']:>10}{'MFU':>7}{'peak RSS MB':>13}{'warmup s':>10}")
    for r in rows:
        mfu = r["flops_per_token"] * r["tok_per_s"] / peak
        vs = f"{r['tok_per_s'] / base['tok_per_s']:.2f}x"
        print(f"{r['variant']:<16}{r['ms_per_step']:>10.0f}{r['tok_per_s']:>9.1f}{vs:>10}{100 * mfu:>6.1f}%{r['peak_rss_mb']:>13.0f}{r['warmup_s']:>10.1f}")
    print(f"(MFU against the better of two fp32 matmul readings, {peak / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
