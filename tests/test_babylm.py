"""The BabyLM rules (issue 22): words per split as the budget counts them, words_seen in the log, milestone
checkpoints at the step the words-per-token arithmetic gives (holding that step's weights, and byte-identical
after a stop, a kill and a resume), the budget guard, every milestone exported as a Hub revision and pushed
through a stand-in huggingface_hub, learning curves that score as eval_blimp.py does and resume.
(transformers loading the exported revisions: tests/test_export.py.) Run: python -m pytest tests/test_babylm.py"""

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import sys
import time

import pytest
import torch

import eval_blimp
import export_hf
from checkpoint import read_checkpoint, read_log
from config import InputError, load_config
from conftest import ROOT, Job, finish, strip_timing, synthetic_sentences, tiny_argv
from data import split_words
from export_hf import hf_names, read_safetensors
from babylm import BABYLM_MILESTONES, milestone_label, parse_words
from train import plan_run
from train_teacher import TEACHER_KEYS, main as teacher_main

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import curves  # noqa: E402

TOKENS_PER_STEP = 8 * 32  # tiny_argv: batch_size 8 x seq_len 32


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def first_step(words, data):
    """The first step whose words seen (step x tokens a step x words / tokens of train.bin) reach `words`."""
    w, t = split_words(data)
    return -(-words * t // (TOKENS_PER_STEP * w))  # ceil in integers


# -----------------------------------------------------------------------------------------------
# Words


def test_meta_counts_the_words_of_each_split_as_the_budget_does(prepared, tmp_path):
    src = os.path.join(os.path.dirname(prepared), "src")  # the corpus the session's data was prepared from
    raw = lambda folder: sum(len(open(os.path.join(src, folder, f)).read().split()) for f in os.listdir(os.path.join(src, folder)))
    meta = json.load(open(os.path.join(prepared, "meta.json")))
    assert meta["words"]["train"] + meta["words"]["val"] == raw("train_10M"), "train and val are the training files' words"
    assert meta["words"]["test"] == raw("dev")
    assert split_words(prepared) == (meta["words"]["train"], meta["tokens"]["train"])
    old = shutil.copytree(prepared, tmp_path / "old")  # prepared before per-split words: the sum over sources
    del meta["words"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert split_words(str(old)) == split_words(prepared)


def test_word_counts_labels_and_the_official_milestones():
    assert [parse_words(x) for x in ("5000", 5000, "500k", "1M", "2.5M", "1B", "1.5k", 1e6)] == [5000, 5000, 500_000, 10**6, 2_500_000, 10**9, 1500, 10**6]
    assert [parse_words(x) for x in ("0.5", "1.0001k", "M", "-1M", "0", "soon", "1kk")] == [None] * 7
    assert [milestone_label(n) for n in (10**6, 2_500_000, 10**9, 500, 1500)] == ["chck_1M", "chck_2500k", "chck_1000M", "chck_500", "chck_1500"]
    # the revisions the 2025 pipeline reads (evaluation_pipeline/collate_preds.py, *_FAST_REVISIONS)
    strict_small = [f"chck_{i}M" for i in range(1, 10)] + [f"chck_{i * 10}M" for i in range(1, 11)]
    strict = [f"chck_{i}M" for i in range(1, 10)] + [f"chck_{i * 10}M" for i in range(1, 10)] + [f"chck_{i * 100}M" for i in range(1, 11)]
    assert [milestone_label(n) for n in BABYLM_MILESTONES["babylm"]] == strict_small and len(strict_small) == 19
    assert [milestone_label(n) for n in BABYLM_MILESTONES["babylm_strict"]] == strict


def plan(*argv, windows=100, corpus=(3, 4)):
    """A run's plan: 8 sequences of 32 tokens a step (12 steps an epoch of 100 windows); corpus (words, tokens)."""
    cfg = load_config(TEACHER_KEYS, ["--batch_size=8", "--micro_batch_size=8", "--seq_len=32", "--warmup_iters=2", *argv])
    return plan_run(cfg, 1, windows, corpus=corpus)


def test_milestone_steps_follow_the_words_per_token_arithmetic():
    # 3 words per 4 tokens: 256 tokens a step are 192 words
    assert plan("--checkpoints_at=1k,192,193,1M", "--max_iters=6000").milestones == {1: ["chck_192"], 2: ["chck_193"], 6: ["chck_1k"], 5209: ["chck_1M"]}
    assert plan("--checkpoints_at=100k,200k,5000", "--max_iters=10", corpus=(1000, 1)).milestones == {1: ["chck_5k", "chck_100k", "chck_200k"]}
    reached = plan("--checkpoints_at=babylm", "--max_iters=30000").milestones  # 5.76M words: the official list up to the run's end
    assert reached == {5209: ["chck_1M"], 10417: ["chck_2M"], 15625: ["chck_3M"], 20834: ["chck_4M"], 26042: ["chck_5M"]}
    with pytest.raises(InputError, match=r"checkpoints_at: 6M lies beyond the run's planned length \(30000 steps, 5,760,000 words seen\)"):
        plan("--checkpoints_at=1M,6M", "--max_iters=30000")
    with pytest.raises(InputError, match=r"checkpoints_at: 'soon' is not a word count; expected counts such as 500k,1M"):
        plan("--checkpoints_at=1M,soon", "--max_iters=30000")


def test_an_official_list_the_run_is_too_short_for_is_noted_or_refused_under_a_track(prepared, tmp_path, capsys):
    assert plan("--checkpoints_at=babylm", "--max_iters=100").milestones == {}  # 19,200 words seen: none of 1M, 2M, ...
    for entry in ("babylm", "babylm_strict"):
        with pytest.raises(InputError, match=rf"^checkpoints_at={entry} with track=strict-small: the run is planned for 19,200 words seen, "
                                             r"short of the first milestone chck_1M \(1,000,000 words\), so a submission would have no"):
            plan(f"--checkpoints_at={entry}", "--max_iters=100", "--track=strict-small")
    assert plan("--checkpoints_at=babylm", "--max_iters=5209", "--track=strict", windows=60_000).milestones == {5209: ["chck_1M"]}  # reaches one
    out = str(tmp_path / "short")
    teacher_main(tiny_argv(prepared, out, max_iters=4, eval_interval=4, checkpoints_at="babylm"))
    words = 4 * TOKENS_PER_STEP * split_words(prepared)[0] // split_words(prepared)[1]
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line or "milestone" in line]
    assert notes == [f"note: checkpoints_at=babylm: the run is planned for {words:,} words seen, short of the first milestone chck_1M "
                     "(1,000,000 words): no milestone will be written"]
    with pytest.raises(InputError, match=r"^checkpoints_at=babylm with track=strict-small: the run is planned for"):
        teacher_main(tiny_argv(prepared, str(tmp_path / "refused"), max_iters=4, eval_interval=4, checkpoints_at="babylm", track="strict-small"))
    assert not os.path.exists(tmp_path / "refused"), "refused before any work"


def test_the_budget_guard_names_the_rule():
    corpus = (9_000_000, 12_000_000)
    assert plan("--track=strict-small", "--epochs=10", corpus=corpus).max_iters == 120  # 10 epochs: allowed
    with pytest.raises(InputError, match=r"track=strict-small: the run is planned for 11 epochs \(132 steps, 12 per epoch\); "
                                         r"BabyLM allows at most 10 epochs \(at most 100M words seen in strict-small"):
        plan("--track=strict-small", "--epochs=11", corpus=corpus)
    with pytest.raises(InputError, match=r"planned for 10.0833 epochs .* at most 10 epochs"):
        plan("--track=strict", "--max_iters=121", corpus=corpus)
    assert plan("--track=strict-small", corpus=(10_000_000, 12_000_000)).max_iters == 96  # 10M words: allowed
    with pytest.raises(InputError, match=r"train\.bin holds 10,000,001 words of training data; the strict-small track allows at most 10,000,000"):
        plan("--track=strict-small", corpus=(10_000_001, 12_000_000))
    assert plan("--track=strict", corpus=(10_000_001, 12_000_000)).max_iters == 96  # strict: 100M words
    with pytest.raises(InputError, match=r"holds 100,000,001 words .* the strict track allows at most 100,000,000"):
        plan("--track=strict", corpus=(100_000_001, 120_000_000))
    assert plan("--epochs=11", corpus=(10**9, 10**9)).max_iters == 132  # track none: no rule


# -----------------------------------------------------------------------------------------------
# Milestones in a real run


def test_a_run_logs_words_seen_and_writes_its_milestones_at_the_right_steps(prepared, tmp_path, capsys):
    out, ref = str(tmp_path / "t"), str(tmp_path / "ref")
    teacher_main(tiny_argv(prepared, out, max_iters=24, eval_interval=12, log_interval=3, checkpoints_at="1k,2k"))
    words, tokens = split_words(prepared)
    log = read_log(os.path.join(out, "log.jsonl"))
    assert all(e["words_seen"] == e["step"] * TOKENS_PER_STEP * words // tokens for e in log) and len(log) == 8 + 2
    shown = capsys.readouterr().out
    assert f"step 24 | words_seen {24 * TOKENS_PER_STEP * words // tokens:,} | loss" in shown and 24 * TOKENS_PER_STEP * words // tokens > 1000
    steps = {}
    for label, n in (("chck_1k", 1000), ("chck_2k", 2000)):
        ck = read_checkpoint(os.path.join(out, label, "ckpt.pt"))
        steps[label] = step = first_step(n, prepared)
        assert ck["step"] == step, label
        assert (step - 1) * TOKENS_PER_STEP * words < n * tokens <= step * TOKENS_PER_STEP * words, "the first step that reaches it"
        assert ck["words_seen"] == step * TOKENS_PER_STEP * words // tokens and "optimizer" not in ck
        assert f"saved {os.path.join(out, label, 'ckpt.pt')} at step {step}" in shown
    assert read_checkpoint(os.path.join(out, "last.pt"))["words_seen"] == log[-1]["words_seen"]
    # the milestone holds the weights after its step: those of a run stopped there
    teacher_main(tiny_argv(prepared, ref, max_iters=24, eval_interval=12, stop_at=steps["chck_1k"]))
    a, b = read_checkpoint(os.path.join(out, "chck_1k", "ckpt.pt"))["model"], read_checkpoint(os.path.join(ref, "last.pt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stopped_killed_and_resumed_runs_write_identical_milestones(prepared, tmp_path):
    args = dict(max_iters=16, eval_interval=5, checkpoints_at="500,1000,1500")
    labels = ["chck_500", "chck_1k", "chck_1500"]
    assert [first_step(n, prepared) for n in (500, 1000, 1500)] == [5, 10, 15]  # the stops below fall between them
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    teacher_main(tiny_argv(prepared, a, **args))
    teacher_main(tiny_argv(prepared, b, **args, stop_at=7))  # a clean stop (Ctrl-C, SIGTERM, stop_at) after chck_500
    assert sorted(n for n in os.listdir(b) if n.startswith("chck_")) == ["chck_500"]
    shutil.copy(os.path.join(b, "last.pt"), tmp_path / "last7.pt")
    teacher_main(tiny_argv(prepared, b, **args, stop_at=12, resume=True))  # writes chck_1k at step 10 ...
    shutil.copy(tmp_path / "last7.pt", os.path.join(b, "last.pt"))  # ... then is "killed": its last.pt is the one of step 7
    open(os.path.join(b, "chck_1k", "ckpt.pt.tmp"), "wb").write(b"PK half a milestone")  # and it died writing a milestone
    teacher_main(tiny_argv(prepared, b, **args, resume=True))
    for label in labels:
        assert sha(os.path.join(a, label, "ckpt.pt")) == sha(os.path.join(b, label, "ckpt.pt")), label
    assert not [n for n in os.listdir(os.path.join(b, "chck_1k")) if n.endswith(".tmp")]
    assert strip_timing(read_log(os.path.join(a, "log.jsonl"))) == strip_timing(read_log(os.path.join(b, "log.jsonl")))


def test_a_replaced_run_leaves_no_milestone_behind(prepared, tmp_path):
    out = str(tmp_path / "t")
    teacher_main(tiny_argv(prepared, out, max_iters=8, eval_interval=4, checkpoints_at="500"))
    assert os.path.isfile(os.path.join(out, "chck_500", "ckpt.pt"))
    teacher_main(tiny_argv(prepared, out, max_iters=8, eval_interval=4, overwrite=True))
    assert sorted(os.listdir(out)) == ["ckpt.pt", "last.pt", "log.jsonl"]


# -----------------------------------------------------------------------------------------------
# Export every milestone as a Hub revision, and upload


def test_all_checkpoints_exports_one_folder_per_revision(milestone_runs, tmp_path, capsys):
    run, hf = milestone_runs[0], str(tmp_path / "hf")
    export_hf.main(["--ckpt", run, "--all_checkpoints=True", "--out", hf])
    assert sorted(os.listdir(hf)) == ["chck_1k", "chck_500", "main"]
    for rev, ckpt in (("chck_500", "chck_500/ckpt.pt"), ("chck_1k", "chck_1k/ckpt.pt"), ("main", "ckpt.pt")):
        ck = read_checkpoint(os.path.join(run, ckpt))
        tensors = read_safetensors(os.path.join(hf, rev, "model.safetensors"))
        assert all(torch.equal(tensors[name], ck["model"][ours]) for ours, name in hf_names(2)), rev
    out = capsys.readouterr().out
    commands = [line.strip() for line in out.splitlines() if line.strip().startswith("hf upload")]
    assert commands == [f"hf upload REPO_ID {hf}/chck_500 . --revision chck_500",
                        f"hf upload REPO_ID {hf}/chck_1k . --revision chck_1k", f"hf upload REPO_ID {hf}/main ."]
    assert "hf auth login" in out and "huggingface-cli" not in out
    export_hf.main(["--ckpt", os.path.join(run, "last.pt"), "--all_checkpoints=True", "--out", hf])  # main = the file named
    tensors = read_safetensors(os.path.join(hf, "main", "model.safetensors"))
    assert torch.equal(tensors["lm_head.weight"], read_checkpoint(os.path.join(run, "last.pt"))["model"]["output.weight"])


class FakeHub:
    """Stands in for huggingface_hub (not a requirement): records what --push asks of the Hub."""

    def __init__(self):
        self.calls = []

    def HfApi(self):
        return self

    def create_repo(self, repo_id, exist_ok=False):
        self.calls.append(("create_repo", repo_id, exist_ok))

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", repo_id, branch, exist_ok))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id, folder_path, revision, sorted(os.listdir(folder_path))))


def test_push_uploads_each_folder_as_its_revision_and_is_optional(milestone_runs, tmp_path, monkeypatch):
    fake, hf = FakeHub(), str(tmp_path / "hf")
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    export_hf.main(["--ckpt", milestone_runs[0], "--all_checkpoints=True", "--out", hf, "--push", "me/tiny"])
    files = sorted(os.listdir(os.path.join(hf, "main")))
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert fake.calls == [("create_repo", "me/tiny", True),
                          ("create_branch", "me/tiny", "chck_500", True), ("upload_folder", "me/tiny", f"{hf}/chck_500", "chck_500", files),
                          ("create_branch", "me/tiny", "chck_1k", True), ("upload_folder", "me/tiny", f"{hf}/chck_1k", "chck_1k", files),
                          ("upload_folder", "me/tiny", f"{hf}/main", "main", files)]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed: one line, before any export
    with pytest.raises(InputError, match="--push needs the huggingface_hub package: pip install huggingface_hub"):
        export_hf.main(["--ckpt", milestone_runs[0], "--all_checkpoints=True", "--out", str(tmp_path / "none"), "--push", "me/tiny"])
    assert not os.path.exists(tmp_path / "none")


def hf_cli(command):
    """(command path, parsed parameters) of an `hf ...` command line, by the click parser of the installed
    huggingface_hub's own `hf` command (it parses, nothing runs): an unknown command or option raises."""
    click = pytest.importorskip("click", reason="huggingface_hub is not installed (pip install huggingface_hub)")
    hf_app = pytest.importorskip("huggingface_hub.cli.hf", reason="this huggingface_hub has no `hf` command (before 0.34)").app
    if not isinstance(hf_app, click.Command):  # huggingface_hub 1.x: a typer app
        hf_app = __import__("typer").main.get_command(hf_app)
    words = shlex.split(command)
    assert words[0] == "hf", command
    cmd, ctx, args, path = hf_app, click.Context(hf_app, info_name="hf"), words[1:], []
    while isinstance(cmd, click.Group):
        name, cmd, args = cmd.resolve_command(ctx, args)
        ctx, path = click.Context(cmd, info_name=name, parent=ctx), path + [name]
    return " ".join(path), cmd.make_context(path[-1], args, parent=ctx.parent).params


def documented_hf_commands():
    """Every `hf ...` line of a code block in the README and the docs (comments after # dropped)."""
    found = []
    for page in ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")]:
        text = open(os.path.join(ROOT, page)).read()
        assert "huggingface-cli" not in text, f"{page}: huggingface-cli is gone from huggingface_hub 1.x and 2.x (the `hf` command)"
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            found += [(page, line.split(" #")[0].strip()) for line in block.splitlines() if line.strip().startswith("hf ")]
    return found


def test_the_printed_and_documented_upload_commands_are_the_installed_hf_cli(milestone_runs, tmp_path, capsys):
    """export_hf.py's printed commands and the docs' `hf` lines parse with the installed huggingface_hub's own CLI:
    upload of each folder to its revision (a milestone its branch, main without --revision), login."""
    hf = str(tmp_path / "hf")
    export_hf.main(["--ckpt", milestone_runs[0], "--all_checkpoints=True", "--out", hf, "--repo_id", "me/tiny"])
    printed = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("hf ")]
    assert len(printed) == 3
    for line, rev in zip(printed, ("chck_500", "chck_1k", None)):
        name, params = hf_cli(line)
        assert name == "upload" and (params["repo_id"], params["local_path"], params["path_in_repo"], params["revision"]) == \
            ("me/tiny", os.path.join(hf, rev or "main"), ".", rev), line
    assert hf_cli("hf auth login")[0] == "auth login"
    documented = documented_hf_commands()
    assert {"upload", "auth login"} <= {hf_cli(line)[0] for _, line in documented}, documented
    for page, line in documented:
        name, params = hf_cli(line)
        if name == "upload":
            rev = re.search(r"/(chck_\w+|main)$", params["local_path"])
            assert rev and params["path_in_repo"] == "." and params["revision"] == (None if rev[1] == "main" else rev[1]), (page, line)
    with pytest.raises(Exception, match="No such command"):
        hf_cli("hf uplod me/tiny hf/main .")  # the parser does refuse what the installed hf does not have
    with pytest.raises(Exception, match="No such option"):
        hf_cli("hf upload me/tiny hf/main . --branch chck_1M")


def test_hub_cache_refuses_before_any_work_what_it_cannot_write(milestone_runs, tmp_path):
    """--hub_cache: a name from_pretrained can take, a repository folder no download of that name occupies, apart from --out."""
    run, out, cache = milestone_runs[0], str(tmp_path / "hf"), tmp_path / "cache"
    argv = ["--ckpt", run, "--all_checkpoints=True", "--out", out, "--hub_cache", str(cache)]
    with pytest.raises(InputError, match=r"^--hub_cache needs --repo_id=ORG/NAME"):
        export_hf.main(argv)
    for bad in ("tiny", "me/a/b", "me/--x", "me/x..y", "-me/x"):
        with pytest.raises(InputError, match=rf"^--repo_id={re.escape(bad)}: expected ORG/NAME"):
            export_hf.main([*argv, "--repo_id", bad])
    (cache / "models--me--tiny" / "snapshots").mkdir(parents=True)  # a download of that name: not export_hf.py's
    with pytest.raises(InputError, match=r"models--me--tiny holds a repository that export_hf.py did not write \(a download\?\)"):
        export_hf.main([*argv, "--repo_id", "me/tiny"])
    with pytest.raises(InputError, match=r"its models--me--x and --out=.* overlap"):
        export_hf.main(["--ckpt", run, "--all_checkpoints=True", "--out", str(cache / "models--me--x" / "hf"), "--hub_cache", str(cache), "--repo_id", "me/x"])
    assert not os.path.exists(out) and sorted(os.listdir(cache)) == ["models--me--tiny"]
    export_hf.main([*argv, "--repo_id", "me/tiny2"])
    export_hf.main([*argv, "--repo_id", "me/tiny2"])  # its own: replaced
    repo = cache / "models--me--tiny2"
    assert sorted(os.listdir(repo)) == ["babydistill_export.json", "blobs", "refs", "snapshots"]
    assert sorted(os.listdir(repo / "refs")) == ["chck_1k", "chck_500", "main"] and len(os.listdir(repo / "snapshots")) == 3


def copy_run(run, dest):
    shutil.copytree(run, dest)
    return str(dest)


def test_export_never_writes_into_a_run(milestone_runs, tmp_path):
    """The reported data loss: --out RUN/chck_1k replaced that milestone's folder, its ckpt.pt gone. No --out that is,
    lies inside or holds a run's folder, --overwrite=True or not; an import's folder (its own ckpt.pt) may be replaced."""
    run = copy_run(milestone_runs[0], tmp_path / "run")
    before = {name: sha(os.path.join(run, name)) for name in ("ckpt.pt", "last.pt", "log.jsonl", "chck_500/ckpt.pt", "chck_1k/ckpt.pt")}
    for out, message in ((f"{run}/chck_1k", r"is a run's folder \(it holds ckpt\.pt\): export never writes into a run; choose a folder outside it"),
                         (f"{run}/hf", rf"lies inside {re.escape(run)}, which is a run's folder \(it holds ckpt\.pt, last\.pt, log\.jsonl\)"),
                         (f"{run}/chck_1k/x/y", rf"lies inside {re.escape(run)}/chck_1k, which is a run's folder")):
        for overwrite in ("False", "True"):
            with pytest.raises(InputError, match=rf"^--out={re.escape(out)} {message}"):
                export_hf.main(["--ckpt", run, "--all_checkpoints=True", "--out", out, f"--overwrite={overwrite}"])
    assert {name: sha(os.path.join(run, name)) for name in before} == before and not os.path.exists(f"{run}/hf")
    holder = tmp_path / "holder"
    copy_run(milestone_runs[1], holder / "old_run")
    with pytest.raises(InputError, match=r"--out=.*holder holds a run's folder .*old_run \(with ckpt\.pt, last\.pt, log\.jsonl\): replacing it"):
        export_hf.main(["--ckpt", os.path.join(run, "ckpt.pt"), "--out", str(holder), "--overwrite=True"])
    assert os.path.isfile(holder / "old_run" / "ckpt.pt")
    hf, imported = str(tmp_path / "hf"), str(tmp_path / "imported")
    export_hf.main(["--ckpt", os.path.join(run, "ckpt.pt"), "--out", hf])
    for _ in range(2):  # an import (ckpt.pt, meta.json with imported_from) replaced by the same import: not a run
        export_hf.main(["--from_hf", hf, "--out", imported])
    assert sorted(os.listdir(imported)) == ["ckpt.pt", "meta.json", "tokenizer.tiktoken"]


def test_all_checkpoints_refuses_a_missing_milestone_or_one_of_another_run(milestone_runs, tmp_path):
    a, b = milestone_runs
    out = str(tmp_path / "hf")
    run = copy_run(a, tmp_path / "missing")
    shutil.rmtree(os.path.join(run, "chck_500"))
    words = max(e["words_seen"] for e in read_log(os.path.join(run, "log.jsonl")))
    with pytest.raises(InputError, match=rf"^{re.escape(run)}/chck_500/ckpt\.pt: missing; .*log\.jsonl records {words:,} words seen, past this "
                                         r"milestone of the run's checkpoints_at \(500 words\)"):
        export_hf.main(["--ckpt", run, "--all_checkpoints=True", "--out", out])
    cases = {"seed": (os.path.join(b, "chck_1k"), "chck_1k", r"written with seed=2 \(the run: 1\)"),  # another run's milestone
             "label": (os.path.join(a, "chck_1k"), "chck_2k", r"chck_2k is not a milestone of the run's checkpoints_at=500,1k"),
             "early": (os.path.join(a, "chck_500"), "chck_1k", r"written at step \d+ \([\d,]+ words seen\), not the first step that reaches 1,000 words"),
             "late": (os.path.join(a, "chck_1k"), "chck_500", r"written at step \d+ \([\d,]+ words seen\), not the first step that reaches 500 words")}
    for case, (source, label, why) in cases.items():
        run = copy_run(a, tmp_path / case)
        shutil.rmtree(os.path.join(run, label), ignore_errors=True)
        shutil.copytree(source, os.path.join(run, label))
        with pytest.raises(InputError, match=rf"^{re.escape(run)}/{label}/ckpt\.pt: not a milestone of this run \({why}\); move it away$"):
            export_hf.main(["--ckpt", run, "--all_checkpoints=True", "--out", out])
    run = copy_run(a, tmp_path / "main")
    shutil.copy(os.path.join(b, "ckpt.pt"), os.path.join(run, "other.pt"))
    with pytest.raises(InputError, match=r"other\.pt: not a checkpoint of the run in .*main \(seed=2 \(the run: 1\)"):
        export_hf.main(["--ckpt", os.path.join(run, "other.pt"), "--all_checkpoints=True", "--out", out])
    assert not os.path.exists(out), "refused before any work"


# -----------------------------------------------------------------------------------------------
# Learning curves


def blimp_folder(root, tasks, n):
    """A BLiMP-layout folder: per task, n pairs (a sentence of the tiny grammar, and the same with its last word reversed)."""
    os.makedirs(root)
    for k, task in enumerate(tasks):
        with open(os.path.join(root, f"{task}.jsonl"), "w") as f:
            for s in synthetic_sentences(n, seed=100 + k):
                words = s.split()
                f.write(json.dumps({"sentence_good": s, "sentence_bad": " ".join(words[:-1] + [words[-1][::-1]]), "UID": task}) + "\n")
    return str(root)


def test_curves_score_every_milestone_as_eval_blimp_does_and_resume(milestone_runs, tmp_path, capsys, monkeypatch):
    blimp = blimp_folder(tmp_path / "blimp", ["agreement", "islands"], 6)
    supp = blimp_folder(tmp_path / "supp", ["turn_taking"], 6)
    out = str(tmp_path / "curves")
    argv = ["--runs", ",".join(milestone_runs), "--blimp", blimp, "--supplement", supp, "--blimp_limit=4", "--supplement_limit=2",
            "--out", out, "--device=cpu"]
    record = curves.main(argv)
    assert len(record["scores"]) == 4
    for run in milestone_runs:
        for label in ("chck_500", "chck_1k"):
            ckpt = os.path.join(run, label, "ckpt.pt")
            ref_b = eval_blimp.main(["--ckpt", ckpt, "--data", blimp, "--limit=4", "--out", str(tmp_path / "b.json"), "--device=cpu"])
            ref_s = eval_blimp.main(["--ckpt", ckpt, "--data", supp, "--limit=2", "--out", str(tmp_path / "s.json"), "--device=cpu"])
            s = record["scores"][f"{run}/{label}"]
            assert (s["blimp"], s["supplement"], s["blimp_pairs"], s["supplement_pairs"]) == (ref_b["blimp"]["score"], ref_s["blimp"]["score"], 8, 2)
            assert s["words_seen"] == read_checkpoint(ckpt)["words_seen"]
    rows = open(os.path.join(out, "curves.md")).read().splitlines()
    assert [r.split(" | ")[:2] for r in rows[2:6]] == [["| run1", "chck_500"], ["| run1", "chck_1k"], ["| run2", "chck_500"], ["| run2", "chck_1k"]]
    assert rows[6:] == ["", "Scored with eval_blimp.py's 2025 protocol (--protocol=2025)."] and record["settings"]["protocol"] == "2025"
    try:
        import matplotlib  # noqa: F401
        assert open(os.path.join(out, "curves.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert not os.path.exists(os.path.join(out, "curves.png"))
    capsys.readouterr()
    monkeypatch.setattr(curves, "score", lambda *a: pytest.fail("a scored milestone was scored again"))
    assert curves.main(argv)["scores"] == record["scores"]
    assert capsys.readouterr().out.count("scored before, skipped") == 4
    with pytest.raises(InputError, match=r"curves\.json was scored with other settings: blimp_limit 4 -> 5 \(choose another --out\)"):
        curves.main([*argv, "--blimp_limit=5"])


def test_curves_without_matplotlib_write_the_table(milestone_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    blimp, out = blimp_folder(tmp_path / "blimp", ["agreement"], 2), str(tmp_path / "curves")
    curves.main(["--runs", milestone_runs[0], "--blimp", blimp, "--out", out, "--device=cpu"])
    assert sorted(os.listdir(out)) == ["curves.json", "curves.md"]
    assert "matplotlib is not installed (pip install matplotlib): no plot written" in capsys.readouterr().out


@pytest.mark.slow
def test_curves_killed_after_a_milestone_and_at_a_random_instant_ends_as_an_uninterrupted_call(milestone_runs, tmp_path):
    """Issue 30: Ctrl-C to the process group once the first milestone is recorded (a boundary), SIGTERM at a random
    instant of the rerun; each ends in one line (130, 143), and the same command then writes what an uninterrupted
    call writes: the same scores, the same table."""
    blimp = blimp_folder(tmp_path / "blimp", [f"task{i}" for i in range(12)], 150)  # ~1 s per milestone: time to kill between
    cmd = lambda out: [sys.executable, os.path.join(ROOT, "experiments", "curves.py"), "--runs", ",".join(milestone_runs), "--blimp", blimp,
                       "--blimp_limit=0", "--out", str(out), "--device=cpu"]
    finish(cmd(tmp_path / "ref"), str(tmp_path), "ref")
    out = tmp_path / "curves"
    scored = lambda: len(json.load(open(out / "curves.json"))["scores"]) if os.path.isfile(out / "curves.json") else 0
    job = Job(cmd(out), str(tmp_path), 1)
    job.wait_until(lambda: scored() >= 1)
    job.stop("int")
    assert scored() < 4, "every milestone was scored before the kill: the test killed nothing"
    job = Job(cmd(out), str(tmp_path), 2)
    job.wait_until(lambda: "scored before, skipped" in open(job.out).read())
    time.sleep(random.Random(30).uniform(0, 1.5))
    job.stop("term")
    finish(cmd(out), str(tmp_path), 3)
    ref = json.load(open(tmp_path / "ref" / "curves.json"))
    assert json.load(open(out / "curves.json"))["scores"] == ref["scores"]
    assert open(out / "curves.md").read() == open(tmp_path / "ref" / "curves.md").read()


def test_a_milestone_folder_without_its_checkpoint_is_refused_not_left_out(milestone_runs, tmp_path):
    """curves.py dropped a milestone whose ckpt.pt was gone (a ckpt.pt.tmp, or a folder, in its place) and drew the
    curve without it, exit 0; export_hf.py --all_checkpoints and curves.py now refuse it in one line."""
    run = copy_run(milestone_runs[0], tmp_path / "run")
    os.remove(os.path.join(run, "chck_500", "ckpt.pt"))
    open(os.path.join(run, "chck_500", "ckpt.pt.tmp"), "wb").close()
    for call in (lambda: curves.main(["--runs", run, "--blimp", str(tmp_path), "--out", str(tmp_path / "c"), "--device=cpu"]),
                 lambda: export_hf.main(["--ckpt", run, "--all_checkpoints=True", "--out", str(tmp_path / "hf")])):
        with pytest.raises(InputError, match=rf"^{re.escape(run)}/chck_500: a milestone folder without its ckpt\.pt"):
            call()
