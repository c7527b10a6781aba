"""
A hyperparameter sweep on one node: a grid or a seeded random search over any config keys of any
training script of this project, N runs at a time (one per GPU), resumable, with a results table and plot.

    # CPU, tiny: 3 learning rates x 2 seeds, one run at a time (the CPU default)
    python experiments/sweep.py train_teacher.py configs/tiny_teacher1.py --grid lr=3e-4,1e-3,3e-3 seed=1,2 --out sweeps/lr
    # one GPU: the same, runs one after another on it
    python experiments/sweep.py train_teacher.py configs/teacher1.py --grid lr=3e-4,7e-4,1e-3 --out sweeps/t1_lr
    # several GPUs: a random search, one run per GPU (CUDA_VISIBLE_DEVICES=i), 8 at a time
    python experiments/sweep.py distill.py configs/student.py --random 16 --seed 0 \\
        --grid "lr=log_uniform(1e-4,3e-3)" alpha=0.3,0.5,0.7 --workers 8 --out sweeps/student
    # chain an evaluation after each run and rank the runs by its JSON output
    python experiments/sweep.py train_teacher.py configs/tiny_teacher1.py --grid lr=1e-3,3e-3 --out sweeps/lr_blimp \\
        --then "python eval_blimp.py --ckpt {out_dir}/ckpt.pt --data ../shared/data/blimp_filtered --out {out_dir}/blimp_2024.json" \\
        --metric blimp_2024.json:blimp.score --mode max
    # the same from a sweep file (a Python file setting script, config, grid, fixed, metric, mode, ...)
    python experiments/sweep.py --file sweeps/lr_sweep.py
    python experiments/sweep.py ... --dry_run          # print the commands, run nothing

Each run is an ordinary command, printed before it starts:
    python SCRIPT [CONFIG] --fixed_key=value ... --swept_key=value ... --out_dir=OUT/key=value,key=value
so it can be copied and re-run by hand. The sweep talks to the training scripts only through that
command line and the files they write (log.jsonl, last.pt, and JSON files of --then commands).

Values: `--grid key=v1,v2,...` (parsed like a Python list; a bare word is a string; quote a string that
contains a comma). With `--random N --seed S`, each of the N runs draws every key independently: a list
gives a uniform choice, and `uniform(lo,hi)`, `log_uniform(lo,hi)` (rounded to 3 significant digits, so
the command and the folder name agree) and `int_uniform(lo,hi)` (inclusive) give ranges. The draws are
sequential, so --random 8 --seed S starts with the runs of --random 4 --seed S: a search can be extended.
`--fixed key=value ...` sets keys in every run without sweeping them.

Metric: `val_loss` (default) is the best validation loss in out_dir/log.jsonl; any other key of log.jsonl
works the same way (best = lowest with --mode min, the default for log keys). `FILE.json:dotted.path`
reads a number from a JSON file in out_dir written by the --then command (there --mode is required); a run
whose file is missing, lacks the path or holds no finite number there is failed (one line says which), and
the next invocation runs its --then command again.

Resume: re-running the same sweep command continues where it stopped. After a run (and its --then command)
succeeds, the sweep writes out_dir/sweep_run.json with status "done"; such runs are skipped. A run that
was killed is launched again, with --resume=True when its out_dir has last.pt. Ctrl-C (or SIGTERM) is
passed on once to the runs, which save last.pt and exit; a second Ctrl-C aborts them; the sweep then exits
with 130 (143 for SIGTERM). A failed run (its command's exit status, a missing metric) makes the sweep end
with one line `error: ...` and exit 1 once the other runs are done; the same command runs it again. If the
sweep itself is killed, its runs die with it (Linux: this project's scripts ask for it as they start,
config.die_with_parent; a script of your own can do the same), so a re-run never races an orphan. Adding a --then command to a
finished sweep runs only the new command. Changing the fixed settings of an existing sweep is refused:
use a new --out.

Output in OUT: results.jsonl (one line per run: values, command, metric, best val_loss, steps, seconds,
status), results.md (a table sorted by the metric), results.png (metric against each swept value; needs
matplotlib), sweep.json (the sweep's own command line), and per run out_dir/run.log (its output).

Workers: on a GPU machine one worker per visible GPU, each run sees one GPU through CUDA_VISIBLE_DEVICES
(--workers N > GPUs puts several runs on a GPU). On a CPU one run at a time; with --workers N > 1 each run
gets OMP_NUM_THREADS = cores / N, since N processes with a thread per core each would fight over the cores.
--workers is at most the machine's cores, and a sweep at most 10,000 runs (a grid's product is counted before
anything is expanded): every count and bound is checked, one line each, before the first run.
"""

import ast
import importlib
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoint import check_writable_dir, hold_lock  # noqa: E402
from config import InputError, Terminated, child_env, convert_value, load_config, read_config_file, run_main  # noqa: E402

STATE = "sweep_run.json"  # per run, written by the sweep: the marker of a finished run
RANGES = ("uniform", "log_uniform", "int_uniform")
# The key table of each script of this project: every run's arguments are checked against it before any run.
SCRIPT_KEYS = {"train_teacher.py": ("train_teacher", "TEACHER_KEYS"), "distill.py": ("distill", "DISTILL_KEYS"),
               "eval_blimp.py": ("eval_blimp", "BLIMP_KEYS"), "eval_superglue.py": ("eval_superglue", "SUPERGLUE_KEYS")}
MAX_RUNS = 10_000  # runs of one sweep (a grid's product, or --random N): each is a folder and a process; more is not one node's work
MAX_WORKERS = os.cpu_count() or 1  # every run needs a core at least, on a GPU machine too (its data loading, its Python)

SWEEP_KEYS = {"sweep": {
    "script": ("", "the training script, e.g. train_teacher.py (or the first word after sweep.py)"),
    "config": ("", "its config file, e.g. configs/tiny_teacher1.py (or the second word)"),
    "file": ("", "a sweep file (Python) setting script, config, grid, fixed, metric, mode, random, seed, then, workers, out"),
    "grid": ([], "key=v1,v2,... or key=log_uniform(lo,hi) (with --random); several after one --grid"),
    "fixed": ([], "key=value set in every run; several after one --fixed"),
    "out": ("", "the sweep folder; each run writes OUT/key=value,..."),
    "metric": ("val_loss", "val_loss, another log.jsonl key (its best value), or FILE.json:dotted.path written by --then"),
    "mode": ("", "'min' or 'max': which value is best; empty = 'min' (a FILE.json metric needs it)", ("", "min", "max")),
    "random": (0, f"a random search of N runs instead of the grid; 0 = the grid (at most {MAX_RUNS:,} runs either way)", f"0..{MAX_RUNS}"),
    "seed": (0, "the random search's seed", ">=0"),
    "then": ("", "a command after each run, {out_dir} and {key} filled in"),
    "workers": (0, f"runs at a time: 0 = one per GPU, else 1 (at most one per core: {MAX_WORKERS} here)", f"0..{MAX_WORKERS}"),
    "dry_run": (False, "print the commands, run nothing"),
}}
FILE_KEYS = ("script", "config", "grid", "fixed", "metric", "mode", "random", "seed", "then", "workers", "out")  # what a sweep file sets


class Range:
    """A range of a random search: uniform(lo,hi), log_uniform(lo,hi) or int_uniform(lo,hi)."""

    def __init__(self, kind, lo, hi):
        self.kind, self.lo, self.hi = kind, lo, hi

    def draw(self, rng):
        if self.kind == "int_uniform":
            return rng.randint(int(self.lo), int(self.hi))
        if self.kind == "log_uniform":
            x = math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))
        else:
            x = rng.uniform(self.lo, self.hi)
        return float(f"{x:.3g}")  # the value in the command and in the folder name are then the same

    def __repr__(self):
        return f"{self.kind}({self.lo},{self.hi})"


# -----------------------------------------------------------------------------------------------
# Parsing the sweep: values, ranges, keys (all errors before anything runs)


def split_top(text):
    """Split on commas that are not inside quotes or brackets: 'a,"b,c",[1,2]' -> ['a', '"b,c"', '[1,2]']."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur]


def parse_value(text):
    """A value as the training scripts parse it: a Python literal, else the bare string."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_range(key, text):
    call = re.fullmatch(r"\s*(\w+)\((.*)\)\s*", text)
    if not call or call.group(1) not in RANGES:
        return None
    m = re.fullmatch(r"\s*(\w+)\(([^,]*),([^,]*)\)\s*", text)
    if not m:
        raise InputError(f"{key}={text}: expected {call.group(1)}(lo,hi), two bounds")
    try:
        lo, hi = float(m.group(2)), float(m.group(3))
    except ValueError:
        raise InputError(f"{key}={text}: the bounds of {m.group(1)} must be numbers") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{key}={text}: the bounds must be finite numbers")
    if not lo < hi or (m.group(1) == "log_uniform" and lo <= 0):
        raise InputError(f"{key}={text}: expected lo < hi{' and lo > 0' if m.group(1) == 'log_uniform' else ''}")
    return Range(m.group(1), lo, hi)


def check_key(key, where):
    if not re.fullmatch(r"[A-Za-z_]\w*", key):
        raise InputError(f"{where}: {key!r} is not a config key (expected key=value, e.g. lr=3e-4,1e-3)")
    if key in ("out_dir", "resume"):
        raise InputError(f"{where}: {key} is set by the sweep (out_dir from --out and the values, resume when a run restarts)")
    if key in ("stop_at", "overwrite"):
        raise InputError(f"{where}: {key} cannot be set in a sweep (stop_at would leave every run unfinished, yet marked done; "
                         "overwrite would replace finished runs): a sweep's runs train to the end and resume when killed")


def parse_assignments(items, where, allow_lists):
    """['lr=3e-4,1e-3', 'lr=log_uniform(1e-4,1e-2)'] -> {key: [values] or Range}; fixed: {key: value}."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise InputError(f"{where} {item!r}: expected key=value" + (",value,... or key=log_uniform(lo,hi)" if allow_lists else ""))
        key = key.strip().lstrip("-")  # --lr=1e-3 is accepted too: it is how the scripts spell it
        check_key(key, where)
        if key in out:
            raise InputError(f"{where} {key}: given twice; put all its values in one {key}=v1,v2,...")
        if not text.strip():
            raise InputError(f"{where} {key}: no values")
        if not allow_lists:
            out[key] = parse_value(text)
            continue
        out[key] = parse_range(key, text) or [parse_value(p) for p in split_top(text)]
        if isinstance(out[key], list) and any(isinstance(v, str) and not v for v in out[key]):
            raise InputError(f"{where} {key}={text}: an empty value")
    return out


def normalize_grid(grid, where):
    """A sweep file's grid {key: list or 'log_uniform(lo,hi)'} in the same form as --grid's."""
    if not isinstance(grid, dict):
        raise InputError(f"{where}: grid must be a dict {{key: [values]}}")
    out = {}
    for key, values in grid.items():
        check_key(str(key), where)
        if isinstance(values, str) and parse_range(key, values):
            out[key] = parse_range(key, values)
        elif isinstance(values, (list, tuple)) and len(values) > 0:
            out[key] = list(values)
        elif isinstance(values, Range):
            out[key] = values
        else:
            raise InputError(f"{where}: grid[{key!r}] = {values!r}: expected a non-empty list or 'log_uniform(lo,hi)'")
    return out


def read_sweep_file(path):
    """A plain Python file that sets some of FILE_KEYS, e.g. script, config, grid = {...}, metric: each value checked as
    the same key on the command line is (types and bounds), grid and fixed as dicts. FILE:LINE for a syntax error,
    an exception or a non-UTF-8 byte (config.read_config_file)."""
    try:
        namespace = read_config_file(path)
    except InputError as e:
        raise InputError(str(e).replace("config file not found", "sweep file not found")) from None
    specs = SWEEP_KEYS["sweep"]
    spec = {}
    for key, value in namespace.items():
        if key not in FILE_KEYS:
            raise InputError(f"{path}: unknown name {key!r} (a sweep file sets {', '.join(FILE_KEYS)})")
        if key in ("grid", "fixed"):
            if not isinstance(value, dict):
                raise InputError(f"{path}: {key} must be a dict {{key: {'[values]' if key == 'grid' else 'value'}}}")
            spec[key] = value
        else:
            spec[key] = convert_value(key, value, specs[key][0], (specs[key] + (None,))[2], path)
    return spec


# -----------------------------------------------------------------------------------------------
# The runs: values -> (folder name, command)


def fmt(value):
    """A value as --key=value text that the scripts' literal_eval parses back to the same value."""
    return value if isinstance(value, str) else repr(value)


def run_name(values):
    """lr=0.001,seed=1: the out_dir of a run under --out. Characters a folder name should not hold become _."""
    return ",".join(f"{k}={re.sub(r'[^A-Za-z0-9_.+:-]', '_', fmt(v))}" for k, v in values.items())


def expand(grid, n_random, seed):
    """The list of {key: value} of the runs: the grid's product (n_random 0), or n_random seeded draws without repeats."""
    if not n_random:
        ranges = [k for k, v in grid.items() if isinstance(v, Range)]
        if ranges:
            raise InputError(f"{ranges[0]}={grid[ranges[0]]}: a range needs a random search (--random N --seed S)")
        return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    rng = random.Random(seed)
    runs, seen = [], set()
    for _ in range(n_random):
        values = {k: (v.draw(rng) if isinstance(v, Range) else rng.choice(v)) for k, v in grid.items()}
        if run_name(values) not in seen:  # a repeated draw would be the same run: it is dropped, not re-run
            seen.add(run_name(values))
            runs.append(values)
    if len(runs) < n_random:
        print(f"note: {n_random - len(runs)} of {n_random} random draws repeated an earlier run and were dropped")
    return runs


def interpreter(word):
    """A leading `python` in a --then command means this interpreter (a venv's python may not be on PATH)."""
    return sys.executable if word in ("python", "python3") else word


def make_runs(spec):
    runs = []
    for values in expand(spec["grid"], spec["random"], spec["seed"]):
        out_dir = os.path.join(spec["out"], run_name(values))
        argv = [sys.executable, spec["script"], *([spec["config"]] if spec["config"] else [])]
        argv += [f"--{k}={fmt(v)}" for k, v in {**spec["fixed"], **values}.items()] + [f"--out_dir={out_dir}"]
        then = None
        if spec["then"]:
            words = [w.format(out_dir=out_dir, **values) for w in shlex.split(spec["then"])]
            then = [interpreter(words[0]), *words[1:]]
        runs.append(dict(name=run_name(values), values=values, out_dir=out_dir, argv=argv, then=then))
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):
        raise InputError(f"two runs would share the folder {next(n for n in names if names.count(n) > 1)!r}: make the values distinct")
    return runs


def portable(argv):
    """A command without the interpreter's path, to compare runs across venvs."""
    return shlex.join(["python" if a == sys.executable else a for a in argv]) if argv else None


# -----------------------------------------------------------------------------------------------
# Per-run state on disk: what makes the sweep resumable


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)  # atomic: a kill leaves the old or the new file, never half of one


def read_log(out_dir):
    entries = []
    try:
        with open(os.path.join(out_dir, "log.jsonl")) as f:
            for line in f:
                try:
                    entries.append(json.loads(line))
                except ValueError:  # a line cut by a kill
                    pass
    except OSError:
        pass
    return entries


def check_existing(runs):
    """Refuse to mix runs made by a different command into this sweep's results, and state files that are not
    the sweep's (a JSON list, no status: they were tracebacks in the middle of the sweep)."""
    for run in runs:
        path = os.path.join(run["out_dir"], STATE)
        state = read_json(path)
        if os.path.exists(path) and not (isinstance(state, dict) and isinstance(state.get("status"), str) and "command" in state):
            raise InputError(f"{path}: not a state file of this sweep (damaged?); delete it and the same command runs this run again")
        if state and state.get("command") != portable(run["argv"]):
            raise InputError(f"{run['out_dir']} was made by another command ({state.get('command')}); use a new --out")


# -----------------------------------------------------------------------------------------------
# Launching: one process per run stage, its output to out_dir/run.log (and the terminal with one worker)


class Runner:
    def __init__(self, echo):
        self.echo, self.lock = echo, threading.Lock()
        self.procs, self.interrupts, self.signum, self.abort = set(), 0, signal.SIGINT, None

    def on_signal(self, signum, frame):
        """Ctrl-C / SIGTERM: pass SIGTERM on to the runs once (they save last.pt and exit), start nothing new;
        a second one kills them. SIGTERM, not SIGINT: a run that is still starting Python dies quietly of it, where a
        SIGINT arriving before Python's streams exist printed "Fatal Python error" and a traceback."""
        self.interrupts += 1
        self.signum = signum
        print(f"\nsweep: interrupted ({'passing it on: runs save last.pt and exit' if self.interrupts == 1 else 'aborting runs'})", flush=True)
        with self.lock:
            for p in self.procs:
                p.send_signal(signal.SIGTERM if self.interrupts == 1 else signal.SIGKILL)

    def launch(self, argv, env, log_path, label):
        with self.lock:
            print(f"\n[{label}] $ {' '.join(f'{k}={v}' for k, v in env.items())}{' ' if env else ''}{shlex.join(argv)}", flush=True)
        with open(log_path, "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            # A new session: a Ctrl-C in the terminal reaches only the sweep, which passes it on exactly once
            # (on_signal). PYTHONUNBUFFERED: lines arrive live.
            # child_env: the run dies with the sweep (config.die_with_parent: the project's scripts ask for it as they start)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=child_env({**env, "PYTHONUNBUFFERED": "1"}))
            with self.lock:
                self.procs.add(proc)
            last = b""
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                log.write(chunk)
                log.flush()
                last = (last + chunk)[-4096:]
                if self.echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            code = proc.wait()
            with self.lock:
                self.procs.discard(proc)
        lines = [s.strip() for s in last.decode(errors="replace").replace("\r", "\n").splitlines() if s.strip()]
        return code, (lines[-1] if lines else "")


def execute(run, env, runner, label, metric="val_loss"):
    """Train (or resume), then the --then command; the state file records how far the run got. A run whose --then
    command left no finite number at `metric` (FILE.json:dotted.path) is failed, and its --then command runs again
    on the next invocation: a run is done only when the number it is ranked by is there."""
    out_dir = run["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    state_path, log_path = os.path.join(out_dir, STATE), os.path.join(out_dir, "run.log")
    state = read_json(state_path) or {"command": portable(run["argv"]), "status": "new", "trained": False, "seconds": 0.0, "launches": 0}
    then = portable(run["then"])
    file_metric = lambda: metric_value(out_dir, metric, "min", [])[1] if ":" in metric else None  # why it is missing, or None
    if state["status"] == "done" and state.get("then") == then and not file_metric():
        print(f"[{label}] done already, skipped: {out_dir}", flush=True)
        return
    stages = [] if state["trained"] else ["train"]
    stages += ["then"] if run["then"] else []
    for stage in stages:
        if runner.interrupts:
            break
        if stage == "train":  # a killed run continues from its last checkpoint
            if os.path.isfile(os.path.join(out_dir, "last.pt")):
                argv = run["argv"] + ["--resume=True"]
            elif os.path.isfile(os.path.join(out_dir, "log.jsonl")):  # killed before its first checkpoint: start afresh
                argv = run["argv"] + ["--overwrite=True"]
            else:
                argv = run["argv"]
        else:
            argv = run["then"]
        t0 = time.time()
        state["launches"] += stage == "train"
        code, last_line = runner.launch(argv, env, log_path, label)
        state["seconds"] += time.time() - t0
        if runner.interrupts:  # the run saved and exited on our SIGINT: it is not finished, whatever its status
            state.update(status="interrupted")
            write_json(state_path, state)
            return
        if code != 0:
            state.update(status="failed", error=f"{stage} exited with {code}: {last_line}")
            write_json(state_path, state)
            print(f"[{label}] failed ({stage}, exit {code}): {last_line}", flush=True)
            return
        if stage == "train":
            state.update(trained=True, status="trained")
            write_json(state_path, state)
    if runner.interrupts:
        return
    missing = file_metric()
    if missing:
        state.update(status="failed", then=None, error=f"metric {metric}: {missing}")
        write_json(state_path, state)
        print(f"[{label}] failed: metric {metric}: {missing}", flush=True)
        return
    state.update(status="done", then=then, error=None)
    write_json(state_path, state)


# -----------------------------------------------------------------------------------------------
# Devices


def visible_gpus():
    """GPU ids for CUDA_VISIBLE_DEVICES: the ones already visible, else nvidia-smi's list; none -> CPU."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def worker_envs(workers, gpus):
    """The environment of each worker slot: its GPU, or on a CPU a fair share of the cores."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(workers)]
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        return [{"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))} for _ in range(workers)]
    return [{} for _ in range(workers)]


# -----------------------------------------------------------------------------------------------
# Results: read back from the runs' files, so a re-run reports every run, old and new


def metric_value(out_dir, metric, mode, entries):
    """(the run's metric, None) or (None, why it has none): the best finite value of a log.jsonl key, or the finite
    number at a dotted path of a JSON file that the --then command wrote into out_dir."""
    if ":" not in metric:
        values = [e[metric] for e in entries if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])]
        return ((min(values) if mode == "min" else max(values)), None) if values else (None, f"no finite {metric} in log.jsonl")
    file, _, path = metric.partition(":")
    full = os.path.join(out_dir, file)
    if not os.path.isfile(full):
        return None, f"{full} was not written"
    obj = read_json(full)
    if obj is None:
        return None, f"{full} is not JSON"
    for i, part in enumerate(path.split(".")):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None, f"{full} has no {'.'.join(path.split('.')[: i + 1])}"
    if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
        return None, f"{full}: {path} is {json.dumps(obj)[:60]}, not a finite number"
    return obj, None


def collect(runs, spec):
    rows = []
    for run in runs:
        state = read_json(os.path.join(run["out_dir"], STATE)) or {}
        entries = read_log(run["out_dir"])
        val = [e["val_loss"] for e in entries if isinstance(e.get("val_loss"), (int, float))]
        rows.append(dict(values=run["values"], out_dir=run["out_dir"], command=shlex.join(run["argv"]),
                         then=shlex.join(run["then"]) if run["then"] else None, metric_name=spec["metric"],
                         metric=metric_value(run["out_dir"], spec["metric"], spec["mode"], entries)[0],
                         best_val_loss=min(val) if val else None, steps=max((e.get("step", 0) for e in entries), default=0),
                         seconds=round(state.get("seconds", 0.0), 1), status=state.get("status", "pending"), error=state.get("error")))
    return rows


def ranked(rows, mode):
    """Runs with a metric, best first; then the others in sweep order."""
    have = [r for r in rows if r["metric"] is not None]
    have.sort(key=lambda r: r["metric"], reverse=mode == "max")
    return have + [r for r in rows if r["metric"] is None]


def write_results(rows, spec):
    out = spec["out"]
    tmp = os.path.join(out, "results.jsonl.tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, os.path.join(out, "results.jsonl"))
    keys = list(spec["grid"])
    num = lambda x, p=4: "-" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))
    lines = [f"# Sweep {out}", "",
             f"`{spec['script']}{' ' + spec['config'] if spec['config'] else ''}`, metric `{spec['metric']}` "
             f"({'lower' if spec['mode'] == 'min' else 'higher'} is better), "
             + ", ".join(f"{n} {s}" for s, n in sorted(count_status(rows).items())), "",
             "| rank | " + " | ".join(keys) + f" | {spec['metric']} | best val_loss | steps | seconds | status |",
             "|---:|" + "---|" * len(keys) + "---:|---:|---:|---:|---|"]
    for i, r in enumerate(ranked(rows, spec["mode"]), 1):
        lines.append(f"| {i} | " + " | ".join(fmt(r["values"][k]) for k in keys)
                     + f" | {num(r['metric'])} | {num(r['best_val_loss'])} | {r['steps']} | {num(r['seconds'], 0)} | {r['status']} |")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def count_status(rows):
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def plot(rows, spec):
    """results.png: the metric against each swept key (log axis for log_uniform ranges and wide positive grids)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no plot written (pip install matplotlib)")
        return
    have = [r for r in rows if r["metric"] is not None]
    if not have:
        return
    keys = list(spec["grid"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [r["values"][key] for r in have]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            positive = all(x > 0 for x in xs)
            wide = positive and max(xs) / min(xs) >= 10
            log_range = isinstance(spec["grid"][key], Range) and spec["grid"][key].kind == "log_uniform"
            ax.scatter(xs, [r["metric"] for r in have])
            if log_range or wide:
                ax.set_xscale("log")
        else:  # strings, booleans, lists: one column per distinct value
            labels = sorted({fmt(x) for x in xs})
            ax.scatter([labels.index(fmt(x)) for x in xs], [r["metric"] for r in have])
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
        ax.set_ylabel(spec["metric"])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(spec["out"], "results.png"), dpi=100)
    plt.close(fig)


# -----------------------------------------------------------------------------------------------
# The command line


def split_argv(argv):
    """sweep.py's words on top of load_config's: SCRIPT [CONFIG] first, and --grid / --fixed followed by every key=value
    up to the next --flag. Returns (the --key=value arguments for load_config, {"grid": [...], "fixed": [...]})."""
    rest, positional, lists = [], [], {"grid": [], "fixed": []}
    words = list(argv)
    while words:
        word = words.pop(0)
        key, eq, value = word[2:].partition("=") if word.startswith("--") else ("", "", "")
        if key in lists:
            lists[key] += [value] if eq else []
            while words and not words[0].startswith("--"):
                lists[key].append(words.pop(0))
        elif word.startswith("-"):  # --key=value, --key value, --dry_run, -h
            rest.append(word)
            if key and not eq and words and not words[0].startswith("--") and key != "dry_run":
                rest.append(words.pop(0))
        elif len(positional) < 2:
            positional.append(word)
        else:
            raise InputError(f"argument {word!r}: expected SCRIPT [CONFIG] first, then --key=value (see --help)")
    return [f"--{name}={word}" for name, word in zip(("script", "config"), positional)] + rest, lists


def parse_args(argv):
    """The sweep's settings: the key table's defaults < a sweep file (--file) < the command line, key by key."""
    args, lists = split_argv(argv)
    cfg = vars(load_config(SWEEP_KEYS, args, __doc__))
    given = {a[2:].partition("=")[0] for a in args if a.startswith("--")}
    spec = {k: v for k, v in cfg.items() if k not in ("grid", "fixed", "file")}
    spec.update(grid={}, fixed={})
    if cfg["file"]:
        found = read_sweep_file(cfg["file"])
        spec.update({k: v for k, v in found.items() if k not in given})
        spec["grid"] = normalize_grid(found.get("grid", {}), cfg["file"])
        for key in spec["fixed"]:
            check_key(str(key), cfg["file"])
    spec["grid"].update(parse_assignments(lists["grid"], "--grid", allow_lists=True))
    spec["fixed"].update(parse_assignments(lists["fixed"], "--fixed", allow_lists=False))
    return check_spec(spec)


def check_spec(spec):
    if not spec["script"]:
        raise InputError("no script: python experiments/sweep.py SCRIPT [CONFIG] --grid key=v1,v2 --out DIR (or --file)")
    for name in ("script", "config"):
        if spec[name] and not os.path.isfile(spec[name]):
            raise InputError(f"{spec[name]}: {name} not found")
    if not spec["out"]:
        raise InputError("no --out folder for the sweep")
    check_writable_dir(spec["out"], "--out")  # a file, under a file or read-only: before the first run
    if not spec["grid"]:
        raise InputError("empty grid: give --grid key=v1,v2 ... (or grid = {...} in the sweep file)")
    both = set(spec["grid"]) & set(spec["fixed"])
    if both:
        raise InputError(f"{sorted(both)[0]} is both swept (--grid) and fixed (--fixed)")
    metric = spec["metric"]
    if not isinstance(metric, str) or not re.fullmatch(r"\w+|[\w.+-]+\.json:\w[\w.-]*", metric):
        raise InputError(f"metric {metric!r}: expected a log.jsonl key such as val_loss, or FILE.json:dotted.path")
    if ":" in metric:
        if not spec["then"]:
            raise InputError(f"metric {metric} is read from a JSON file in each out_dir: give the --then command that writes it")
        if not spec["mode"]:
            raise InputError(f"metric {metric}: say whether higher or lower is better (--mode max or --mode min)")
    spec["mode"] = spec["mode"] or "min"
    runs = math.prod(1 if isinstance(v, Range) else len(v) for v in spec["grid"].values())  # --random N: bounded by its key
    if not spec["random"] and runs > MAX_RUNS:  # counted, not expanded: a grid of 10^10 runs must not fill the memory first
        raise InputError(f"--grid: {runs:,} runs (the product of {' x '.join(str(len(v)) for v in spec['grid'].values() if not isinstance(v, Range))} "
                         f"values); a sweep runs at most {MAX_RUNS:,}: sweep fewer values, or draw --random N of them")
    if spec["then"] and not spec["then"].strip():
        raise InputError("--then is empty")
    if spec["then"]:
        try:
            words = shlex.split(spec["then"])
            [w.format(out_dir="x", **{k: 0 for k in spec["grid"]}) for w in words]
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise InputError(f"--then {spec['then']!r}: {e.__class__.__name__} {e} (placeholders: {{out_dir}} and the swept keys)") from None
        program = interpreter(words[0])
        if not shutil.which(program) and not os.path.isfile(program):
            raise InputError(f"--then {spec['then']!r}: no program {words[0]!r} (not on PATH, not a file)")
    return spec


def check_run_arguments(spec, runs):
    """Every run's arguments as its script will read them (unknown keys, types, bounds, the config file), before
    the first run starts: a typo must not cost a sweep. Scripts of this project only; others are not checked."""
    script = os.path.realpath(spec["script"])
    if os.path.dirname(script) != ROOT or os.path.basename(script) not in SCRIPT_KEYS:
        return
    module, table = SCRIPT_KEYS[os.path.basename(script)]
    keys = getattr(importlib.import_module(module), table)
    for run in runs:
        try:
            load_config(keys, run["argv"][2:])  # after the interpreter and the script
        except InputError as e:
            raise InputError(f"run {run['name']}: {e}") from None


def main(argv=None):
    spec = parse_args(sys.argv[1:] if argv is None else argv)
    runs = make_runs(spec)
    check_run_arguments(spec, runs)
    check_existing(runs)
    gpus = visible_gpus()
    workers = spec["workers"] or max(1, len(gpus))
    envs = worker_envs(workers, gpus)
    print(f"sweep: {len(runs)} runs of {spec['script']} into {spec['out']}, {workers} at a time on "
          f"{'GPUs ' + ','.join(gpus) if gpus else 'the CPU'}, metric {spec['metric']} ({spec['mode']})")
    if spec["dry_run"]:
        for run in runs:
            print(shlex.join(run["argv"]) + (f" && {shlex.join(run['then'])}" if run["then"] else ""))
        return []
    os.makedirs(spec["out"], exist_ok=True)
    held = hold_lock(os.path.join(spec["out"], ".sweep.lock"), f"another sweep is running in {spec['out']}")  # noqa: F841 (open for the whole sweep)
    write_json(os.path.join(spec["out"], "sweep.json"), {"argv": sys.argv if argv is None else ["experiments/sweep.py", *argv],
                                                        "cwd": os.getcwd(), "n_runs": len(runs)})

    runner = Runner(echo=workers == 1)
    old = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    slots = list(range(workers))
    slot_lock = threading.Lock()

    def work(i, run):
        if runner.interrupts or runner.abort:
            return
        with slot_lock:
            slot = slots.pop()
        try:
            execute(run, envs[slot], runner, f"{i + 1}/{len(runs)} {run['name']}", spec["metric"])
        finally:
            with slot_lock:
                slots.append(slot)
            with runner.lock:  # the tables are up to date after every run, so a kill loses nothing
                rows = collect(runs, spec)
                write_results(rows, spec)
                done = [r for r in rows if r["status"] == "done"]
                if done and ":" not in spec["metric"] and all(r["metric"] is None for r in done) and not runner.abort:
                    logged = sorted({k for e in read_log(done[0]["out_dir"]) for k in e})
                    runner.abort = f"metric {spec['metric']!r}: a finished run did not log it (its log.jsonl has {', '.join(logged)})"

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(work, i, run) for i, run in enumerate(runs)]:
                future.result()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    rows = collect(runs, spec)
    write_results(rows, spec)
    plot(rows, spec)
    counts = count_status(rows)
    best = ranked(rows, spec["mode"])[0]
    print(f"\nsweep: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; results in {os.path.join(spec['out'], 'results.md')}")
    if best["metric"] is not None:
        print(f"best {spec['metric']} {best['metric']:.4f}: {best['out_dir']}")
    if runner.abort:
        raise InputError(runner.abort + "; no further run was started")
    if runner.interrupts:  # run_main says so in one line and exits 130 (Ctrl-C) or 143 (SIGTERM)
        print("interrupted: re-run the same command to continue", flush=True)
        raise KeyboardInterrupt if runner.signum == signal.SIGINT else Terminated
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        raise InputError(f"{len(failed)} of {len(rows)} runs failed ({os.path.basename(failed[0]['out_dir'])}: {failed[0]['error']}); "
                         f"their output is in OUT/RUN/run.log; the same command runs them again")
    return rows


if __name__ == "__main__":
    run_main(main)
