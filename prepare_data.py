"""
Stage 1 of the pipeline: BabyLM text -> cleaned splits -> a BPE tokenizer trained here -> uint16 token files.

    python prepare_data.py --src ../shared/data/babylm_2024_mini --out data/mini     # a local folder
    python prepare_data.py --src train_10M_and_dev.zip --out data/babylm10m          # or a zip of one
    python prepare_data.py --out data/babylm10m                                      # download (needs internet)
    python prepare_data.py --src ... --out data/mini_gpt2 --tokenizer gpt2 --gpt2_bpe ../shared/data/gpt2_bpe

Input layouts (found anywhere inside --src, so a zip with a top-level folder works too):
    BabyLM 2024: train_10M/*.train, dev/*.dev, [test/*.test]
    BabyLM 2023: babylm_10M/*.train, babylm_dev/*.dev, [babylm_test/*.test]

Output, in --out:
    train.bin, val.bin, test.bin   token ids as raw little-endian uint16 (vocab must be < 65,536)
    tokenizer.tiktoken             the BPE ranks, one "base64(token) rank" line each (tiktoken's own format)
    meta.json                      vocab size, special token ids, pre-tokenisation pattern, source hashes, and
                                   counts: lines, words and tokens per source; tokens and words per split
Words are whitespace-separated (str.split() of each cleaned document), the unit of the BabyLM budget.
Every file is written to a temporary name and renamed when complete; meta.json is written last.
Re-running with the same inputs reproduces the same bytes.

Splits (as BabyLlama-2, arXiv 2409.17312): train = the first 95% of the lines of each cleaned training
file, val = the last 5% (for early stopping), test = the official dev set (the official test set is held
out by the organisers; if a test/ folder is present it is ignored). A file with fewer than 20 lines (the
600k-word one-line samples in ../shared/data/babylm_2024_mini) is cut at the first whitespace after 95%
of its characters instead.

Token stream and the boundary token. Every non-empty line of a source is a document, and each document
is written as   <|endoftext|> + encode(" " + line).   Why:
  - BLiMP (2024 protocol) scores " " + sentence conditioned on a single BOS token. Putting the boundary
    token before every document, followed by a space-prefixed first word, trains exactly the context the
    evaluation conditions on, so P(sentence | <|endoftext|>) is a meaningful sentence probability.
    (BabyLlama never put its <s> into the training stream, so its harness conditioned on an untrained
    embedding: the official BabyLlama repository, github.com/timinar/BabyLlama.)
  - One token serves as BOS and EOS (as GPT-2's <|endoftext|>), so the 2023 protocol (condition on EOS)
    and the 2024 protocol (condition on BOS) see the same, trained, context.
  - Newlines between documents are dropped: the boundary token carries that information.
The tokenizer has three special tokens after the BPE ranks: <|endoftext|> (boundary/BOS/EOS), <|pad|>
(padding, never trained on) and <|mask|> (the masked-LM objective of AntLM).
"""

import base64
import hashlib
import heapq
import io
import json
import math
import os
import re
import shutil
import sys
import time
import urllib.request
import zipfile
from collections import Counter, defaultdict

import numpy as np
import regex
import tiktoken
import tiktoken.load
from tqdm import tqdm

from checkpoint import atomic_write, check_writable_dir, hold_lock
from config import InputError, load_config, run_main
from data import tokenizer_sha256

# The official BabyLM 2024 text release (strict-small train_10M plus dev) lives in OSF project ad7qg
# (https://osf.io/ad7qg/). This URL asks OSF for a zip of the project's storage; the layout finder
# below looks for train_10M/ and dev/ in it (nested zips included). Pass --src to use a local copy.
DOWNLOAD_URL = "https://files.osf.io/v1/resources/ad7qg/providers/osfstorage/?zip="

# GPT-2's pre-tokenisation regex (as tiktoken's r50k/gpt2 encodings): contractions, letter runs, digit runs,
# punctuation runs, each optionally preceded by one space. Used both to train the BPE and to encode with it.
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|mask|>"]
LAYOUTS = {  # split -> (folder names, 2024 first then 2023; file suffix)
    "train": (("train_10M", "babylm_10M"), ".train"),
    "dev": (("dev", "babylm_dev"), ".dev"),
}

# -----------------------------------------------------------------------------------------------
# Reading the corpus from a folder or a zip


def read_corpus(src):
    """{"train": {source: text}, "dev": {source: text}} from a folder or a zip in a BabyLM layout."""
    if not os.path.exists(src):
        raise InputError(f"{src}: corpus not found (expected a folder or .zip with train_10M/ and dev/)")
    files = _list_zip(src) if zipfile.is_zipfile(src) else _list_folder(src)
    corpus = {}
    for split, (dirnames, suffix) in LAYOUTS.items():
        found = {}
        for path, read in files:
            parts = path.replace("\\", "/").split("/")
            if len(parts) >= 2 and parts[-2] in dirnames and parts[-1].endswith(suffix):
                name = parts[-1][: -len(suffix)]
                if name in found:
                    raise InputError(f"{src}: two {suffix} files for source {name!r} ({path})")
                found[name] = (path, read)
        if not found:
            raise InputError(f"{src}: no {'/'.join(dirnames)}/*{suffix} files found (expected the BabyLM 2024 or 2023 layout)")
        corpus[split] = {}
        for name in sorted(found):
            path, read = found[name]
            try:
                text = read().decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}: not valid UTF-8 (byte {e.start})") from None
            corpus[split][name] = text
        if not any(t.strip() for t in corpus[split].values()):
            raise InputError(f"{src}: the {split} files are all empty")
    return corpus


def _list_folder(root):
    out = []
    for dirpath, _, filenames in os.walk(root):
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            out.append((p, lambda p=p: open(p, "rb").read()))
    return out


def _list_zip(path, data=None):
    """Members of a zip, descending one level into zips inside it (OSF serves folders of zips)."""
    z = zipfile.ZipFile(io.BytesIO(data) if data is not None else path)
    out = []
    for info in z.infolist():
        if info.is_dir():
            continue
        member = f"{path}:{info.filename}"
        if info.filename.endswith(".zip") and data is None:
            out.extend(_list_zip(member, z.read(info)))
        else:
            out.append((member, lambda z=z, n=info.filename: z.read(n)))
    return out


def download(dest):
    """Fetch the official release into dest (a zip), or fail in one line that names --src."""
    try:
        with urllib.request.urlopen(DOWNLOAD_URL, timeout=30) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
                def copy(f):
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
                atomic_write(dest, copy)
    except OSError as e:
        raise InputError(f"could not download {DOWNLOAD_URL} ({e}); pass --src with a local BabyLM folder or zip") from None


# -----------------------------------------------------------------------------------------------
# Cleaning, per source (after mrclean.py of the official BabyLlama repository, github.com/timinar/BabyLlama, restated)
#
# All sources: strip each line, drop empty lines (every remaining line is one document).
# Deviation from mrclean, on purpose: mrclean deletes blank-line separators without leaving whitespace,
# which glues paragraphs ("...para.= Next =..."); we keep lines apart instead.


def _spacing(line):
    """bnc_spoken, childes, aochildes, cbt: collapse runs of spaces/tabs/NBSP, no space before . , ; ! ?"""
    line = re.sub(r"[ \t\u00a0]+", " ", line)
    return re.sub(r" ([.,;!?])", r"\1", line)


def _cbt(line):
    """Children's Book Test is tokenised ("didn 't"): also join contractions back."""
    return re.sub(r" n't\b", "n't", re.sub(r"(\w) '(s|re|ve|ll|d|m|t)\b", r"\1'\2", _spacing(line)))


def _wiki(line):
    """(simple) Wikipedia: unwrap headings '= = = Title = = =' to 'Title' (also inside long lines)."""
    return re.sub(r"(?:= )+([^=]+?)(?: =)+(?= |$)", r"\1", line)


def _subtitles(line):
    """OpenSubtitles: drop credit lines, which mention 'subtitle' (e.g. 'Subtitles by ...'). Only short
    lines: mrclean drops any such line, which would delete a whole one-line sample file."""
    return "" if len(line) < 300 and "subtitle" in line.lower() else line


def _qed(line):
    """QED: OCR'd all-caps lines: fix 'l' read for 'I' and sentence-case them (as mrclean)."""
    letters = re.sub(r"\([^)]*\)|[.!?]", "", line)
    letters = [c for c in letters if c.isalpha()]
    if letters and sum(c.isupper() for c in letters) >= 0.5 * len(letters):
        line = line.replace("l", "I")
        line = re.sub(r"(^|[.!?] +)(\w)([^.!?]*)", lambda m: m.group(1) + m.group(2).upper() + m.group(3).lower(), line)
    return line


CLEANERS = {
    "bnc_spoken": _spacing, "childes": _spacing, "aochildes": _spacing, "cbt": _cbt,
    "simple_wiki": _wiki, "simple_wikipedia": _wiki, "wikipedia": _wiki,
    "open_subtitles": _subtitles, "qed": _qed,
}  # gutenberg, switchboard, children_stories: unchanged (beyond stripping)


def clean_lines(source, text):
    """The documents (cleaned, non-empty lines) of one source file."""
    rule = CLEANERS.get(source, lambda s: s)
    lines = (rule(line.strip()).strip() for line in text.splitlines())
    return [line for line in lines if line]


def split_train_val(lines, val_fraction=0.05):
    """Last 5% of lines -> val. Files with fewer than 20 lines are cut at 95% of their characters instead."""
    if len(lines) >= 20:
        n_val = max(1, math.ceil(len(lines) * val_fraction))
        return lines[:-n_val], lines[-n_val:]
    text = "\n".join(lines)
    cut = int(len(text) * (1 - val_fraction))
    m = re.compile(r"\s").search(text, cut)
    if m is None:
        return lines, []
    head, tail = text[: m.start()].strip(), text[m.start():].strip()
    return head.splitlines(), tail.splitlines()


# -----------------------------------------------------------------------------------------------
# Byte-level BPE, trained here (Sennrich et al. 2016; byte-level as GPT-2, Radford et al. 2019)


def count_pretokens(docs, progress=False):
    """How often each pre-token (a regex chunk of " " + document) occurs in the training documents."""
    counts = Counter()
    pat = regex.compile(PAT_STR)
    bar = tqdm(total=sum(map(len, docs)), desc="count pre-tokens", unit="char", unit_scale=True, disable=not progress, mininterval=1)
    i = 0
    while i < len(docs):
        # Joining documents with "\n " yields the chunks of each " " + doc, plus one "\n" chunk between
        # documents (documents hold no newline), which we then remove: same counts, far fewer calls.
        # A group is up to 20,000 documents or about 1M characters, so the bar moves on long documents too.
        j, size = i, 0
        while j < len(docs) and j - i < 20000 and size < 1_000_000:
            size += len(docs[j])
            j += 1
        counts.update(pat.findall(" " + "\n ".join(docs[i:j])))
        counts.pop("\n", None)
        bar.update(size)
        i = j
    bar.close()
    return counts


def train_bpe(counts, n_ranks, min_frequency=2, progress=True):
    """Mergeable ranks {token bytes: rank} with n_ranks entries at most: the 256 bytes, then merges.

    Standard BPE on the distinct pre-tokens weighted by their counts: repeatedly merge the most frequent
    adjacent pair (ties -> smallest pair of ids, so the result is deterministic) until n_ranks tokens exist
    or no pair occurs min_frequency times. Pair counts are updated incrementally, touching only the words
    that contain the merged pair, and the best pair comes from a heap whose stale entries are fixed lazily.
    A merge whose bytes already exist as a token (ab+c vs a+bc) reuses that token: tiktoken ranks are keyed
    by bytes, so each byte string may have only one id."""
    vocab = [bytes([i]) for i in range(256)]
    ids_of = {b: i for i, b in enumerate(vocab)}
    if progress:
        tqdm.write(f"counting byte pairs in {len(counts):,} distinct pre-tokens")
    words = [list(w.encode("utf-8")) for w in counts]
    freqs = list(counts.values())
    pair_count = defaultdict(int)
    where = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_count[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    bar = tqdm(total=n_ranks, initial=256, desc="bpe merges", disable=not progress, mininterval=1)
    while len(vocab) < n_ranks and heap:
        neg, pair = heapq.heappop(heap)
        if -neg != pair_count.get(pair, 0):  # stale entry: re-insert with the current count
            if pair_count.get(pair, 0) > 0:
                heapq.heappush(heap, (-pair_count[pair], pair))
            continue
        if -neg < min_frequency:
            break
        merged = vocab[pair[0]] + vocab[pair[1]]
        new = ids_of.get(merged)
        if new is None:
            new = len(vocab)
            vocab.append(merged)
            ids_of[merged] = new
            bar.update(1)
        touched = set()
        for i in sorted(where.pop(pair)):
            w, f = words[i], freqs[i]
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == pair[0] and w[j + 1] == pair[1]:
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            if len(out) == len(w):
                continue
            for p in zip(w, w[1:]):
                pair_count[p] -= f
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where[p].add(i)
                touched.add(p)
            words[i] = out
        pair_count.pop(pair, None)
        for p in touched:  # new pairs (and pairs whose count rose) need a fresh heap entry
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    bar.close()
    return {b: i for i, b in enumerate(vocab)}


def write_ranks(ranks, f):
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")


def gpt2_ranks(gpt2_bpe=None):
    """GPT-2's ranks: from tiktoken's cache/download, or offline from encoder.json + vocab.bpe."""
    if gpt2_bpe:
        vocab_bpe, encoder_json = os.path.join(gpt2_bpe, "vocab.bpe"), os.path.join(gpt2_bpe, "encoder.json")
        for p in (vocab_bpe, encoder_json):
            if not os.path.isfile(p):
                raise InputError(f"{p}: not found (--gpt2_bpe must hold GPT-2's vocab.bpe and encoder.json)")
        return tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json)
    try:
        return tiktoken.get_encoding("gpt2")._mergeable_ranks
    except Exception as e:
        raise InputError(f"tiktoken could not fetch the gpt2 encoding ({type(e).__name__}); pass --gpt2_bpe DIR with vocab.bpe and encoder.json") from None


def tokenizer_info(name, ranks_path, n_ranks, pat_str):
    special = {tok: n_ranks + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return {"name": name, "file": os.path.basename(ranks_path), "vocab_size": n_ranks + len(special),
            "sha256": tokenizer_sha256(ranks_path, pat_str, special), "pat_str": pat_str, "special_tokens": special,
            "bos_id": special["<|endoftext|>"], "eos_id": special["<|endoftext|>"],
            "pad_id": special["<|pad|>"], "mask_id": special["<|mask|>"]}


def encode_docs(enc, docs, bos_id):
    """<|endoftext|> + encode(" " + doc) for every document, concatenated, as uint16."""
    pieces = enc.encode_ordinary_batch([" " + d for d in docs], num_threads=os.cpu_count() or 1)
    out = np.empty(sum(len(p) for p in pieces) + len(pieces), dtype=np.uint16)
    pos = 0
    for p in pieces:
        out[pos] = bos_id
        out[pos + 1 : pos + 1 + len(p)] = p
        pos += 1 + len(p)
    return out


# -----------------------------------------------------------------------------------------------


def prepare(src, out, tokenizer="bpe", vocab_size=16000, min_frequency=2, gpt2_bpe=None, progress=True):
    t_start = time.perf_counter()
    say = tqdm.write if progress else (lambda text: None)  # each phase announced on its own line
    say(f"reading {src}")
    corpus = read_corpus(src)
    raw_hashes = {f"{split}/{name}": hashlib.sha256(text.encode()).hexdigest()
                  for split, files in corpus.items() for name, text in files.items()}
    splits = {"train": {}, "val": {}, "test": {}}
    say(f"cleaning and splitting {sum(len(t) for f in corpus.values() for t in f.values()):,} characters")
    for name, text in corpus["train"].items():
        splits["train"][name], splits["val"][name] = split_train_val(clean_lines(name, text))
    for name, text in corpus["dev"].items():
        splits["test"][name] = clean_lines(name, text)
    train_docs = [d for docs in splits["train"].values() for d in docs]
    if not train_docs:
        raise InputError(f"{src}: no non-empty training lines after cleaning")

    os.makedirs(out, exist_ok=True)
    ranks_path = os.path.join(out, "tokenizer.tiktoken")
    t0 = time.perf_counter()
    if tokenizer == "bpe":
        n_ranks = vocab_size - len(SPECIAL_TOKENS)
        if not 256 < n_ranks <= 65536 - len(SPECIAL_TOKENS):
            raise InputError(f"--vocab_size={vocab_size}: expected {256 + len(SPECIAL_TOKENS) + 1}..65536")
        say(f"training a {vocab_size:,}-token BPE on {len(train_docs):,} training documents")
        ranks = train_bpe(count_pretokens(train_docs, progress), n_ranks, min_frequency, progress)
        if len(ranks) < n_ranks:
            print(f"note: only {len(ranks)} BPE tokens reach min_frequency={min_frequency}; vocab is smaller than asked")
        name = f"bpe{len(ranks) + len(SPECIAL_TOKENS)}"
    elif tokenizer == "gpt2":
        ranks = gpt2_ranks(gpt2_bpe)  # 50,256 ranks; <|endoftext|> = 50256 as in GPT-2
        name = "gpt2"
    else:
        raise InputError(f"--tokenizer={tokenizer!r}: expected 'bpe' or 'gpt2'")
    t_train = time.perf_counter() - t0
    atomic_write(ranks_path, lambda f: write_ranks(ranks, f))
    info = tokenizer_info(name, ranks_path, len(ranks), PAT_STR)
    enc = tiktoken.Encoding(name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=info["special_tokens"])

    t0 = time.perf_counter()
    stats, counts, split_words = {}, {}, {}
    for split, sources in splits.items():
        arrays = []
        for source, docs in tqdm(sources.items(), desc=f"encode {split}", disable=not progress):
            ids = encode_docs(enc, docs, info["bos_id"])
            arrays.append(ids)
            words = sum(len(d.split()) for d in docs)
            stats[f"{split}/{source}"] = {"lines": len(docs), "words": words, "tokens": int(len(ids)),
                                          "tokens_per_word": round(len(ids) / max(words, 1), 3)}
        ids = np.concatenate(arrays) if arrays else np.zeros(0, np.uint16)
        counts[split] = int(len(ids))
        split_words[split] = sum(stats[f"{split}/{source}"]["words"] for source in sources)
        atomic_write(os.path.join(out, f"{split}.bin"), lambda f: f.write(ids.tobytes()))
    t_encode = time.perf_counter() - t0

    # words: whitespace-separated words per split, as the BabyLM budget counts them (a run's words_seen is
    # its tokens seen x words / tokens of train; data.split_words reads them back)
    meta = {"tokenizer": info, "tokens": counts, "words": split_words, "sources": stats, "source_sha256": raw_hashes,
            "src": os.path.basename(os.path.normpath(src)), "min_frequency": min_frequency}
    atomic_write(os.path.join(out, "meta.json"), lambda f: f.write(json.dumps(meta, indent=1) + "\n"), mode="w")
    timing = {"tokenizer_train_s": t_train, "encode_s": t_encode, "total_s": time.perf_counter() - t_start}
    return meta, timing


def print_stats(meta, timing):
    print(f"{'split/source':<28}{'lines':>10}{'words':>11}{'tokens':>11}{'tok/word':>9}")
    for key, s in meta["sources"].items():
        print(f"{key:<28}{s['lines']:>10,}{s['words']:>11,}{s['tokens']:>11,}{s['tokens_per_word']:>9.3f}")
    for split in ("train", "val", "test"):
        words = meta["words"][split]
        print(f"{split + ' (all)':<28}{'':>10}{words:>11,}{meta['tokens'][split]:>11,}{meta['tokens'][split] / max(words, 1):>9.3f}")
    tok = meta["tokenizer"]
    print(f"tokenizer {tok['name']}: vocab {tok['vocab_size']}, specials {tok['special_tokens']}")
    print(f"time: tokenizer training {timing['tokenizer_train_s']:.1f}s, encoding {timing['encode_s']:.1f}s, total {timing['total_s']:.1f}s")


PREPARE_KEYS = {
    "input and output": {
        "src": ("", "BabyLM folder or zip (2024 or 2023 layout); empty = download the official release"),
        "out": ("", "output folder, e.g. data/mini (written whole: built beside it, then swapped in)"),
    },
    "tokenizer": {
        "tokenizer": ("bpe", "'bpe' (trained here) or 'gpt2'", ("bpe", "gpt2")),
        "vocab_size": (16000, "BPE vocabulary including the 3 special tokens (BabyLlama: 16,000)", ">0"),
        "min_frequency": (2, "a merge must occur this often (BabyLlama: 2)", ">0"),
        "gpt2_bpe": ("", "folder with GPT-2's vocab.bpe and encoder.json, for --tokenizer=gpt2 offline"),
    },
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = load_config(PREPARE_KEYS, argv or ["--help"], __doc__)
    check_writable_dir(args.out, "--out")  # empty, a file, under a file or read-only: before any work
    out = os.path.normpath(args.out)
    check_replaceable(out, args.src)
    src = args.src
    if not src:
        src = out + ".download.zip"  # beside the output: a failed download leaves no empty data folder
        if not os.path.exists(src):
            download(src)
    # one writer at a time: two at once built in one .partial folder, a data folder without its tokenizer
    lock = hold_lock(out + ".lock", f"{out}.lock: another prepare_data.py is writing this --out; wait for it to finish")
    # Build in a sibling folder, then swap: an interrupted run leaves the old folder as it was.
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        meta, timing = prepare(src, partial, args.tokenizer, args.vocab_size, args.min_frequency, args.gpt2_bpe or None)
        replace_folder(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        os.remove(lock.name)
        lock.close()
    print_stats(meta, timing)
    print(f"wrote {out}")


def check_replaceable(out, src):
    """--out is replaced whole, so it must be new, empty or an earlier output of this script (meta.json): a run's
    folder or the corpus itself given as --out was deleted (exit 0). Nor may it hold --src or the working folder."""
    here, o = os.path.abspath(os.getcwd()), os.path.abspath(out)
    if here == o or here.startswith(o + os.sep):
        raise InputError(f"--out={out}: is the working folder (or holds it); it would be replaced whole: give a new folder")
    if src and (os.path.abspath(src) == o or os.path.abspath(src).startswith(o + os.sep)):
        raise InputError(f"--src={src} lies inside --out={out}, which is replaced whole: give a new folder")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, "meta.json")):
        held = ", ".join(sorted(os.listdir(out))[:3])
        raise InputError(f"--out={out}: holds files that prepare_data.py did not write ({held}, ...; no meta.json), and it "
                         "is replaced whole: give a new folder")


def replace_folder(new, dest):
    """Put the folder `new` at `dest`, replacing what was there in two renames."""
    old = dest + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(dest):
        os.rename(dest, old)
    os.rename(new, dest)
    shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
