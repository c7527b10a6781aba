"""experiments/reproduce_cpu.py: the corpus subset and the generated report (the full run takes ~90 min and
is not part of the tests; `--smoke` exercises the whole pipeline). Run: python -m pytest tests/test_experiment.py"""

import os
import sys

from conftest import ROOT, write_corpus

sys.path.insert(0, os.path.join(ROOT, "experiments"))
from reproduce_cpu import subset_corpus, write_report  # noqa: E402


def test_subset_keeps_the_first_words_of_each_source(tmp_path):
    src = write_corpus(tmp_path / "src", n_train=500, n_dev=20)
    subset_corpus(src, str(tmp_path / "sub"), words=100)
    for fn in ("childes.train", "switchboard.train"):
        full = open(os.path.join(src, "train_10M", fn)).read().split()
        part = open(tmp_path / "sub" / "train_10M" / fn).read().split()
        assert part == full[:100]
    assert open(tmp_path / "sub" / "dev" / "childes.dev").read() == open(os.path.join(src, "dev", "childes.dev")).read()


def test_report_compares_the_student_with_the_spread(tmp_path):
    model = lambda role, val, blimp: {"role": role, "params": 10, "best_step": 5, "tokens_seen": 100, "train_seconds": 1.0, "val_ce": val,
                                      "test_ce": val + 0.1, "blimp": blimp, "supplement": 50.0, "blimp_field": {"syntax": blimp}, "val_curve": []}
    r = {"smoke": False, "words_per_source": 10, "train_tokens": 100, "epochs": 1.0, "steps": 5, "steps_per_epoch": 5, "models": {
        "teacher1": model("teacher", 4.0, 60.0), "teacher2": model("teacher", 4.1, 61.0),
        "student_s1": model("student", 3.90, 63.0), "student_s2": model("student", 3.92, 63.5),
        "baseline_s1": model("baseline", 3.95, 62.9), "baseline_s2": model("baseline", 3.99, 63.4)}}
    path = tmp_path / "RESULTS.md"
    write_report(r, str(path), "plot.png")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in path.read_text().splitlines() if line.startswith("| val_ce") or line.startswith("| blimp")}
    # val CE: student 3.91 vs baseline 3.97 (gap 0.06 > spread 0.04) and vs best teacher 4.0 (gap 0.09)
    assert rows["val_ce"][-2:] == ["yes", "yes"]
    # BLiMP: student 63.25 vs baseline 63.15 (gap 0.1 < spread 0.5); vs best teacher 61 (gap 2.25 > 0.5)
    assert rows["blimp"][-2:] == ["no", "yes"]
    assert "![validation CE](plot.png)" in path.read_text()


def test_report_states_paired_intervals_and_whether_they_exclude_zero(tmp_path):
    import random
    rng = random.Random(0)

    def model(role, p_correct, ce, seed):
        r = random.Random(seed)
        pairs = lambda p, n: "".join("1" if r.random() < p else "0" for _ in range(n))
        return {"role": role, "params": 10, "best_step": 5, "tokens_seen": 100, "train_seconds": 1.0, "val_ce": ce, "test_ce": ce,
                "test_ce_windows": [ce + rng.gauss(0, 0.05) for _ in range(200)], "blimp": 100 * p_correct, "supplement": 50.0,
                "blimp_field": {}, "val_curve": [], "blimp_correct": {"a": pairs(p_correct, 400), "b": pairs(p_correct, 400)},
                "supplement_correct": {"s": pairs(0.5, 100)}}
    r = {"smoke": False, "words_per_source": 10, "train_tokens": 100, "epochs": 1.0, "steps": 5, "steps_per_epoch": 5, "models": {
        "teacher1": model("teacher", 0.60, 4.0, 1), "teacher2": model("teacher", 0.60, 4.1, 2),
        "student_s1": model("student", 0.80, 3.5, 3), "student_s2": model("student", 0.80, 3.51, 4),
        "baseline_s1": model("baseline", 0.60, 3.9, 5), "baseline_s2": model("baseline", 0.61, 3.92, 6)}}
    path = tmp_path / "RESULTS.md"
    write_report(r, str(path), "plot.png")
    text = path.read_text()
    assert "## Confidence intervals (95%)" in text and "best teacher by validation CE (teacher1)" in text
    line = next(l for l in text.splitlines() if l.startswith("- student_s1 - baseline_s1 (baseline), BLiMP"))
    assert "the interval excludes zero (A is higher)" in line, line  # 80% vs 60% correct on 800 pairs
    line = next(l for l in text.splitlines() if l.startswith("- student_s1 - teacher1 (best teacher), test CE"))
    assert "excludes zero (B is higher)" in line, line  # lower CE is better: student - teacher < 0
    line = next(l for l in text.splitlines() if l.startswith("- student_s1 - baseline_s1 (baseline), supplement"))
    assert "the interval includes zero" in line, line  # both 50%: no difference shown
    assert any(l.startswith("- student - baseline over seeds, blimp") for l in text.splitlines())
