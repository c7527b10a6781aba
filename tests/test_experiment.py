"""experiments/reproduce_cpu.py: the corpus subset, the generated report, the learning-rate sweep's choice from finished
runs only, and (slow) a smallest --smoke run killed during its sweep's edge extension and run again (the full run takes
hours and is not part of the tests; `--smoke` exercises the whole pipeline). Run: python -m pytest tests/test_experiment.py"""

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, Job, finish, shared_path, write_corpus

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import reproduce_cpu  # noqa: E402
from config import InputError  # noqa: E402
from reproduce_cpu import compare, subset_corpus, write_report  # noqa: E402


def test_subset_keeps_the_first_words_of_each_source(tmp_path):
    src = write_corpus(tmp_path / "src", n_train=500, n_dev=20)
    subset_corpus(src, str(tmp_path / "sub"), words=100)
    for fn in ("childes.train", "switchboard.train"):
        full = open(os.path.join(src, "train_10M", fn)).read().split()
        part = open(tmp_path / "sub" / "train_10M" / fn).read().split()
        assert part == full[:100]
    assert open(tmp_path / "sub" / "dev" / "childes.dev").read() == open(os.path.join(src, "dev", "childes.dev")).read()


def fake_model(role, seed, p_correct, ce, lr=2e-3):
    """A result as evaluate_model writes it: per-pair BLiMP/supplement correctness drawn with p_correct,
    2 paradigms of 400 pairs, 200 test windows around ce; the supplement answered the same by every model."""
    r = random.Random(seed * 1000 + int(100 * p_correct) + int(100 * ce))
    pairs = lambda p, n: "".join("1" if r.random() < p else "0" for _ in range(n))
    return {"role": role, "seed": seed, "lr": lr, "params": 10, "best_step": 5, "train_seconds": 1.0, "val_ce": ce, "test_ce": ce,
            "test_ce_windows": [ce + r.gauss(0, 0.05) for _ in range(200)], "blimp": 100 * p_correct, "supplement": 50.0,
            "blimp_field": {"syntax": 100 * p_correct}, "val_curve": [(1, ce)],
            "blimp_correct": {"a": pairs(p_correct, 400), "b": pairs(p_correct, 400)}, "supplement_correct": {"s": "10" * 50}}  # the same for every model


def fake_info(chosen=2e-3):
    rows = lambda best: [(lr, 4.0 + (0.0 if lr == best else 0.1), 5, 1.0, f"/w/sweep/lr={lr}") for lr in (1e-3, 2e-3, 4e-3, 1e-2)]
    return {"smoke": False, "words_per_source": 10, "train_tokens": 100, "epochs": 1.0, "steps": 5, "steps_per_epoch": 5,
            "sweeps": {"baseline": rows(chosen), "teacher": rows(1e-2)}, "lr": {"baseline": chosen, "teacher": 1e-2}, "total_seconds": 7200}


def sentences(text):
    return {l.split(":**")[0].strip("*"): l for l in text.splitlines() if l.startswith("**") and ":**" in l}


def test_report_states_for_each_comparison_which_intervals_exclude_zero(tmp_path):
    m = {"teacher1": fake_model("teacher", 1, 0.60, 4.0), "teacher2": fake_model("teacher", 2, 0.60, 4.1)}
    for s in (101, 102, 103):  # the student: far more pairs right and lower CE than the baseline of its seed
        m[f"student_s{s - 100}"] = fake_model("student", s, 0.80, 3.50 + 0.01 * (s - 101))
        m[f"baseline_s{s - 100}"] = fake_model("baseline", s, 0.60, 3.90 + 0.012 * (s - 101))
        m[f"student_t1_s{s - 100}"] = fake_model("single_t1", s, 0.80, 3.50 + 0.01 * (s - 101))  # the same as the student
    path = tmp_path / "RESULTS.md"
    write_report(m, fake_info(), str(path), missing=["student_3t_s1"])
    text = path.read_text()
    said = sentences(text)
    # 80% vs 60% of 800 pairs, CE 0.4 lower: better on the items and over seeds (lower CE counts as better)
    assert said["Student vs baseline"].startswith("**Student vs baseline:** A is better on BLiMP on the items, test CE on the items, "
                                                  "validation CE over seeds, test CE over seeds, BLiMP over seeds;"), said["Student vs baseline"]
    assert "include zero on supplement on the items, supplement over seeds." in said["Student vs baseline"]  # the same answers: a zero difference
    assert "A is better on BLiMP on the items, test CE on the items, validation CE over seeds" in said["Student vs best teacher"]
    assert "B is better" not in said["Two teachers vs teacher1 alone"]  # equal in distribution: no side shown better
    assert "Three teachers vs two" not in said  # not run: no comparison
    row = next(l for l in text.splitlines() if l.startswith("| test CE (nats) | paired bootstrap, seed 102 (student_s2 - baseline_s2)"))
    assert row.split("|")[5].strip() == "yes" and row.split("|")[6].strip() == "A", row
    assert "**Partial: 11 of 12 models finished.** Still to run: student_3t_s1." in text
    assert "Compute so far: 2.0 hours" in text


def test_report_marks_the_chosen_learning_rate_and_a_choice_at_the_edge(tmp_path):
    m = {"student_s1": fake_model("student", 101, 0.7, 3.5)}
    path = tmp_path / "RESULTS.md"
    write_report(m, fake_info(chosen=2e-3), str(path))
    text = path.read_text()
    baseline_table = text.split("**Baseline (and student)**")[1].split("Chosen:")[0]
    assert [l.split("|")[1].strip() for l in baseline_table.splitlines() if l.endswith("| yes |")] == ["0.002"]
    assert "Chosen: lr = 0.002.\n" in text  # inside the grid: no warning
    assert "Chosen: lr = 0.01. It is at the edge of the grid" in text  # the teacher's best is the largest value
    assert "All 1 models finished." in text


def test_pooled_bootstrap_is_the_mean_of_the_per_seed_differences():
    """The pooled paired bootstrap's point estimate must be the mean over seeds of each seed's score difference
    (score = unweighted mean over paradigms), computed here by hand."""
    m = {f"student_s{k}": fake_model("student", 100 + k, p, 3.5) for k, p in ((1, 0.7), (2, 0.8))}
    m.update({f"baseline_s{k}": fake_model("baseline", 100 + k, p, 3.6) for k, p in ((1, 0.6), (2, 0.65))})
    score = lambda x: sum(sum(map(int, c)) / len(c) for c in x["blimp_correct"].values()) / len(x["blimp_correct"]) * 100
    by_hand = sum(score(m[f"student_s{k}"]) - score(m[f"baseline_s{k}"]) for k in (1, 2)) / 2
    rows = {(metric, method): ci for metric, method, ci in compare(m, "student", "baseline")}
    assert abs(rows["blimp", "paired bootstrap, 2 seeds pooled"].diff - by_hand) < 1e-9
    ce = lambda x: sum(x["test_ce_windows"]) / len(x["test_ce_windows"])
    assert abs(rows["test_ce", "t interval over 2 seeds"].diff - (3.5 - 3.6)) < 1e-12
    assert abs(rows["test_ce", "paired bootstrap, 2 seeds pooled"].diff - sum(ce(m[f"student_s{k}"]) - ce(m[f"baseline_s{k}"]) for k in (1, 2)) / 2) < 1e-9


def test_seed_intervals_pair_the_seeds():
    """Same seed = same initialisation and data order: seeds that move student and baseline together must
    not widen the interval (a Welch interval over these seeds would include zero)."""
    m = {}
    for k, ce in ((1, 3.0), (2, 3.5), (3, 4.0)):
        m[f"student_s{k}"] = fake_model("student", 100 + k, 0.7, ce)
        m[f"baseline_s{k}"] = fake_model("baseline", 100 + k, 0.7, ce + 0.1)
    ci = {(metric, method): ci for metric, method, ci in compare(m, "student", "baseline")}["val_ce", "t interval over 3 seeds"]
    assert abs(ci.diff + 0.1) < 1e-12 and ci.hi < 0, ci


def test_the_sweep_grows_until_the_best_value_is_inside(monkeypatch, tmp_path):
    """A best lr at the edge of the grid adds a value beyond it (x2 or /2), at most MAX_EXTENSIONS times; each grid
    is ranked over its own runs."""
    import argparse
    ran, ranked, best = [], [], iter([1e-3, 5e-4, 2.5e-4])  # always the smallest value: two extensions, then stop
    monkeypatch.setattr(reproduce_cpu, "run_once", lambda name, cmd, *a: ran.append((name, cmd[cmd.index("--grid") + 1])))
    monkeypatch.setattr(reproduce_cpu, "best_lr", lambda work, family, lrs: (ranked.append(list(lrs)), next(best), None, 0.0)[1:])
    args = argparse.Namespace(smoke=False, report_only=False)
    cmds, lrs = reproduce_cpu.tune(args, str(tmp_path), {"seed": 1}, "teacher")
    assert ran == [("sweep_teacher", "lr=0.001,0.002,0.004,0.01"), ("sweep_teacher_5", "lr=0.0005,0.001,0.002,0.004,0.01"),
                   ("sweep_teacher_6", "lr=0.00025,0.0005,0.001,0.002,0.004,0.01")]
    assert ranked == [[1e-3, 2e-3, 4e-3, 1e-2], [5e-4, 1e-3, 2e-3, 4e-3, 1e-2], [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 1e-2]] and lrs == ranked[-1]
    assert len(cmds) == 3 == reproduce_cpu.MAX_EXTENSIONS + 1
    ran.clear()
    best = iter([2e-3])  # inside: one sweep
    assert len(reproduce_cpu.tune(args, str(tmp_path), {}, "baseline")[0]) == 1 and ran == [("sweep_baseline", "lr=0.001,0.002,0.004,0.01")]
    best = iter([1e-2, 4e-3])  # the largest, then inside
    ran.clear()
    reproduce_cpu.tune(args, str(tmp_path), {}, "baseline")
    assert [g for _, g in ran] == ["lr=0.001,0.002,0.004,0.01", "lr=0.001,0.002,0.004,0.01,0.02"]


def sweep_row(work, lr, status, val_losses):
    """A run of the baseline sweep as experiments/sweep.py leaves it: its log, and its row in results.jsonl."""
    out = os.path.join(work, "sweep", "baseline", f"lr={lr!r}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "log.jsonl"), "w") as f:
        f.writelines(json.dumps({"step": 10 * (i + 1), "val_loss": v}) + "\n" for i, v in enumerate(val_losses))
    return {"values": {"lr": lr}, "out_dir": out, "seconds": 1.0, "status": status}


def test_an_unfinished_run_of_an_interrupted_extension_is_never_ranked(tmp_path):
    """The reported case: interrupted during the baseline sweep's edge extension, the rerun took the half-trained
    lr=0.008 run (pending, its val CE lower at an early step) as the best and linked it as baseline_s1. Ranking
    reads finished runs of the finished grid only; an unfinished run of that grid is an error, not a smaller grid."""
    work = str(tmp_path)
    rows = [sweep_row(work, 1e-3, "done", [5.0, 4.6]), sweep_row(work, 2e-3, "done", [5.0, 4.5]), sweep_row(work, 4e-3, "done", [5.0, 4.4]),
            sweep_row(work, 8e-3, "interrupted", [3.0])]  # the extension, killed after its first validation
    with open(os.path.join(work, "sweep", "baseline", "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert reproduce_cpu.best_lr(work, "baseline", [1e-3, 2e-3, 4e-3])[0] == 4e-3  # the first grid: the extension's run is not in it
    assert [r[0] for r in reproduce_cpu.read_sweep(work, "baseline", [1e-3, 2e-3, 4e-3])] == [1e-3, 2e-3, 4e-3]
    with pytest.raises(InputError, match=r"the baseline sweep's run at lr=0\.008 has not finished"):
        reproduce_cpu.best_lr(work, "baseline", [1e-3, 2e-3, 4e-3, 8e-3])


def test_the_report_needs_only_the_work_folder(prepared, tmp_path):
    """The reported traceback: --report_only with results/ but no data/. The size of the prepared data (all the report
    needs of it) is recorded in WORK/logs/data.json when the data is there; without either it is one line."""
    work, data = tmp_path / "work", tmp_path / "work" / "data"
    os.makedirs(work / "logs")
    shutil.copytree(prepared, data)
    n = reproduce_cpu.train_windows(str(work), str(data))
    assert n == reproduce_cpu.Windows(os.path.join(prepared, "train.bin"), 128).n and os.path.isfile(work / "logs" / "data.json")
    shutil.rmtree(data)
    assert reproduce_cpu.train_windows(str(work), str(data)) == n
    os.remove(work / "logs" / "data.json")
    with pytest.raises(InputError, match=r"data/train\.bin not found, nor .*logs/data\.json: the report needs the size of the prepared data"):
        reproduce_cpu.train_windows(str(work), str(data))


def test_a_finished_step_with_another_command_is_refused(tmp_path, capsys):
    os.makedirs(tmp_path / "logs")
    json.dump({"seconds": 3.0, "command": ["train_teacher.py", "--lr=0.001"]}, open(tmp_path / "logs" / "teacher2.done", "w"))
    assert reproduce_cpu.run_once("teacher2", ["train_teacher.py", "--lr=0.001"], None, str(tmp_path), "1/1") == 3.0
    with pytest.raises(InputError) as e:
        reproduce_cpu.run_once("teacher2", ["train_teacher.py", "--lr=0.002"], None, str(tmp_path), "1/1")
    assert str(e.value).startswith("teacher2 finished earlier with another command (train_teacher.py --lr=0.001)")


def test_compute_total_counts_every_launch_of_a_sweep_and_the_report_names_resumed_models(tmp_path):
    work = tmp_path / "work"
    os.makedirs(work / "logs")
    os.makedirs(work / "results")
    markers = {"prepare": {"seconds": 100.0, "command": ["p"]},
               "sweep_baseline": {"seconds": 1000.0, "command": ["s"]},  # its last launch only: the sweep rows count 4 x 1 s
               "teacher2": {"seconds": 3500.0, "command": ["t"], "resumed": True},
               "student_s1": {"seconds": 3600.0, "command": ["d"], "resumed": False}}
    for name, x in markers.items():
        json.dump(x, open(work / "logs" / f"{name}.done", "w"))
    json.dump(fake_model("teacher", 2, 0.6, 4.0), open(work / "results" / "teacher2.json", "w"))
    info = {**fake_info(), "sweeps": {"baseline": fake_info()["sweeps"]["baseline"]}}  # train s 1.0 per run
    reproduce_cpu.report(str(work), str(tmp_path), ["teacher2", "student_s1"], info, [])
    text = (tmp_path / "RESULTS.md").read_text()
    assert f"Compute so far: {(100 + 3500 + 3600 + 4) / 3600:.1f} hours" in text  # 2.0; with the sweep marker 2.3
    assert "Resumed after a kill: teacher2." in text
    assert "BLiMP (2 paradigms) and the supplement (1 tasks)" in text  # counted from the results


def test_the_cpu_report_is_scored_and_said_to_be_scored_with_the_2024_protocol(tmp_path):
    """RESULTS.md was scored with the 2024 protocol: reproduce_cpu.py passes it explicitly (eval_blimp.py's default is
    the official 2025 one now), and the report, generated and checked in, names it."""
    assert reproduce_cpu.PROTOCOL == "2024"
    command = reproduce_cpu.blimp_command("/w/out/teacher2", 0, (), reproduce_cpu.PROTOCOL)
    assert command[command.index("--protocol") + 1] == "2024"
    assert "--protocol" not in reproduce_cpu.blimp_command("/w/out/teacher2")  # no protocol given: eval_blimp.py's default
    os.makedirs(tmp_path / "logs")
    reproduce_cpu.report(str(tmp_path), str(tmp_path), [], {**fake_info(), "sweeps": {}}, [])
    said = ("BLiMP and the supplement: eval_blimp.py's 2024 protocol (--protocol 2024", "each model then gets `eval_blimp.py --protocol 2024`")
    for text in ((tmp_path / "RESULTS.md").read_text(), open(os.path.join(ROOT, "RESULTS.md")).read()):
        assert all(s in text for s in said)


def test_a_step_resumed_after_a_kill_is_marked_resumed(tmp_path):
    os.makedirs(tmp_path / "logs")
    for name, killed in (("fresh", False), ("killed", True)):
        out = tmp_path / "out" / name
        os.makedirs(out)
        if killed:
            open(out / "last.pt", "wb").close()  # what a killed run leaves behind
        reproduce_cpu.run_once(name, ["-c", "pass"], str(out), str(tmp_path), "1/1")  # python -c pass [--resume=True]
        assert json.load(open(tmp_path / "logs" / f"{name}.done"))["resumed"] is killed


def test_pooled_seeds_share_the_items_so_copies_do_not_narrow_the_interval():
    """Three seeds that answered every item exactly alike are one seed's evidence about the test set: pooling
    them must give that seed's interval, not one sqrt(3) narrower (an item resampled with all its seeds)."""
    one_a, one_b = fake_model("student", 1, 0.7, 3.5), fake_model("baseline", 1, 0.6, 3.65)  # their own window noise
    m = {}
    for k in (1, 2, 3):
        m[f"student_s{k}"], m[f"baseline_s{k}"] = {**one_a, "seed": 100 + k}, {**one_b, "seed": 100 + k}
    rows = {(metric, method): ci for metric, method, ci in compare(m, "student", "baseline", per_seed=True)}
    for metric in ("blimp", "test_ce"):
        pooled, single = rows[metric, "paired bootstrap, 3 seeds pooled"], rows[metric, "paired bootstrap, seed 101 (student_s1 - baseline_s1)"]
        assert abs(pooled.lo - single.lo) < 1e-9 and abs(pooled.hi - single.hi) < 1e-9, (metric, pooled, single)


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """reproduce_cpu.py --smoke at its smallest (1,000 words a source, 3 epochs), through the baseline's learning-rate
    sweep, uninterrupted: the grid 0.002, 0.004 grows twice at its upper edge (0.008, then 0.016). ~1.5 minutes of
    2 cores. The kill test takes it back to the end of the first grid in place (the markers name the folder)."""
    shared_path("babylm_2024_mini")
    base = tmp_path_factory.mktemp("cpu_smoke")
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "reproduce_cpu.py"), "--smoke", "--words=1000", "--epochs=3",
           "--until=baseline_sweep", "--work", str(base / "work")]
    return base, cmd, finish(cmd, str(base), "ref")


@pytest.mark.slow
def test_killed_during_the_sweeps_edge_extension_the_rerun_ends_as_the_uninterrupted_run(smoke_sweep):
    """Issue 30's reported case: interrupted during the baseline sweep's edge extension (a run of the grown grid half
    trained), the rerun took that run as the best and linked it as baseline_s1. Here the run is taken back to the end
    of the first extension, then stopped by Ctrl-C to its process group while the second extension's run (lr=0.016)
    trains (the sweep passes it on: one line, 130), and by SIGTERM at a random instant of the rerun (143); run once
    more, it chooses the learning rate of the uninterrupted run from the same finished runs, with the same val CE."""
    base, cmd, ref_job = smoke_sweep
    work, sweep_dir = base / "work", base / "work" / "sweep" / "baseline"
    rows = lambda: [(r["values"], r["metric"], r["best_val_loss"], r["steps"], r["status"]) for r in map(json.loads, open(sweep_dir / "results.jsonl"))]
    chosen = lambda job: [l for l in open(job.out).read().splitlines() if l.startswith("stopped after the baseline's")]
    reference, reference_chosen = rows(), chosen(ref_job)
    assert [r[0]["lr"] for r in reference] == [0.002, 0.004, 0.008, 0.016] and len(reference_chosen) == 1, reference
    os.remove(work / "logs" / "sweep_baseline_4.done")
    shutil.rmtree(sweep_dir / "lr=0.016")
    grid = [l for l in open(sweep_dir / "results.jsonl") if json.loads(l)["values"]["lr"] != 0.016]
    open(sweep_dir / "results.jsonl", "w").writelines(grid)  # as the first extension's sweep left it
    run = sweep_dir / "lr=0.016"
    state = lambda: json.load(open(run / "sweep_run.json")) if os.path.isfile(run / "sweep_run.json") else {}
    job = Job(cmd, str(base), 1)
    job.wait_until(lambda: os.path.isfile(run / "log.jsonl"))
    job.stop("int")
    assert state().get("status") == "interrupted", state()
    job = Job(cmd, str(base), 2)
    job.wait_until(lambda: state().get("launches", 0) > 1)
    time.sleep(random.Random(30).uniform(0, 3))
    job.stop("term", finished=lambda out: "stopped after the baseline's" in out)  # in training, or after it: a random instant
    again = finish(cmd, str(base), 3)
    assert rows() == reference
    assert chosen(again) == reference_chosen
