"""Benchmark of eval_superglue.py fine-tuning: training examples/s on RTE, length-bucketed batches vs
batches in file order, for a tiny model and the 58M model (random weights: speed does not depend on them).

    python bench/bench_superglue.py --data_dir data/mini
    python bench/bench_superglue.py --data_dir data/mini --sizes tiny --batches 0     # one full epoch

--batches N times the first N batches of an epoch (0 = the whole epoch).
"""

import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from eval_superglue import Classifier, batch_logits, encode_examples, length_batches, load_task  # noqa: E402
from model import Llama, ModelConfig  # noqa: E402
from config import InputError, load_config, run_main  # noqa: E402
from data import load_tokenizer  # noqa: E402

SIZES = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384),
    "58m": dict(dim=512, n_layers=16, n_heads=8, hidden_dim=1024),
}
KEYS = {"benchmark": {
    "data_dir": ("data/mini", "prepared data folder (its tokenizer)"),
    "glue": ("", "the (Super)GLUE data folder with rte; empty = ../shared/data/glue_filtered beside the repository"),
    "sizes": (list(SIZES), "model sizes to time: " + ", ".join(SIZES)),
    "batches": (8, "batches of the epoch to time; 0 = the whole epoch", ">=0"),
    "batch_size": (64, "examples per batch", "1..4096"),
}}


def time_epoch(model, examples, batches, pad_id):
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    n, t0 = 0, time.perf_counter()
    for idx in batches:
        batch = [examples[j] for j in idx]
        loss = F.cross_entropy(batch_logits(model, batch, pad_id, "cpu"), torch.tensor([y for _, y in batch]))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += len(batch)
    return n, time.perf_counter() - t0


def main(argv=None):
    args = load_config(KEYS, sys.argv[1:] if argv is None else argv, __doc__)
    unknown = [s for s in args.sizes if s not in SIZES]
    if not args.sizes or unknown:
        raise InputError(f"--sizes={','.join(map(str, args.sizes))}: expected some of {', '.join(SIZES)}")
    enc, info = load_tokenizer(args.data_dir)
    glue = args.glue or os.path.join(os.path.dirname(ROOT), "shared", "data", "glue_filtered")
    data, why = load_task(glue, "rte")
    if data is None:
        raise InputError(f"--glue={glue}: {why}")
    train = encode_examples(enc, info, data["train"], False, 128)
    print(f"RTE: {len(train)} training examples, batch {args.batch_size}, max 128 tokens")
    print(f"{'size':<6}{'batching':<16}{'examples':>9}{'seconds':>9}{'examples/s':>12}{'epoch (est.)':>14}")
    for size in args.sizes:
        torch.manual_seed(0)
        model = Classifier(Llama(ModelConfig(vocab_size=info["vocab_size"], **SIZES[size])), 2)
        bucketed = length_batches(train, args.batch_size, random.Random(0))
        in_order = [list(range(i, min(i + args.batch_size, len(train)))) for i in range(0, len(train), args.batch_size)]
        for name, batches in (("length buckets", bucketed), ("file order", in_order)):
            batches = batches[: args.batches] if args.batches else batches
            n, dt = time_epoch(model, train, batches, info["pad_id"])
            print(f"{size:<6}{name:<16}{n:>9}{dt:>9.1f}{n / dt:>12.1f}{len(train) / (n / dt):>13.0f}s")


if __name__ == "__main__":
    run_main(main)
