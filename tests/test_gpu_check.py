"""bench/gpu_check.py, which no GPU has run yet: without a GPU it says so and exits 0 (writing nothing); a part
that fails is a row of the table and the next part still runs; and --rehearse runs every part on this CPU at
tiny sizes, so that the script itself is checked before its one blind run on a GPU (slow: ~2 minutes).
Run: python -m pytest tests/test_gpu_check.py"""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, shared_path

SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def gpu_check(*args, timeout=900):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    r = gpu_check("--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("no CUDA device is visible: nothing to check on this machine")
    assert not (tmp_path / "out").exists()


def test_a_failed_part_is_a_row_and_the_next_part_still_runs(tmp_path):
    r = gpu_check("--rehearse", "--parts", "data,ddp", "--data_dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert r.returncode == 1, r.stdout + r.stderr
    parts = json.load(open(tmp_path / "out" / "results.json"))["parts"]
    assert [(p["part"], p["status"]) for p in parts] == [("data", "failed"), ("ddp", "failed")]
    assert "no meta.json there" in parts[0]["error"] and parts[1]["error"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| data | failed |" in table and "| ddp | failed |" in table
    assert r.stdout.strip().endswith("0 of 2 parts ok; failed: data, ddp")


@pytest.mark.slow
def test_the_rehearsal_runs_every_part_on_a_cpu(prepared, tmp_path):
    shared_path("blimp_filtered")
    pytest.importorskip("transformers")
    r = gpu_check("--rehearse", "--data_dir", prepared, "--out", str(tmp_path / "out"), timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    parts = {p["part"]: p for p in json.load(open(tmp_path / "out" / "results.json"))["parts"]}
    assert list(parts) == ["data", "tests", "ddp", "step tiny ours", "step tiny papers", "blimp"]
    assert all(p["status"] == "ok" for p in parts.values()), parts
    assert "passed" in parts["tests"]["note"] and "backend gloo" in parts["ddp"]["note"]
    for variant in ("ours", "papers"):
        step = parts[f"step tiny {variant}"]
        assert step["tokens_per_s"] > 0 and 0 < step["mfu"] < 1 and step["peak_memory_gb"] > 0 and step["loss"] > 0
    assert parts["step tiny ours"]["dtype"].startswith("bfloat16") and "x the papers' tokens/s" in parts["step tiny ours"]["vs"]
    assert parts["blimp"]["pairs"] == 134 and parts["blimp"]["pairs_per_s_2048"] > 0  # 2 pairs of each of the 67 paradigms
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.startswith("# GPU check (rehearsal on a CPU: not GPU numbers)") and table.count("| ok |") == 6


def dead(pid):
    """The process is gone, or a zombie waiting to be reaped (killed, not running)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def test_a_timeout_ends_the_part_and_what_it_started(tmp_path):
    """A part that hangs (a torchrun whose workers wait forever) is ended with everything it started: its process
    group, not only the child, or the workers would hold the GPU through the rest of the check."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_check

    pidfile = tmp_path / "pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="timed out after 3 s"):
        gpu_check.child([sys.executable, "-c", code], timeout=3)
    assert time.perf_counter() - t0 < 20  # not waiting for the grandchild's 60 s
    pid = int(pidfile.read_text())
    for _ in range(50):
        if dead(pid):
            break
        time.sleep(0.1)
    assert dead(pid), f"the grandchild {pid} still runs"


def test_ctrl_c_of_the_check_ends_the_running_part(tmp_path):
    """The part runs in its own session (so that a timeout can end its whole group): a Ctrl-C of the check must end it
    too, or it would keep the GPU busy after the check has said `interrupted`."""
    import signal
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_check

    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"

    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            gpu_check.child([sys.executable, "-c", code], timeout=60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert pidfile.exists(), "the part had not started within 2 s: the test proved nothing"
    assert dead(int(pidfile.read_text()))
