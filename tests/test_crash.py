"""Crash safety and bad input (slow: launches processes). A tiny teacher run and a tiny distillation run
are killed with SIGKILL again and again (at random moments, and deliberately while a checkpoint is being
written), resumed each time, and must end with the same logged losses and bit-identical weights as an
uninterrupted run. Ctrl-C and SIGTERM (also to a 2-rank torchrun job) save and exit cleanly. A non-finite
loss stops (or skips) as configured. The table of issue #13 (test_table, one row per case, in-process and
fast) checks that every bad input, damaged file, full disk and Ctrl-C is one line naming the file, key or
value, or a recovery, and leaves nothing behind. Run: python -m pytest tests/test_crash.py"""

import errno
import hashlib
import importlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from checkpoint import load_checkpoint, model_checkpoint, read_checkpoint, read_log, save_checkpoint
from config import load_config, run_main, runtime
from conftest import ROOT, strip_timing, student_argv, tiny_argv, write_corpus
from model import Llama, ModelConfig
from data import load_tokenizer
from train import CausalLM, Windows, check_train_config, model_config, train
from train_teacher import TEACHER_KEYS

# The child process slows every checkpoint write down (a sleep between writing the temporary file and
# renaming it), so that the test can kill it mid-write on purpose. Nothing else changes.
DRIVER = """
import sys, time, torch
_save = torch.save
def slow_save(*a, **k):
    _save(*a, **k)
    time.sleep(0.15)
torch.save = slow_save
sys.argv = [sys.argv[1]] + sys.argv[2:]
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(script, args):
    return subprocess.Popen([sys.executable, "-c", DRIVER, os.path.join(ROOT, script), *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def writing(out):
    return os.path.isdir(out) and any(f.endswith(".pt.tmp") for f in os.listdir(out))


def kill_and_resume(script, args, out, kills, rng):
    """Run to completion through `kills` SIGKILLs; every other kill waits for a checkpoint write."""
    during_write = 0
    for k in range(kills):
        resume = os.path.isfile(os.path.join(out, "last.pt"))  # else a kill came before the first checkpoint
        proc = launch(script, args + ["--resume=True" if resume else "--overwrite=True"])
        log_path, n0 = os.path.join(out, "log.jsonl"), len(read_log(os.path.join(out, "log.jsonl")))
        deadline = time.time() + 120
        if k % 2 == 0:  # mid-write: as soon as a temporary checkpoint file appears
            while time.time() < deadline and not writing(out) and proc.poll() is None:
                time.sleep(0.005)
            during_write += writing(out)
        else:  # at a random moment after training has made progress
            while time.time() < deadline and len(read_log(log_path)) <= n0 + 1 and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
        assert proc.poll() is None, "the run finished before it could be killed: make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if os.path.isfile(os.path.join(out, "last.pt")):
            read_checkpoint(os.path.join(out, "last.pt"))  # always loadable
    proc = launch(script, args + ["--resume=True"])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")], "no temporary file is left at the end"
    return during_write


def run_plain(script, args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def assert_same_run(a, b):
    assert strip_timing(read_log(os.path.join(a, "log.jsonl"))) == strip_timing(read_log(os.path.join(b, "log.jsonl")))
    wa, wb = (load_checkpoint(os.path.join(d, "last.pt"))[0].state_dict() for d in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ from the uninterrupted run"


@pytest.mark.slow
def test_sigkill_at_random_moments_and_mid_write_then_resume(prepared, tiny_teachers, tmp_path):
    rng = random.Random(0)
    teacher = dict(max_iters=60, eval_interval=5, log_interval=1, dim=48)
    ref, killed = str(tmp_path / "t_ref"), str(tmp_path / "t_killed")
    run_plain("train_teacher.py", tiny_argv(prepared, ref, **teacher))
    mid_write = kill_and_resume("train_teacher.py", tiny_argv(prepared, killed, **teacher), killed, kills=2, rng=rng)
    assert_same_run(ref, killed)
    student = dict(max_iters=50, eval_interval=5, log_interval=1)
    ref, killed = str(tmp_path / "s_ref"), str(tmp_path / "s_killed")
    run_plain("distill.py", student_argv(prepared, ref, tiny_teachers, **student))
    mid_write += kill_and_resume("distill.py", student_argv(prepared, killed, tiny_teachers, **student), killed, kills=2, rng=rng)
    assert_same_run(ref, killed)
    assert mid_write >= 2, f"only {mid_write} of the 4 kills hit a checkpoint write"
    print(f"4 SIGKILLs ({mid_write} during a checkpoint write): final weights and losses bit-identical")


# The child process SIGKILLs itself right after its k-th checkpoint file is renamed into place, i.e. between
# two checkpoint writes (ckpt.pt, then last.pt) or just after both.
KILL_AFTER_RENAME = """
import os, signal, sys
_replace, count, k = os.replace, [0], int(os.environ["KILL_AFTER_RENAMES"])
match = os.environ.get("KILL_RENAME_MATCH", ".pt")  # renames counted: those whose target ends with (".pt") or holds this
def replace_then_die(src, dst, *a, **kw):
    _replace(src, dst, *a, **kw)
    if str(dst).endswith(match) or (match != ".pt" and match in str(dst)):
        count[0] += 1
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace_then_die
sys.argv = [sys.argv[1]] + sys.argv[2:]
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_kill_after_each_checkpoint_rename_resumes_to_the_same_files(prepared, tiny_teachers, tmp_path):
    """Launch i dies right after its i-th checkpoint rename, so the kills walk through every rename of the run
    (ckpt.pt of an evaluation, then its last.pt, then the next ones); the files at the end equal an
    uninterrupted run's: ckpt.pt (what distillation, evaluation and export read), last.pt and the log."""
    for script, argv in (("train_teacher.py", lambda out: tiny_argv(prepared, out, max_iters=8, eval_interval=2, warmup_iters=1, log_interval=1)),
                         ("distill.py", lambda out: student_argv(prepared, out, tiny_teachers, max_iters=6, eval_interval=2, warmup_iters=1, log_interval=1))):
        ref, killed = str(tmp_path / f"{script}_ref"), str(tmp_path / f"{script}_killed")
        run_plain(script, argv(ref))
        kills = 0
        for i in range(1, 20):  # as a user would: the command, then after each kill the same command with --resume=True
            result = subprocess.run([sys.executable, "-c", KILL_AFTER_RENAME, os.path.join(ROOT, script), *argv(killed),
                                     *(["--resume=True"] if i > 1 else [])], cwd=ROOT, env={**ENV, "KILL_AFTER_RENAMES": str(i)},
                                    capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                break
            assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
            kills += 1
        assert kills >= 3, f"{script}: only {kills} kills"
        assert_same_run(ref, killed)
        wa, wb = (load_checkpoint(os.path.join(d, "ckpt.pt"))[0].state_dict() for d in (ref, killed))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{script}: ckpt.pt differs from the uninterrupted run's"


@pytest.mark.slow
def test_kill_after_each_rename_of_a_cache_build_resumes_to_the_same_cache(prepared, tiny_teachers, tmp_path):
    """distill.py --cache_only=True killed right after each file it renames into place (build.json, each block's
    progress file, header.json, the finished folder), then run again as a user would: the same command. The cache at
    the end holds the bytes of an uninterrupted build, and a killed build left no lock that blocks the next one."""
    argv = lambda path: student_argv(prepared, str(tmp_path / "unused"), tiny_teachers, teacher_cache=path, cache_only=True, cache_block=512)
    ref, killed = str(tmp_path / "ref_cache"), str(tmp_path / "killed_cache")
    run_plain("distill.py", argv(ref))
    kills = 0
    for i in range(1, 30):
        result = subprocess.run([sys.executable, "-c", KILL_AFTER_RENAME, os.path.join(ROOT, "distill.py"), *argv(killed)], cwd=ROOT,
                                env={**ENV, "KILL_AFTER_RENAMES": str(i), "KILL_RENAME_MATCH": "killed_cache"}, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        kills += 1
    assert kills >= 4, f"only {kills} kills"
    for name in ("ids.u16", "weights.f32", "plogp.f32"):
        assert open(os.path.join(ref, name), "rb").read() == open(os.path.join(killed, name), "rb").read(), name
    header = lambda p: {k: v for k, v in json.load(open(os.path.join(p, "header.json"))).items() if k != "info"}
    assert header(ref) == header(killed)
    assert sorted(os.listdir(tmp_path)) == ["killed_cache", "ref_cache"], os.listdir(tmp_path)  # no .partial, .lock or out_dir left


@pytest.mark.slow
def test_sigterm_during_a_cache_build_says_how_to_continue(prepared, tiny_teachers, tmp_path):
    path = str(tmp_path / "cache")
    args = student_argv(prepared, str(tmp_path / "unused"), tiny_teachers, teacher_cache=path, cache_only=True, cache_block=64)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "distill.py"), *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not any(n.startswith("progress.") for n in (os.listdir(path + ".partial") if os.path.isdir(path + ".partial") else [])):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]
    assert "run the same command to continue" in stdout and "SIGTERM" in stdout, stdout[-2000:]
    run_plain("distill.py", args)
    assert os.path.isfile(os.path.join(path, "header.json")) and not os.path.exists(path + ".lock")


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(prepared, tmp_path):
    out = str(tmp_path / "t")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_teacher.py"), *tiny_argv(prepared, out, max_iters=3000, eval_interval=1000)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while len(read_log(os.path.join(out, "log.jsonl"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]  # 128 + SIGINT: `train && distill` does not carry on
    assert "\nsaved " in stdout and "resume with --resume=True" in stdout and "Traceback" not in stderr
    step = read_checkpoint(os.path.join(out, "last.pt"))["step"]
    assert 3 <= step < 3000


class NaNAt(CausalLM):
    """The causal-LM objective with a NaN loss on the given calls (1-based)."""

    def __init__(self, model, cfg, bad_calls, where="loss"):
        super().__init__(model, cfg)
        self.bad, self.calls, self.where = set(bad_calls), 0, where

    def loss(self, model, x, y, causal=True):
        self.calls += 1
        loss, logs = super().loss(model, x, y, causal)
        if self.calls in self.bad and self.where == "loss":
            return loss * float("nan"), logs
        if self.calls in self.bad:  # a finite loss whose gradient is not: d/dw of (w * inf) * 0
            w = next(model.parameters())
            return loss + (w.flatten()[0] * float("inf")) * 0.0, logs
        return loss, logs


def tiny_run(prepared, out, **kw):
    cfg = load_config(TEACHER_KEYS, tiny_argv(prepared, out, **kw))
    check_train_config(cfg)
    _, info = load_tokenizer(prepared)
    torch.manual_seed(0)
    os.makedirs(cfg.out_dir, exist_ok=True)
    return cfg, runtime(cfg), Llama(model_config(cfg, info)), info, Windows(os.path.join(prepared, "train.bin"), cfg.seq_len)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(prepared, tmp_path):
    cfg, rt, model, info, windows = tiny_run(prepared, str(tmp_path / "t"), max_iters=20, eval_interval=4)
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 9; the last good checkpoint is .*last.pt"):
        train(cfg, rt, model, NaNAt(model, cfg, range(10, 100)), windows, info)
    ckpt = read_checkpoint(os.path.join(cfg.out_dir, "last.pt"))
    assert ckpt["step"] == 8 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_step_can_be_skipped_without_losing_steps(prepared, tmp_path, where):
    # the 4th step is bad, and so is the last one (step 6, an evaluation step and the stop_at step)
    cfg, rt, model, info, windows = tiny_run(prepared, str(tmp_path / "t"), max_iters=8, eval_interval=3, nonfinite="skip", stop_at=6)
    summary = train(cfg, rt, model, NaNAt(model, cfg, [4, 6], where), windows, info)
    assert summary["steps"] == 6, "stop_at is honoured on a skipped step"
    ckpt = read_checkpoint(os.path.join(cfg.out_dir, "last.pt"))
    assert ckpt["step"] == 6, "last.pt is not left behind"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values()) and all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_gradient_with_a_finite_loss_stops_before_writing_weights(prepared, tmp_path):
    cfg, rt, model, info, windows = tiny_run(prepared, str(tmp_path / "t"), max_iters=20, eval_interval=4)
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 7"):
        train(cfg, rt, model, NaNAt(model, cfg, [8], "gradient"), windows, info)
    ckpt = read_checkpoint(os.path.join(cfg.out_dir, "last.pt"))
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


# -----------------------------------------------------------------------------------------------
# The table of issue #13: every bad input, damaged file, full disk and interruption, one row each.
#
# A row runs a script's main(argv) in this process, through config.run_main as `python SCRIPT` does (no
# torch import per row); rows with proc=True run the real `python SCRIPT ...`, proving the __main__ wiring.
# An error row must exit 1 (130 for Ctrl-C) with exactly one stderr line, `error: ...` matching its
# pattern (or `interrupted`), and leave everything under its tmp_path as it was: no new, changed or
# removed file or folder, no *.partial / *.tmp / *.old. A recovery row must exit 0 and pass its check.

class Row:
    """advice (set from ADVICE below): for a refusal that names a next step, advice(e, argv, message) does what the
    message says (changing files, if it says to) and returns the argv to run next; the test expects it to succeed."""

    def __init__(self, name, script, argv, expect, setup=None, exit=1, left=None, proc=False, env=None, xfail=None):
        self.name, self.script, self.argv, self.expect, self.setup = name, script, argv, expect, setup
        self.exit, self.left, self.proc, self.env, self.xfail, self.advice = exit, left, proc, env or {}, xfail, None


class Recovers:
    """The expected outcome of a recovery row: exit 0, then check(e, stderr lines, stdout)."""

    def __init__(self, check):
        self.check = check


class Env:
    """What a row is built from: its own tmp folder and the session's prepared data, checkpoint and runs."""

    def __init__(self, tmp, prepared, ckpt, run, request, monkeypatch):
        self.tmp, self.prepared, self.ckpt, self._run, self.request, self.mp = tmp, prepared, ckpt, run, request, monkeypatch
        self.out = str(tmp / "out")
        import train
        monkeypatch.setattr(train, "peak_flops", lambda device: 1e12)  # MFU's reference matmul: ~2 s per run on one core, not tested here

    def file(self, rel, content):
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def cache(self):
        """A teacher cache of the table's checkpoint as the only teacher, built by distill.py --cache_only=True."""
        path = str(self.tmp / "cache")
        if not os.path.exists(path):
            from distill import main as distill_main
            distill_main(student_argv(self.prepared, str(self.tmp / "unused"), [self.ckpt], teacher_cache=path, cache_only=True, cache_k=4))
        return path

    def data(self):
        """A copy of the prepared data folder, to damage."""
        if not (self.tmp / "data").exists():
            shutil.copytree(self.prepared, self.tmp / "data")
        return str(self.tmp / "data")

    def run(self):
        """A copy of a tiny teacher run stopped at step 2 of 6 (ckpt.pt, last.pt, log.jsonl)."""
        if not (self.tmp / "run").exists():
            shutil.copytree(self._run, self.tmp / "run")
        return str(self.tmp / "run")

    def read_only(self, path):
        """os.access says `path` is not writable (as root, chmod 0o555 is not enforced, so the check is simulated)."""
        real, path = os.access, os.path.abspath(path)
        os.makedirs(path, exist_ok=True)
        self.mp.setattr(os, "access", lambda p, mode, *a, **k: False if os.path.abspath(p) == path and mode & os.W_OK else real(p, mode, *a, **k))

    def disk_full_at_fsync(self):
        """Every atomic write fails as on a full disk (the fsync of the temporary file raises ENOSPC)."""
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.mp.setattr(os, "fsync", full)

    def disk_full_in_torch_save(self):
        """Checkpoint writes fail halfway, as on a full disk: some bytes are written, then ENOSPC."""
        def full(obj, f, *a, **k):
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.mp.setattr(torch, "save", full)

    def interrupt(self, module, name):
        """Ctrl-C arrives while module.name runs."""
        def ctrl_c(*a, **k):
            raise KeyboardInterrupt
        self.mp.setattr(importlib.import_module(module), name, ctrl_c)


PROGRESS = re.compile(r"\|[^|]*\| *[\d.]+[kMGT]?/[\d.]+[kMGT]? \[")  # a tqdm bar on stderr (also 8.12k/8.12k): progress, not a message
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm moves the cursor between nested bars


def messages(stderr):
    """The non-empty stderr lines that are not progress bars."""
    return [l for l in (ANSI.sub("", l) for l in stderr.splitlines()) if l.strip() and not PROGRESS.search(l)]


def run_row(e, row, argv):
    """(exit status, non-empty stderr lines, stdout) of one row."""
    if row.proc:
        result = subprocess.run([sys.executable, os.path.join(ROOT, row.script), *argv], cwd=ROOT, env={**ENV, **row.env},
                                capture_output=True, text=True, timeout=120)
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        return result.returncode, messages(result.stderr), result.stdout
    for k, v in row.env.items():
        e.mp.setenv(k, v) if v is not None else e.mp.delenv(k, raising=False)
    main = importlib.import_module(row.script[:-3]).main
    capsys = e.request.getfixturevalue("capsys")
    capsys.readouterr()
    code = 0
    try:
        run_main(lambda: main(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    lines = messages(err)
    if isinstance(code, str):  # sys.exit("error: ..."): the interpreter prints it to stderr and exits 1
        code, lines = 1, lines + [code]
    return code or 0, lines, out


def snapshot(root):
    """Every path under root with its size and content hash (folders: None)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.join(dirpath, d)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else "?"
    return out


def leftovers(root):
    return [p for p in snapshot(root) if p.endswith((".partial", ".tmp", ".old"))]


def no_temporary_files(e, before, after):
    """For rows that may legitimately change their out_dir (a full disk mid-run): no half-written file."""
    assert not leftovers(e.tmp), leftovers(e.tmp)


def corpus(e, n=120):
    return write_corpus(e.tmp / "src", n_train=n, n_dev=20)


def fake_ckpt(e, name, obj):
    path = str(e.tmp / name)
    torch.save(obj, path)
    return path


class Evil:
    """A pickle that would create a file when unpickled: weights_only loading must refuse to run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def glue(e, files, layout="babylm"):
    """A small GLUE/SuperGLUE folder: {relative path: [example dict or raw line]}."""
    for rel, rows in files.items():
        e.file(f"glue/{rel}", "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(e.tmp / "glue")


RTE = lambda label=0, **kw: {"sentence1": "the cat sees the ball.", "sentence2": "a dog likes the moon.", "label": label, **kw}
GOOD_PAIR = json.dumps({"sentence_good": "the cat sees the ball.", "sentence_bad": "the cat see the ball."}) + "\n"


def blimp(e, files, name="blimp"):
    for fn, content in files.items():
        e.file(f"{name}/{fn}", content)
    return str(e.tmp / name)


def teacher(e, **kw):
    return tiny_argv(e.prepared, e.out, **kw)


def eval_args(e, data, out=None, **kw):
    return ["--ckpt", e.ckpt, "--data", data, "--out", out or os.path.join(e.out, "r.json"), *[f"--{k}={v}" for k, v in kw.items()]]


def sg_args(e, data, task="rte", out=None, **kw):
    return ["--ckpt", e.ckpt, "--task", task, "--data", data, "--out", out or os.path.join(e.out, "r.json"), "--epochs=1",
            *[f"--{k}={v}" for k, v in kw.items()]]


RESUME = dict(max_iters=6, eval_interval=2, warmup_iters=1)


def finished_at(step):
    def check(e, lines, stdout):
        assert read_checkpoint(os.path.join(e.tmp, "run", "last.pt"))["step"] == step
        assert read_log(os.path.join(e.tmp, "run", "log.jsonl"))[-1]["step"] == step
    return check


def finished_in_out(step, said=None):
    """A run in e.out that finished at `step`, with a log of that run only (no entry of a killed start left)."""
    def check(e, lines, stdout):
        assert read_checkpoint(os.path.join(e.out, "last.pt"))["step"] == step
        log = read_log(os.path.join(e.out, "log.jsonl"))
        assert log[-1]["step"] == step and [x["step"] for x in log if "loss" in x] == list(range(1, step + 1)), log
        assert said is None or said in stdout, stdout
    return check


def first_checkpoint_only(e):
    """What a SIGKILL right after the first ckpt.pt rename leaves: ckpt.pt, log.jsonl, a dead run's lock, no last.pt."""
    e.file("out/ckpt.pt", open(e.ckpt, "rb").read())
    e.file("out/log.jsonl", '{"step": 1, "loss": 9.0}\n{"step": 2, "val_loss": 9.0}\n')
    e.file("out/run.lock", str(dead_pid()))


def torn_log_recovers(e, lines, stdout):
    assert any("dropped a torn last line" in l for l in lines), lines
    finished_at(6)(e, lines, stdout)
    assert "Traceback" not in "\n".join(lines)


def skipped_last_step(e, lines, stdout):
    ckpt = read_checkpoint(os.path.join(e.out, "last.pt"))
    assert ckpt["step"] == 6 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert "step 5: non-finite loss or gradient, step skipped" in stdout


def nan_objective(e):
    import train_teacher
    e.mp.setattr(train_teacher, "CausalLM", lambda model, cfg: NaNAt(model, cfg, [4, 6]))  # the 4th step and the last one


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def interrupted_prepare_keeps_the_old_folder(e, before, after):
    assert before == after and not leftovers(e.tmp)


ROWS = [
    # --- config files and values (train_teacher.py): FILE:LINE for a config file, the key and its bound for a value
    Row("config syntax error", "train_teacher.py", lambda e: [e.file("syntax.py", "dim = 32\nlr = = 3\n"), *teacher(e)], r"syntax\.py:2: invalid syntax"),
    Row("config syntax error (process)", "train_teacher.py", lambda e: [e.file("syntax.py", "dim = 32\nlr = (1,\n"), *teacher(e)], r"syntax\.py:2: ", proc=True),
    Row("config NameError", "train_teacher.py", lambda e: [e.file("name.py", "dim = 32\nlr = learning_rate\n"), *teacher(e)], r"name\.py:2: NameError: name 'learning_rate' is not defined"),
    Row("config ZeroDivisionError", "train_teacher.py", lambda e: [e.file("zero.py", "\n\nlr = 1 / 0\n"), *teacher(e)], r"zero\.py:3: ZeroDivisionError"),
    Row("config non-UTF-8 byte", "train_teacher.py", lambda e: [e.file("latin1.py", b"dim = 32\n# caf\xe9\n"), *teacher(e)], r"latin1\.py:2: not UTF-8 text \(byte 0xe9\)"),
    Row("config file missing", "train_teacher.py", lambda e: [str(e.tmp / "nope.py"), *teacher(e)], r"nope\.py: config file not found"),
    Row("config unknown key", "train_teacher.py", lambda e: [e.file("typo.py", "dim = 32\nlearnig_rate = 1e-3\n"), *teacher(e)], r"typo\.py: unknown key 'learnig_rate'"),
    Row("config wrong type", "train_teacher.py", lambda e: [e.file("type.py", "dim = 'wide'\n"), *teacher(e)], r"type\.py: dim='wide' has type str, expected int"),
    Row("--lr=-1", "train_teacher.py", lambda e: teacher(e, lr=-1), r"--lr: lr=-1\.0: expected a number >0"),
    Row("--lr=1e999 (inf)", "train_teacher.py", lambda e: teacher(e, lr="1e999"), r"lr=inf: expected a number >0"),
    Row("--lr=fast", "train_teacher.py", lambda e: teacher(e, lr="fast"), r"lr='fast' has type str, expected float"),
    Row("--min_lr=-0.01", "train_teacher.py", lambda e: teacher(e, min_lr=-0.01), r"min_lr=-0\.01: expected a number >=0"),
    Row("--weight_decay=-1", "train_teacher.py", lambda e: teacher(e, weight_decay=-1), r"weight_decay=-1\.0: expected a number >=0"),
    Row("--eval_windows=0", "train_teacher.py", lambda e: teacher(e, eval_windows=0), r"eval_windows=0: expected a number >0"),
    Row("--eval_windows=-3", "train_teacher.py", lambda e: teacher(e, eval_windows=-3), r"eval_windows=-3: expected a number >0"),
    Row("--n_heads=0", "train_teacher.py", lambda e: teacher(e, n_heads=0), r"n_heads=0: expected a number >0"),
    Row("--n_kv_heads=-2", "train_teacher.py", lambda e: teacher(e, n_kv_heads=-2), r"n_kv_heads=-2: expected a number >=0"),
    Row("--n_kv_heads=3 (does not divide)", "train_teacher.py", lambda e: teacher(e, n_kv_heads=3), r"n_heads=4 is not divisible by n_kv_heads=3"),
    Row("--dim=30 (not divisible by heads)", "train_teacher.py", lambda e: teacher(e, dim=30), r"dim=30 is not divisible by n_heads=4"),
    Row("--beta2=1.5", "train_teacher.py", lambda e: teacher(e, beta2=1.5), r"beta2=1\.5: expected a number 0 to 1"),
    Row("--epochs=0", "train_teacher.py", lambda e: teacher(e, epochs=0, max_iters=0), r"epochs=0\.0: expected a number >0"),
    Row("--batch_size=0", "train_teacher.py", lambda e: teacher(e, batch_size=0), r"batch_size=0: expected a number >0"),
    Row("--nonfinite=maybe", "train_teacher.py", lambda e: teacher(e, nonfinite="maybe"), r"nonfinite='maybe': expected one of 'stop', 'skip'"),
    Row("min_lr above lr", "train_teacher.py", lambda e: teacher(e, lr=1e-3, min_lr=1e-2), r"min_lr=0\.01 is larger than lr=0\.001"),
    Row("max_iters below warmup", "train_teacher.py", lambda e: teacher(e, max_iters=5, warmup_iters=10), r"max_iters=5 is not larger than warmup_iters=10"),
    Row("seq_len over max_seq_len", "train_teacher.py", lambda e: teacher(e, seq_len=300), r"seq_len=300 is longer than the model's max_seq_len=256"),
    Row("batch not a multiple of micro-batch", "train_teacher.py", lambda e: teacher(e, batch_size=12), r"batch_size=12 is not a multiple of micro_batch_size=8"),
    Row("batch larger than the training set", "train_teacher.py", lambda e: teacher(e, batch_size=65536, micro_batch_size=65536), r"batch_size=65536 is more than the \d+ training windows"),
    Row("unknown override", "train_teacher.py", lambda e: teacher(e) + ["--dropout=0.1"], r"--dropout: unknown key 'dropout'"),
    Row("override without a value", "train_teacher.py", lambda e: teacher(e) + ["--lr"], r"--lr: expected a value"),
    Row("stray argument", "train_teacher.py", lambda e: teacher(e) + ["extra"], r"argument 'extra': expected --key=value"),
    Row("AntLM schedule typo", "train_teacher.py", lambda e: teacher(e, objective="clm:4,mlmm:16"), r"objective='clm:4,mlmm:16'.*bad part 'mlmm:16'"),
    Row("--device=cuda without a GPU", "train_teacher.py", lambda e: teacher(e, device="cuda"), r"device='cuda' but no GPU is visible"),
    Row("RANK without LOCAL_RANK", "train_teacher.py", lambda e: teacher(e), r"RANK is set but LOCAL_RANK, WORLD_SIZE is not", env={"RANK": "0", "LOCAL_RANK": None, "WORLD_SIZE": None}),
    Row("RANK without LOCAL_RANK (process)", "train_teacher.py", lambda e: teacher(e), r"RANK is set but LOCAL_RANK is not", proc=True, env={"RANK": "0", "WORLD_SIZE": "1"}),
    Row("RANK not an integer", "train_teacher.py", lambda e: teacher(e), r"must be integers: RANK='zero'", env={"RANK": "zero", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}),
    # --- BabyLM rules (issue 22): refused before any work, naming the rule or the milestone
    Row("track strict-small, 11 epochs", "train_teacher.py", lambda e: teacher(e, track="strict-small", epochs=11, max_iters=0),
        r"track=strict-small: the run is planned for 11 epochs \(\d+ steps, \d+ per epoch\); BabyLM allows at most 10 epochs"),
    Row("track strict-small, 11 epochs (process)", "train_teacher.py", lambda e: teacher(e, track="strict-small", epochs=11, max_iters=0),
        r"at most 10 epochs", proc=True),
    Row("--track=small", "train_teacher.py", lambda e: teacher(e, track="small"), r"track='small': expected one of 'none', 'strict-small', 'strict'"),
    Row("milestone beyond the run", "train_teacher.py", lambda e: teacher(e, checkpoints_at="1k,1M"),
        r"checkpoints_at: 1M lies beyond the run's planned length \(20 steps, [\d,]+ words seen\)"),
    Row("milestone not a word count", "train_teacher.py", lambda e: teacher(e, checkpoints_at="1k,soon"), r"checkpoints_at: 'soon' is not a word count"),
    Row("distill: 11 epochs in strict-small", "distill.py", lambda e: student_argv(e.prepared, e.out, [e.ckpt], track="strict-small", epochs=11, max_iters=0),
        r"track=strict-small: the run is planned for 11 epochs"),
    Row("export: --all_checkpoints of a run without milestones", "export_hf.py", lambda e: ["--ckpt", e.run(), "--all_checkpoints=True", "--out", e.out],
        r"run: no milestone checkpoints chck_<words>/ckpt\.pt \(train with --checkpoints_at=babylm"),
    Row("export: --push without huggingface_hub", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out", e.out, "--push", "me/model"],
        r"--push needs the huggingface_hub package: pip install huggingface_hub", setup=lambda e: e.mp.setitem(sys.modules, "huggingface_hub", None)),
    Row("export: --push with --from_hf", "export_hf.py", lambda e: ["--from_hf", str(e.tmp), "--out", e.out, "--push", "me/model"],
        r"--all_checkpoints, --push and --hub_cache export a run of this project"),
    # --- output folder of a run
    Row("--out_dir is a file", "train_teacher.py", lambda e: tiny_argv(e.prepared, e.file("taken", "x")), r"out_dir=.*taken: exists and is not a folder"),
    Row("--out_dir empty", "train_teacher.py", lambda e: tiny_argv(e.prepared, ""), r"out_dir: empty; expected an output folder"),
    Row("--out_dir under a file", "train_teacher.py", lambda e: tiny_argv(e.prepared, os.path.join(e.file("taken", "x"), "run")), r"taken is a file, not a folder"),
    Row("--out_dir read-only", "train_teacher.py", lambda e: tiny_argv(e.prepared, os.path.join(e.tmp, "ro", "run")), r"ro is not writable",
        setup=lambda e: e.read_only(e.tmp / "ro")),
    # --- damaged data
    Row("data folder missing", "train_teacher.py", lambda e: tiny_argv(str(e.tmp / "nodata"), e.out), r"nodata/meta\.json: not found \(run prepare_data\.py first\)"),
    Row("truncated meta.json", "train_teacher.py", lambda e: tiny_argv(e.data(), e.out), r"meta\.json: damaged",
        setup=lambda e: open(os.path.join(e.data(), "meta.json"), "r+").truncate(100)),
    Row("missing tokenizer.tiktoken", "train_teacher.py", lambda e: tiny_argv(e.data(), e.out), r"tokenizer\.tiktoken: not found \(run prepare_data\.py again\)",
        setup=lambda e: os.remove(os.path.join(e.data(), "tokenizer.tiktoken"))),
    Row("tokenizer swapped under meta.json", "train_teacher.py", lambda e: tiny_argv(e.data(), e.out), r"tokenizer\.tiktoken: does not match the sha256",
        setup=lambda e: open(os.path.join(e.data(), "tokenizer.tiktoken"), "ab").write(b"IQ== 999\n")),
    Row("odd-sized train.bin", "train_teacher.py", lambda e: tiny_argv(e.data(), e.out), r"train\.bin: size \d+ bytes is not a multiple of 2",
        setup=lambda e: open(os.path.join(e.data(), "train.bin"), "ab").write(b"\0")),
    Row("empty train.bin", "train_teacher.py", lambda e: tiny_argv(e.data(), e.out), r"train\.bin: empty token file",
        setup=lambda e: open(os.path.join(e.data(), "train.bin"), "wb").close()),
    # --- one run per out_dir; resume
    Row("fresh start into a run", "train_teacher.py", lambda e: tiny_argv(e.prepared, e.run(), **RESUME), r"run already holds a run: resume it with --resume=True"),
    Row("resume with a changed lr", "train_teacher.py", lambda e: tiny_argv(e.prepared, e.run(), **RESUME, lr=1e-3) + ["--resume=True"],
        r"last\.pt was written with another config: lr 0\.003 -> 0\.001"),
    Row("resume with a changed seed and dim", "train_teacher.py", lambda e: tiny_argv(e.prepared, e.run(), **RESUME, seed=7, dim=48) + ["--resume=True"],
        r"another config: dim 32 -> 48; seed 1337 -> 7"),
    Row("resume with nothing saved yet starts from step 0", "train_teacher.py", lambda e: teacher(e, **RESUME) + ["--resume=True"],
        Recovers(finished_in_out(6, "out/last.pt does not exist (nothing saved yet): starting from step 0")), left=no_temporary_files),
    Row("killed between the first ckpt.pt and last.pt: the same command", "train_teacher.py", lambda e: teacher(e, **RESUME),
        Recovers(finished_in_out(6)), setup=first_checkpoint_only, left=no_temporary_files),
    Row("killed between the first ckpt.pt and last.pt: --resume=True", "train_teacher.py", lambda e: teacher(e, **RESUME) + ["--resume=True"],
        Recovers(finished_in_out(6, "nothing saved yet")), setup=first_checkpoint_only, left=no_temporary_files),
    Row("resume from a truncated last.pt", "train_teacher.py", lambda e: tiny_argv(e.prepared, e.run(), **RESUME) + ["--resume=True"],
        r"last\.pt: not a readable checkpoint .*ckpt\.pt \(best validation\) may still be good",
        setup=lambda e: open(os.path.join(e.run(), "last.pt"), "r+b").truncate(1000)),
    Row("two runs into one out_dir", "train_teacher.py", lambda e: tiny_argv(e.prepared, e.run(), **RESUME) + ["--resume=True"],
        r"run is in use by another run \(pid \d+", setup=lambda e: e.file("run/run.lock", str(os.getppid()))),
    Row("torn last line of log.jsonl", "train_teacher.py", lambda e: tiny_argv(e.prepared, e.run(), **RESUME) + ["--resume=True"], Recovers(torn_log_recovers),
        setup=lambda e: open(os.path.join(e.run(), "log.jsonl"), "a").write('{"step": 3, "lo'), left=no_temporary_files),
    Row("stale run.lock of a dead run", "train_teacher.py", lambda e: tiny_argv(e.prepared, e.run(), **RESUME) + ["--resume=True"], Recovers(finished_at(6)),
        setup=lambda e: e.file("run/run.lock", str(dead_pid())), left=no_temporary_files),
    Row("nonfinite=skip on the last step", "train_teacher.py", lambda e: teacher(e, max_iters=6, eval_interval=3, warmup_iters=1, nonfinite="skip"),
        Recovers(skipped_last_step), setup=nan_objective, left=no_temporary_files),
    # --- a full disk during a run: one line, no half-written file, the last good checkpoint kept
    Row("disk full during a checkpoint write", "train_teacher.py", lambda e: teacher(e, max_iters=4, eval_interval=2, warmup_iters=1),
        r"out/(ckpt|last)\.pt: cannot write \(No space left on device\)", setup=lambda e: e.disk_full_in_torch_save(), left=no_temporary_files),
    Row("disk full during a log append", "train_teacher.py", lambda e: teacher(e, max_iters=4, eval_interval=2, warmup_iters=1),
        r"out/log\.jsonl: cannot append to the log \(No space left on device\)", setup=lambda e: full_disk_on_append(e), left=no_temporary_files),
    # --- prepare_data.py
    Row("prepare: missing corpus", "prepare_data.py", lambda e: ["--src", str(e.tmp / "nope"), "--out", e.out], r"nope: corpus not found"),
    Row("prepare: empty corpus", "prepare_data.py", lambda e: ["--src", str(e.tmp / "src"), "--out", e.out], r"the train files are all empty",
        setup=lambda e: (e.file("src/train_10M/a.train", ""), e.file("src/dev/a.dev", ""))),
    Row("prepare: non-UTF-8 text", "prepare_data.py", lambda e: ["--src", str(e.tmp / "src"), "--out", e.out], r"a\.train: not valid UTF-8",
        setup=lambda e: (e.file("src/train_10M/a.train", b"caf\xe9\n"), e.file("src/dev/a.dev", "x\n"))),
    Row("prepare: --out is a file", "prepare_data.py", lambda e: ["--src", corpus(e), "--out", e.file("taken", "x")], r"--out=.*taken: exists and is not a folder"),
    Row("prepare: --out empty", "prepare_data.py", lambda e: ["--src", corpus(e), "--out="], r"--out: empty; expected an output folder"),
    Row("prepare: --out under a file", "prepare_data.py", lambda e: ["--src", corpus(e), "--out", os.path.join(e.file("taken", "x"), "d")], r"taken is a file, not a folder"),
    Row("prepare: --out read-only", "prepare_data.py", lambda e: ["--src", corpus(e), "--out", str(e.tmp / "ro" / "d")], r"ro is not writable",
        setup=lambda e: e.read_only(e.tmp / "ro")),
    Row("prepare: --vocab_size=100", "prepare_data.py", lambda e: ["--src", corpus(e), "--out", e.out, "--vocab_size=100"], r"--vocab_size=100: expected 260\.\.65536"),
    Row("prepare: --vocab_size=0", "prepare_data.py", lambda e: ["--src", corpus(e), "--out", e.out, "--vocab_size=0"], r"vocab_size=0: expected a number >0"),
    Row("prepare: Ctrl-C while encoding, over an old folder", "prepare_data.py", lambda e: ["--src", corpus(e), "--out", e.data(), "--vocab_size=300"], r"^interrupted$",
        exit=130, setup=lambda e: (e.data(), e.interrupt("prepare_data", "encode_docs")), left=interrupted_prepare_keeps_the_old_folder),
    Row("prepare: disk full", "prepare_data.py", lambda e: ["--src", corpus(e), "--out", e.out, "--vocab_size=300"],
        r"tokenizer\.tiktoken: cannot write \(No space left on device\)", setup=lambda e: e.disk_full_at_fsync()),
    # --- export_hf.py
    Row("export: both --ckpt and --from_hf", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--from_hf", str(e.tmp), "--out", e.out], r"exactly one of --ckpt"),
    Row("export: --out is a file", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out", e.file("taken", "x")], r"--out=.*taken: exists and is not a folder"),
    Row("export: --out empty", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out="], r"--out: empty"),
    Row("export: --out read-only", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out", str(e.tmp / "ro" / "hf")], r"ro is not writable",
        setup=lambda e: e.read_only(e.tmp / "ro")),
    Row("export: missing checkpoint", "export_hf.py", lambda e: ["--ckpt", str(e.tmp / "none.pt"), "--out", e.out], r"none\.pt: checkpoint not found"),
    Row("export: Ctrl-C mid-export, over an old export", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out", str(e.tmp / "hf")], r"^interrupted$", exit=130,
        setup=lambda e: (e.file("hf/config.json", "{}"), e.interrupt("export_hf", "tokenizer_json")), left=interrupted_prepare_keeps_the_old_folder),
    Row("export: disk full", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out", e.out], r"model\.safetensors: cannot write \(No space left on device\)",
        setup=lambda e: e.disk_full_at_fsync()),
    Row("export: --out is the run's own folder", "export_hf.py", lambda e: ["--ckpt", os.path.join(e.run(), "ckpt.pt"), "--out", e.run()],
        r"--out=.*run holds the input .*run/ckpt\.pt: replacing it would delete the input"),
    Row("export: --out is the folder of runs", "export_hf.py", lambda e: ["--ckpt", os.path.join(e.run(), "ckpt.pt"), "--out", str(e.tmp)],
        r"holds the input"),
    Row("export: --out holds other files", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out", str(e.tmp / "notes")],
        r"--out=.*notes holds a\.txt, b\.txt, not an earlier export: choose a new or empty folder \(or --overwrite=True",
        setup=lambda e: (e.file("notes/a.txt", "mine"), e.file("notes/b.txt", "mine"))),
    Row("export: over an earlier export", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out", str(e.tmp / "hf")],
        Recovers(lambda e, lines, stdout: json.load(open(e.tmp / "hf" / "config.json"))["model_type"] == "llama" or pytest.fail("not replaced")),
        setup=lambda e: (e.file("hf/config.json", "{}"), e.file("hf/model.safetensors", "old")), left=no_temporary_files),
    Row("export: --overwrite=True replaces a folder of other files", "export_hf.py", lambda e: ["--ckpt", e.ckpt, "--out", str(e.tmp / "notes"), "--overwrite=True"],
        Recovers(lambda e, lines, stdout: os.path.exists(e.tmp / "notes" / "a.txt") and pytest.fail("not replaced")),
        setup=lambda e: e.file("notes/a.txt", "mine"), left=no_temporary_files),
    Row("import: hidden_act gelu", "export_hf.py", lambda e: imp(e, config={"hidden_act": "gelu"}), r"hidden_act='gelu'; model\.py reproduces only 'silu'"),
    Row("import: attention biases", "export_hf.py", lambda e: imp(e, config={"attention_bias": True}), r"attention_bias=True; model\.py reproduces only false"),
    Row("import: RoPE scaling", "export_hf.py", lambda e: imp(e, config={"rope_scaling": {"rope_type": "linear", "factor": 2.0}}), r"rope_scaling=.*linear"),
    Row("import: config.json not JSON", "export_hf.py", lambda e: imp(e, raw_config="{oops"), r"hf/config\.json: not JSON"),
    Row("import: config.json without hidden_size", "export_hf.py", lambda e: imp(e, drop="hidden_size"), r"config\.json: no hidden_size"),
    Row("import: weights of other sizes than config.json", "export_hf.py", lambda e: imp(e, config={"intermediate_size": 96}),
        r"hf: the weights do not match config\.json's sizes"),
    Row("import: tokenizer larger than the model", "export_hf.py", lambda e: imp(e, extra_token=True), r"vocab_size 320 but .*tokenizer\.json has 321 tokens"),
    Row("import: vocabulary padded beyond the tokenizer", "export_hf.py", lambda e: imp(e, config={"vocab_size": 384}, pad_rows=64),
        r"vocab_size 384 but .*tokenizer\.json has 320 tokens"),
    Row("import: tokenizer.json without a model", "export_hf.py", lambda e: imp(e, tokenizer_drop="model"), r"tokenizer\.json: not a byte-level BPE"),
    Row("import: truncated model.safetensors", "export_hf.py", lambda e: imp(e, truncate=2000), r"model\.safetensors: not a readable safetensors file"),
    Row("import: a missing shard", "export_hf.py", lambda e: imp(e, missing_shard=True), r"model-00002-of-00002\.safetensors: not found"),
    Row("import: no config.json", "export_hf.py", lambda e: ["--from_hf", str(e.tmp / "empty"), "--out", e.out], r"empty/config\.json: not found",
        setup=lambda e: (e.tmp / "empty").mkdir()),
    # --- checkpoints: weights_only, damaged, foreign
    Row("pickle that runs code (weights_only)", "eval_blimp.py", lambda e: ["--ckpt", fake_ckpt(e, "evil.pt", {"model": Evil(str(e.tmp / "pwned"))}),
                                                                             "--data", blimp(e, {"a.jsonl": GOOD_PAIR}), "--out", os.path.join(e.out, "r.json")],
        r"evil\.pt: not a readable checkpoint \(UnpicklingError"),
    Row("truncated checkpoint", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": GOOD_PAIR})) [:1] + [e.file("half.pt", open(e.ckpt, "rb").read()[:3000])]
        + eval_args(e, str(e.tmp / "blimp"))[2:], r"half\.pt: not a readable checkpoint"),
    Row("a torch file that is not a checkpoint", "eval_blimp.py", lambda e: ["--ckpt", fake_ckpt(e, "other.pt", {"weights": torch.zeros(2)}), "--data", blimp(e, {"a.jsonl": GOOD_PAIR}),
                                                                              "--out", os.path.join(e.out, "r.json")], r"other\.pt: not a checkpoint of this project"),
    # --- eval_blimp.py
    Row("blimp: --limit=-1", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": GOOD_PAIR}), limit=-1), r"limit=-1: expected a number >=0"),
    Row("blimp: one empty paradigm file", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": GOOD_PAIR * 2, "b.jsonl": ""})), r"blimp/b\.jsonl: no pairs"),
    Row("blimp: a file of blank lines", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": GOOD_PAIR, "b.jsonl": "\n" * 5000})), r"blimp/b\.jsonl: no pairs"),
    Row("blimp: all files empty", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": "", "b.jsonl": ""})), r"blimp/a\.jsonl: no pairs"),
    Row("blimp: all files empty (process)", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": "", "b.jsonl": ""})), r"blimp/a\.jsonl: no pairs", proc=True),
    Row("blimp: malformed line", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"p.jsonl": GOOD_PAIR + "{broken\n"})), r"p\.jsonl:2: expected a JSON object with string fields"),
    Row("blimp: missing field", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"p.jsonl": GOOD_PAIR + '{"sentence_good": "a"}\n'})), r"p\.jsonl:2: expected a JSON object"),
    Row("blimp: non-UTF-8 line", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"p.jsonl": GOOD_PAIR.encode() * 3 + b'{"sentence_good": "caf\xe9"}\n'})),
        r"p\.jsonl:4: not UTF-8 text \(byte 0xe9\)"),
    Row("blimp: missing folder", "eval_blimp.py", lambda e: eval_args(e, str(e.tmp / "nope")), r"nope: BLiMP folder not found"),
    Row("blimp: folder without .jsonl", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"readme.txt": "x"})), r"blimp: no \.jsonl files"),
    Row("blimp: empty supplement file", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": GOOD_PAIR})) + ["--supplement", blimp(e, {"s.jsonl": ""}, "supp")],
        r"supp/s\.jsonl: no pairs"),
    Row("blimp: --out is an existing folder", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": GOOD_PAIR}), out=str(e.tmp / "dir")), r"dir: is a folder; expected a file path",
        setup=lambda e: (e.tmp / "dir").mkdir()),
    Row("blimp: --out under a file", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": GOOD_PAIR}), out=os.path.join(e.file("taken", "x"), "r.json")), r"taken is a file, not a folder"),
    Row("blimp: --out read-only", "eval_blimp.py", lambda e: eval_args(e, blimp(e, {"a.jsonl": GOOD_PAIR}), out=str(e.tmp / "ro" / "r.json")), r"ro is not writable",
        setup=lambda e: e.read_only(e.tmp / "ro")),
    Row("blimp: missing --ckpt", "eval_blimp.py", lambda e: ["--data", str(e.tmp)], r"--ckpt: required"),
    Row("blimp: --protocol=2022", "eval_blimp.py", lambda e: eval_args(e, str(e.tmp), protocol=2022), r"--protocol: protocol='2022': expected one of '2023', '2024', '2025'"),
    Row("blimp: a model of another tokenizer", "eval_blimp.py", lambda e: ["--ckpt", other_vocab_ckpt(e), "--data", blimp(e, {"a.jsonl": GOOD_PAIR}),
                                                                           "--data_dir", e.prepared, "--out", os.path.join(e.out, "r.json")], r"other_vocab\.pt was made with tokenizer 'bpe400'"),
    # --- eval_superglue.py
    Row("glue: validation labels all -1", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(0), RTE(1)], "rte.valid.jsonl": [RTE(-1), RTE(-1)]})),
        r"rte\.valid\.jsonl:1: label -1: expected one of 0, 1 \(an unlabelled test file\?\)"),
    Row("glue: label 7", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(0), RTE(7)], "rte.valid.jsonl": [RTE(1)]})),
        r"rte\.train\.jsonl:2: label 7: expected one of 0, 1"),
    Row("glue: label 'maybe'", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(0), RTE(1), RTE("maybe")], "rte.valid.jsonl": [RTE(1)]})),
        r"rte\.train\.jsonl:3: label 'maybe': expected one of 0, 1"),
    Row("glue: label true (a bool)", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(True)], "rte.valid.jsonl": [RTE(1)]})),
        r"rte\.train\.jsonl:1: label True: expected one of 0, 1"),
    Row("glue: missing sentence2", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(0), {"sentence1": "a", "label": 1}], "rte.valid.jsonl": [RTE(1)]})),
        r"rte\.train\.jsonl:2: missing field 'sentence2'"),
    Row("glue: a text that is not a string", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(0, sentence2=None)], "rte.valid.jsonl": [RTE(1)]})),
        r"rte\.train\.jsonl:1: expected a JSON object whose text fields are strings"),
    Row("glue: not a JSON line", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(0), "{oops"], "rte.valid.jsonl": [RTE(1)]})),
        r"rte\.train\.jsonl:2: not a JSON line"),
    Row("glue: empty training file", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [], "rte.valid.jsonl": [RTE(1)]})), r"rte has no training examples"),
    Row("glue: empty validation file", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(1)], "rte.valid.jsonl": []})), r"rte has no validation examples"),
    Row("glue: --epochs=0", "eval_superglue.py", lambda e: sg_args(e, str(e.tmp)) + ["--epochs=0"], r"epochs=0: expected a number >0"),
    Row("glue: --batch_size=0", "eval_superglue.py", lambda e: sg_args(e, str(e.tmp), batch_size=0), r"batch_size=0: expected a number >0"),
    Row("glue: --max_len=1", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.train.jsonl": [RTE(1)], "rte.valid.jsonl": [RTE(1)]}), max_len=1), r"max_len=1: expected at least 3"),
    Row("glue: task_overrides epochs=0", "eval_superglue.py", lambda e: sg_args(e, str(e.tmp)) + ["--task_overrides={'rte': {'epochs': 0}}"],
        r"task_overrides\['rte'\]: epochs=0: expected a number >0"),
    Row("glue: task_overrides max_len=2", "eval_superglue.py", lambda e: sg_args(e, str(e.tmp)) + ["--task_overrides={'rte': {'max_len': 2}}"],
        r"task_overrides\['rte'\]: max_len=2: expected at least 3"),
    Row("glue: --task all with nothing runnable", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"boolq.valid.jsonl": [RTE(1)], "cola.valid.jsonl": [RTE(1)]}), task="all"),
        r"glue: no task with both a training and a validation file"),
    Row("glue: unknown task", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.valid.jsonl": [RTE(1)]}), task="stsb"), r"--task='stsb': unknown"),
    Row("glue: missing training file", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.valid.jsonl": [RTE(1)]})), r"rte: no training file rte\.train\.jsonl"),
    Row("glue: --out under a file", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.valid.jsonl": [RTE(1)]}), out=os.path.join(e.file("taken", "x"), "r.json")),
        r"taken is a file, not a folder"),
    Row("glue: --out under a file (process)", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"rte.valid.jsonl": [RTE(1)]}), out=os.path.join(e.file("taken", "x"), "r.json")),
        r"taken is a file, not a folder", proc=True),
    Row("glue: --out is an existing folder", "eval_superglue.py", lambda e: sg_args(e, str(e.tmp), out=str(e.tmp)), r"is a folder; expected a file path"),
    Row("superglue: CB label 'maybe'", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"CB/train.jsonl": [{"premise": "a", "hypothesis": "b", "label": "maybe"}],
                                                                                          "CB/val.jsonl": [{"premise": "a", "hypothesis": "b", "label": "neutral"}]}), task="cb"),
        r"CB/train\.jsonl:1: label 'maybe': expected one of 'entailment', 'contradiction', 'neutral'"),
    Row("superglue: BoolQ label 'True' (a string)", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"BoolQ/train.jsonl": [{"question": "a", "passage": "b", "label": True}],
                                                                                                    "BoolQ/val.jsonl": [{"question": "a", "passage": "b", "label": "True"}]}), task="boolq"),
        r"BoolQ/val\.jsonl:1: label 'True': expected one of False, True"),
    Row("superglue: WSC without target", "eval_superglue.py", lambda e: sg_args(e, glue(e, {"WSC/train.jsonl": [{"text": "a", "label": True}], "WSC/val.jsonl": []}), task="wsc"),
        r"WSC/train\.jsonl:1: missing field 'target'"),
    # --- distill.py
    Row("distill: missing teacher", "distill.py", lambda e: student_argv(e.prepared, e.out, [str(e.tmp / "none.pt")]), r"none\.pt: checkpoint not found"),
    Row("distill: teachers with different vocabularies", "distill.py", lambda e: student_argv(e.prepared, e.out, [e.ckpt, other_vocab_ckpt(e)]),
        r"other_vocab\.pt was made with tokenizer 'bpe400'"),
    Row("distill: --alpha=1.5", "distill.py", lambda e: student_argv(e.prepared, e.out, [e.ckpt], alpha=1.5), r"alpha=1\.5: expected a number 0 to 1"),
    Row("distill: --temperature=0", "distill.py", lambda e: student_argv(e.prepared, e.out, [e.ckpt], temperature=0), r"temperature=0\.0: expected a number >0"),
    Row("distill: teacher_weights of the wrong length", "distill.py", lambda e: student_argv(e.prepared, e.out, [e.ckpt], teacher_weights="1,2"), r"teacher_weights=\[1, 2\]: expected 1 non-negative"),
    Row("distill: Ctrl-C during teacher evaluation", "distill.py", lambda e: student_argv(e.prepared, e.out, [e.ckpt]), r"^interrupted$", exit=130,
        setup=lambda e: e.interrupt("distill", "evaluate"), left=no_temporary_files),
    Row("distill: Ctrl-C during teacher evaluation leaves no out_dir", "distill.py", lambda e: student_argv(e.prepared, e.out, [e.ckpt]), r"^interrupted$", exit=130,
        setup=lambda e: e.interrupt("distill", "evaluate")),
    # --- the teacher cache: its folder checked before the teachers run, one builder at a time, its bytes checked on use
    Row("cache: --cache_only without --teacher_cache", "distill.py", lambda e: student_argv(e.prepared, e.out, [e.ckpt], cache_only=True),
        r"cache_only=True needs --teacher_cache=DIR"),
    Row("cache: --teacher_cache is a file", "distill.py", lambda e: cached(e, e.file("taken", "x")), r"teacher_cache=.*taken: exists and is not a folder"),
    Row("cache: --teacher_cache under a file", "distill.py", lambda e: cached(e, os.path.join(e.file("taken", "x"), "c")), r"taken is a file, not a folder"),
    Row("cache: --teacher_cache holds other files", "distill.py", lambda e: cached(e, str(e.tmp / "mine")), r"mine: holds files that are not a teacher cache",
        setup=lambda e: e.file("mine/notes.txt", "x")),
    Row("cache: --teacher_cache read-only", "distill.py", lambda e: cached(e, str(e.tmp / "ro" / "c")), r"ro is not writable", setup=lambda e: e.read_only(e.tmp / "ro")),
    Row("cache: no room on the disk", "distill.py", lambda e: cached(e, str(e.tmp / "c")), r"the cache needs [\d.]+ GB more, and 0\.000 GB are free",
        setup=lambda e: e.mp.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))),
    Row("cache: cache_k above the vocabulary", "distill.py", lambda e: cached(e, str(e.tmp / "c"), cache_k=100000000), r"cache_k=100000000 is larger than the vocabulary \(320\)"),
    Row("cache: another build with other settings holds it", "distill.py", lambda e: cached(e, str(e.tmp / "c")),
        r"teacher_cache=.*c is being built by another process \(pid \d+\) with other settings",
        setup=lambda e: (e.file("c.partial/build.json", '{"header": {}, "block": 1}'), e.file("c.lock", str(os.getppid())))),
    Row("cache: --cache_only over an out_dir that holds a run", "distill.py", lambda e: cached(e, str(e.tmp / "new_cache"), out=e.run()),
        Recovers(lambda e, lines, stdout: "teacher cache ready" in stdout or pytest.fail(stdout)), left=no_temporary_files),
    Row("cache: weights.f32 changed", "distill.py", lambda e: cached(e, e.cache()), r"cache/weights\.f32: contents differ from the sha256 recorded",
        setup=lambda e: flip_byte(os.path.join(e.cache(), "weights.f32"))),
    Row("cache: ids.u16 overwritten with 65535", "distill.py", lambda e: cached(e, e.cache()), r"cache/ids\.u16: contents differ",
        setup=lambda e: open(os.path.join(e.cache(), "ids.u16"), "r+b").write(b"\xff\xff" * 64)),
    Row("cache: header.json torn", "distill.py", lambda e: cached(e, e.cache()), r"cache/header\.json: damaged",
        setup=lambda e: open(os.path.join(e.cache(), "header.json"), "r+").truncate(40)),
    Row("cache: header.json a list", "distill.py", lambda e: cached(e, e.cache()), r"cache/header\.json: damaged",
        setup=lambda e: open(os.path.join(e.cache(), "header.json"), "w").write("[1, 2]")),
    Row("cache: plogp.f32 deleted", "distill.py", lambda e: cached(e, e.cache()), r"cache/plogp\.f32: missing",
        setup=lambda e: os.remove(os.path.join(e.cache(), "plogp.f32"))),
]


def imp(e, config=None, raw_config=None, drop=None, extra_token=False, pad_rows=0, tokenizer_drop=None, truncate=0, missing_shard=False):
    """--from_hf of an export of the table's checkpoint (e.tmp/hf), changed in one way."""
    from export_hf import export, read_safetensors, write_safetensors
    hf = str(e.tmp / "hf")
    export(e.ckpt, hf)
    cfg_path, tok_path, weights = (os.path.join(hf, n) for n in ("config.json", "tokenizer.json", "model.safetensors"))
    cfg = {**json.load(open(cfg_path)), **(config or {})}
    cfg.pop(drop, None)
    open(cfg_path, "w").write(raw_config if raw_config is not None else json.dumps(cfg))
    tok = json.load(open(tok_path))
    if extra_token:
        tok["model"]["vocab"]["Ġzzz"] = 320
    tok.pop(tokenizer_drop, None)
    open(tok_path, "w").write(json.dumps(tok))
    if pad_rows:  # an embedding and head with rows no token uses, as a padded vocabulary has
        w = read_safetensors(weights)
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            w[name] = torch.cat([w[name], torch.zeros(pad_rows, w[name].shape[1])])
        write_safetensors(weights, w, progress=False)
    if truncate:
        open(weights, "r+b").truncate(truncate)
    if missing_shard:
        os.rename(weights, os.path.join(hf, "model-00001-of-00002.safetensors"))
        open(os.path.join(hf, "model.safetensors.index.json"), "w").write(json.dumps({"weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}}))
    return ["--from_hf", hf, "--out", e.out]


def copy_best_to_last(e, argv, message):
    shutil.copy(os.path.join(e.run(), "ckpt.pt"), os.path.join(e.run(), "last.pt"))  # as the message says
    return argv


def delete_named_lock(e, argv, message):
    os.remove(re.search(r"delete (\S+\.lock)\)", message).group(1))  # the file the message names
    return argv


def delete_named_cache(e, argv, message):
    shutil.rmtree(re.search(r"; delete (\S+) to rebuild it", message).group(1))
    return argv


# Refusals that name a next step, and that step taken: the test runs it and expects it to work.
ADVICE = {
    "fresh start into a run": lambda e, argv, msg: argv + ["--resume=True"],
    "resume with a changed lr": lambda e, argv, msg: [a for a in argv if a != "--resume=True"] + ["--overwrite=True"],
    "resume from a truncated last.pt": copy_best_to_last,
    "two runs into one out_dir": lambda e, argv, msg: (os.remove(re.search(r"delete (\S+run\.lock)\)", msg).group(1)), argv)[1],
    "export: --out holds other files": lambda e, argv, msg: argv + ["--overwrite=True"],
    "cache: weights.f32 changed": delete_named_cache,
    "cache: another build with other settings holds it": delete_named_lock,
    "max_iters below warmup": lambda e, argv, msg: argv + ["--warmup_iters=2"],
    "batch not a multiple of micro-batch": lambda e, argv, msg: argv + ["--micro_batch_size=4"],
}
for _row in ROWS:
    _row.advice = ADVICE.get(_row.name)
assert set(ADVICE) <= {r.name for r in ROWS}


def cached(e, path, out=None, **kw):
    """distill.py --cache_only=True with the table's checkpoint as the only teacher."""
    return student_argv(e.prepared, out or e.out, [e.ckpt], teacher_cache=path, cache_only=True, **{"cache_k": 4, **kw})


def flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))


def other_vocab_ckpt(e):
    torch.manual_seed(0)
    path = str(e.tmp / "other_vocab.pt")
    save_checkpoint(path, model_checkpoint(Llama(ModelConfig(vocab_size=400, dim=32, n_layers=1, n_heads=4, hidden_dim=64)),
                                           {"name": "bpe400", "vocab_size": 400, "sha256": "0" * 64}))
    return path


def full_disk_on_append(e):
    """Appending to log.jsonl fails as on a full disk; every other open is the real one."""
    import checkpoint

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    e.mp.setattr(checkpoint, "open", lambda path, mode="r", *a, **k: Full() if mode == "a" else open(path, mode, *a, **k), raising=False)


@pytest.fixture(scope="module")
def table_inputs(prepared, tmp_path_factory):
    """(a checkpoint of a random tiny model, a tiny teacher run stopped at step 2 of 6), made once."""
    from train_teacher import main as teacher_main

    base = tmp_path_factory.mktemp("table")
    _, info = load_tokenizer(prepared)
    torch.manual_seed(0)
    ckpt = str(base / "ckpt.pt")
    save_checkpoint(ckpt, model_checkpoint(Llama(ModelConfig(vocab_size=info["vocab_size"], dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64)),
                                           info, config={"data_dir": prepared}))
    run = str(base / "run")
    import train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "peak_flops", lambda device: 1e12)
        teacher_main(tiny_argv(prepared, run, **RESUME, stop_at=2))
    return ckpt, run


@pytest.mark.parametrize("row", [pytest.param(r, id=r.name, marks=[pytest.mark.xfail(reason=r.xfail, strict=True)] if r.xfail else []) for r in ROWS])
def test_table(row, prepared, table_inputs, tmp_path, request, monkeypatch):
    e = Env(tmp_path, prepared, *table_inputs, request, monkeypatch)
    argv = row.argv(e)  # builds the bad files
    if row.setup:
        row.setup(e)
    before = snapshot(tmp_path)
    code, lines, stdout = run_row(e, row, argv)
    after = snapshot(tmp_path)
    if isinstance(row.expect, Recovers):
        assert code == 0, lines[-5:]
        row.expect.check(e, lines, stdout)
    else:
        assert code == row.exit, f"exit {code}, stderr {lines[-5:]}"
        assert len(lines) == 1, f"expected one line, got {lines[-8:]}"
        assert lines[0] == "interrupted" if row.exit == 130 else lines[0].startswith("error: "), lines[0]
        assert re.search(row.expect, lines[0]), f"{lines[0]!r} does not match {row.expect!r}"
    if row.left:
        row.left(e, before, after)
    else:
        assert before == after, f"changed: {sorted(set(before.items()) ^ set(after.items()))[:6]}"
    assert not os.path.exists(tmp_path / "pwned"), "a pickle in a checkpoint ran code"
    if row.advice:  # the message's advice, followed: it must work from this state, not refuse in turn
        code, advised_lines, _ = run_row(e, row, row.advice(e, argv, lines[0]))
        assert code == 0, f"following {lines[0]!r} failed: {advised_lines[-3:]}"


# -----------------------------------------------------------------------------------------------
# SIGTERM (preemption): save, say how to resume, exit 143; the resumed run equals an uninterrupted one


@pytest.mark.slow
def test_sigterm_saves_and_the_resumed_run_equals_an_uninterrupted_one(prepared, tmp_path):
    args = dict(max_iters=200, eval_interval=50, warmup_iters=5, log_interval=5)
    ref, out = str(tmp_path / "ref"), str(tmp_path / "t")
    run_plain("train_teacher.py", tiny_argv(prepared, ref, **args))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_teacher.py"), *tiny_argv(prepared, out, **args)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while len(read_log(os.path.join(out, "log.jsonl"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "SIGTERM: finishing this step" in stdout and "resume with --resume=True" in stdout and "Traceback" not in stderr
    step = read_checkpoint(os.path.join(out, "last.pt"))["step"]
    assert 0 < step < 200 and not os.path.exists(os.path.join(out, "run.lock"))
    run_plain("train_teacher.py", tiny_argv(prepared, out, **args) + ["--resume=True"])
    assert_same_run(ref, out)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_with_a_saved_checkpoint(prepared, tmp_path):
    """torchrun forwards SIGTERM to its workers: both ranks finish the same step (the stop request is
    all-reduced), rank 0 saves last.pt, nobody hangs. (torchrun's own agent then prints a SignalException
    traceback and exits 1: that is torchrun's, not ours.)"""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.isfile(torchrun):
        pytest.skip("torchrun is not installed beside this python")
    out = str(tmp_path / "ddp")
    args = tiny_argv(prepared, out, max_iters=400, eval_interval=50, warmup_iters=5, log_interval=5, micro_batch_size=4)
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2", os.path.join(ROOT, "train_teacher.py"), *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while len(read_log(os.path.join(out, "log.jsonl"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    step = read_checkpoint(os.path.join(out, "last.pt"))["step"]
    assert f"saved {os.path.join(out, 'last.pt')} at step {step}; resume with --resume=True" in stdout, stdout[-2000:]
    assert 0 < step < 400 and not os.path.exists(os.path.join(out, "run.lock"))
    assert "train_teacher.py" not in stderr and 'train.py"' not in stderr, stderr[-3000:]  # no traceback from our code


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 384 KiB tmpfs: room for a tiny run's log but not for its first checkpoints (skipped where it cannot mount)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the real full-disk case is not checked")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_real_full_disk_during_a_checkpoint_is_one_line_and_the_same_command_recovers(prepared, small_tmpfs, tmp_path):
    """torch.save on a full disk raises RuntimeError ('unexpected pos'), not OSError; the run must still stop with
    one line, leave no temporary file, and the same command must finish the run once there is room."""
    out = str(small_tmpfs / "run")
    args = tiny_argv(prepared, out, dim=64, hidden_dim=128, max_iters=4, eval_interval=2, warmup_iters=1)  # ~0.5 MB checkpoints
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train_teacher.py"), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    lines = [l for l in result.stderr.splitlines() if l.strip() and "it/s]" not in l and "\r" not in l]
    assert result.returncode == 1 and lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(r"run/(ckpt|last)\.pt: cannot write \(torch\.save stopped short: [\d,]+ bytes free", lines[-1]), lines[-1]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")], os.listdir(out)
    moved = str(tmp_path / "run")  # room again: the run's folder on a bigger disk, and the same command
    shutil.copytree(out, moved)
    run_plain("train_teacher.py", tiny_argv(prepared, moved, dim=64, hidden_dim=128, max_iters=4, eval_interval=2, warmup_iters=1) + ["--resume=True"])
    assert read_checkpoint(os.path.join(moved, "last.pt"))["step"] == 4
