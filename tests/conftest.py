"""Shared fixtures: a small synthetic BabyLM corpus, prepared once per test session, and the path
to the real data in ../shared/data (tests that need it skip with a reason when it is absent); the grading
helpers of the `core` tests (fp32_tol, check_close) and their message for a blanked exercise."""

import math
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

# One thread per in-process test: on a 2-core machine two threads fight over tiny matmuls (a 24x32 matmul
# took 31 ms with 2 threads and 0.006 ms with 1). Subprocess tests set OMP_NUM_THREADS=1 themselves.
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that fails because a function of the project raises NotImplementedError (an exercise of
    EXERCISES.md, blanked for a student) says so in two lines instead of a traceback."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or not call.excinfo.errisinstance(NotImplementedError):
        return
    for entry in reversed(call.excinfo.traceback):
        path = os.path.abspath(str(entry.path))
        if path.startswith(ROOT + os.sep) and os.sep + "tests" + os.sep not in path:
            code = entry.frame.code.raw
            name = getattr(code, "co_qualname", code.co_name)
            report.longrepr = (f"{os.path.relpath(path, ROOT)}:{entry.lineno + 1}: {name} is not implemented yet "
                               f"(it raises NotImplementedError).\nThis test needs it: implement {name} "
                               "(EXERCISES.md says what it must do), then run the test again.")
            return


def repository_status():
    """`git status --porcelain` of the repository (ignored files left out), or None outside a git checkout."""
    try:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


@pytest.fixture(scope="session", autouse=True)
def repository_untouched():
    """Tests write only under their temporary folders: a test whose script resolved a path against the repository
    once left results.json in the repository root and in folders named abc/, nan/, -1/ (the fuzz values of --out)."""
    before = repository_status()
    yield
    after = repository_status()
    if before is not None and after is not None and after != before:
        new = sorted(set(after.splitlines()) - set(before.splitlines()))
        pytest.fail(f"the tests changed the repository (git status): {new[:10]}", pytrace=False)


def shared_path(*parts):
    """A path under ../shared/data, or skip the test when it is not there."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path} is absent")
    return path


def synthetic_sentences(n, seed):
    """Sentences from a tiny grammar: learnable, so a few hundred steps lower the loss."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my sister", "the old man", "a little bird", "the children", "she", "we"]
    verbs = ["sees", "likes", "finds", "wants", "carries", "hears", "draws", "loves"]
    objects = ["the ball", "a red apple", "the big house", "some water", "the moon", "a small box", "her friend"]
    tails = ["", " today", " in the garden", " again", " at night", " with a smile"]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}." for _ in range(n)]


def write_corpus(root, n_train=3000, n_dev=400):
    """A BabyLM-2024 layout with two line-based sources."""
    for split, suffix, n in (("train_10M", ".train", n_train), ("dev", ".dev", n_dev)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for k, source in enumerate(("childes", "switchboard")):
            lines = synthetic_sentences(n, seed=len(split) * 10 + k)
            if source == "switchboard":
                lines = [f"{'AB'[i % 2]}:\t{s}" for i, s in enumerate(lines)]
            with open(os.path.join(root, split, source + suffix), "w") as f:
                f.write("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A prepared data folder (BPE vocab 320) made from the synthetic corpus."""
    from prepare_data import prepare

    base = tmp_path_factory.mktemp("corpus")
    src = write_corpus(base / "src")
    out = str(base / "data")
    prepare(src, out, vocab_size=320, progress=False)
    return out


def tiny_argv(data_dir, out_dir, **overrides):
    """--key=value arguments for a tiny CPU teacher run on the prepared synthetic data."""
    cfg = dict(data_dir=data_dir, out_dir=out_dir, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
               seq_len=32, batch_size=8, micro_batch_size=8, max_iters=20, warmup_iters=2, lr=3e-3, min_lr=3e-4,
               weight_decay=0.1, eval_interval=10, eval_windows=16, log_interval=1, compile=False, device="cpu",
               loss_chunk=64)  # 2 sequences a chunk: every run takes the default chunked path (chunked_loss.py) in 4 chunks
    cfg.update(overrides)
    return [f"--{k}={v}" for k, v in cfg.items()]


@pytest.fixture(scope="session")
def tiny_teachers(prepared, tmp_path_factory):
    """Two tiny teacher checkpoints (different seeds and widths) trained on the prepared data."""
    from train_teacher import main as teacher_main

    base = tmp_path_factory.mktemp("teachers")
    paths = []
    for seed, dim in ((1, 32), (2, 48)):
        out = str(base / f"t{seed}")
        teacher_main(tiny_argv(prepared, out, max_iters=40, eval_interval=20, seed=seed, dim=dim, log_interval=10))
        paths.append(os.path.join(out, "ckpt.pt"))
    return paths


@pytest.fixture(scope="session")
def tiny_gpt2_teacher(prepared, tmp_path_factory):
    """A tiny GPT-2 teacher checkpoint (gpt2.py; wider and deeper than the tiny Llama teachers, as BabyLlama's
    GPT-2 705M beside its Llama 360M), trained on the prepared data."""
    from train_teacher import main as teacher_main

    out = str(tmp_path_factory.mktemp("gpt2_teacher") / "g")
    teacher_main(tiny_argv(prepared, out, arch="gpt2", dim=64, n_layers=3, n_heads=4, n_kv_heads=0, hidden_dim=0,
                           max_iters=40, eval_interval=20, seed=3, log_interval=10))
    return os.path.join(out, "ckpt.pt")


def student_argv(prepared, out, teachers, **kw):
    return tiny_argv(prepared, out, **{"teachers": repr(teachers), "max_iters": 30, "eval_interval": 15, **kw})


@pytest.fixture
def random_ckpt(prepared, tmp_path):
    """A randomly initialised tiny model saved as a checkpoint that points at the prepared tokenizer."""
    import torch
    from checkpoint import model_checkpoint, save_checkpoint
    from model import Llama, ModelConfig
    from data import load_tokenizer

    _, info = load_tokenizer(prepared)
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=info["vocab_size"], dim=32, n_layers=2, n_heads=4, hidden_dim=64))
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model_checkpoint(model, info, config={"data_dir": prepared}))
    return path


TIMING = ("ms_per_step", "tok_per_s", "mfu")


def strip_timing(log):
    """A log without its wall-clock fields: what must be equal between two runs of the same training."""
    return [{k: v for k, v in e.items() if k not in TIMING} for e in log]


@pytest.fixture(scope="session")
def milestone_runs(prepared, tmp_path_factory):
    """Two tiny teacher runs (seeds 1 and 2) with milestone checkpoints chck_500 and chck_1k (BabyLM's
    intermediate checkpoints at 500 and 1,000 words seen)."""
    from train_teacher import main as teacher_main

    base = tmp_path_factory.mktemp("milestones")
    runs = []
    for seed in (1, 2):
        out = str(base / f"run{seed}")
        teacher_main(tiny_argv(prepared, out, max_iters=12, eval_interval=6, log_interval=6, seed=seed, checkpoints_at="500,1k"))
        runs.append(out)
    return runs


# -----------------------------------------------------------------------------------------------
# Grading (the `core` tests of EXERCISES.md): a function's fp32 result against a float64 reference, with a
# tolerance derived from fp32 rounding, and a message that names the function and the quantity.

U32 = 2.0**-24  # fp32's unit roundoff: rounding a result to fp32 moves it by at most U32 times its magnitude


def fp32_tol(magnitude, n):
    """How far a correct fp32 computation may land from the exact value: n roundings along its longest chain (a sum
    or dot product of m terms counts m), each at most U32 times `magnitude`, the size of what is rounded (the sum of
    the terms' absolute values: Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1:
    |error| <= n U32 sum |terms|), times 4 for what the count leaves out (exp, log, sqrt and casts, each good to a
    few ulps). The bound holds for any order of the operations, so every correct solution meets it; a wrong formula
    misses by orders of magnitude more. A tensor magnitude gives one tolerance per element."""
    return 4 * n * U32 * magnitude


def check_close(got, expected, tol, what, why=""):
    """Assert that `got` (what the function under test returned: a tensor or a number) equals `expected` (float64)
    within `tol` (a number, or a tensor of per-element tolerances). `what` names the function and the quantity
    ("distill_loss: kl_term"), `why` the definition the value should follow; the message gives the worst element."""
    got = torch.as_tensor(got.detach() if torch.is_tensor(got) else got).double()
    expected = torch.as_tensor(expected).double()
    assert got.shape == expected.shape, f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}" + (f" ({why})" if why else "")
    err = (got - expected).abs()
    excess = torch.nan_to_num(err - torch.as_tensor(tol, dtype=torch.float64), nan=math.inf)  # a NaN is never close
    worst = int(excess.flatten().argmax())
    if excess.flatten()[worst] > 0:
        at = "" if got.dim() == 0 else " at [" + ", ".join(str(int(i)) for i in torch.unravel_index(torch.tensor(worst), got.shape)) + "]"
        t = torch.as_tensor(tol, dtype=torch.float64).expand(got.shape).flatten()[worst]
        off = f"off by {err.flatten()[worst]:.3g}, fp32 rounding allows {t:.2g}"
        raise AssertionError(f"{what}{at} {got.flatten()[worst]:.6g}, expected {expected.flatten()[worst]:.6g} ({why + '; ' if why else ''}{off})")


# Killing an experiment as a user would (tests of issue 30: experiments finish or say so)


class Job:
    """A command started as a terminal starts it: its own process group (a Ctrl-C reaches the whole group), its output
    into files (a pipe that nobody reads would block it). `n` numbers the launches of one test."""

    def __init__(self, cmd, folder, n, env=None):
        self.out, self.err = os.path.join(folder, f"stdout.{n}"), os.path.join(folder, f"stderr.{n}")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, start_new_session=True,
                                         env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", **(env or {})})

    def wait_until(self, condition, timeout=600):
        """Poll condition() until it holds; the job must still be running then (else the test would kill nothing)."""
        deadline = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the job ended (exit {self.proc.returncode}) before the kill: {self.tail()}"
            assert time.time() < deadline, "timed out waiting for the moment to kill"
            time.sleep(0.02)

    def tail(self):
        return (open(self.out, errors="replace").read()[-1500:], open(self.err, errors="replace").read()[-1500:])

    def stop(self, how, timeout=300, finished=None):
        """'int': Ctrl-C to the process group; 'term': SIGTERM to the process; 'kill': SIGKILL to the process. Ctrl-C and
        SIGTERM must end in one line with status 130 / 143 and no traceback in any output (the children's is in it
        too); after a SIGKILL the children must end as well (they die with it), before the test runs the command again.
        finished(stdout): for a signal at a random instant that may fall after the work is done; the job must then
        end as if no signal had come (status 0: config.ignore_late_signals), not die of it."""
        if how == "int":
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGTERM if how == "term" else signal.SIGKILL)
        code = self.proc.wait(timeout=timeout)
        out, err = (open(p, errors="replace").read() for p in (self.out, self.err))
        assert "Traceback" not in out + err, (out[-3000:], err[-3000:])
        if how != "kill" and finished is not None and finished(out) and code in (0, -signal.SIGTERM, -signal.SIGINT):
            assert code == 0, f"the job had done its work when the signal came, yet it died of it (status {code})"
            return
        if how == "kill":
            assert code == -signal.SIGKILL
            wait_for_orphans(os.path.dirname(self.out))
            return
        progress = re.compile(r"\|[^|]*\| *[\d.]+[kMGT]?/[\d.]+[kMGT]? \[")  # a tqdm bar: progress, not a message
        lines = [l for l in (re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", l) for l in err.splitlines()) if l.strip() and not progress.search(l)]
        assert code == {"int": 130, "term": 143}[how], (code, out[-2000:], err[-2000:])
        assert lines and lines[-1] == {"int": "interrupted", "term": "terminated (SIGTERM)"}[how], lines[-5:]
        assert len(lines) == 1, f"more than one line on stderr: {lines[-5:]}"


def wait_for_orphans(folder, timeout=120):
    """Wait until no process of the killed job is left (its children end with it, saving first): their command lines
    name the test's folder."""
    deadline = time.time() + timeout
    while True:
        alive = []
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and folder in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"):
                    alive.append(pid)
            except OSError:
                pass
        if not alive:
            return
        assert time.time() < deadline, f"processes outlived the killed job: {alive}"
        time.sleep(0.1)


def finish(cmd, folder, n, env=None, timeout=1200):
    """Run the command to its end (the rerun after the kills): exit 0."""
    job = Job(cmd, folder, n, env)
    code = job.proc.wait(timeout=timeout)
    assert code == 0, job.tail()
    return job
