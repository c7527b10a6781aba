"""experiments/reproduce_blimp.py at its smoke size (issue 32): the whole pipeline runs (the sweep, the teachers, the
students and baselines, the single-teacher students, every evaluation, the curves, the report), and a run stopped by
Ctrl-C during the teachers, by SIGTERM at a random instant of the students and by SIGKILL during the evaluations, then
run again, ends with every model's results equal to an uninterrupted run's. Both runs are slow (process starts):
Run: python -m pytest tests/test_reproduce_blimp.py   (marked slow; about two minutes on 2 idle cores)"""

import json
import os
import random
import sys
import time

import pytest

from conftest import ROOT, Job, finish, shared_path

pytestmark = pytest.mark.slow
SCRIPT = os.path.join(ROOT, "experiments", "reproduce_blimp.py")
COMPARED = ("role", "seed", "lr", "params", "best_step", "val_ce", "test_ce", "test_ce_windows", "blimp", "supplement",
            "blimp_correct", "supplement_correct", "val_curve")


def command(work):
    return [sys.executable, SCRIPT, "--smoke", "--seeds=1", f"--work={work}"]


def results(work):
    folder = os.path.join(work, "results")
    return {f[:-5]: {k: v for k, v in json.load(open(os.path.join(folder, f))).items() if k in COMPARED} for f in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    if not os.path.isdir(shared_path("babylm_2024_mini")) or not os.path.isdir(shared_path("blimp_filtered")):
        pytest.skip("../shared/data/babylm_2024_mini and blimp_filtered are needed (the experiment's data)")
    base = tmp_path_factory.mktemp("blimp_reference")
    job = finish(command(base / "work"), str(base), 0)
    return base / "work", open(job.out).read()


def test_the_smoke_run_finishes_every_model_and_writes_the_report(reference):
    work, out = reference
    got = results(work)
    assert set(got) == {"teacher1", "teacher2", "baseline_s1", "student_s1", "single_t1_s1", "single_t2_s1"}, sorted(got)
    assert {x["role"] for x in got.values()} == {"teacher", "baseline", "student", "single_t1", "single_t2"}
    report = open(work / "RESULTS_blimp.md").read()
    assert "All 6 models finished." in report and "## Conclusion" in report and "## Learning curves over words seen" in report
    assert os.path.isfile(work / "curves" / "curves.json"), "the learning curves were scored"
    assert "| student_s1 |" in report and "--protocol 2025" in report
    assert os.path.islink(work / "out" / "baseline_s1"), "baseline_s1 is the sweep's run at the chosen learning rate"
    ledger = check_ledger(work)
    assert max(ledger["jobs"].values()) <= ledger["wall"] <= sum(ledger["jobs"].values()), ledger
    assert f"Compute so far: {sum(ledger['jobs'].values()) / 3600:.1f} thread-hours, {ledger['wall'] / 3600:.1f} hours of wall" in report


def check_ledger(work):
    """The compute ledger counts every job that finished, and each marker's seconds are its job's total."""
    ledger = json.load(open(work / "logs" / "compute.json"))
    for f in os.listdir(work / "logs"):
        if f.endswith(".done"):
            assert json.load(open(work / "logs" / f))["seconds"] == ledger["jobs"][f[:-5]], f"{f}: not the ledger's seconds"
    return ledger


def test_killed_at_stages_and_random_instants_the_rerun_ends_as_the_uninterrupted_run(reference, tmp_path):
    ref_work, _ = reference
    work = tmp_path / "work"
    cmd = command(work)
    logs = work / "logs"
    done = lambda name: os.path.isfile(logs / f"{name}.done")
    t0 = time.time()
    job = Job(cmd, str(tmp_path), 1)  # Ctrl-C while the teachers train (a stage boundary: after the sweep)
    job.wait_until(lambda: os.path.isfile(logs / "teacher2.log") and not done("teacher2"))
    asked = time.time()
    job.stop("int")
    assert os.path.getmtime(logs / "compute.json") >= asked, "the compute ledger was not written on stopping"
    job = Job(cmd, str(tmp_path), 2)  # SIGTERM at a random instant of the student's training or evaluation
    job.wait_until(lambda: os.path.isfile(logs / "student_s1.log"))
    time.sleep(random.Random(32).uniform(0, 2))
    asked = time.time()
    job.stop("term")
    assert os.path.getmtime(logs / "compute.json") >= asked, "the compute ledger was not written on stopping"
    stopped, ledger = time.time() - t0, json.load(open(logs / "compute.json"))  # two runs stopped cleanly: all their time is in the ledger
    assert stopped / 2 < ledger["wall"] < stopped and stopped / 2 < sum(ledger["jobs"].values()) < 2 * stopped, (ledger, stopped)
    job = Job(cmd, str(tmp_path), 3)  # SIGKILL once a few models are evaluated: the jobs die with the experiment
    job.wait_until(lambda: os.path.isdir(work / "results") and len(os.listdir(work / "results")) >= 3)
    job.stop("kill")
    finish(cmd, str(tmp_path), 4)
    assert results(work) == results(ref_work)
    check_ledger(work)


@pytest.mark.parametrize("items, seeds, says", [
    ((+1.0, +0.8, +1.2), (+1.0, +0.2, +1.8), "**better than the baseline**"),
    ((-1.0, -1.2, -0.8), (-1.0, -1.9, -0.1), "**worse than the baseline**"),
    ((+0.1, -0.2, +0.4), (+0.1, -1.0, +1.2), "**not distinguishable from the baseline**"),
    ((+1.0, +0.8, +1.2), (+1.0, -1.4, +3.4), "**better than the baseline on the items, not over seeds**"),
    ((-1.2, -2.4, -0.1), (-1.2, -4.3, +1.9), "**worse than the baseline on the items, not over seeds**"),
    ((+0.5, -0.1, +1.1), (+0.5, +0.1, +0.9), "**better than the baseline over seeds, not on the items**"),
    ((+1.0, +0.8, +1.2), (-1.0, -1.9, -0.1), "**better than the baseline on the items, worse over seeds**"),
])
def test_the_conclusion_says_what_the_intervals_say(monkeypatch, items, seeds, says):
    """A BLiMP difference whose intervals exclude zero in either direction, on the items and over seeds, is named as
    such in the plain-words conclusion (a supplement worse on the items was once called "better on one interval")."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import reproduce_blimp
    from stats import CI
    rows = [("blimp", "paired bootstrap, 3 seeds pooled", CI(*items, 0.95, "")), ("blimp", "t interval over 3 seeds", CI(*seeds, 0.95, ""))]
    monkeypatch.setattr(reproduce_blimp, "compare", lambda m, a, b: rows if b == "baseline" else [])
    m = {f"{role}_s{i}": {"role": role, "blimp": 57.0 + i, "supplement": 52.0} for role in ("student", "baseline") for i in (1, 2)}
    m["teacher2"] = {"role": "teacher", "blimp": 58.0, "supplement": 52.0}
    lines = [x for x in reproduce_blimp.conclusion(m, "teacher2") if x.startswith("- On BLiMP")]
    assert len(lines) == 1 and says in lines[0], f"conclusion: {lines} does not say {says}"
