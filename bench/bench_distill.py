"""Benchmark of one distillation step (student forward + backward + AdamW, two teachers' forwards) on this machine:
the papers' way of computing it against this project's, eager and compiled.

    python bench/bench_distill.py                                   # 58M student, two 58M teachers, batch 8 x 128, CPU
    python bench/bench_distill.py --size=tiny --batch=32 --steps=5  # the walk-through's tiny configs
    python bench/bench_distill.py --variants=plain,chunked --steps=10     # eager only (no compile wait)
    python bench/bench_distill.py --size=345m --batch=4 --variants=plain,chunked --steps=2   # BabyLlama-2's 345M (minutes a step)

Variants at the same sizes, each in its own process (so peak memory is its own):
    hf         the papers' code path: transformers' LlamaForCausalLM (eager, its default attention), full fp32
               (B, T, V) logits for every teacher, kl_div(log_softmax(s/T), softmax(mean teacher logits/T),
               reduction="batchmean"); skipped when transformers is not installed
    reference  the same loss on this project's Llama
    plain      loss_impl="plain": distill.Distillation.loss, distill_loss on the whole micro-batch's logits, eager
    chunked    loss_impl="chunked" (the default): the same distill_loss loss_chunk positions at a time, autograd per
               chunk (chunked_loss.py), eager
    plain-compiled, chunked-compiled   the same under torch.compile (as distill.py runs on a GPU by default)
FLOPs per token = 6 N (student) + 2 N per teacher, N = matmul parameters (output head included, embedding lookup
excluded); MFU is against the fp32 2048 x 2048 matmul rate measured in the same run (the better of two readings).
"""

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from config import InputError, keep_freed_memory, load_config, measure_matmul_flops, peak_rss_mb, run_main  # noqa: E402
from distill import Distillation  # noqa: E402
from model import Llama, ModelConfig  # noqa: E402

SIZES = {
    "58m": dict(vocab_size=16000, dim=512, n_layers=16, n_heads=8, hidden_dim=1024),  # configs/babyllama_58m.py
    "tiny": dict(vocab_size=16000, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384),  # configs/tiny_teacher1.py
    "345m": dict(vocab_size=16000, dim=960, n_layers=32, n_heads=15, n_kv_heads=5, hidden_dim=2560),  # configs/student.py
}
VARIANTS = ("hf", "reference", "plain", "chunked", "plain-compiled", "chunked-compiled")

KEYS = {"benchmark": {
    "size": ("58m", "model size: 58m (configs/babyllama_58m.py), tiny (configs/tiny_teacher1.py) or 345m (configs/student.py)", tuple(SIZES)),
    "batch": (8, "sequences per step (one micro-batch)", "1..4096"),
    "seq_len": (128, "tokens per sequence", "1..4096"),
    "steps": (5, "timed steps (their median counts)", "1..1000"),
    "warmup": (2, "untimed first steps (compilation happens here)", "1..100"),
    "variants": (list(VARIANTS), "variants to time: " + ", ".join(VARIANTS)),
    "loss_chunk": (256, "positions per chunk of the chunked loss (train.py's loss_chunk)", "1..65536"),
    "default_malloc": (False, "skip config.keep_freed_memory (what training does on a CPU), to see its effect"),
    "variant": ("", "internal: run one variant in this process"),
}}


def reference_loss(student_logits, teacher_logits, y, alpha, T):
    """The papers' code: the mean of the teachers' logits, kl_div with reduction="batchmean" on (B, T, V) tensors."""
    teacher_logits = torch.stack(teacher_logits).mean(0)  # (B, T, V)
    ce = F.cross_entropy(student_logits.flatten(0, 1), y.flatten())
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.softmax(teacher_logits / T, dim=-1), reduction="batchmean")
    return alpha * ce + (1 - alpha) * T**2 * kl


def hf_models(size, seq_len):
    """transformers' LlamaForCausalLM at the same shape, student and two teachers (None: transformers is missing)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    s = SIZES[size]
    hcfg = LlamaConfig(vocab_size=s["vocab_size"], hidden_size=s["dim"], intermediate_size=s["hidden_dim"], num_hidden_layers=s["n_layers"],
                       num_attention_heads=s["n_heads"], num_key_value_heads=s.get("n_kv_heads") or s["n_heads"], max_position_embeddings=max(256, seq_len),
                       rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(hcfg), [LlamaForCausalLM(hcfg).eval().requires_grad_(False) for _ in range(2)]


def run_variant(cfg):
    """The timed steps of cfg.variant in this process: ms per step (median), tokens/s, FLOPs per token, peak RSS."""
    torch.manual_seed(0)
    if cfg.variant == "hf":
        student, teachers = hf_models(cfg.size, cfg.seq_len)
        logits = lambda m, x: m(x).logits
        n_params = lambda m: sum(p.numel() for n, p in m.named_parameters() if "norm" not in n and "embed_tokens" not in n)
    else:
        mcfg = ModelConfig(**SIZES[cfg.size], max_seq_len=max(256, cfg.seq_len))
        student = Llama(mcfg)
        teachers = [Llama(mcfg).eval().requires_grad_(False) for _ in range(2)]
        logits = lambda m, x: m(x)
        n_params = lambda m: m.num_params(matmul_only=True)
    opt = torch.optim.AdamW(student.parameters(), lr=2.5e-4, weight_decay=0.1, fused=True)
    if cfg.variant in ("hf", "reference"):
        def fn(s, x, y):
            with torch.no_grad():
                teacher_logits = [logits(t, x) for t in teachers]
            return reference_loss(logits(s, x), teacher_logits, y, 0.5, 2.0)
    else:
        dcfg = SimpleNamespace(alpha=0.5, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_chunk=cfg.loss_chunk,
                               loss_impl=cfg.variant.split("-")[0], seq_len=cfg.seq_len)
        ours = Distillation(student, teachers, [0.5, 0.5], dcfg).loss
        if cfg.variant.endswith("compiled"):
            ours = torch.compile(ours)
        fn = lambda s, x, y: ours(s, x, y)[0]
    x, y = torch.randint(0, SIZES[cfg.size]["vocab_size"], (2, cfg.batch, cfg.seq_len))
    times = []
    t_first = time.perf_counter()
    for i in range(cfg.warmup + cfg.steps):
        t0 = time.perf_counter()
        loss = fn(student, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if i == cfg.warmup - 1:
            t_warm = time.perf_counter() - t_first
    dt = sorted(times[cfg.warmup:])[len(times[cfg.warmup:]) // 2]  # median step
    flops = 6 * n_params(student) + 2 * sum(n_params(t) for t in teachers)
    return {"variant": cfg.variant, "ms_per_step": 1000 * dt, "tok_per_s": cfg.batch * cfg.seq_len / dt, "flops_per_token": flops,
            "warmup_s": t_warm, "peak_rss_mb": peak_rss_mb(), "loss": loss.item()}


def main(argv=None):
    cfg = load_config(KEYS, sys.argv[1:] if argv is None else argv, __doc__)
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"--variants: unknown variant {unknown[0]!r}; expected some of {', '.join(VARIANTS)}")
    if cfg.variant and cfg.variant not in VARIANTS:
        raise InputError(f"--variant: unknown variant {cfg.variant!r}; expected one of {', '.join(VARIANTS)}")
    if cfg.variant:  # a child: one variant, its numbers as JSON on the last line
        if not cfg.default_malloc:
            keep_freed_memory()  # as config.runtime() does on a CPU
        print(json.dumps(run_variant(cfg)))
        return
    variants = [v for v in cfg.variants if v != "hf" or hf_models(cfg.size, cfg.seq_len) is not None]
    if len(variants) < len(cfg.variants):
        print("transformers is not installed: the hf variant is skipped")
    peak = measure_matmul_flops()
    print(f"fp32 2048x2048 matmul: {peak / 1e9:.1f} GFLOP/s | torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"size {cfg.size}, batch {cfg.batch} x {cfg.seq_len}, two teachers of the student's size, {cfg.steps} timed steps (median)")
    rows = []
    for variant in variants:
        args = [f"--variant={variant}", f"--size={cfg.size}", f"--batch={cfg.batch}", f"--seq_len={cfg.seq_len}", f"--steps={cfg.steps}",
                f"--warmup={cfg.warmup}", f"--loss_chunk={cfg.loss_chunk}", f"--default_malloc={cfg.default_malloc}"]
        out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
        if out.returncode:
            raise InputError(f"variant {variant} failed: {(out.stderr or out.stdout).strip().splitlines()[-1]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    peak = max(peak, measure_matmul_flops())  # the machine's rate drifts; take the better of two readings
    base = next((r for r in rows if r["variant"] == "hf"), rows[0])
    print(f"{'variant':<18}{'ms/step':>10}{'tok/s':>9}{'vs ' + base['variant']:>14}{'MFU':>7}{'peak RSS MB':>13}{'warmup s':>10}")
    for r in rows:
        mfu = r["flops_per_token"] * r["tok_per_s"] / peak
        print(f"{r['variant']:<18}{r['ms_per_step']:>10.0f}{r['tok_per_s']:>9.1f}{r['tok_per_s'] / base['tok_per_s']:>13.2f}x{100 * mfu:>6.1f}%"
              f"{r['peak_rss_mb']:>13.0f}{r['warmup_s']:>10.1f}")
    print(f"(MFU against the better of two fp32 matmul readings, {peak / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    run_main(main)
