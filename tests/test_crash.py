"""Crash safety and bad input (slow: launches processes). A tiny teacher run and a tiny distillation run
are killed with SIGKILL again and again (at random moments, and deliberately while a checkpoint is being
written), resumed each time, and must end with the same logged losses and bit-identical weights as an
uninterrupted run. Ctrl-C saves and exits cleanly. A non-finite loss stops (or skips) as configured.
Every bad input of the table below is a one-line error that names the file, key or value, and leaves no
file behind. Run: python -m pytest tests/test_crash.py"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from checkpoint import load_checkpoint, model_checkpoint, read_checkpoint, read_log, save_checkpoint
from config import load_config, runtime
from conftest import ROOT, strip_timing, student_argv, tiny_argv
from model import Llama, ModelConfig
from prepare_data import load_tokenizer
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
    teacher = dict(max_iters=150, eval_interval=5, log_interval=1, dim=48)
    ref, killed = str(tmp_path / "t_ref"), str(tmp_path / "t_killed")
    run_plain("train_teacher.py", tiny_argv(prepared, ref, **teacher))
    mid_write = kill_and_resume("train_teacher.py", tiny_argv(prepared, killed, **teacher), killed, kills=6, rng=rng)
    assert_same_run(ref, killed)
    student = dict(max_iters=100, eval_interval=5, log_interval=1)
    ref, killed = str(tmp_path / "s_ref"), str(tmp_path / "s_killed")
    run_plain("distill.py", student_argv(prepared, ref, tiny_teachers, **student))
    mid_write += kill_and_resume("distill.py", student_argv(prepared, killed, tiny_teachers, **student), killed, kills=5, rng=rng)
    assert_same_run(ref, killed)
    assert mid_write >= 4, f"only {mid_write} of the 11 kills hit a checkpoint write"
    print(f"11 SIGKILLs ({mid_write} during a checkpoint write): final weights and losses bit-identical")


# The child process SIGKILLs itself right after its k-th checkpoint file is renamed into place, i.e. between
# two checkpoint writes (ckpt.pt, then last.pt) or just after both.
KILL_AFTER_RENAME = """
import os, signal, sys
_replace, count, k = os.replace, [0], int(os.environ["KILL_AFTER_RENAMES"])
def replace_then_die(src, dst, *a, **kw):
    _replace(src, dst, *a, **kw)
    if str(dst).endswith(".pt"):
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
        for i in range(1, 20):
            resume = os.path.isfile(os.path.join(killed, "last.pt"))
            result = subprocess.run([sys.executable, "-c", KILL_AFTER_RENAME, os.path.join(ROOT, script), *argv(killed),
                                     "--resume=True" if resume else "--overwrite=True"], cwd=ROOT, env={**ENV, "KILL_AFTER_RENAMES": str(i)},
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

    def __init__(self, model, bad_calls, where="loss"):
        super().__init__(model)
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
        train(cfg, rt, model, NaNAt(model, range(10, 100)), windows, info)
    ckpt = read_checkpoint(os.path.join(cfg.out_dir, "last.pt"))
    assert ckpt["step"] == 8 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_step_can_be_skipped_without_losing_steps(prepared, tmp_path, where):
    # the 4th step is bad, and so is the last one (step 6, an evaluation step and the stop_at step)
    cfg, rt, model, info, windows = tiny_run(prepared, str(tmp_path / "t"), max_iters=8, eval_interval=3, nonfinite="skip", stop_at=6)
    summary = train(cfg, rt, model, NaNAt(model, [4, 6], where), windows, info)
    assert summary["steps"] == 6, "stop_at is honoured on a skipped step"
    ckpt = read_checkpoint(os.path.join(cfg.out_dir, "last.pt"))
    assert ckpt["step"] == 6, "last.pt is not left behind"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values()) and all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_gradient_with_a_finite_loss_stops_before_writing_weights(prepared, tmp_path):
    cfg, rt, model, info, windows = tiny_run(prepared, str(tmp_path / "t"), max_iters=20, eval_interval=4)
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 7"):
        train(cfg, rt, model, NaNAt(model, [8], "gradient"), windows, info)
    ckpt = read_checkpoint(os.path.join(cfg.out_dir, "last.pt"))
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


# -----------------------------------------------------------------------------------------------
# Bad input: one line naming the file, key or value; no file left behind


def bad_inputs(base, prepared, teachers):
    """(name, script, args, expected substring, output folder that must stay empty)"""
    def corpus(name, setup):
        root = base / name
        for d, suffix in (("train_10M", "train"), ("dev", "dev")):
            (root / d).mkdir(parents=True)
            setup(root / d / f"a.{suffix}")
        return str(root)
    odd = base / "odd_data"
    shutil.copytree(prepared, odd)
    with open(odd / "train.bin", "ab") as f:
        f.write(b"\x00")
    cfg_file = base / "typo.py"
    cfg_file.write_text("dim = 32\nlearnig_rate = 1e-3\n")
    other = base / "other_vocab.pt"
    torch.manual_seed(0)
    save_checkpoint(str(other), model_checkpoint(Llama(ModelConfig(vocab_size=400, dim=32, n_layers=1, n_heads=4, hidden_dim=64)),
                                                 {"name": "bpe400", "vocab_size": 400, "sha256": "0" * 64}))
    blimp = base / "blimp"
    blimp.mkdir()
    (blimp / "p.jsonl").write_text(json.dumps({"sentence_good": "a", "sentence_bad": "b"}) + "\n{broken\n")
    glue = base / "glue"
    glue.mkdir()
    (glue / "rte.valid.jsonl").write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": 0}) + "\n")
    out = str(base / "out")
    t = lambda **kw: tiny_argv(prepared, out, **kw)
    return [
        ("missing corpus", "prepare_data.py", ["--src", str(base / "nope"), "--out", out], "nope: corpus not found", out),
        ("empty corpus folder", "prepare_data.py", ["--src", corpus("empty", lambda p: p.write_text("")), "--out", out], "files are all empty", out),
        ("non-UTF-8 text", "prepare_data.py", ["--src", corpus("latin1", lambda p: p.write_bytes(b"caf\xe9\n")), "--out", out], "a.train: not valid UTF-8", out),
        ("odd-sized .bin", "train_teacher.py", tiny_argv(str(odd), out), "train.bin: size", out),
        ("unknown key in a config file", "train_teacher.py", [str(cfg_file), *t()], "typo.py: unknown key 'learnig_rate'", out),
        ("wrong type", "train_teacher.py", t(lr="fast"), "lr='fast' has type str, expected float", out),
        ("override of a key that does not exist", "train_teacher.py", t() + ["--dropout=0.1"], "--dropout: unknown key 'dropout'", out),
        ("max_iters below warmup", "train_teacher.py", t(max_iters=5, warmup_iters=10), "max_iters=5 is not larger than warmup_iters=10", out),
        ("seq_len over max_seq_len", "train_teacher.py", t(seq_len=300), "seq_len=300 is longer than the model's max_seq_len=256", out),
        ("AntLM schedule typo", "train_teacher.py", t(objective="clm:4,mlmm:16"), "objective='clm:4,mlmm:16'", out),
        ("missing teacher checkpoint", "distill.py", student_argv(prepared, out, [str(base / "none.pt")]), "none.pt: checkpoint not found", out),
        ("teachers with different vocabularies", "distill.py", student_argv(prepared, out, [teachers[0], str(other)]), "other_vocab.pt was made with tokenizer 'bpe400'", out),
        ("student vocabulary differs from the teachers'", "distill.py", student_argv(prepared, out, [str(other)]), "meta.json uses", out),
        ("malformed BLiMP line", "eval_blimp.py", ["--ckpt", teachers[0], "--data", str(blimp), "--out", os.path.join(out, "r.json")], "p.jsonl:2: expected a JSON object", out),
        ("missing BLiMP folder", "eval_blimp.py", ["--ckpt", teachers[0], "--data", str(base / "nope"), "--out", os.path.join(out, "r.json")], "nope: BLiMP folder not found", out),
        ("unknown SuperGLUE task", "eval_superglue.py", ["--ckpt", teachers[0], "--task", "stsb", "--data", str(glue), "--out", os.path.join(out, "r.json")], "--task='stsb': unknown", out),
        ("missing task file", "eval_superglue.py", ["--ckpt", teachers[0], "--task", "rte", "--data", str(glue), "--out", os.path.join(out, "r.json")], "rte: no training file", out),
    ]


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors_and_leave_nothing_behind(prepared, tiny_teachers, tmp_path):
    failures = []
    cases = bad_inputs(tmp_path, prepared, tiny_teachers)
    for name, script, args, expected, out in cases:
        result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        left = [f for _, _, files in os.walk(out) for f in files] if os.path.isdir(out) else []
        if result.returncode == 0 or len(lines) != 1 or not lines[0].startswith("error: ") or expected not in lines[0] or left:
            failures.append(f"{name}: exit {result.returncode}, stderr {lines[-3:]}, files left {left}")
        shutil.rmtree(out, ignore_errors=True)
    assert not failures, "\n".join(failures)
