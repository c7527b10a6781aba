"""
The distillation claim on the papers' own metric, on a CPU: does a student distilled from two teachers beat
them and a same-size model trained without distillation on BLiMP? (BabyLlama, arXiv 2308.02019; BabyLlama-2,
arXiv 2409.17312)

    python experiments/reproduce_blimp.py                  # the experiment: about 4 hours on 2 idle cores, two runs at a time
    python experiments/reproduce_blimp.py --workers=1      # one run at a time (the other core stays free)
    python experiments/reproduce_blimp.py --report_only    # rewrite RESULTS_blimp.md from what has finished
    python experiments/reproduce_blimp.py --smoke          # a few minutes: the same pipeline at tiny sizes

Why a second CPU experiment. experiments/reproduce_cpu.py (RESULTS.md) saw 282,752 training tokens eight times:
every model scored 51-53 on BLiMP, chance, so the papers' metric said nothing there. At this size what moves
BLiMP is unique words, not repeated epochs (a tiny Llama's milestones rise from 52 at 250k words to 57 at 2.9M).
So here every model sees the whole babylm_2024_mini training split (2.9M words, 4.3M tokens of the 16k BPE)
once, as a BabyLM model sees its 10M words.

What it runs, each an ordinary command of this project, printed when it starts (its output in WORK/logs/):
  1. prepare_data.py on ../shared/data/babylm_2024_mini: the walk-through's data (the official dev files are
     the test split), BabyLlama's 16k BPE.
  2. A learning-rate sweep of the baseline (configs/tiny_teacher1.py's shape, 2.8M matmul parameters, plain CE,
     one epoch), 3 values spanning 4x, extended once beyond an edge; ranked by best validation CE. Its run at
     the chosen value is baseline_s1, and every model uses that value (the same shape: any advantage of tuning
     goes to the baseline).
  3. teacher1 (the baseline's shape, seed 1) and teacher2 (wider, dim 160 as configs/tiny_teacher2.py, seed 2).
  4. For each seed: the student of the two teachers (distill.py, the papers' loss: alpha 0.5, T 1, mean of
     logits, KL summed over positions / batch), with the live teachers, and the baseline with the same seed.
  5. Does the ensemble matter: the student of teacher1 alone and of teacher2 alone (seed 1).
  6. Each model, once trained: validation CE (its best checkpoint), test CE over 2,048 test windows, the full
     filtered BLiMP (59,875 pairs) and the supplement (5,218) with the 2025 protocol of the official pipeline
     (eval_blimp.py); and learning curves over words seen (experiments/curves.py on the milestone checkpoints of
     --checkpoints_at, the BabyLM fast evaluation's 200 pairs per paradigm) for the teachers, student_s1 and
     baseline_s1.
The teacher cache (teacher_cache.py) is not used: the students learn from the live teachers, the papers'
method, so that the claim is about it; a cached student is an estimate of one (RESULTS.md compares them).

Every run is single-threaded, `workers` of them at a time, each as soon as what it needs has finished (the
sweep, then the teachers, then the students), longest first. Resumable: interrupt it at any time (Ctrl-C, a
kill, a reboot) and run the same command again. A run counts as finished only by its marker in WORK/logs/,
written when its command exits cleanly (a model: when its evaluation is written too); a killed training run
continues from its last.pt, one killed before its first checkpoint starts again. RESULTS_blimp.md (--smoke: in
WORK) is rewritten after every evaluated model, saying what is still to run. The compute it reports comes from
WORK/logs/compute.json, the scheduler's ledger (wall time while jobs ran, each job's seconds over all its
attempts). The recorded run took 7.6 hours of wall time on a 2-core machine shared with other work
(docs/experiments.md); at the per-step times measured beside one other run, the plan needs about 4.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, EXPERIMENTS)

import torch  # noqa: E402

from reproduce_cpu import (ROLES, ROOT, SHARED, blimp_command, commands_block, compare, count_intervals, field_table,  # noqa: E402
                           how_to_read, kv, link_sweep_run, main_claims, comparison_section, model_result, models_table, pyplot,
                           subset_corpus, summary_table)
from checkpoint import atomic_write, check_writable_dir, read_log  # noqa: E402
from config import InputError, child_env, load_config, run_main  # noqa: E402
from data import split_words  # noqa: E402
from stats import excludes_zero  # noqa: E402

KEYS = {"experiment": {
    "work": ("", "work folder: data, runs, logs, results (empty = experiments/work_blimp, --smoke: experiments/work_blimp_smoke)"),
    "workers": (min(2, os.cpu_count() or 1), "runs at a time, one thread each (at most the machine's cores)", f"1..{os.cpu_count() or 1}"),
    "seeds": (3, "seeds of the student and of the baseline (2 or more: intervals over seeds)", "1..10"),
    "smoke": (False, "tiny sizes and 20 pairs per BLiMP paradigm: checks the pipeline in a few minutes"),
    "report_only": (False, "rewrite the report from WORK/results (what has finished); runs nothing"),
}}

CORPUS = os.path.join(SHARED, "babylm_2024_mini")
BASE = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384)  # configs/tiny_teacher1.py: baseline, student, teacher1
WIDE = dict(dim=160, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=480)  # configs/tiny_teacher2.py: teacher2
DISTILL = dict(alpha=0.5, temperature=1.0, ensemble="logits", kl_reduction="paper")  # the papers' loss
MAX_EXTENSIONS = 1  # a best lr at the edge of the grid adds one value beyond it, at most this many times
FULL = dict(vocab_size=16000, epochs=1, batch_size=32, lrs=(1.5e-3, 3e-3, 6e-3), min_lr=1e-4, eval_windows=1024, shapes=(BASE, WIDE),
            milestones=("100k", "250k", "500k", "1M", "2M"), blimp_limit=0, curve_limit=200, supplement_curve_limit=50, test_windows=2048)
# --smoke: the same pipeline as small as it goes: 1,000 words of each source and dev file, a 512-token BPE, 1-layer
# models of width 32 and 48, 5 pairs per BLiMP paradigm (most of its time is the processes' start)
SMOKE = dict(vocab_size=512, epochs=1, batch_size=8, lrs=(3e-3, 6e-3, 1.2e-2), min_lr=1e-4, eval_windows=32,
             shapes=(dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64), dict(dim=48, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=96)),
             milestones=("2k", "4k"), blimp_limit=5, curve_limit=5, supplement_curve_limit=5, test_windows=32, words=1000)
CURVE_RUNS = ("teacher1", "teacher2", "student_s1", "baseline_s1")


# -----------------------------------------------------------------------------------------------
# The plan: every job, recomputed from what has finished (the sweep's outcome decides the rest)


def settings(args, work):
    """The sizes and the recipe, from the prepared data: steps per epoch, milestones (those the run reaches)."""
    s = dict(SMOKE if args.smoke else FULL, work=work, data=os.path.join(work, "data"), seeds=args.seeds, smoke=args.smoke)
    words, tokens = split_words(s["data"])
    windows = (tokens - 1) // 128
    s["steps"] = round(s["epochs"] * (windows // s["batch_size"]))
    s["end_words"] = int(words * s["steps"] * s["batch_size"] * 128 / tokens)
    s["train_words"], s["train_tokens"] = words, tokens
    s["common"] = dict(data_dir=s["data"], seq_len=128, batch_size=s["batch_size"], micro_batch_size=s["batch_size"], max_iters=s["steps"],
                       warmup_iters=max(2, s["steps"] // 20), min_lr=s["min_lr"], weight_decay=0.1, eval_interval=max(1, s["steps"] // 4),
                       eval_windows=s["eval_windows"], log_interval=20, compile=False, checkpoints_at=",".join(s["milestones"]))
    return s


def done(work, name):
    """The marker of a finished job, or None."""
    path = os.path.join(work, "logs", f"{name}.done")
    return json.load(open(path)) if os.path.isfile(path) else None


def sweep_state(s):
    """(the lr grid as far as it has grown, the chosen lr or None while a run of the grid is unfinished).
    Only finished runs count: a run killed half-way is never ranked."""
    grid = list(s["lrs"])
    for extension in range(MAX_EXTENSIONS + 1):
        best = {}
        for lr in grid:
            if not done(s["work"], sweep_name(lr)):
                return grid, None
            best[lr] = min(e["val_loss"] for e in read_log(os.path.join(s["work"], "out", sweep_name(lr), "log.jsonl")) if "val_loss" in e)
        chosen = min(grid, key=best.get)
        if chosen not in (min(grid), max(grid)) or extension == MAX_EXTENSIONS:
            return grid, chosen
        grid = sorted(grid + [chosen / 2 if chosen == min(grid) else chosen * 2])


def sweep_name(lr):
    return f"sweep_lr{lr:g}"


def plan(s):
    """[(name, role, argv or None, out_dir, needs)] of every model known so far, in priority order (longest
    first among those ready), and the lr chosen (None while the sweep runs). argv None: trained by the sweep."""
    out = lambda name: os.path.join(s["work"], "out", name)
    base, wide = s["shapes"]
    grid, lr = sweep_state(s)
    models = []
    for v in grid:  # the sweep's runs: the baseline's recipe at each lr, seed 101
        models.append((sweep_name(v), "sweep", ["train_teacher.py", *kv(**s["common"], **base, seed=101, lr=v, out_dir=out(sweep_name(v)))], out(sweep_name(v)), []))
    if lr is None:
        return models, None
    train = lambda name, script, needs, **kw: (name, None, [script, *kv(**s["common"], **kw, lr=lr, out_dir=out(name))], out(name), needs)
    teachers = [os.path.join(out(t), "ckpt.pt") for t in ("teacher1", "teacher2")]
    student = lambda name, seed, ts, needs: train(name, "distill.py", needs, **base, seed=seed, teachers=",".join(ts), **DISTILL)
    models += [train("teacher2", "train_teacher.py", [], **wide, seed=2), train("teacher1", "train_teacher.py", [], **base, seed=1),
               ("baseline_s1", None, None, out("baseline_s1"), [])]
    for k in range(1, s["seeds"] + 1):
        models.append(student(f"student_s{k}", 100 + k, teachers, ["teacher1", "teacher2"]))
        if k > 1:
            models.append(train(f"baseline_s{k}", "train_teacher.py", [], **base, seed=100 + k))
    models += [student("single_t1_s1", 101, teachers[:1], ["teacher1"]), student("single_t2_s1", 101, teachers[1:], ["teacher2"])]
    roles = {"teacher1": "teacher", "teacher2": "teacher", "single_t1_s1": "single_t1", "single_t2_s1": "single_t2"}
    models = [(n, roles.get(n) or n.split("_s")[0] if r is None else r, *rest) for n, r, *rest in models]
    return models, lr


def jobs(s):
    """[(name, argv, needs, out_dir)]: the runnable jobs of the plan: training, BLiMP of each model, the curves."""
    models, lr = plan(s)
    blimp_extra = ["--protocol", "2025"]
    out = [("prepare", prepare_command(s), [], None)]
    for name, role, argv, out_dir, needs in models:
        if argv:
            out.append((name, argv, ["prepare", *needs], out_dir))
        if role != "sweep":
            trained = name if argv else sweep_name(lr)
            out.append((f"{name}_blimp", blimp_command(out_dir, s["blimp_limit"], blimp_extra), [trained], None))
    if lr is not None:
        runs = [os.path.join(s["work"], "out", n) for n in CURVE_RUNS]
        argv = ["experiments/curves.py", "--runs=" + ",".join(runs), "--blimp", os.path.join(SHARED, "blimp_filtered"),
                "--supplement", os.path.join(SHARED, "blimp_supplement"), *blimp_extra, "--blimp_limit", str(s["curve_limit"]),
                "--supplement_limit", str(s["supplement_curve_limit"]), "--out", os.path.join(s["work"], "curves")]
        out.append(("curves", argv, [n if n != "baseline_s1" else sweep_name(lr) for n in CURVE_RUNS], None))
    return out


def prepare_command(s):
    if "words" not in s:  # the whole corpus
        return ["prepare_data.py", "--src", CORPUS, "--out", s["data"]]
    return ["prepare_data.py", "--src", os.path.join(s["work"], "src"), "--out", s["data"], "--vocab_size", str(s["vocab_size"])]


# -----------------------------------------------------------------------------------------------
# Running the jobs: `workers` single-threaded processes at a time


def start(name, argv, out_dir, work):
    """Start one job in the background (its output into WORK/logs/NAME.log); a killed training run resumes."""
    cmd = list(argv)
    if out_dir and os.path.isfile(os.path.join(out_dir, "last.pt")):
        cmd.append("--resume=True")  # killed earlier: continue from its last.pt
    elif out_dir and os.path.isfile(os.path.join(out_dir, "log.jsonl")):
        cmd.append("--overwrite=True")  # killed before its first checkpoint: start again
    env = child_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})  # one thread; it dies with this process
    log = open(os.path.join(work, "logs", f"{name}.log"), "ab")
    print(f"[start] {name}: python {' '.join(cmd)}".replace(ROOT + "/", "").replace(work, "$WORK"), flush=True)
    # its own session, so that a Ctrl-C at the terminal reaches this process only, which stops each job once (run_jobs)
    proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    return proc, cmd != list(argv) and cmd[-1] == "--resume=True"


def run_jobs(args, work):
    """Run every job of the plan whose needs have finished, `workers` at a time, until none is left. Each model's
    result (test CE and the BLiMP file, results/NAME.json) is written as soon as its evaluation has finished."""
    running, failed, clock = {}, None, time.time()
    try:
        while True:
            if time.time() - clock >= 60:  # the compute ledger, once a minute: a SIGKILL loses at most a minute of it
                clock = add_compute(work, running, clock)
            s = settings(args, work) if done(work, "prepare") else None
            if s is None:  # nothing is known before the data is prepared
                todo = [("prepare", prepare_command(dict(args.sizes, work=work, data=os.path.join(work, "data"))), [], None)]
            else:
                todo = jobs(s)
                lr = plan(s)[1]
                if lr is not None:  # baseline_s1 is the sweep's run at the chosen lr
                    link_sweep_run("baseline_s1", os.path.join(work, "out", sweep_name(lr)), work)
                write_results(s)
            finished = {name for name, *_ in todo if done(work, name)}
            ready = [j for j in todo if j[0] not in finished | set(running) and all(n in finished for n in j[2])]
            if failed is None:
                for name, argv, _, out_dir in sorted(ready, key=lambda j: not j[0].endswith("_blimp"))[: args.workers - len(running)]:
                    running[name] = (*start(name, argv, out_dir, work), argv)
            if not running:
                break
            time.sleep(1)
            for name, (proc, resumed, argv) in list(running.items()):
                if proc.poll() is None:
                    continue
                clock = add_compute(work, running, clock)  # this job's last seconds too
                del running[name]
                if proc.returncode:
                    failed = failed or (name, proc.returncode)
                    print(f"[failed] {name} (exit {proc.returncode}): see {os.path.join(work, 'logs', name + '.log')}", flush=True)
                    continue
                marker = {"seconds": compute(work)["jobs"][name], "command": argv, "resumed": resumed}
                atomic_write(os.path.join(work, "logs", f"{name}.done"), lambda f: json.dump(marker, f), "w")
                print(f"[done] {name} in {marker['seconds'] / 60:.1f} min", flush=True)
    finally:
        for proc, *_ in running.values():  # Ctrl-C or SIGTERM: every job saves its last.pt and stops
            proc.terminate()
        for proc, *_ in running.values():
            proc.wait()
        add_compute(work, running, clock)
    if failed:
        raise InputError(f"{failed[0]} failed (exit {failed[1]}); its output is in {os.path.join(work, 'logs', failed[0] + '.log')}; "
                         "run the experiment again to continue")


def compute(work):
    """The compute ledger, WORK/logs/compute.json: the scheduler's wall seconds while it ran jobs, and each job's
    seconds over all its attempts (a killed run's lost part too; a marker's `seconds` is its job's total)."""
    path = os.path.join(work, "logs", "compute.json")
    return json.load(open(path)) if os.path.isfile(path) else {"wall": 0.0, "jobs": {}}


def add_compute(work, running, since):
    """Add the time since `since` to the ledger: to the wall time if any job ran, to each running job's time."""
    now, ledger = time.time(), compute(work)
    if running:
        ledger["wall"] += now - since
    for name in running:
        ledger["jobs"][name] = ledger["jobs"].get(name, 0.0) + now - since
    atomic_write(os.path.join(work, "logs", "compute.json"), lambda f: json.dump(ledger, f), "w")
    return now


def write_results(s):
    """results/NAME.json of every model whose evaluation has finished and whose result is not written yet."""
    models, lr = plan(s)
    for name, role, argv, out_dir, _ in models:
        if role == "sweep" or os.path.isfile(os.path.join(s["work"], "results", f"{name}.json")) or not done(s["work"], f"{name}_blimp"):
            continue
        train = done(s["work"], name if argv else sweep_name(lr))
        torch.set_num_threads(1)  # beside the running jobs
        r = model_result(s["work"], s["data"], name, role, out_dir, train["seconds"], done(s["work"], f"{name}_blimp")["seconds"], s["test_windows"])
        print(f"[result] {name}: val CE {r['val_ce']:.4f}, test CE {r['test_ce']:.4f}, BLiMP {r['blimp']:.2f}, supplement {r['supplement']:.2f}", flush=True)
        report(s)


# -----------------------------------------------------------------------------------------------
# The report: every number comes from WORK/results/*.json, the sweep's logs and the curves


def report(s):
    models, lr = plan(s)
    results = {n: json.load(open(os.path.join(s["work"], "results", f"{n}.json"))) for n, role, *_ in models
               if role != "sweep" and os.path.isfile(os.path.join(s["work"], "results", f"{n}.json"))}
    where = s["work"] if s["smoke"] else ROOT
    missing = [n for n, role, *_ in models if role != "sweep" and n not in results]
    if lr is None:
        missing.append("(the models after the learning-rate sweep)")
    text = report_text(s, results, lr, missing, curves_png(s, where))
    os.makedirs(where, exist_ok=True)
    atomic_write(os.path.join(where, "RESULTS_blimp.md"), lambda f: f.write(text), "w")
    return text


def curves_png(s, where):
    """The curves' plot, copied beside the report (None when not drawn yet)."""
    src = os.path.join(s["work"], "curves", "curves.png")
    if not os.path.isfile(src):
        return None
    dst = os.path.join(where, "RESULTS_blimp_curves.png")
    if os.path.abspath(src) != os.path.abspath(dst):
        shutil.copyfile(src, dst)
    return os.path.basename(dst)


def report_text(s, m, lr, missing, png):
    thread_hours, wall_hours, unledgered = compute_used(s["work"])
    status = (f"**Partial: {len(m)} models finished.** Still to run: {', '.join(missing)}. Run the same command again to continue."
              if missing else f"All {len(m)} models finished.")
    best, claims = main_claims(m, "Teacher1 has the baseline's recipe and shape with another seed; teacher2 is wider.")
    ensemble = [*comparison_section("Two teachers vs teacher1 alone", "Seed 1 of both.", m, "student", "single_t1", ROLES["single_t1"]),
                *comparison_section("Two teachers vs teacher2 alone", "Seed 1 of both.", m, "student", "single_t2", ROLES["single_t2"])]
    how = how_to_read(m, count_intervals(claims + ensemble), "the two sections below",
                      "Validation CE is each model's best over its run, on the split the learning rate was chosen on (baseline_s1's is the "
                      "best of the sweep); test CE and BLiMP were used for no choice.")
    params = {r: next((x["params"] for x in m.values() if x["role"] == r), 0) for r in ("teacher", "baseline")}
    sweep = ["| lr | best val CE | train min | chosen |", "|---|---|---|---|"]
    for v in sweep_state(s)[0]:
        if done(s["work"], sweep_name(v)):
            vals = [e["val_loss"] for e in read_log(os.path.join(s["work"], "out", sweep_name(v), "log.jsonl")) if "val_loss" in e]
            sweep.append(f"| {v:g} | {min(vals):.4f} | {done(s['work'], sweep_name(v))['seconds'] / 60:.0f} | {'yes' if v == lr else ''} |")
    curves = os.path.join(s["work"], "curves", "curves.md")
    cmds = [prepare_command(s)] + [argv for _, argv, *_ in jobs(s)[1:]]
    return "\n".join([
        "# The distillation claim on BLiMP, on a CPU" + (" (smoke run: tiny sizes, not a result)" if s["smoke"] else ""), "",
        f"Generated by `python experiments/reproduce_blimp.py{' --smoke' if s['smoke'] else ''}`; do not edit by hand. {status}", "",
        "The first CPU experiment ([RESULTS.md](RESULTS.md)) saw 282,752 tokens eight times, and every model sat at chance on "
        "BLiMP (51-53). Here every model sees unique words: the whole babylm_2024_mini training split, once "
        f"({s['train_words']:,} words, {s['train_tokens']:,} tokens of a {s['vocab_size']:,}-token BPE; {s['steps']} steps of "
        f"{s['batch_size']} x 128 tokens, {s['end_words']:,} words seen). Teacher1, the student and the baseline share one shape "
        f"({params['baseline'] / 1e6:.1f}M parameters), teacher2 is wider ({max(params['teacher'], params['baseline']) / 1e6:.1f}M "
        "for the larger teacher); the student learns from the live teachers with the papers' loss (alpha 0.5, T 1, mean of logits, "
        "KL summed over positions / batch). BLiMP: the full filtered set (67 paradigms, 59,875 pairs) and the supplement "
        "(5 tasks, 5,218 pairs), scored with the 2025 protocol of the official BabyLM pipeline. Test CE: the official dev "
        f"files, {s['test_windows']:,} windows. Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, every run on one "
        f"thread, two at a time. Compute so far: {thread_hours:.1f} thread-hours, {wall_hours:.1f} hours of wall time"
        + (f" ({unledgered} jobs finished before the compute ledger existed count their last attempt only)." if unledgered else "."), "",
        "## Learning-rate sweep", "", "The baseline (seed 101, one epoch) at each peak learning rate, ranked by best validation "
        "CE; the chosen run is baseline_s1, and every model uses its learning rate.", "", *sweep, "",
        "## Summary over seeds", "", "Mean ± standard deviation over seeds (teachers: over the two teachers).", "",
        *summary_table(m, [r for r in ("teacher", "baseline", "student", "single_t1", "single_t2") if any(x["role"] == r for x in m.values())]),
        "## Does the student beat the baseline and its teachers on BLiMP?", "", how, "", *claims,
        "## Does the ensemble matter?", "", *(ensemble or ["Not run yet.", ""]),
        "## Conclusion", "", *conclusion(m, best), "",
        "## Learning curves over words seen", "",
        "BLiMP and the supplement at the milestones of each run (--checkpoints_at), on the BabyLM fast evaluation's subset "
        f"({s['curve_limit']} pairs per paradigm, {s['supplement_curve_limit']} per supplement task; experiments/curves.py), 2025 protocol.", "",
        *([open(curves).read().rstrip(), ""] if os.path.isfile(curves) else ["Not run yet.", ""]),
        *([f"![learning curves]({png})", ""] if png else []),
        "## All models", "", *models_table(m), "",
        "train s: wall time of the training run on one thread beside another run. best step = the step of the best validation CE.", "",
        "## BLiMP by field", "", "Pooled accuracy over the pairs of each field, as eval_blimp.py reports it. BLiMP's own files spell "
        "one field two ways (syntax_semantics in 13 paradigms, syntax/semantics in 1, principle_A_case_2); the labels are kept as given.", "",
        *field_table(m), "",
        "## Commands", "", "Run from the project root, with WORK the work folder; each model then gets its eval_blimp.py command "
        "(listed), and baseline_s1 is a link to the sweep's run at the chosen learning rate.", "", "```",
        *commands_block(cmds, s["work"]), "```", ""])


def compute_used(work):
    """(thread-hours, wall hours, jobs counted from their markers only). The ledger holds every attempt; a job
    that finished before the ledger existed (a work folder of an earlier version) counts its marker's seconds,
    its last attempt only, and adds the interval it ran in (ending at its marker's time) to the wall time."""
    ledger, logs = compute(work), os.path.join(work, "logs")
    thread, wall, intervals = sum(ledger["jobs"].values()), ledger["wall"], []
    for f in sorted(os.listdir(logs)):
        if f.endswith(".done") and f[:-5] not in ledger["jobs"]:
            end = os.path.getmtime(os.path.join(logs, f))
            seconds = json.load(open(os.path.join(logs, f)))["seconds"]
            thread += seconds
            intervals.append((end - seconds, end))
    covered, last = 0.0, float("-inf")  # the length of the intervals' union: two jobs side by side count once
    for lo, hi in sorted(intervals):
        covered += max(0.0, hi - max(lo, last))
        last = max(last, hi)
    return thread / 3600, (wall + covered) / 3600, len(intervals)


def conclusion(m, best):
    """The claim in plain words, from the same intervals as the tables."""
    if best is None or not any(x["role"] == "student" for x in m.values()):
        return ["Not enough models have finished yet."]
    mean = lambda role, key: sum(x[key] for x in m.values() if x["role"] == role) / max(1, sum(x["role"] == role for x in m.values()))
    blimp_of = lambda role: [x["blimp"] for x in m.values() if x["role"] == role]
    spread = lambda role: statistics.stdev(blimp_of(role)) if len(blimp_of(role)) > 1 else float("nan")
    lines = [f"BLiMP (mean over seeds): student {mean('student', 'blimp'):.2f}, baseline {mean('baseline', 'blimp'):.2f}, "
             f"best teacher ({best}) {m[best]['blimp']:.2f}; supplement: {mean('student', 'supplement'):.2f}, "
             f"{mean('baseline', 'supplement'):.2f}, {m[best]['supplement']:.2f}. The noise: BLiMP's standard deviation over seeds is "
             f"{spread('student'):.2f} points for the student and {spread('baseline'):.2f} for the baseline. Each bullet "
             "names the intervals that exclude zero: *on the items* (the paired bootstrap: these trained models, on these "
             "test items) and *over seeds* (the t interval: the recipe, across training runs).", ""]
    singles = [(r, f"the {ROLES[r]}") for r in ("single_t1", "single_t2") if any(x["role"] == r for x in m.values())]
    for b, label in (("baseline", "the baseline"), (best, f"the best teacher ({best})"), *singles):
        rows = compare(m, "student", b)
        for metric, name in (("blimp", "BLiMP"), ("supplement", "the supplement"), ("test_ce", "test CE")):
            cis = [(method, ci) for mt, method, ci in rows if mt == metric and not method.startswith("paired bootstrap, seed ")]
            if not cis:
                continue
            unit = "nats" if metric == "test_ce" else "points"
            better = (lambda ci: ci.hi < 0) if metric == "test_ce" else (lambda ci: ci.lo > 0)
            worse = (lambda ci: ci.lo > 0) if metric == "test_ce" else (lambda ci: ci.hi < 0)
            where = lambda method: "on the items" if method.startswith("paired bootstrap") else "over seeds"
            up, down = [where(mt) for mt, ci in cis if better(ci)], [where(mt) for mt, ci in cis if worse(ci)]
            rest = [where(mt) for mt, ci in cis if not excludes_zero(ci)]
            verdict = (f"better than {label}" if len(up) == len(cis) else f"worse than {label}" if len(down) == len(cis)
                       else f"not distinguishable from {label}" if len(rest) == len(cis)
                       else f"better than {label} {' and '.join(up)}, worse {' and '.join(down)}" if up and down
                       else f"{'better' if up else 'worse'} than {label} {' and '.join(up or down)}, not {' and '.join(rest)}")
            intervals = "; ".join(f"[{ci.lo:+.{4 if unit == 'nats' else 2}f}, {ci.hi:+.{4 if unit == 'nats' else 2}f}] ({method})" for method, ci in cis)
            lines.append(f"- On {name}, the student is **{verdict}**: {cis[0][1].diff:+.{4 if unit == 'nats' else 2}f} {unit}, "
                         f"95% intervals {intervals}.")
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = load_config(KEYS, argv, __doc__)
    work = os.path.abspath(args.work or os.path.join(EXPERIMENTS, "work_blimp_smoke" if args.smoke else "work_blimp"))
    check_writable_dir(work, "--work")  # a file, under a file or read-only: now, not at the first marker
    args.sizes = SMOKE if args.smoke else FULL
    if not os.path.isdir(CORPUS):
        raise InputError(f"{CORPUS} not found: the experiment reads babylm_2024_mini (and BLiMP) from ../shared/data beside the repository")
    if args.report_only:
        if not done(work, "prepare"):
            raise InputError(f"{work}: no finished run of this experiment (no {os.path.join(work, 'logs', 'prepare.done')})")
        print(f"wrote {os.path.join(work if args.smoke else ROOT, 'RESULTS_blimp.md')}")
        return report(settings(args, work))
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    if args.smoke:
        subset_corpus(CORPUS, os.path.join(work, "src"), SMOKE["words"], dev_words=SMOKE["words"])
    run_jobs(args, work)
    report(settings(args, work))
    print(f"report: {os.path.join(work if args.smoke else ROOT, 'RESULTS_blimp.md')}")


if __name__ == "__main__":
    run_main(main)
