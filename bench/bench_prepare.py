"""Benchmark of prepare_data.py: BPE training plus encoding of a BabyLM folder, timed per phase.

    python bench/bench_prepare.py                                   # ../shared/data/babylm_2024_mini
    python bench/bench_prepare.py --src DIR --hf                    # also Hugging Face `tokenizers`, if installed

Target: at most 60 s for babylm_2024_mini (3.15M words) on a 2-core CPU. `--hf` trains a 16k byte-level
BPE with the `tokenizers` library on the same cleaned training documents, for calibration only.
"""

import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from config import load_config, run_main  # noqa: E402
from prepare_data import PREPARE_KEYS, clean_lines, prepare, read_corpus, split_train_val  # noqa: E402

KEYS = {"benchmark": {
    "src": ("", "a BabyLM folder or zip; empty = ../shared/data/babylm_2024_mini beside the repository"),
    "vocab_size": (16000, "BPE vocabulary (prepare_data.py's key)", PREPARE_KEYS["tokenizer"]["vocab_size"][2]),
    "hf": (False, "also train Hugging Face `tokenizers`' BPE on the same documents (if installed), for calibration"),
}}


def bench_hf(src, vocab_size):
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        print("hf: `tokenizers` is not installed (pip install tokenizers), skipped")
        return
    corpus = read_corpus(src)
    docs = [" " + d for name, text in corpus["train"].items() for d in split_train_val(clean_lines(name, text))[0]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.perf_counter()
    tok.train_from_iterator(docs, trainer)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(len(e.ids) for e in tok.encode_batch(docs))
    t_enc = time.perf_counter() - t0
    print(f"hf tokenizers: train {t_train:.1f}s, encode train split {t_enc:.1f}s ({n:,} tokens)")


def main(argv=None):
    args = load_config(KEYS, sys.argv[1:] if argv is None else argv, __doc__)
    src = args.src or os.path.join(os.path.dirname(ROOT), "shared", "data", "babylm_2024_mini")
    with tempfile.TemporaryDirectory() as out:
        meta, timing = prepare(src, out, vocab_size=args.vocab_size, progress=False)
    words = sum(s["words"] for k, s in meta["sources"].items() if k.startswith("train/"))
    print(f"this project: tokenizer training {timing['tokenizer_train_s']:.1f}s, encoding all splits {timing['encode_s']:.1f}s, "
          f"total with reading and cleaning {timing['total_s']:.1f}s (target <= 60 s) | train {words:,} words -> "
          f"{meta['tokens']['train']:,} tokens, {meta['tokens']['train'] / words:.3f} tokens/word")
    if args.hf:
        bench_hf(src, args.vocab_size)


if __name__ == "__main__":
    run_main(main)
