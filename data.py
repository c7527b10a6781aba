"""
How every later stage reads what prepare_data.py wrote: the tokenizer and the token files.

    from data import load_tokenizer, read_bin
    enc, info = load_tokenizer("data/mini")            # tiktoken.Encoding, meta.json's tokenizer entry
    tokens = read_bin("data/mini/train.bin")           # uint16 token ids, memory-mapped

A prepared data folder holds
    tokenizer.tiktoken             the BPE ranks, one "base64(token) rank" line each (tiktoken's own format)
    meta.json                      the tokenizer's name, vocabulary size, special token ids, pattern and sha256;
                                   the tokens and the words of each split (split_words)
    train.bin, val.bin, test.bin   token ids as raw little-endian uint16
Training, evaluation and sampling need only these readers, so none of them imports the BPE trainer, the
downloader or the corpus cleaners of prepare_data.py.
"""

import base64
import hashlib
import json
import os

import numpy as np
import tiktoken

from config import InputError


def tokenizer_sha256(ranks_path, pat_str, special):
    """The tokenizer's identity: its ranks file, pre-tokenisation pattern and special tokens."""
    h = hashlib.sha256(open(ranks_path, "rb").read())
    h.update(json.dumps([pat_str, special]).encode())
    return h.hexdigest()


def read_ranks(path):
    """{token bytes: rank} from a tokenizer.tiktoken file."""
    ranks = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise InputError(f"{path}:{lineno}: expected 'base64-token rank'") from None
    return ranks


def load_tokenizer(data_dir):
    """(tiktoken.Encoding, info) for a prepared data folder. info = meta.json's 'tokenizer' entry:
    name, vocab_size, sha256 (of the ranks file, the pattern and the specials) and special token ids."""
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(meta_path):
        raise InputError(f"{meta_path}: not found (run prepare_data.py first)")
    try:
        with open(meta_path) as f:
            info = json.load(f)["tokenizer"]
        ranks_path = os.path.join(data_dir, info["file"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise InputError(f"{meta_path}: damaged (not the JSON prepare_data.py writes); run prepare_data.py again") from None
    if not os.path.isfile(ranks_path):
        raise InputError(f"{ranks_path}: not found (run prepare_data.py again)")
    # The hash in meta.json must be the file's: a tokenizer swapped under a model would score garbage silently.
    if tokenizer_sha256(ranks_path, info["pat_str"], info["special_tokens"]) != info["sha256"]:
        raise InputError(f"{ranks_path}: does not match the sha256 recorded in {meta_path} (run prepare_data.py again)")
    ranks = read_ranks(ranks_path)
    enc = tiktoken.Encoding(info["name"], pat_str=info["pat_str"], mergeable_ranks=ranks,
                            special_tokens=info["special_tokens"], explicit_n_vocab=info["vocab_size"])
    return enc, info


def split_words(data_dir, split="train"):
    """(words, tokens) of a split, from meta.json: its whitespace-separated words (how the BabyLM budget counts
    them: a word is what str.split() returns, over the cleaned documents) and the tokens of its .bin file,
    boundary tokens included. Their ratio converts the tokens a run has seen into the words it has seen.
    A folder prepared before per-split words were recorded: the sum over its sources, which is the same count."""
    meta_path = os.path.join(data_dir, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        words = meta.get("words", {}).get(split)
        if words is None:
            words = sum(s["words"] for key, s in meta["sources"].items() if key.startswith(split + "/"))
        tokens = meta["tokens"][split]
    except FileNotFoundError:
        raise InputError(f"{meta_path}: not found (run prepare_data.py first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise InputError(f"{meta_path}: no word and token counts for the {split} split; run prepare_data.py again") from None
    if not words or not tokens:
        raise InputError(f"{meta_path}: the {split} split has {words} words and {tokens} tokens; run prepare_data.py on a corpus with text")
    return int(words), int(tokens)


def read_bin(path):
    """Token ids of a .bin file as a read-only uint16 memmap (validated)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: not found (run prepare_data.py first)")
    size = os.path.getsize(path)
    if size % 2:
        raise InputError(f"{path}: size {size} bytes is not a multiple of 2 (expected uint16 token ids)")
    if size == 0:
        raise InputError(f"{path}: empty token file (run prepare_data.py again)")
    return np.memmap(path, dtype=np.uint16, mode="r")
