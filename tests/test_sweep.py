"""experiments/sweep.py against a fake training script with the project's contract (--key=value, out_dir/log.jsonl,
last.pt, --resume=True), one real train_teacher.py sweep at a tiny size, and experiments/stats.py."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, Job, finish, tiny_argv

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import stats  # noqa: E402
import sweep  # noqa: E402
from config import InputError, run_main  # noqa: E402

SWEEP = os.path.join(ROOT, "experiments", "sweep.py")

# A stand-in for train_teacher.py: val_loss = lr + |step - 4| / 10, lowest at step 4 (not the last step, so "best"
# and "last" differ). FAKE_DIE_AT=k: SIGKILL itself right after saving step k. FAKE_SLEEP: seconds per step;
# FAKE_QUIET: print nothing. Ctrl-C and SIGTERM end it as config.run_main ends the project's scripts (130, 143).
FAKE = r'''
import signal, sys  # the handlers first: a signal passed on while the rest is imported ends the run in one line too
signal.signal(signal.SIGINT, lambda *a: sys.exit(130))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
import ctypes, json, os, time
if os.environ.get("BABYDISTILL_PARENT_PID"):  # as the project's scripts do (config.die_with_parent): it dies with the sweep
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
cfg = {"lr": 0.1, "seed": 1, "max_iters": 6, "out_dir": "out", "resume": False}
for a in sys.argv[1:]:
    k, v = a[2:].split("=", 1)
    if k not in cfg:
        sys.exit(f"error: --{k}: unknown config key")
    cfg[k] = v == "True" if isinstance(cfg[k], bool) else type(cfg[k])(v)
out = cfg["out_dir"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "argv.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
open(os.path.join(out, "pid"), "w").write(str(os.getpid()))
step = json.load(open(os.path.join(out, "last.pt")))["step"] if cfg["resume"] else 0
log = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))] if cfg["resume"] else []
log = [e for e in log if e["step"] <= step]   # like the trainer: the log of a resumed run = an uninterrupted one
for s in range(step + 1, cfg["max_iters"] + 1):
    time.sleep(float(os.environ.get("FAKE_SLEEP", 0)))
    if not os.environ.get("FAKE_QUIET"):
        print("step", s, flush=True)
    log.append({"step": s, "val_loss": cfg["lr"] + abs(s - 4) / 10})
    with open(os.path.join(out, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in log)
    json.dump({"step": s}, open(os.path.join(out, "last.pt"), "w"))
    if str(s) == os.environ.get("FAKE_DIE_AT"):
        os.kill(os.getpid(), 9)
'''

# A stand-in for eval_blimp.py: writes OUT_DIR/eval.json with a score that grows with lr.
FAKE_EVAL = r'''
import json, os, sys
out = sys.argv[1]
lr = [json.loads(l) for l in open(os.path.join(out, "argv.jsonl"))][0][0].split("=")[1]
json.dump({"blimp": {"score": 100 * float(lr)}}, open(os.path.join(out, "eval.json"), "w"))
'''


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE)
    return str(path)


def run_sweep(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, SWEEP, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def sweep_in_process(*args):
    """(status, stderr) of `python sweep.py ARGS` for input refused before any run, in this process (no start-up of
    torch per case: these 30 cases took 65 s as processes): config.run_main's SystemExit carries the line that
    `python SCRIPT` prints; anything else written to stderr would be a second line. An alarm turns a hang (a count
    expanded before it is checked) into a failure."""
    def hang(*_):
        raise TimeoutError("sweep.py did not refuse the input at once")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        with pytest.raises(SystemExit) as e:
            run_main(lambda: sweep.main(list(args)))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    code = e.value.code
    return (1, f"{code}\n") if isinstance(code, str) else (code, "")


def results(out):
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def table_column(out, col):
    """A column of results.md, top to bottom."""
    lines = [l for l in open(os.path.join(out, "results.md")).read().splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [[c.strip() for c in l.strip("|").split("|")][header.index(col)] for l in lines[1:]]


def invocations(out_dir):
    with open(os.path.join(out_dir, "argv.jsonl")) as f:
        return [json.loads(line) for line in f]


# -----------------------------------------------------------------------------------------------
# The sweep


def test_grid_runs_commands_and_table_sorted_by_metric(fake, tmp_path):
    out = str(tmp_path / "sw")
    r = run_sweep(fake, "--grid", "lr=0.3,0.1,0.2", "seed=7", "--out", out)
    assert r.returncode == 0, r.stderr
    rows = results(out)
    assert [row["values"]["lr"] for row in rows] == [0.3, 0.1, 0.2]  # results.jsonl: sweep order
    for row in rows:
        lr = row["values"]["lr"]
        assert row["status"] == "done" and row["steps"] == 6
        assert row["out_dir"] == os.path.join(out, f"lr={lr},seed=7")
        assert row["command"].endswith(f"--lr={lr} --seed=7 --out_dir={row['out_dir']}")
        assert row["metric"] == pytest.approx(lr) == pytest.approx(row["best_val_loss"])  # the best, at step 4
        assert invocations(row["out_dir"]) == [[f"--lr={lr}", "--seed=7", f"--out_dir={row['out_dir']}"]]
    assert table_column(out, "lr") == ["0.1", "0.2", "0.3"]  # results.md: best (lowest) first
    assert table_column(out, "rank") == ["1", "2", "3"]
    # each command is printed before its run's output
    lines = r.stdout.splitlines()
    i = next(i for i, l in enumerate(lines) if "$ " in l and "--lr=0.1 --seed=7" in l)
    assert lines[i + 1] == "step 1"
    assert os.path.isfile(os.path.join(out, "results.png")) or "matplotlib is not installed" in r.stdout


def test_killed_runs_resume_and_finished_runs_are_skipped(fake, tmp_path):
    out = str(tmp_path / "sw")
    args = (fake, "--grid", "lr=0.3,0.1", "--out", out)
    r = run_sweep(*args, env={"FAKE_DIE_AT": "3"})  # both runs die (SIGKILL) after saving step 3
    assert r.returncode == 1
    assert [row["status"] for row in results(out)] == ["failed", "failed"]
    assert [row["steps"] for row in results(out)] == [3, 3]

    r = run_sweep(*args)  # the same command again: each run continues from its last.pt
    assert r.returncode == 0, r.stderr
    for row in results(out):
        calls = invocations(row["out_dir"])
        assert len(calls) == 2 and calls[1] == calls[0] + ["--resume=True"] and "--resume=True" not in calls[0]
        log = [json.loads(l) for l in open(os.path.join(row["out_dir"], "log.jsonl"))]
        assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]
        assert row["status"] == "done" and row["metric"] == pytest.approx(row["values"]["lr"])

    r = run_sweep(*args)  # finished: nothing runs again
    assert r.returncode == 0 and r.stdout.count("skipped") == 2
    assert all(len(invocations(row["out_dir"])) == 2 for row in results(out))
    assert table_column(out, "lr") == ["0.1", "0.3"]


def _gone(pid):
    """True when the process has exited (or is a zombie waiting for a parent that does not reap it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="runs die with the sweep through Linux's PR_SET_PDEATHSIG")
def test_sigkill_of_the_sweep_kills_its_run_and_a_rerun_resumes(fake, tmp_path):
    out = str(tmp_path / "sw")
    args = [sys.executable, SWEEP, fake, "--grid", "lr=0.1,0.2", "--out", out]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "FAKE_SLEEP": "0.4", "FAKE_QUIET": "1"})
    first = os.path.join(out, "lr=0.1")
    deadline = time.time() + 30
    while time.time() < deadline:  # wait for the first run's step-2 checkpoint
        state = sweep.read_json(os.path.join(first, "last.pt"))
        if state and state["step"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pid = int(open(os.path.join(first, "pid")).read())
    deadline = time.time() + 10
    while not _gone(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert _gone(pid), "the run outlived the sweep"
    # it died with the sweep, not at its next write to the closed pipe (it writes nothing) nor at its end
    assert sweep.read_json(os.path.join(first, "last.pt"))["step"] < 6
    assert not os.path.exists(os.path.join(out, "lr=0.2"))  # the second run never started

    r = run_sweep(fake, "--grid", "lr=0.1,0.2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert invocations(first)[-1][-1] == "--resume=True" and len(invocations(first)) == 2
    assert invocations(os.path.join(out, "lr=0.2")) == [["--lr=0.2", f"--out_dir={out}/lr=0.2"]]
    assert [row["steps"] for row in results(out)] == [6, 6]


def test_random_search_is_reproducible_from_its_seed(fake, tmp_path):
    grid = ["lr=log_uniform(1e-4,1e-2)", "seed=1,2,3", "n=int_uniform(2,5)"]
    dry = lambda n, s: run_sweep(fake, "--random", str(n), "--seed", str(s), "--grid", *grid, "--out", str(tmp_path / "sw"), "--dry_run")
    a, b, c, short = dry(6, 5), dry(6, 5), dry(6, 6), dry(3, 5)
    assert a.returncode == 0, a.stderr
    cmds = [l for l in a.stdout.splitlines() if "--out_dir=" in l]
    assert len(cmds) == 6 and a.stdout == b.stdout and a.stdout != c.stdout
    assert [l for l in short.stdout.splitlines() if "--out_dir=" in l] == cmds[:3]  # a longer search extends a shorter one
    assert not os.path.exists(tmp_path / "sw")  # a dry run runs nothing
    runs = sweep.expand(sweep.parse_assignments(grid, "--grid", allow_lists=True), 200, seed=5)
    lrs = np.array([r["lr"] for r in runs])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
    assert 0.35 < np.mean(lrs < 1e-3) < 0.65  # log-uniform: half the draws below the geometric middle
    assert {r["n"] for r in runs} == {2, 3, 4, 5} and {r["seed"] for r in runs} == {1, 2, 3}


@pytest.mark.parametrize("args", [
    ["--grid", "lr:3e-4,1e-3"],                      # not key=values
    ["--grid", "lr="],                               # no values
    ["--grid", "lr=0.1,,0.2"],                       # an empty value
    [],                                              # empty grid
    ["--grid", "lr=log_uniform(1e-4,1e-2)"],         # a range without --random
    ["--grid", "lr=log_uniform(0,1)", "--random", "3"],
    ["--grid", "lr=0.1", "--metric", "eval.json:blimp.score", "--mode", "max"],   # nothing writes that file
    ["--grid", "lr=0.1", "--metric", "eval.json:", "--then", "echo"],             # metric without a path
    ["--grid", "lr=0.1", "--metric", "eval.json:blimp.score", "--then", "echo"],  # higher or lower better?
    ["--grid", "lr=0.1", "--fixed", "lr=0.2"],
    ["--grid", "out_dir=a,b"],
    ["--grid", "lr=0.1", "--workers", "-1"],
    ["--grid", "lr=0.1", "--workers", "300000000"],                               # more than the cores: refused at once
    ["--grid", "lr=0.1", "--random", "300000000"],                                # more than MAX_RUNS: refused, not drawn
    ["--grid", *[f"k{i}=" + ",".join(map(str, range(10))) for i in range(5)]],    # 10^5 runs: counted, not expanded
    ["--grid", "lr=0.1", "--then", "python {out_dir.x}", "--metric", "e.json:a", "--mode", "max"],  # a bad placeholder
    ["SELF", "extra_word", "--grid", "lr=0.1"],                                   # a third word before the keys (SELF: the script again, as a config)
    ["--grid", "lr=0.1", "--bogus"],
    ["--grid", "lr=log_uniform(1e-4)", "--random", "3"],                          # one bound
    ["--grid", "lr=log_uniform(1e-4,inf)", "--random", "3"],                      # an infinite bound
    ["--grid", "lr=0.1,0.2", "lr=0.3"],                                           # a key given twice
    ["--grid", "lr=0.1", "--fixed", "stop_at=10"],                                # would leave runs unfinished, marked done
    ["--grid", "lr=0.1", "--then", "no_such_program_xyz {out_dir}", "--metric", "e.json:a", "--mode", "max"],
])
def test_bad_input_is_one_line_before_any_run(fake, tmp_path, args, capsys):
    out = tmp_path / "sw"
    code, err = sweep_in_process(fake, *[fake if a == "SELF" else a for a in args], "--out", str(out))
    err += capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert not out.exists()


def test_bad_input_missing_script_and_changed_command(fake, tmp_path):
    r = run_sweep(str(tmp_path / "nope.py"), "--grid", "lr=0.1", "--out", str(tmp_path / "sw"))
    assert r.returncode != 0 and r.stderr.strip() == f"error: {tmp_path / 'nope.py'}: script not found"
    assert run_sweep(fake, "--grid", "lr=0.1", "--out", str(tmp_path / "sw")).returncode == 0
    r = run_sweep(fake, "--grid", "lr=0.1", "--fixed", "max_iters=3", "--out", str(tmp_path / "sw"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "use a new --out" in r.stderr


def test_then_command_and_json_metric(fake, tmp_path):
    (tmp_path / "fake_eval.py").write_text(FAKE_EVAL)
    out = str(tmp_path / "sw")
    assert run_sweep(fake, "--grid", "lr=0.1,0.3,0.2", "--out", out).returncode == 0
    # adding an evaluation to a finished sweep runs only the evaluation
    then = f"python {tmp_path / 'fake_eval.py'} {{out_dir}}"
    r = run_sweep(fake, "--grid", "lr=0.1,0.3,0.2", "--out", out, "--then", then, "--metric", "eval.json:blimp.score", "--mode", "max")
    assert r.returncode == 0, r.stderr
    rows = results(out)
    assert all(len(invocations(row["out_dir"])) == 1 for row in rows)
    assert [row["metric"] for row in rows] == pytest.approx([10.0, 30.0, 20.0])
    assert table_column(out, "lr") == ["0.3", "0.2", "0.1"]  # --mode max: highest first
    assert rows[0]["then"].endswith(f"fake_eval.py {rows[0]['out_dir']}")


def test_sweep_file_and_two_workers(fake, tmp_path):
    out = str(tmp_path / "sw")
    spec = tmp_path / "my_sweep.py"
    spec.write_text(f"script = {fake!r}\ngrid = {{'lr': [0.2, 0.1], 'seed': [1]}}\nfixed = {{'max_iters': 5}}\n"
                    f"metric = 'val_loss'\nout = {out!r}\n")
    r = run_sweep("--file", str(spec), "--workers", "2")
    assert r.returncode == 0, r.stderr
    rows = results(out)
    assert [row["status"] for row in rows] == ["done", "done"] and [row["steps"] for row in rows] == [5, 5]
    assert all("--max_iters=5 --lr=" in row["command"] for row in rows)
    assert "step 5" in open(os.path.join(rows[0]["out_dir"], "run.log")).read()  # with 2 workers output goes to run.log
    spec.write_text("grid = {'lr': 0.1}\n")
    r = run_sweep("--file", str(spec))
    assert r.returncode != 0 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_real_train_teacher_through_the_sweep(prepared, tmp_path):
    out = str(tmp_path / "sw")
    fixed = [a[2:] for a in tiny_argv(prepared, "unused", max_iters=4, eval_interval=2, warmup_iters=1)
             if not a.startswith(("--out_dir=", "--lr="))]
    r = run_sweep("train_teacher.py", "--grid", "lr=1e-3,3e-3", "--fixed", *fixed, "--out", out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    rows = results(out)
    for row in rows:
        assert row["status"] == "done" and row["steps"] == 4
        assert math.isfinite(row["metric"]) and row["metric"] == row["best_val_loss"]
        assert os.path.isfile(os.path.join(row["out_dir"], "ckpt.pt")) and os.path.isfile(os.path.join(row["out_dir"], "last.pt"))
    assert sorted(table_column(out, "lr")) == ["0.001", "0.003"]


# -----------------------------------------------------------------------------------------------
# Statistics


def test_identical_models_give_exactly_zero():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2, 500)
    ci = stats.blimp_diff_ci(c, c, paradigms=rng.integers(0, 5, 500))
    assert (ci.diff, ci.lo, ci.hi) == (0.0, 0.0, 0.0)
    ce = rng.normal(3, 0.5, 300)
    ci = stats.ce_diff_ci(ce, ce)
    assert (ci.diff, ci.lo, ci.hi) == (0.0, 0.0, 0.0)
    assert not stats.excludes_zero(ci) and "includes zero" in stats.verdict(ci)


def test_paradigm_grouping_is_the_unweighted_mean_over_paradigms():
    # paradigm "x": 10 pairs, A right and B wrong on all; paradigm "y": 90 pairs, both right on all
    a = np.ones(100, dtype=int)
    b = np.r_[np.zeros(10, dtype=int), np.ones(90, dtype=int)]
    paradigms = ["x"] * 10 + ["y"] * 90
    ci = stats.blimp_diff_ci(a, b, paradigms)
    # unweighted mean of the per-paradigm differences (100 and 0 points) = 50, not the pooled 10; and since
    # each paradigm is resampled within itself (constant differences there), every resample gives 50
    assert (ci.diff, ci.lo, ci.hi) == (50.0, 50.0, 50.0)
    assert stats.blimp_diff_ci(a, b).diff == pytest.approx(10.0)  # without paradigms: pooled accuracy
    rng = np.random.default_rng(1)
    a, b, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300), rng.choice(["p", "q", "r"], 300, p=[0.2, 0.3, 0.5])
    by_hand = np.mean([100 * (a[p == g].mean() - b[p == g].mean()) for g in "pqr"])
    ci = stats.blimp_diff_ci(a, b, p, seed=3)
    assert ci.diff == pytest.approx(by_hand) and ci.lo < ci.diff < ci.hi
    assert stats.blimp_diff_ci(a, b, p, seed=3) == ci  # seeded


def test_bootstrap_intervals_cover_a_known_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    sims, hits_acc, hits_ce = 300, 0, 0
    p_a, p_b = np.array([0.9, 0.7, 0.6, 0.8]), np.array([0.85, 0.72, 0.5, 0.7])  # per-paradigm accuracies
    truth_acc = 100 * np.mean(p_a - p_b)
    paradigms = np.repeat(np.arange(4), 100)
    for s in range(sims):
        u = rng.random(400)  # shared item difficulty: A and B are correlated, as on the same pairs
        a = (u < p_a[paradigms]).astype(int)
        b = (np.where(rng.random(400) < 0.5, u, rng.random(400)) < p_b[paradigms]).astype(int)
        ci = stats.blimp_diff_ci(a, b, paradigms, n_boot=1000, seed=s)
        hits_acc += ci.lo <= truth_acc <= ci.hi
        shared = rng.normal(3.0, 0.5, 200)  # per-window difficulty shared by both models
        ci = stats.ce_diff_ci(shared + 0.05 + rng.normal(0, 0.1, 200), shared + rng.normal(0, 0.1, 200), n_boot=1000, seed=s)
        hits_ce += ci.lo <= 0.05 <= ci.hi
    assert 0.90 <= hits_acc / sims <= 0.99, hits_acc / sims
    assert 0.90 <= hits_ce / sims <= 0.99, hits_ce / sims


def test_seed_intervals_t_quantiles_and_coverage():
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042)):
        assert stats.t_quantile(0.975, df) == pytest.approx(table, abs=2e-3)
    rng = np.random.default_rng(4)
    hits_welch = hits_paired = 0
    for _ in range(2000):  # 3 seeds each: a bootstrap would cover far less than 95% here
        a, b = rng.normal(1.0, 0.3, 3), rng.normal(0.8, 0.3, 3)
        ci = stats.seeds_diff_ci(a, b)
        hits_welch += ci.lo <= 0.2 <= ci.hi
        ci = stats.seeds_diff_ci(a, b, paired=True)
        hits_paired += ci.lo <= 0.2 <= ci.hi
    assert 0.93 <= hits_welch / 2000 <= 0.995 and 0.93 <= hits_paired / 2000 <= 0.97
    ci = stats.seeds_diff_ci([2.0, 2.1], [1.0, 1.1], paired=True)
    assert (ci.lo, ci.hi) == (pytest.approx(1.0), pytest.approx(1.0))  # constant difference: no width


def test_verdict_says_whether_zero_is_excluded():
    yes, no, below = stats.CI(1.2, 0.3, 2.0, 0.95, "m"), stats.CI(0.5, -0.2, 1.1, 0.95, "m"), stats.CI(-1, -2, -0.5, 0.95, "m")
    assert stats.excludes_zero(yes) and not stats.excludes_zero(no) and stats.excludes_zero(below)
    assert "excludes zero (A is higher)" in stats.verdict(yes)
    assert "includes zero" in stats.verdict(no) and "excludes zero (B is higher)" in stats.verdict(below)
    assert stats.verdict(yes, "student - baseline").startswith("student - baseline = +1.2, 95% CI [+0.3, +2]")


def test_welch_interval_by_hand_and_every_window_can_be_drawn():
    # equal sizes and variances: Welch's degrees of freedom are exactly 2 (n - 1) = 4, t(0.975, 4) = 2.7764
    ci = stats.seeds_diff_ci([1.0, 2.0, 3.0], [5.0, 6.0, 7.0])
    assert ci.diff == -4.0 and ci.hi - ci.diff == pytest.approx(2.7764 * math.sqrt(2 / 3), abs=1e-3)
    # only the last window differs: the resamples must be able to draw it
    ci = stats.ce_diff_ci([0, 0, 0, 0, 1.0], [0, 0, 0, 0, 0.0], n_boot=4000)
    assert ci.diff == 0.2 and ci.lo == 0.0 and ci.hi >= 0.6


@pytest.mark.parametrize("body, message", [
    ("grid = {'lr': [0.1]}\nworkers = 2 +\n", r"my_sweep\.py:2: invalid syntax"),
    ("grid = {'lr': [0.1]}\nworkers = '2'\n", r"workers='2' has type str, expected int"),
    ("grid = {'lr': [0.1]}\nrandom = '3'\n", r"random='3' has type str, expected int"),
    ("grid = {'lr': [0.1]}\nthen = 5\n", r"then=5 has type int, expected str"),
    ("grid = {'lr': [0.1]}\nout = 5\n", r"out=5 has type int, expected str"),
    ("grid = {'lr': [0.1]}\nx = 1 / 0\n", r"my_sweep\.py:2: ZeroDivisionError"),
    (b"grid = {'lr': [0.1]}\n# caf\xe9\n", r"my_sweep\.py:2: not UTF-8 text"),
])
def test_a_bad_sweep_file_is_one_line_before_any_run(fake, tmp_path, body, message, capsys):
    spec = tmp_path / "my_sweep.py"
    spec.write_bytes(body if isinstance(body, bytes) else body.encode())
    code, err = sweep_in_process("--file", str(spec), fake, "--out", str(tmp_path / "sw"))
    err += capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "sw").exists()


# A --then command that writes eval.json with what FAKE_EVAL_BODY holds (a Python expression of lr), or nothing.
FAKE_EVAL_BODY = r'''
import json, os, sys
out = sys.argv[1]
lr = float([json.loads(l) for l in open(os.path.join(out, "argv.jsonl"))][0][0].split("=")[1])
body = os.environ.get("FAKE_EVAL_BODY")
if body != "none":
    open(os.path.join(out, "eval.json"), "w").write(json.dumps(eval(body)) if body else json.dumps({"blimp": {"score": 100 * lr}}))
'''


@pytest.mark.parametrize("body, why", [
    ("none", r"eval\.json was not written"),                              # the file absent
    ("{'blimp': {}}", r"eval\.json has no blimp\.score"),                  # the key missing
    ("{'blimp': {'score': 'high'}}", r'blimp\.score is "high", not a finite number'),
    ("{'blimp': {'score': float('nan')}}", r"blimp\.score is NaN, not a finite number"),
    ("{'blimp': {'score': True}}", r"blimp\.score is true, not a finite number"),
    ("[1, 2]", r"eval\.json has no blimp"),
])
def test_a_metric_that_is_not_there_fails_the_run_in_one_line_and_the_next_invocation_runs_it_again(fake, tmp_path, body, why):
    (tmp_path / "fake_eval.py").write_text(FAKE_EVAL_BODY)
    out = str(tmp_path / "sw")
    args = (fake, "--grid", "lr=0.1,0.2", "--out", out, "--then", f"python {tmp_path / 'fake_eval.py'} {{out_dir}}",
            "--metric", "eval.json:blimp.score", "--mode", "max")
    r = run_sweep(*args, env={"FAKE_EVAL_BODY": body})
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and re.match(r"error: 2 of 2 runs failed \(lr=0\.1: metric eval\.json:blimp\.score: ", r.stderr), r.stderr
    assert re.search(why, r.stderr), r.stderr
    assert [row["status"] for row in results(out)] == ["failed", "failed"] and [row["metric"] for row in results(out)] == [None, None]
    assert len(re.findall(r"failed: metric eval\.json:blimp\.score: ", r.stdout)) == 2  # each run's own line
    r = run_sweep(*args)  # the evaluation fixed: the same command runs --then again (and no training), and ranks the runs
    assert r.returncode == 0, r.stderr
    assert [row["status"] for row in results(out)] == ["done", "done"] and [row["metric"] for row in results(out)] == pytest.approx([10.0, 20.0])
    assert all(len(invocations(row["out_dir"])) == 1 for row in results(out))


def test_a_run_marked_done_without_its_metric_is_evaluated_again(fake, tmp_path):
    """A run marked done before the metric was checked (or whose eval.json was deleted since) is not skipped."""
    (tmp_path / "fake_eval.py").write_text(FAKE_EVAL_BODY)
    out = str(tmp_path / "sw")
    args = (fake, "--grid", "lr=0.1", "--out", out, "--then", f"python {tmp_path / 'fake_eval.py'} {{out_dir}}",
            "--metric", "eval.json:blimp.score", "--mode", "max")
    assert run_sweep(*args).returncode == 0
    os.remove(os.path.join(out, "lr=0.1", "eval.json"))
    r = run_sweep(*args)
    assert r.returncode == 0 and "skipped" not in r.stdout and results(out)[0]["metric"] == pytest.approx(10.0), r.stdout


def test_a_metric_no_run_logs_stops_the_sweep_after_its_first_run(fake, tmp_path):
    out = str(tmp_path / "sw")
    r = run_sweep(fake, "--grid", "lr=0.1,0.2,0.3", "--metric", "val_los", "--out", out)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: metric 'val_los': a finished run did not log it"), r.stderr
    assert "val_loss" in r.stderr and [row["status"] for row in results(out)].count("done") == 1


def test_sigterm_to_the_sweep_exits_143(fake, tmp_path):
    proc = subprocess.Popen([sys.executable, SWEEP, fake, "--grid", "lr=0.1,0.2", "--out", str(tmp_path / "sw")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "FAKE_SLEEP": "0.5"})
    while not os.path.isfile(tmp_path / "sw" / "lr=0.1" / "log.jsonl"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "re-run the same command to continue" in stdout, (proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_killed_at_stage_boundaries_and_at_random_instants_the_rerun_ends_as_an_uninterrupted_sweep(fake, tmp_path):
    """Issue 30: Ctrl-C to the process group when the first run is done (a boundary), SIGTERM while the second trains,
    SIGKILL while the third trains (a random instant): each ends as it must (one line, 130 / 143; the runs die with the
    sweep), and the same command then ends with the results of an uninterrupted sweep."""
    import random
    (tmp_path / "fake_eval.py").write_text(FAKE_EVAL)
    rng = random.Random(30)

    def cmd(out):
        return [sys.executable, SWEEP, fake, "--grid", "lr=0.3,0.1,0.2", "--out", str(out), "--then",
                f"python {tmp_path / 'fake_eval.py'} {{out_dir}}", "--metric", "eval.json:blimp.score", "--mode", "max"]

    env = {"FAKE_SLEEP": "0.15", "FAKE_QUIET": "1"}
    finish(cmd(tmp_path / "ref"), str(tmp_path), "ref", env)
    out = tmp_path / "sw"
    state = lambda lr: sweep.read_json(str(out / f"lr={lr}" / sweep.STATE)) or {}
    job = Job(cmd(out), str(tmp_path), 1, env)
    job.wait_until(lambda: state(0.3).get("status") == "done")  # the boundary after the first run
    job.stop("int")
    launches = lambda lr: len(invocations(str(out / f"lr={lr}"))) if os.path.isfile(out / f"lr={lr}" / "argv.jsonl") else 0
    for n, lr, how in ((2, 0.1, "term"), (3, 0.2, "kill")):  # while a run trains, launched by this invocation
        before = launches(lr)
        job = Job(cmd(out), str(tmp_path), n, env)
        job.wait_until(lambda: launches(lr) > before)
        time.sleep(rng.uniform(0, 0.5))
        job.stop(how)
    finish(cmd(out), str(tmp_path), 4, env)
    keep = lambda rows: [(r["values"], r["metric"], r["best_val_loss"], r["steps"], r["status"]) for r in rows]
    assert keep(results(out)) == keep(results(tmp_path / "ref"))
    assert table_column(str(out), "lr") == table_column(str(tmp_path / "ref"), "lr") == ["0.3", "0.2", "0.1"]
    assert len(invocations(str(out / "lr=0.3"))) == 1  # finished before the first kill: never run again


def test_unknown_keys_and_bad_values_of_a_project_script_are_refused_before_any_run(tmp_path):
    for args, message in ((["--grid", "learnig_rate=1e-3,2e-3"], r"run learnig_rate=0\.001: --learnig_rate: unknown key 'learnig_rate' \(did you mean 'learning_rate'|run learnig_rate=0\.001: --learnig_rate: unknown key"),
                          (["--grid", "lr=[1e-3,2e-3"], r"lr='\[1e-3,2e-3' has type str, expected float"),
                          (["--grid", "lr=1e-3", "--fixed", "dim=-4"], r"dim=-4: expected a number >0")):
        r = run_sweep("train_teacher.py", "configs/tiny_teacher1.py", *args, "--out", str(tmp_path / "sw"))
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert re.search(message, r.stderr), r.stderr
        assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("damage", ["[1, 2]", '{"command": "x"}', "lock folder"])
def test_a_damaged_state_file_or_lock_is_one_line_before_any_run(fake, tmp_path, damage):
    """A run's sweep_run.json holding a JSON list, or lacking its status, was an AttributeError or a KeyError coming
    up through a worker's future; OUT/.sweep.lock as a folder an IsADirectoryError."""
    out = tmp_path / "sw"
    (out / "lr=0.1").mkdir(parents=True)
    if damage == "lock folder":
        (out / ".sweep.lock").mkdir()
    else:
        (out / "lr=0.1" / sweep.STATE).write_text(damage)
    with pytest.raises(InputError, match=r"(not a state file of this sweep|is a folder, not a lock file)"):
        sweep.main([fake, "--grid", "lr=0.1,0.2", "--out", str(out)])
    assert not (out / "lr=0.2").exists(), "a run started"


def test_a_second_sweep_into_the_same_out_is_one_line_while_the_first_runs(fake, tmp_path, capsys):
    """One sweep per --out at a time (checkpoint.hold_lock, as prepare_data.py uses it): the second is one line and
    starts no run."""
    import fcntl
    out = tmp_path / "sw"
    out.mkdir()
    with open(out / ".sweep.lock", "w") as held:  # what a running sweep holds
        fcntl.flock(held, fcntl.LOCK_EX)
        code, err = sweep_in_process(fake, "--grid", "lr=0.1", "--out", str(out))
    assert code == 1 and err == f"error: another sweep is running in {out}\n", err
    assert sorted(os.listdir(out)) == [".sweep.lock"], "a run started"
