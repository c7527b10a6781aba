"""Benchmark of eval_blimp.py: batched scoring vs one pair at a time, pairs/s and fraction of fp32 peak.

    python bench/bench_blimp.py --data_dir data/mini                 # tiny and 58M models, CPU
    python bench/bench_blimp.py --data_dir data/mini --sizes 58m --pairs 4000

Random-weight models of the given sizes (speed does not depend on the weights), pairs taken evenly from
all paradigms of ../shared/data/blimp_filtered. FLOPs count only real (unpadded) tokens: 2 N per token for
N matmul parameters, the output head included. The peak is a 2048 x 2048 fp32 matmul, measured in this run.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from eval_blimp import encode_sentence, read_tasks, score_one, score_sentences  # noqa: E402
from model import Llama, ModelConfig  # noqa: E402
from config import InputError, load_config, measure_matmul_flops, run_main  # noqa: E402
from data import load_tokenizer  # noqa: E402

SIZES = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384),
    "58m": dict(dim=512, n_layers=16, n_heads=8, hidden_dim=1024),
}
KEYS = {"benchmark": {
    "data_dir": ("data/mini", "prepared data folder (its tokenizer)"),
    "blimp": ("", "folder of BLiMP .jsonl files; empty = ../shared/data/blimp_filtered beside the repository"),
    "sizes": (list(SIZES), "model sizes to time: " + ", ".join(SIZES)),
    "pairs": (2000, "pairs for the batched run, taken evenly from every paradigm (BLiMP has 59,875)", "1..100000"),
    "single_pairs": (100, "pairs for the one-at-a-time run", "1..10000"),
    "batch_tokens": (2048, "about this many tokens per forward pass (eval_blimp.py's key)", "1..1048576"),
}}


def main(argv=None):
    args = load_config(KEYS, sys.argv[1:] if argv is None else argv, __doc__)
    unknown = [s for s in args.sizes if s not in SIZES]
    if not args.sizes or unknown:
        raise InputError(f"--sizes={','.join(map(str, args.sizes))}: expected some of {', '.join(SIZES)}")
    enc, info = load_tokenizer(args.data_dir)
    tasks = read_tasks(args.blimp or os.path.join(os.path.dirname(ROOT), "shared", "data", "blimp_filtered"))
    per = max(1, args.pairs // len(tasks))
    pairs = [pr for name in sorted(tasks) for pr in tasks[name][:per]]
    peak = measure_matmul_flops()
    print(f"fp32 2048x2048 matmul: {peak / 1e9:.1f} GFLOP/s | {len(pairs)} pairs ({per} per paradigm), vocab {info['vocab_size']}")
    print(f"{'size':<6}{'mode':<16}{'pairs':>7}{'pairs/s':>10}{'speedup':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for size in args.sizes:
        torch.manual_seed(0)
        model = Llama(ModelConfig(vocab_size=info["vocab_size"], **SIZES[size])).eval()
        flops_tok = 2 * model.num_params(matmul_only=True)
        sentences = [s for pr in pairs for s in (pr["good"], pr["bad"])]
        n_tokens = sum(len(encode_sentence(enc, info, s, "2024")[1]) for s in set(sentences))
        t0 = time.perf_counter()
        score_sentences(model, enc, info, sentences, "2024", "cpu", args.batch_tokens, progress=False)
        dt_b = time.perf_counter() - t0
        single = pairs[:: max(1, len(pairs) // args.single_pairs)][: args.single_pairs]
        n_single_tokens = 0
        t0 = time.perf_counter()
        for pr in single:
            for s in (pr["good"], pr["bad"]):
                ctx, ids = encode_sentence(enc, info, s, "2024")
                score_one(model, ctx, ids, "cpu")
                n_single_tokens += len(ids)
        dt_s = time.perf_counter() - t0
        rate_b, rate_s = len(pairs) / dt_b, len(single) / dt_s
        for mode, rate, fl in (("batched", rate_b, flops_tok * n_tokens / dt_b), ("one at a time", rate_s, flops_tok * n_single_tokens / dt_s)):
            speed = f"{rate_b / rate_s:.1f}x" if mode == "batched" else "1.0x"
            n = len(pairs) if mode == "batched" else len(single)
            print(f"{size:<6}{mode:<16}{n:>7}{rate:>10.1f}{speed:>9}{fl / 1e9:>9.1f}{100 * fl / peak:>8.1f}%")
    print(f"(fp32 matmul re-measured at the end: {measure_matmul_flops() / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    run_main(main)
