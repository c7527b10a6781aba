"""Benchmark of the output head and the distillation loss alone, forward and backward, two teachers: the formula on
full logits (loss_impl="plain"), the same formula chunk by chunk (loss_impl="chunked", chunked_loss.py), eager and
compiled, and, when it is installed, Liger-Kernel's chunked loss (its LigerFusedLinearJSDLoss with beta=0: the
forward KL(teacher || student) with a CE term; the two teachers' mean of logits as one head over their
concatenated hidden states with half weights), eager and compiled.

    python bench/bench_loss.py                      # both shapes below, every variant, the papers' loss (alpha 0.5, T 1)
    python bench/bench_loss.py --shapes=tiny --reps=10 --rounds=3
    pip install liger-kernel --no-deps              # optional, for the comparison (its chunked losses need no triton on a CPU)

Shapes (positions = batch x 128):
    58m    1,024 positions, dim 512, vocabulary 16,000 (configs/babyllama_58m.py, micro-batch 8)
    tiny   4,096 positions, dim 128, vocabulary 16,000 (the walk-through's configs, micro-batch 32)
Before timing, every variant's loss and gradients (of the student's hidden states and head) are compared with the
plain formula's, in float64 on the same inputs: they must agree to 1e-9 (Liger: 1e-6, as it computes its CE in
float32 whatever its input); a variant that computed something else would not be worth timing. Each variant then runs in its own process (its own peak memory, its own compile),
`rounds` times in turn with the others (a busy machine slows them alike), and its best median of `reps` timed
forward + backward passes is reported, with its compile (or first-call) time. The fp32 matmul rate is measured in
the same run.
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from chunked_loss import chunked_loss  # noqa: E402
from config import InputError, keep_freed_memory, load_config, measure_matmul_flops, peak_rss_mb, run_main  # noqa: E402
from distill import distill_loss  # noqa: E402

SHAPES = {"58m": dict(positions=1024, dim=512, vocab=16000), "tiny": dict(positions=4096, dim=128, vocab=16000)}
VARIANTS = ("plain", "chunked", "chunked-compiled", "liger", "liger-compiled")
SEQ_LEN, ALPHA, T = 128, 0.5, 1.0

KEYS = {"benchmark": {
    "shapes": (["58m", "tiny"], "shapes to time: 58m, tiny (see the docstring)"),
    "variants": (list(VARIANTS), "variants to time: " + ", ".join(VARIANTS) + " (liger*: skipped when liger_kernel is not installed)"),
    "loss_chunk": (256, "positions per chunk of the chunked loss (train.py's loss_chunk; whole sequences of 128)", "128..65536"),
    "liger_chunk": (1024, "positions per chunk of Liger-Kernel's loss (its default)", "1..65536"),
    "reps": (5, "timed forward + backward passes per round (their median counts)", "1..1000"),
    "rounds": (2, "rounds over the variants (the best round counts)", "1..20"),
    "variant": ("", "internal: run one variant in this process (shape:variant)"),
}}


def liger_available():
    try:
        import liger_kernel.chunked_loss  # noqa: F401
        return True
    except ImportError:
        return False


def inputs(shape, dtype=torch.float32):
    """The student's final hidden states and head, two teachers' (of the student's width), labels: fixed by seed."""
    g = torch.Generator().manual_seed(0)
    s = SHAPES[shape]
    B, d, V = s["positions"] // SEQ_LEN, s["dim"], s["vocab"]
    h = torch.randn(B, SEQ_LEN, d, generator=g, dtype=dtype)
    W = torch.randn(V, d, generator=g, dtype=dtype) * 0.1
    t_h = [torch.randn(B, SEQ_LEN, d, generator=g, dtype=dtype) for _ in range(2)]
    t_W = [torch.randn(V, d, generator=g, dtype=dtype) * 0.1 for _ in range(2)]
    y = torch.randint(0, V, (B, SEQ_LEN), generator=g)
    return h, W, t_h, t_W, y


def make(variant, h, W, t_h, t_W, y, cfg):
    """A function of (h, W) returning the loss, for the variant: what training runs, on these inputs."""
    def formula(logits, y, *teacher_h):  # distill.Distillation's, the teachers' heads applied to the chunk
        teacher_logits = [th @ tw.t() for th, tw in zip(teacher_h, t_W)]
        loss, ce, kl_term, kl = distill_loss(logits, teacher_logits, y, [0.5, 0.5], ALPHA, T, "logits", "paper")
        return loss, {"ce": ce}

    if variant == "plain":
        return lambda h, W: formula(h @ W.t(), y, *t_h)[0]
    if variant.startswith("chunked"):
        chunk = max(1, cfg.loss_chunk // SEQ_LEN)
        fn = lambda h, W: chunked_loss(formula, h, W, [y, *t_h], chunk)[0]
        return torch.compile(fn) if variant.endswith("compiled") else fn
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    # beta=0 is KL(teacher || student); Liger averages both terms per token, the papers' KL is summed over the 128
    # positions of a sequence (x SEQ_LEN); the two teachers' mean logits = [h1/2, h2/2] @ [W1, W2]^T.
    loss = LigerFusedLinearJSDLoss(weight_hard_loss=ALPHA, weight_soft_loss=(1 - ALPHA) * T**2 * SEQ_LEN, beta=0.0, temperature=T,
                                   compiled=variant.endswith("compiled"), chunk_size=cfg.liger_chunk)
    teacher_in = torch.cat([0.5 * t for t in t_h], dim=-1).flatten(0, 1)
    teacher_W = torch.cat(t_W, dim=1)
    return lambda h, W: loss(h.flatten(0, 1), W, teacher_in, teacher_W, y.flatten())


def check_equal(shape, cfg, variants):
    """Every variant's loss and gradients against the plain formula's, in float64."""
    h, W, t_h, t_W, y = inputs(shape, torch.float64)
    results = {}
    for variant in variants:
        hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
        loss = make(variant, hh, WW, t_h, t_W, y, cfg)(hh, WW)
        loss.backward()
        results[variant] = (loss.detach(), hh.grad, WW.grad)
    want = results["plain"]
    for variant, got in results.items():
        for name, a, b in zip(("loss", "d loss / d h", "d loss / d W"), got, want):
            err = ((a - b).abs().max() / b.abs().max()).item()
            if not err < (1e-6 if variant.startswith("liger") else 1e-9):
                raise InputError(f"{variant} at {shape}: {name} differs from the plain formula's by {err:.2e} (relative): not the same loss")


def time_variant(shape, variant, cfg):
    """(best median ms over reps, first-call seconds, peak RSS MB) of one variant in this process."""
    keep_freed_memory()  # as config.runtime() does on a CPU
    h, W, t_h, t_W, y = inputs(shape)
    h.requires_grad_(), W.requires_grad_()
    fn = make(variant, h, W, t_h, t_W, y, cfg)
    t0 = time.perf_counter()
    fn(h, W).backward()  # the first call: compiles the compiled variants
    first = time.perf_counter() - t0
    times = []
    for _ in range(cfg.reps):
        h.grad = W.grad = None
        t0 = time.perf_counter()
        fn(h, W).backward()
        times.append(time.perf_counter() - t0)
    return {"ms": 1000 * sorted(times)[len(times) // 2], "first_s": first, "rss_mb": peak_rss_mb()}


def main(argv=None):
    cfg = load_config(KEYS, sys.argv[1:] if argv is None else argv, __doc__)
    bad = [s for s in cfg.shapes if s not in SHAPES] + [v for v in cfg.variants if v not in VARIANTS]
    if bad:
        raise InputError(f"unknown shape or variant {bad[0]!r}: shapes {', '.join(SHAPES)}; variants {', '.join(VARIANTS)}")
    if cfg.variant and (cfg.variant.count(":") != 1 or cfg.variant.split(":")[0] not in SHAPES or cfg.variant.split(":")[1] not in VARIANTS):
        raise InputError(f"--variant: {cfg.variant!r}: expected SHAPE:VARIANT with a shape of {', '.join(SHAPES)} and a variant of {', '.join(VARIANTS)}")
    if cfg.variant:  # a child: one variant, its numbers as JSON on the last line
        shape, variant = cfg.variant.split(":")
        print(json.dumps(time_variant(shape, variant, cfg)))
        return
    variants = [v for v in cfg.variants if liger_available() or not v.startswith("liger")]
    if len(variants) < len(cfg.variants):
        print("liger_kernel is not installed (pip install liger-kernel --no-deps): its variants are skipped")
    peak = measure_matmul_flops()
    print(f"fp32 2048x2048 matmul: {peak / 1e9:.1f} GFLOP/s | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"loss_chunk {cfg.loss_chunk}, Liger chunk_size {cfg.liger_chunk} positions")
    for shape in cfg.shapes:
        check_equal(shape, cfg, ["plain", *[v for v in variants if v != "plain"]])
        best = {}
        for _ in range(cfg.rounds):
            for variant in variants:
                args = [f"--variant={shape}:{variant}", f"--loss_chunk={cfg.loss_chunk}", f"--liger_chunk={cfg.liger_chunk}", f"--reps={cfg.reps}"]
                out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
                if out.returncode:
                    raise InputError(f"{shape}:{variant} failed: {(out.stderr or out.stdout).strip().splitlines()[-1]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                best[variant] = min(best.get(variant, r), r, key=lambda x: x["ms"])
        s = SHAPES[shape]
        flops = 6 * s["positions"] * s["dim"] * s["vocab"] + 2 * 2 * s["positions"] * s["dim"] * s["vocab"]  # student fwd+bwd, teachers fwd
        ref = best.get("liger-compiled") or best[variants[-1]]
        print(f"\n{shape}: {s['positions']:,} positions, dim {s['dim']}, vocabulary {s['vocab']:,} (all checked equal to the plain formula)")
        print(f"{'variant':<18}{'ms':>9}{'vs ' + ('liger-compiled' if 'liger-compiled' in best else variants[-1]):>20}{'GFLOP/s':>9}{'first s':>9}{'peak RSS MB':>13}")
        for variant in variants:
            r = best[variant]
            print(f"{variant:<18}{r['ms']:>9.1f}{ref['ms'] / r['ms']:>19.2f}x{flops / r['ms'] / 1e6:>9.1f}{r['first_s']:>9.1f}{r['rss_mb']:>13.0f}")
    print(f"\n(speed ratios: > 1 is faster than the reference; matmul peak {max(peak, measure_matmul_flops()) / 1e9:.1f} GFLOP/s, the better of two readings)")


if __name__ == "__main__":
    run_main(main)
