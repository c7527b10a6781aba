"""prepare_data.py: corpus reading, cleaning, splits, the BPE tokenizer, token files and their errors.
Run: python -m pytest tests/test_data.py"""

import json
import os
import zipfile

import numpy as np
import pytest
import tiktoken

from conftest import shared_path, write_corpus
from config import InputError
from data import load_tokenizer, read_bin
from prepare_data import PAT_STR, clean_lines, count_pretokens, encode_docs, prepare, split_train_val, train_bpe


def test_prepared_folder_has_every_file_and_meta(prepared):
    names = sorted(os.listdir(prepared))
    assert names == ["meta.json", "test.bin", "tokenizer.tiktoken", "train.bin", "val.bin"]
    meta = json.load(open(os.path.join(prepared, "meta.json")))
    tok = meta["tokenizer"]
    assert tok["vocab_size"] == 320 and tok["bos_id"] == 317 and tok["pad_id"] == 318 and tok["mask_id"] == 319
    for split in ("train", "val", "test"):
        ids = read_bin(os.path.join(prepared, f"{split}.bin"))
        assert len(ids) == meta["tokens"][split] and ids.max() < 320
    assert set(meta["source_sha256"]) == {"train/childes", "train/switchboard", "dev/childes", "dev/switchboard"}


def test_every_document_starts_with_the_boundary_token(prepared):
    enc, info = load_tokenizer(prepared)
    ids = np.asarray(read_bin(os.path.join(prepared, "val.bin")))
    assert ids[0] == info["bos_id"]
    docs = enc.decode(ids.tolist()).split("<|endoftext|>")[1:]
    assert all(d.startswith(" ") and d.strip() for d in docs), "each document is ' ' + a non-empty line"
    assert "\n" not in "".join(docs)


def test_same_inputs_same_bytes(tmp_path, prepared):
    src = write_corpus(tmp_path / "src")
    prepare(src, str(tmp_path / "again"), vocab_size=320, progress=False)
    for name in ("train.bin", "val.bin", "test.bin", "tokenizer.tiktoken", "meta.json"):
        assert open(os.path.join(prepared, name), "rb").read() == open(tmp_path / "again" / name, "rb").read(), name


def test_zip_input_equals_folder_input(tmp_path, prepared):
    src = write_corpus(tmp_path / "src")
    zpath = tmp_path / "babylm.zip"
    with zipfile.ZipFile(zpath, "w") as z:  # with a top-level folder, as released zips have
        for split in ("train_10M", "dev"):
            for fn in os.listdir(os.path.join(src, split)):
                z.write(os.path.join(src, split, fn), f"text_data/{split}/{fn}")
    prepare(str(zpath), str(tmp_path / "z"), vocab_size=320, progress=False)
    assert open(tmp_path / "z" / "train.bin", "rb").read() == open(os.path.join(prepared, "train.bin"), "rb").read()


def test_bpe_learns_frequent_merges_and_round_trips():
    docs = ["the cat sat on the mat", "the cat ate the rat"] * 50
    ranks = train_bpe(count_pretokens(docs), 300, progress=False)
    assert b" the" in ranks and b" cat" in ranks
    assert sorted(ranks.values()) == list(range(len(ranks))), "ranks are 0..n-1"
    for token, rank in ranks.items():  # every merged token is two tokens that existed before it
        if len(token) > 1:
            assert any(ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank for i in range(1, len(token))), token
    enc = tiktoken.Encoding("t", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    for text in ("the cat sat on the mat", "a rat? The mat!"):
        assert enc.decode(enc.encode_ordinary(text)) == text
    assert len(enc.encode_ordinary(" the cat")) == 2, "frequent words became single tokens"


def test_bpe_respects_min_frequency():
    ranks = train_bpe(count_pretokens(["xyzzy"]), 1000, min_frequency=2, progress=False)
    assert len(ranks) == 256, "a pair seen once is not merged at min_frequency=2"


def test_tokenizer_round_trip_on_real_text(prepared):
    src = shared_path("babylm_2024_mini", "train_10M", "switchboard.train")
    enc, _ = load_tokenizer(prepared)  # a small vocab: many byte-level fallbacks, which must round-trip too
    text = open(src, encoding="utf-8").read()[:200_000]
    assert enc.decode(enc.encode_ordinary(text)) == text
    supplement = shared_path("blimp_supplement")
    for fn in sorted(os.listdir(supplement)):
        for line in open(os.path.join(supplement, fn), encoding="utf-8"):
            s = json.loads(line)["sentence_good"]
            assert enc.decode(enc.encode_ordinary(s)) == s  # includes dialogue newlines


def test_gpt2_tokenizer_offline(tmp_path):
    gpt2 = shared_path("gpt2_bpe")
    src = write_corpus(tmp_path / "src", n_train=200, n_dev=50)
    prepare(src, str(tmp_path / "g"), tokenizer="gpt2", gpt2_bpe=gpt2, progress=False)
    enc, info = load_tokenizer(str(tmp_path / "g"))
    assert enc.encode_ordinary("Hello world") == [15496, 995]  # GPT-2's own ids
    assert info["bos_id"] == 50256 and info["vocab_size"] == 50259


def test_cleaning_rules():
    assert clean_lines("cbt", "He didn 't go , she said .\n\n") == ["He didn't go, she said."]
    assert clean_lines("simple_wiki", "= = = Confetti = = =\nConfetti are small.") == ["Confetti", "Confetti are small."]
    assert clean_lines("open_subtitles", "Subtitles by someone\nHello there.") == ["Hello there."]
    assert clean_lines("gutenberg", "  Kept   as is. \n") == ["Kept   as is."]


def test_val_split_last_five_percent_or_characters():
    lines = [f"line {i}" for i in range(100)]
    train, val = split_train_val(lines)
    assert train == lines[:95] and val == lines[95:]
    words = " ".join(f"w{i}" for i in range(1000))
    train, val = split_train_val([words])
    assert " ".join(train + val) == words and 0.04 < len(" ".join(val)) / len(words) < 0.06


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "corpus not found"),
    (lambda root: os.makedirs(root / "train_10M"), "no train_10M/babylm_10M/"),
    (lambda root: [os.makedirs(root / d) for d in ("train_10M", "dev")] and [(root / d / f"a.{s}").write_text("") for d, s in (("train_10M", "train"), ("dev", "dev"))], "files are all empty"),
    (lambda root: [os.makedirs(root / d) for d in ("train_10M", "dev")] and [(root / d / f"a.{s}").write_bytes(b"ok \xff\xfe bad") for d, s in (("train_10M", "train"), ("dev", "dev"))], r"a.train: not valid UTF-8"),
])
def test_bad_corpus_is_a_one_line_error(tmp_path, make, message):
    root = tmp_path / "corpus"
    make(root)
    with pytest.raises(InputError, match=message) as e:
        prepare(str(root), str(tmp_path / "out"), vocab_size=300, progress=False)
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == [], "nothing half-written"


def test_odd_sized_bin_is_refused(tmp_path):
    path = tmp_path / "train.bin"
    path.write_bytes(b"\x01\x00\x02")
    with pytest.raises(InputError, match="train.bin: size 3 bytes is not a multiple of 2"):
        read_bin(str(path))


def test_encode_docs_layout():
    import tiktoken
    enc = tiktoken.Encoding("t", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})
    ids = encode_docs(enc, ["ab", "c"], bos_id=300)
    assert ids.tolist() == [300, 32, 97, 98, 300, 32, 99]


@pytest.mark.parametrize("case", ["a run's folder", "the corpus itself", "the working folder"])
def test_out_that_is_not_a_data_folder_is_refused_before_any_work_and_kept(tmp_path, monkeypatch, case):
    """--out is replaced whole. A run's folder (ckpt.pt, last.pt, log.jsonl) or the corpus given as --out was deleted
    with exit 0; `--out .` was a traceback after all the work. Each is one line now, and the folder is untouched."""
    from prepare_data import main
    src = write_corpus(tmp_path / "src")
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(b"weights")
    (run / "log.jsonl").write_text('{"step": 1}\n')
    out = {"a run's folder": str(run), "the corpus itself": src, "the working folder": "."}[case]
    monkeypatch.chdir(run if case == "the working folder" else tmp_path)
    before = sorted(os.listdir(out))
    with pytest.raises(InputError, match="replaced whole") as e:
        main(["--src", src, "--out", out, "--vocab_size=300"])
    assert "\n" not in str(e.value) and sorted(os.listdir(out)) == before, f"prepare_data.py --out={case}"


def test_an_earlier_output_is_replaced(tmp_path):
    from prepare_data import main
    src = write_corpus(tmp_path / "src")
    main(["--src", src, "--out", str(tmp_path / "d"), "--vocab_size=300"])
    main(["--src", src, "--out", str(tmp_path / "d"), "--vocab_size=320"])
    assert load_tokenizer(str(tmp_path / "d"))[0].n_vocab == 320


def test_a_second_prepare_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    """Two prepare_data.py at once on one --out built in one .partial folder; both said `wrote`, and the folder had
    no tokenizer. The second is one line now, and the first's result is whole."""
    import fcntl
    from prepare_data import main
    src = write_corpus(tmp_path / "src")
    out = str(tmp_path / "d")
    with open(out + ".lock", "w") as held:  # what a running prepare_data.py holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another prepare_data.py is writing this --out"):
            main(["--src", src, "--out", out, "--vocab_size=300"])
    assert not os.path.exists(out)
    os.remove(out + ".lock")
    main(["--src", src, "--out", out, "--vocab_size=300"])
    assert sorted(os.listdir(tmp_path)) == ["d", "src"], "the lock file is left behind"


def test_a_lock_file_removed_by_its_holder_as_we_lock_it_is_locked_again(tmp_path, monkeypatch):
    """prepare_data.py removes its lock file when it finishes. A second process that opened the file just before
    and locked it just after held a lock on a removed file, and a third could lock the new one: two writers."""
    import fcntl
    from checkpoint import hold_lock
    path, real, calls = str(tmp_path / "d.lock"), fcntl.flock, []

    def flock_after_the_holder_removed_it(f, op):
        if not calls:  # the holder finishes between our open and our flock
            os.remove(path)
        calls.append(op)
        return real(f, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_removed_it)
    held = hold_lock(path, "busy")
    assert os.path.exists(path) and os.path.samestat(os.fstat(held.fileno()), os.stat(path)), \
        "hold_lock: the lock is held on a removed file, not on the one at its path"
    held.close()
