"""
Does an ensemble-distilled student beat its teachers and a tuned same-size model trained without
distillation, and does the ensemble matter? (BabyLlama, arXiv 2308.02019; BabyLlama-2, arXiv 2409.17312)
An end-to-end experiment at CPU scale that runs the project's own commands on real BabyLM text and writes
RESULTS.md and two plots, every number generated.

    python experiments/reproduce_cpu.py                     # everything (about 5 hours on 2 uncontended cores)
    python experiments/reproduce_cpu.py --work /big/disk    # the work folder elsewhere (default experiments/work)
    python experiments/reproduce_cpu.py --report_only       # rewrite RESULTS.md from what has finished
    python experiments/reproduce_cpu.py --smoke             # a few minutes: the same pipeline, tiny sizes
    python experiments/reproduce_cpu.py --until sweeps      # a piece: the data and both learning-rate sweeps, then stop

Resumable, and meant to run in pieces: interrupt it at any time (Ctrl-C, a kill, the end of a session) and
run the same command again; finished steps are skipped (a marker in work/logs/, written when the step's
command has exited cleanly; a model counts as finished only once its results/NAME.json is written, after its
evaluation), a killed training run continues from its last.pt, a killed sweep from its unfinished runs. The
learning rates are chosen from finished sweep runs only, and only from the grid that the marker says finished.
Ctrl-C (SIGTERM) is passed on once to the running command, which saves and exits; the experiment then exits
with one line and status 130 (143). RESULTS.md is rewritten after every evaluated model, saying which models
are still missing; --report_only rewrites it from work/ alone (results, markers, sweeps: data/ may be gone).
Every command is printed before it runs, its output is shown as it runs (and kept in work/logs/), and a
one-line result follows it.

The experiment, in the order it runs (the most important comparisons first):
  1. prepare_data.py on a subset corpus: the first --words words of each of the six babylm_2024_mini
     training sources (the official dev files are the test split), a 4,096-token BPE.
  2. Tune before comparing: a learning-rate sweep (experiments/sweep.py, 4 values spanning 10x, and one
     more value beyond the edge while the best is at an edge) of the same-size baseline and of the teacher,
     ranked by best validation CE. Each family then uses its best value; the student uses the baseline's
     (same architecture, so any advantage of tuning goes to the baseline). The sweep's run at the chosen
     value is itself teacher1 and baseline_s1 (their seeds), so their validation CE is the best of 4 or
     more runs: if anything an optimistic number for them.
  3. teacher2 (another seed); then for every seed: the student of the two-teacher ensemble (the papers' loss:
     alpha 0.5, T 1, logits ensemble, "paper" reduction), the baseline (plain CE, the same steps), and
  4. the same student from a teacher cache (teacher_cache.py): the unbiased sampled estimator and top-k
     at the same storage (k = 16 slots).
  5. Does the ensemble matter: students of teacher1 alone and of teacher2 alone, every seed.
  6. Ablations: the "mean" KL reduction and the "probs" ensemble, every seed.
  7. A third teacher and the student of the three-teacher ensemble, every seed.
  Each model, as soon as it is trained: validation CE (best checkpoint), test CE over 2,048 fixed test
  windows, full BLiMP and the supplement (eval_blimp.py).
Statistics (experiments/stats.py): paired bootstrap 95% intervals on the same items (BLiMP pairs within
each paradigm, supplement items within each task, test windows), per seed and with the seeds pooled (an item
resampled with all its seeds), and t intervals across seeds.

How the sizes were chosen: a first teacher that still improved at the end of its run (configs/tiny_teacher1.py,
0.2 epochs of 4.3M tokens) shows nothing about the claim, so the corpus is cut to ~280k tokens and every model
sees it 8 times. The regime of the papers: several epochs over a small corpus, teachers trained past their
best validation epoch, every model kept at its best validation checkpoint. The 3.9M-parameter teachers are
larger than the 1.8M-parameter student (as in BabyLlama) so that they overfit the small corpus within --epochs.
Results: work/results/*.json (one per model), RESULTS.md, RESULTS_val_ce.png, RESULTS_lr_sweep.png
(a --smoke run writes its report into the work folder instead).
"""

import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/stats.py
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from checkpoint import atomic_write, check_writable_dir, load_checkpoint, read_log  # noqa: E402
from config import InputError, Terminated, child_env, load_config, run_main  # noqa: E402
from stats import blimp_diff_ci, ce_diff_ci, seeds_diff_ci, verdict, excludes_zero  # noqa: E402
from train import Windows, eval_indices  # noqa: E402

TEACHER = dict(dim=192, n_layers=6, n_heads=6, n_kv_heads=2, hidden_dim=512)
STUDENT = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384)
# min_lr is fixed (not lr / 10) so that the sweep changes one key; it is 1/10 of the smallest swept lr
TRAIN = dict(seq_len=128, batch_size=32, micro_batch_size=32, min_lr=1e-4, weight_decay=0.1, log_interval=10, eval_windows=1024)
LRS = (1e-3, 2e-3, 4e-3, 1e-2)  # the sweep: 4 values spanning 10x, the untuned runs' 2e-3 among them
MAX_EXTENSIONS = 2  # a best value at the edge of the grid adds a value beyond it, at most this many times
DISTILL = dict(alpha=0.5, temperature=1.0, ensemble="logits", kl_reduction="paper")  # the papers' loss
TEST_WINDOWS = 2048
SMOKE = dict(words=3000, epochs=2.0, seeds=2)  # --smoke: the sizes of a pipeline check; FULL: the experiment's
FULL = dict(words=30000, epochs=8.0, seeds=3)
KEYS = {"experiment": {
    "work": ("", "work folder: data, runs, logs, results (empty = experiments/work)"),
    "words": (0, "words per training source (6 sources); 0 = 30,000 (--smoke: 3,000)", "0..10000000"),
    "epochs": (0.0, "passes over the training windows; 0 = 8 (--smoke: 2)", "0..100"),
    "seeds": (0, "seeds of every student and of the baseline; 0 = 3 (--smoke: 2)", "0..10"),
    "smoke": (False, "tiny sizes and 20 BLiMP pairs per paradigm: checks the pipeline in a few minutes"),
    "until": ("all", "stop after this stage: 'prepare', 'baseline_sweep', 'sweeps' (both learning-rate sweeps) or 'all'",
              ("prepare", "baseline_sweep", "sweeps", "all")),
    "report_only": (False, "rewrite RESULTS.md from WORK (results, markers, sweeps: data/ may be gone); runs nothing"),
}}
# RESULTS.md was scored with the 2024 BabyLM protocol (a leading space before each sentence); named explicitly, so
# that the report stays reproducible now that eval_blimp.py defaults to the official 2025 pipeline's protocol
PROTOCOL = "2024"
# role -> what it is, in the report's order (the student of the claim is "student")
ROLES = {"teacher": "teachers", "baseline": "baseline (plain CE, student size)", "student": "student, 2 teachers",
         "cache_sampled": "student, 2 teachers, cache sampled k=16", "cache_topk": "student, 2 teachers, cache top-k k=16",
         "single_t1": "student of teacher1 alone", "single_t2": "student of teacher2 alone",
         "mean": "student, 2 teachers, mean reduction", "probs": "student, 2 teachers, probs ensemble",
         "three": "student, 3 teachers"}


def subset_corpus(src, dst, words, dev_words=0):
    """The first `words` words of each training source (lines kept whole), the dev files as they are
    (or their first `dev_words` words)."""
    for split, suffix in (("train_10M", ".train"), ("dev", ".dev")):
        os.makedirs(os.path.join(dst, split), exist_ok=True)
        for fn in sorted(os.listdir(os.path.join(src, split))):
            if not fn.endswith(suffix):
                continue
            text = open(os.path.join(src, split, fn), encoding="utf-8").read()
            limit = words if split == "train_10M" else dev_words
            if limit:
                out, n = [], 0
                for line in text.splitlines():
                    w = line.split()
                    out.append(" ".join(w[: max(0, limit - n)]) if n + len(w) > limit else line)
                    n += len(w)
                    if n >= limit:
                        break
                text = "\n".join(out) + "\n"
            with open(os.path.join(dst, split, fn), "w", encoding="utf-8") as f:
                f.write(text)


def run(cmd, log_path):
    """Run one of the project's commands, showing its output as it comes and keeping it in log_path; returns the
    wall time. The command runs in its own session, so a Ctrl-C at the terminal reaches this process only, which
    passes it on as SIGTERM (a trainer saves last.pt and exits; a command still starting Python dies quietly, where a
    SIGINT that early printed "Fatal Python error"), waits for the command to exit, and then stops with one line,
    status 130 (SIGTERM: the same, 143). A failed command stops the experiment with one line naming its log."""
    t0 = time.perf_counter()
    stop = None
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env=child_env())  # it dies with this process (config.die_with_parent)
        while True:
            try:
                while chunk := proc.stdout.read1(1 << 16):
                    log.write(chunk)
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                proc.wait()
                break
            except (KeyboardInterrupt, Terminated) as e:  # passed on once: the command saves and exits, then we stop
                if stop is None:
                    proc.send_signal(signal.SIGTERM)
                stop = stop or e
    if stop is not None:
        raise stop
    if proc.returncode:
        raise InputError(f"{' '.join(cmd[:1])} failed (exit {proc.returncode}); its output is in {log_path}; run the experiment again to continue")
    return time.perf_counter() - t0


def run_once(name, cmd, out_dir, work, label):
    """Run a step of the experiment unless a marker says it finished; a killed training run resumes.
    Returns the wall time of the run that finished it (recorded in the marker)."""
    marker = os.path.join(work, "logs", f"{name}.done")
    if os.path.isfile(marker):
        done = json.load(open(marker))
        if done.get("command", cmd) != cmd:  # e.g. a sweep chose another lr: the old result is not this step's
            raise InputError(f"{name} finished earlier with another command ({shlex.join(done['command'])}); "
                             f"delete {marker} (and {out_dir or 'its output'}) to run it again")
        return done["seconds"]
    ran, resumed = cmd, False
    if out_dir and os.path.isfile(os.path.join(out_dir, "last.pt")):
        resumed = True
        cmd = cmd + ["--resume=True"]  # killed earlier: continue
    elif out_dir and os.path.isfile(os.path.join(out_dir, "log.jsonl")):
        cmd = cmd + ["--overwrite=True"]  # killed before its first checkpoint: start again
    print(f"\n[{label}] {name}: python {' '.join(cmd)}".replace(ROOT + "/", ""), flush=True)
    seconds = run(cmd, os.path.join(work, "logs", f"{name}.log"))
    # written whole, and only now that the command has exited cleanly (resumed: seconds miss the killed part)
    atomic_write(marker, lambda f: json.dump({"seconds": seconds, "command": ran, "resumed": resumed}, f), "w")
    result = ""
    if out_dir and os.path.isfile(os.path.join(out_dir, "log.jsonl")):
        vals = [e["val_loss"] for e in read_log(os.path.join(out_dir, "log.jsonl")) if "val_loss" in e]
        result = f", best val_loss {min(vals):.4f}" if vals else ""
    print(f"[{label}] {name}: finished in {seconds:.0f} s{result}", flush=True)
    return seconds


def kv(**kw):
    return [f"--{k}={v}" for k, v in kw.items()]


def common_settings(args, data, steps_per_epoch):
    max_iters = round(args.epochs * steps_per_epoch)
    return dict(TRAIN, data_dir=data, max_iters=max_iters, warmup_iters=max(2, max_iters // 20),
                eval_interval=max(1, steps_per_epoch // 2), compile=False, **({"eval_windows": 64} if args.smoke else {}))


def sweep_command(work, common, family, lrs):
    """The learning-rate sweep of a family ("teacher" or "baseline") as one experiments/sweep.py command."""
    arch, seed = (TEACHER, 1) if family == "teacher" else (STUDENT, 101)
    fixed = {**common, "seed": seed, **arch}
    return ["experiments/sweep.py", "train_teacher.py", "--grid", "lr=" + ",".join(repr(v) for v in lrs),
            "--fixed", *[f"{k}={v}" for k, v in fixed.items()], "--out", os.path.join(work, "sweep", family)]


def tune(args, work, common, family):
    """Sweep the learning rate until the best value is inside the grid: when it is the smallest or the
    largest value, the grid grows by a factor of 2 on that side and the new run is added to the same sweep
    (the finished runs are kept), at most MAX_EXTENSIONS times. Each grid is ranked only once its sweep has
    finished (its marker), over the runs of that grid alone: a run of a later, interrupted extension is never
    ranked. Returns (the sweep commands that ran, the final grid)."""
    lrs, cmds = list(LRS[1:3] if args.smoke else LRS), []
    for extension in range(MAX_EXTENSIONS + 1):
        name = f"sweep_{family}" + (f"_{len(lrs)}" if extension else "")
        cmds.append(sweep_command(work, common, family, lrs))
        if args.report_only and not os.path.isfile(os.path.join(work, "logs", f"{name}.done")):
            raise InputError(f"the {family} learning-rate sweep has not finished: run the experiment without --report_only")
        run_once(name, cmds[-1], None, work, name)
        best = best_lr(work, family, lrs)[0]
        if best not in (min(lrs), max(lrs)) or extension == MAX_EXTENSIONS:
            return cmds, lrs
        added = best / 2 if best == min(lrs) else best * 2
        if not args.report_only:
            print(f"{family}: the best lr {best:g} is at the edge of the grid: adding lr={added:g}", flush=True)
        lrs = sorted([*lrs, added])


def read_sweep(work, family, lrs):
    """[(lr, best val CE, best step, seconds, out_dir)] of the finished runs of the grid `lrs`, in lr order. Only runs
    the sweep marked done count (a run killed half-way has a log too, and a lower val CE than a finished one may
    have had at that step); a run of the grid that is not done is an error, not a smaller grid."""
    path = os.path.join(work, "sweep", family, "results.jsonl")
    rows = {r["values"]["lr"]: r for r in map(json.loads, open(path)) if r["status"] == "done"} if os.path.isfile(path) else {}
    unfinished = [lr for lr in lrs if lr not in rows]
    if unfinished:
        raise InputError(f"{path}: the {family} sweep's run at lr={unfinished[0]:g} has not finished: run the experiment "
                         "(without --report_only) to finish it")
    out = []
    for lr in lrs:
        r = rows[lr]
        log = read_log(os.path.join(r["out_dir"], "log.jsonl"))
        best = min((e for e in log if "val_loss" in e), key=lambda e: e["val_loss"])
        out.append((lr, best["val_loss"], best["step"], r["seconds"], r["out_dir"]))
    return sorted(out)


def best_lr(work, family, lrs):
    lr, _, _, seconds, out_dir = min(read_sweep(work, family, lrs), key=lambda r: r[1])
    return lr, out_dir, seconds


def model_steps(args, work, common, lr_teacher, lr_student):
    """[(name, role, argv or None, out_dir)]: every model after the sweeps, in the order they run.
    teacher1 and baseline_s1 are the sweeps' runs at the chosen lr (argv None: nothing to train)."""
    out = lambda name: os.path.join(work, "out", name)
    teachers = [os.path.join(work, "out", f"teacher{k}", "ckpt.pt") for k in (1, 2, 3)]

    def train(name, role, script, **kw):
        return (name, role, [script, *kv(**{**common, "out_dir": out(name), **kw})], out(name))

    def student(name, role, s, teacher_list, **kw):
        return train(f"{name}_s{s}", role, "distill.py", seed=100 + s, lr=lr_student, teachers=",".join(teacher_list),
                     **{**DISTILL, **kw}, **STUDENT)

    seeds = range(1, args.seeds + 1)
    steps = [("teacher1", "teacher", None, out("teacher1")),
             train("teacher2", "teacher", "train_teacher.py", seed=2, lr=lr_teacher, **TEACHER)]
    for s in seeds:
        steps.append(student("student", "student", s, teachers[:2]))
        steps.append(("baseline_s1", "baseline", None, out("baseline_s1")) if s == 1 else
                     train(f"baseline_s{s}", "baseline", "train_teacher.py", seed=100 + s, lr=lr_student, **STUDENT))
        for m in ("sampled", "topk"):  # the cache is built by the first seed's run, then read by the others
            steps.append(student(f"student_cache_{m}", f"cache_{m}", s, teachers[:2],
                                 teacher_cache=os.path.join(work, f"cache_{m}"), cache_method=m, cache_k=16))
    for s in seeds:
        steps += [student("student_t1", "single_t1", s, teachers[:1]), student("student_t2", "single_t2", s, teachers[1:2])]
    for s in seeds:
        steps += [student("student_mean", "mean", s, teachers[:2], kl_reduction="mean"),
                  student("student_probs", "probs", s, teachers[:2], ensemble="probs")]
    steps.append(train("teacher3", "teacher", "train_teacher.py", seed=3, lr=lr_teacher, **TEACHER))
    for s in seeds:
        steps.append(student("student_3t", "three", s, teachers))
    return steps


def link_sweep_run(name, sweep_dir, work):
    """teacher1 / baseline_s1 are the sweep's run at the chosen lr: a symlink keeps one copy on disk."""
    path = os.path.join(work, "out", name)
    if os.path.islink(path) and os.path.realpath(path) == os.path.realpath(sweep_dir):
        return
    if os.path.lexists(path):
        raise InputError(f"{path} exists and is not the sweep's run {sweep_dir}; move it away and run again")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(os.path.relpath(os.path.realpath(sweep_dir), os.path.realpath(os.path.dirname(path))), path)  # relative: the work folder may move


@torch.no_grad()
def test_ce_windows(ckpt_path, data_dir, windows, device="cpu"):
    """The mean next-token CE of each of `windows` fixed test windows (0 = every window; the same windows for
    every model): their mean is the test CE, and a paired bootstrap resamples them. fp32, on `device`."""
    model, ckpt = load_checkpoint(ckpt_path, device)
    model.eval()
    w = Windows(os.path.join(data_dir, "test.bin"), ckpt["config"]["seq_len"])
    idx, out = eval_indices(w.n, windows or w.n), []
    for i in range(0, len(idx), 32):
        x, y = w.get(idx[i : i + 32], torch.device(device))
        ce = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        out += ce.mean(1).tolist()  # (B,): one number per window
    return out


def blimp_command(out_dir, limit=0, extra=(), protocol=None):
    """eval_blimp.py on a model's ckpt.pt: full BLiMP and the supplement (limit: pairs per paradigm, 0 = all),
    written to out_dir/blimp.json, with `protocol` (None: eval_blimp.py's default, the official 2025 one)."""
    return ["eval_blimp.py", "--ckpt", os.path.join(out_dir, "ckpt.pt"), "--data", os.path.join(SHARED, "blimp_filtered"),
            "--supplement", os.path.join(SHARED, "blimp_supplement"), "--out", os.path.join(out_dir, "blimp.json"),
            *(["--limit", str(limit)] if limit else []), *(["--protocol", protocol] if protocol else []), *extra]


def evaluate_model(work, data, name, role, out_dir, train_seconds, label, limit=0, test_windows=TEST_WINDOWS, device="cpu", blimp_extra=(),
                   protocol=None):
    """BLiMP + supplement (blimp_command, a step with a marker) and test CE over test_windows windows (0 = all)
    on `device`; writes work/results/NAME.json."""
    if os.path.isfile(os.path.join(work, "results", f"{name}.json")):
        return
    eval_seconds = run_once(f"{name}_blimp", blimp_command(out_dir, limit, blimp_extra, protocol), None, work, label)
    result = model_result(work, data, name, role, out_dir, train_seconds, eval_seconds, test_windows, device)
    print(f"[{label}] {name}: val CE {result['val_ce']:.4f}, test CE {result['test_ce']:.4f}, BLiMP {result['blimp']:.1f}, "
          f"supplement {result['supplement']:.1f}", flush=True)


def model_result(work, data, name, role, out_dir, train_seconds, eval_seconds, test_windows=TEST_WINDOWS, device="cpu"):
    """work/results/NAME.json of a trained model whose out_dir/blimp.json is written (blimp_command): the recipe,
    validation CE, test CE over test_windows windows (0 = all) on `device`, and every BLiMP and supplement pair's
    correctness (for the paired intervals). Written whole: a kill leaves none of it."""
    path = os.path.join(work, "results", f"{name}.json")
    ckpt_path, blimp_json = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "blimp.json")
    b = json.load(open(blimp_json))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    t0 = time.perf_counter()
    ce_windows = test_ce_windows(ckpt_path, data, test_windows, device)
    test_seconds = time.perf_counter() - t0
    log = read_log(os.path.join(out_dir, "log.jsonl"))
    cfg = ckpt["config"]
    result = {"role": role, "seed": cfg["seed"], "lr": cfg["lr"], "params": sum(v.numel() for v in ckpt["model"].values()),
              "best_step": ckpt["step"], "steps": cfg["max_iters"], "tokens_seen": cfg["max_iters"] * cfg["batch_size"] * cfg["seq_len"],
              "train_seconds": train_seconds, "eval_seconds": eval_seconds, "test_seconds": test_seconds, "val_ce": ckpt["val_loss"],
              "test_ce": sum(ce_windows) / len(ce_windows), "test_ce_windows": ce_windows,
              "blimp": b["blimp"]["score"], "supplement": b["supplement"]["score"], "blimp_field": b["blimp"]["field"],
              "blimp_correct": {t: r["correct"] for t, r in b["blimp"]["tasks"].items()},
              "supplement_correct": {t: r["correct"] for t, r in b["supplement"]["tasks"].items()},
              "val_curve": [(e["step"], e["val_loss"]) for e in log if "val_loss" in e]}
    atomic_write(path, lambda f: json.dump(result, f), "w")  # a kill leaves no half-written result
    return result


def prepare_command(work, data):
    return ["prepare_data.py", "--src", os.path.join(work, "src"), "--out", data, "--vocab_size", "4096"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(KEYS, argv, __doc__)
    sizes = SMOKE if cfg.smoke else FULL  # 0: the size of the mode; a number given is used as given, in both modes
    args = SimpleNamespace(**{**vars(cfg), **{k: getattr(cfg, k) or sizes[k] for k in ("words", "epochs", "seeds")}})
    work = os.path.abspath(args.work or os.path.join(ROOT, "experiments", "work"))
    check_writable_dir(work, "--work")  # a file, under a file or read-only: now, not at the first marker
    data = os.path.join(work, "data")
    where = work if args.smoke else ROOT  # a smoke run is not a result: it stays in the work folder
    corpus = os.path.join(SHARED, "babylm_2024_mini")
    if args.report_only:
        if not os.path.isdir(os.path.join(work, "results")):
            raise InputError(f"{os.path.join(work, 'results')} does not exist: no model of this experiment has finished")
    elif not os.path.isdir(corpus):
        raise InputError(f"{corpus} not found: the experiment reads babylm_2024_mini (and BLiMP) from ../shared/data beside the repository")
    else:
        os.makedirs(os.path.join(work, "logs"), exist_ok=True)
        subset_corpus(corpus, os.path.join(work, "src"), args.words)
        print("On 2 uncontended CPU cores the whole experiment takes about 5 hours. Interrupt it at any time and run the "
              "same command again to continue; RESULTS.md is rewritten after every model.", flush=True)
        run_once("prepare", prepare_command(work, data), None, work, "prepare")
        if args.until == "prepare":
            print(f"stopped after the data (--until prepare): {data}")
            return
    n_windows = train_windows(work, data)
    steps_per_epoch = n_windows // TRAIN["batch_size"]
    if steps_per_epoch < 1:
        raise InputError(f"--words={args.words}: {n_windows} training windows of {TRAIN['seq_len']} tokens, fewer than one batch of "
                         f"{TRAIN['batch_size']}: give more words per source")
    common = common_settings(args, data, steps_per_epoch)
    sweep_b, lrs_b = tune(args, work, common, "baseline")
    if args.until == "baseline_sweep":
        lr, out_dir, _ = best_lr(work, "baseline", lrs_b)
        print(f"stopped after the baseline's learning-rate sweep (--until baseline_sweep): lr {lr:g} chosen of "
              f"{', '.join(f'{v:g}' for v in lrs_b)} ({out_dir})")
        return
    sweep_t, lrs_t = tune(args, work, common, "teacher")
    (lr_t, t1_dir, t1_seconds), (lr_s, b1_dir, b1_seconds) = best_lr(work, "teacher", lrs_t), best_lr(work, "baseline", lrs_b)
    steps = model_steps(args, work, common, lr_t, lr_s)
    info = {"work": work, "words_per_source": args.words, "epochs": args.epochs, "steps": common["max_iters"], "steps_per_epoch": steps_per_epoch,
            "train_tokens": int(n_windows * TRAIN["seq_len"]), "smoke": args.smoke,
            "sweeps": {"baseline": read_sweep(work, "baseline", lrs_b), "teacher": read_sweep(work, "teacher", lrs_t)},
            "lr": {"teacher": lr_t, "baseline": lr_s}}
    cmds = [prepare_command(work, data)] + sweep_b + sweep_t + [cmd for _, _, cmd, _ in steps if cmd]

    if not args.report_only and args.until == "all":
        link_sweep_run("teacher1", t1_dir, work)
        link_sweep_run("baseline_s1", b1_dir, work)
        finished = [name for name, *_ in steps if os.path.isfile(os.path.join(work, "results", f"{name}.json"))]
        if finished:
            print(f"{len(finished)} of {len(steps)} models finished already (skipped): {', '.join(finished)}", flush=True)
        for k, (name, role, cmd, out_dir) in enumerate(steps, start=1):
            label = f"{k}/{len(steps)}"
            seconds = run_once(name, cmd, out_dir, work, label) if cmd else t1_seconds if name == "teacher1" else b1_seconds
            if not os.path.isfile(os.path.join(work, "results", f"{name}.json")):
                evaluate_model(work, data, name, role, out_dir, seconds, label, limit=20 if args.smoke else 0,
                               test_windows=64 if args.smoke else TEST_WINDOWS, protocol=PROTOCOL)
                report(work, where, [name for name, *_ in steps], info, cmds)
    report(work, where, [name for name, *_ in steps], info, cmds)
    print(f"report: {os.path.join(where, 'RESULTS.md')}" + (" (stopped after the sweeps: --until sweeps)" if args.until == "sweeps" else ""))


def train_windows(work, data):
    """Training windows of the prepared data, recorded in WORK/logs/data.json the first time, so that --report_only
    works from the work folder alone (data/ deleted to save space, or the folder copied without it)."""
    record = os.path.join(work, "logs", "data.json")
    if os.path.isfile(os.path.join(data, "train.bin")):
        n = Windows(os.path.join(data, "train.bin"), TRAIN["seq_len"]).n
        if not os.path.isfile(record):
            atomic_write(record, lambda f: json.dump({"train_windows": n}, f), "w")
        return n
    if os.path.isfile(record):
        return json.load(open(record))["train_windows"]
    raise InputError(f"{data}/train.bin not found, nor {record}: the report needs the size of the prepared data "
                     "(run the experiment without --report_only to prepare it again)")


# -----------------------------------------------------------------------------------------------
# The report: every number in RESULTS.md comes from work/results/*.json and the sweeps


def report(work, where, names, info, cmds):
    """RESULTS.md and the plots in `where`, from the results of the models in `names` that have finished."""
    results = {}
    for name in names:
        path = os.path.join(work, "results", f"{name}.json")
        if os.path.isfile(path):
            results[name] = json.load(open(path))
    logs = os.path.join(work, "logs")
    markers = {f[:-5]: json.load(open(os.path.join(logs, f))) for f in os.listdir(logs) if f.endswith(".done")}
    # a sweep's marker times only the invocation that finished it; the sweep adds up each run's launches itself
    info["total_seconds"] = (sum(x["seconds"] for name, x in markers.items() if not name.startswith("sweep_"))
                             + sum(row[3] for rows in info["sweeps"].values() for row in rows))
    info["resumed"] = sorted(name for name, x in markers.items() if x.get("resumed"))
    missing = [name for name in names if name not in results]
    write_report(results, info, os.path.join(where, "RESULTS.md"), missing, cmds)
    plot(results, info, os.path.join(where, "RESULTS_val_ce.png"), os.path.join(where, "RESULTS_lr_sweep.png"))


LOWER_IS_BETTER = ("val_ce", "test_ce")
METRICS = {"val_ce": "validation CE (nats)", "test_ce": "test CE (nats)", "blimp": "BLiMP (points)", "supplement": "supplement (points)"}


def mean_sd(values, fmt):
    """Mean ± sample standard deviation over seeds (a single value alone)."""
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}" if len(values) > 1 else f"{values[0]:{fmt}}"


def flags(per_task, prefix=""):
    """(0/1 list, paradigm labels) of a model's per-pair correctness, tasks in name order."""
    tasks = sorted(per_task)
    return [int(c) for t in tasks for c in per_task[t]], [prefix + t for t in tasks for _ in per_task[t]]


def compare(m, a_role, b, per_seed=False):
    """[(metric, method, CI)] of A - B: the seeds of role a_role against b, which is either a role (matched
    by seed: same seed = same initialisation and data order, so the pairs are paired) or one model's name
    (a fixed model, e.g. the best teacher). Paired bootstraps on the same items with the seeds pooled
    (the mean over seeds of each seed's difference; an item resampled with all its seeds, within its
    paradigm), then t intervals over seeds; with per_seed, a paired bootstrap for each seed too."""
    a = {x["seed"]: n for n, x in m.items() if x["role"] == a_role}
    b_seed = {x["seed"]: n for n, x in m.items() if x["role"] == b}
    pairs = [(a[s], b if b in m else b_seed[s]) for s in sorted(a) if b in m or s in b_seed]
    if not pairs:
        return []

    def item_cis(pairs):
        """A pair of models per seed; the seeds share the items, so an item is resampled with all its seeds."""
        out = []
        for metric, key in (("blimp", "blimp_correct"), ("supplement", "supplement_correct")):
            labels = flags(m[pairs[0][0]][key])[1]
            ca = [flags(m[x][key])[0] for x, _ in pairs]  # (seeds, pairs)
            cb = [flags(m[y][key])[0] for _, y in pairs]
            out.append((metric, blimp_diff_ci(ca, cb, labels)))
        return out + [("test_ce", ce_diff_ci([m[x]["test_ce_windows"] for x, _ in pairs], [m[y]["test_ce_windows"] for _, y in pairs]))]

    rows = [(metric, f"paired bootstrap, {len(pairs)} seed{'s' * (len(pairs) > 1)} pooled", ci) for metric, ci in item_cis(pairs)]
    # against one fixed model the t interval holds the seeds of A only: B's own seed variation is not in it
    t_label = f"t interval over {len(pairs)} seeds" + (" of A (B: one model)" if b in m else "")
    if len(pairs) >= 2:
        for metric in ("val_ce", "test_ce", "blimp", "supplement"):
            rows.append((metric, t_label, seeds_diff_ci([m[x][metric] for x, _ in pairs], [m[y][metric] for _, y in pairs], paired=True)))
    if per_seed and len(pairs) >= 2:
        for x, y in pairs:
            rows += [(metric, f"paired bootstrap, seed {m[x]['seed']} ({x} - {y})", ci) for metric, ci in item_cis([(x, y)])]
    return rows


def winner(metric, ci):
    """"A", "B" or None: which side the interval shows to be better (lower CE, higher accuracy)."""
    if not excludes_zero(ci):
        return None
    return "A" if (ci.hi < 0) == (metric in LOWER_IS_BETTER) else "B"


def main_claims(m, teachers_context):
    """(best teacher by validation CE, the three sections of the claim): student vs baseline, student vs best teacher,
    baseline vs best teacher (teachers_context: one sentence on why the last one matters here)."""
    teachers = [n for n in ("teacher1", "teacher2") if n in m]
    best = min(teachers, key=lambda n: m[n]["val_ce"]) if teachers else None
    claims = []
    if best:
        claims += comparison_section("Student vs baseline", "", m, "student", "baseline", ROLES["baseline"], per_seed=True)
        claims += comparison_section("Student vs best teacher", f"The best teacher by validation CE is {best}.", m, "student", best, best, per_seed=True)
        claims += comparison_section("Baseline vs best teacher", teachers_context, m, "baseline", best, best)
    return best, claims


def comparison_section(title, intro, m, a_role, b, b_label, per_seed=False):
    rows = compare(m, a_role, b, per_seed)
    a_label = ROLES[a_role]
    if not rows:
        return []
    num = lambda v, metric: f"{round(v, 9) + 0.0:+.{4 if metric in LOWER_IS_BETTER else 2}f}"  # CE: 4 decimals, points: 2; never -0
    table = ["| metric | interval | A - B | 95% CI | excludes 0 | better |", "|---|---|---|---|---|---|"]
    for metric, method, ci in rows:
        w = winner(metric, ci)
        table.append(f"| {METRICS[metric]} | {method} | {num(ci.diff, metric)} | [{num(ci.lo, metric)}, {num(ci.hi, metric)}] | "
                     f"{'yes' if excludes_zero(ci) else 'no'} | {'A' if w == 'A' else 'B' if w == 'B' else '-'} |")
    groups = {"A": [], "B": [], None: []}
    for metric, method, ci in rows:
        if not method.startswith("paired bootstrap, seed "):  # the per-seed rows are in the table only
            groups[winner(metric, ci)].append(f"{METRICS[metric].split(' (')[0]} {'over seeds' if method.startswith('t ') else 'on the items'}")
    parts = ([f"A is better on {', '.join(groups['A'])}"] if groups["A"] else []) + \
            ([f"B is better on {', '.join(groups['B'])}"] if groups["B"] else []) + \
            ([f"the intervals include zero on {', '.join(groups[None])}"] if groups[None] else [])
    return [f"### {title}", "", f"A = {a_label}, B = {b_label}. {intro}", "", *table, "",
            f"**{title}:** " + "; ".join(parts) + ".", ""]


def models_table(m):
    """One row per finished model (m: name -> result, as evaluate_model writes it)."""
    rows = ["| model | role | lr | params | best step | train s | val CE | test CE | BLiMP | supplement |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, x in m.items():
        rows.append(f"| {name} | {x['role']} | {x['lr']:g} | {x['params']:,} | {x['best_step']} | {x['train_seconds']:.0f} | "
                    f"{x['val_ce']:.4f} | {x['test_ce']:.4f} | {x['blimp']:.1f} | {x['supplement']:.1f} |")
    return rows


def summary_table(m, roles):
    """Mean ± sd over the seeds of each role, one row per role, then a blank line."""
    rows = ["| models | seeds | val CE | test CE | BLiMP | supplement | train s (mean) |", "|---|---|---|---|---|---|---|"]
    for role in roles:
        xs = [x for x in m.values() if x["role"] == role]
        cell = lambda key, fmt: mean_sd([x[key] for x in xs], fmt)
        rows.append(f"| {ROLES[role]} | {len(xs)} | {cell('val_ce', '.4f')} | {cell('test_ce', '.4f')} | {cell('blimp', '.2f')} | "
                    f"{cell('supplement', '.2f')} | {sum(x['train_seconds'] for x in xs) / len(xs):.0f} |")
    return rows + [""]


def field_table(m):
    """Each model's BLiMP accuracy per field, pooled over the field's pairs (as eval_blimp.py reports it)."""
    fields = sorted({f for x in m.values() for f in x["blimp_field"]})
    rows = ["| model | " + " | ".join(fields) + " |", "|---|" + "---|" * len(fields)]
    for name, x in m.items():
        rows.append(f"| {name} | " + " | ".join(f"{x['blimp_field'].get(f, float('nan')):.1f}" for f in fields) + " |")
    return rows


def how_to_read(m, n_intervals, sections, validation):
    """The paragraph that explains the comparison tables once: `sections` they are in, and what the validation
    CE is (`validation`: a sentence)."""
    first = next(iter(m.values()), {"blimp_correct": (), "supplement_correct": ()})
    return (f"How to read the comparisons of {sections}: each row is a 95% interval for A - B. *paired bootstrap*: both "
            "models scored on the same items (BLiMP pairs and supplement items resampled within each paradigm or task, test CE "
            "over the same test windows; 10,000 resamples); with several seeds the difference is the mean over seeds and an item "
            "is resampled with all its seeds (they share the items). It measures the variation from the finite test sets, for "
            "these trained models. *t interval over seeds*: the seed-matched differences (same seed = same initialisation and "
            "data order): the variation from training, the one that says whether the recipe wins. CE in nats (lower is better); "
            f"BLiMP ({len(first['blimp_correct'])} paradigms) and the supplement ({len(first['supplement_correct'])} tasks) in "
            "percentage points, the unweighted mean over paradigms or tasks (higher is better; chance is 50). "
            f"{validation} With {n_intervals} intervals in this report, a few of them excluding zero by chance alone is expected.")


def count_intervals(lines):
    """The interval rows of the comparison tables in `lines`."""
    return sum(line.startswith("| ") and not line.startswith("| metric") for line in lines)


def commands_block(cmds, work):
    """The commands as they ran, from the project root: the work folder written $WORK, the data ../shared/data."""
    return [f"python {' '.join(c if ' ' not in c else repr(c) for c in cmd)}".replace(work or "\0", "$WORK").replace(ROOT + "/", "")
            .replace(SHARED, "../shared/data") for cmd in cmds]


def write_report(m, info, path, missing=(), cmds=()):
    """RESULTS.md from the results of the finished models (m: name -> result) and the sweeps."""
    roles = [r for r in ROLES if any(x["role"] == r for x in m.values())]
    summary = lambda roles: summary_table(m, roles)
    sweeps = []
    for family, rows in info["sweeps"].items():
        chosen = info["lr"][family]
        sweeps += [f"**{'Teacher' if family == 'teacher' else 'Baseline (and student)'}** ({'seed 1, teacher size' if family == 'teacher' else 'seed 101, student size'}):", "",
                   "| lr | best val CE | at step | train s | chosen |", "|---|---|---|---|---|"]
        sweeps += [f"| {lr:g} | {val:.4f} | {step} | {sec:.0f} | {'yes' if lr == chosen else ''} |" for lr, val, step, sec, _ in rows]
        lrs = [r[0] for r in rows]
        edge = " It is at the edge of the grid: a wider sweep might find a better value." if chosen in (min(lrs), max(lrs)) else ""
        sweeps += ["", f"Chosen: lr = {chosen:g}.{edge}", ""]
    best, claims = main_claims(m, "Context for the claim: are the larger teachers better than the small plain-CE model at all?")
    ensemble = [*comparison_section("Two teachers vs teacher1 alone", "", m, "student", "single_t1", ROLES["single_t1"]),
                *comparison_section("Two teachers vs teacher2 alone", "", m, "student", "single_t2", ROLES["single_t2"]),
                *comparison_section("Three teachers vs two", "", m, "three", "student", ROLES["student"])]
    ablations = [*comparison_section("Mean reduction vs the papers' reduction", "", m, "mean", "student", ROLES["student"]),
                 *comparison_section("Probs ensemble vs logits ensemble", "", m, "probs", "student", ROLES["student"]),
                 *comparison_section("Mean-reduction student vs baseline", "A comparison chosen after seeing the ablation "
                                     "(not planned): does the student with the mean reduction beat the baseline on both splits?",
                                     m, "mean", "baseline", ROLES["baseline"])]
    cache = [*comparison_section("Cache, sampled vs live teachers", "", m, "cache_sampled", "student", ROLES["student"]),
             *comparison_section("Cache, top-k vs live teachers", "", m, "cache_topk", "student", ROLES["student"])]
    how = how_to_read(m, count_intervals(claims + ensemble + ablations + cache), "sections 2 to 5",
                      "Validation CE is each model's best over its run, on the split it was tuned and stopped on, so it is optimistic "
                      "(baseline_s1's is the best of 4 or more sweep runs); test CE was used for no choice.")
    status = (f"**Partial: {len(m)} of {len(m) + len(missing)} models finished.** Still to run: {', '.join(missing)}. "
              "Run the same command again to continue." if missing else f"All {len(m)} models finished.")
    hours = info.get("total_seconds", 0) / 3600
    n_test = len(next(iter(m.values()))["test_ce_windows"]) if m else TEST_WINDOWS
    params = {role: next((x["params"] for x in m.values() if x["role"] == role), None) for role in ("teacher", "baseline")}
    sizes = (f"Teachers {params['teacher'] / 1e6:.1f}M parameters, student and baseline {params['baseline'] / 1e6:.1f}M."
             if all(params.values()) else "")
    text = "\n".join([
        "# Reproducing the distillation claim on a CPU" + (" (smoke run: tiny sizes, not a result)" if info["smoke"] else ""), "",
        f"Generated by `python experiments/reproduce_cpu.py{' --smoke' if info['smoke'] else ''}`; do not edit by hand. {status}", "",
        f"Corpus: the first {info['words_per_source']:,} words of each babylm_2024_mini training source ({info['train_tokens']:,} training "
        f"tokens), {info['epochs']:g} epochs = {info['steps']} steps of 32 x 128 tokens ({info['steps_per_epoch']} per epoch); validation: "
        f"the last 5% of each training source (held out by prepare_data.py), the split every model is tuned and stopped on; "
        f"test: the official dev files, used for no choice (tuning, early stopping), {n_test:,} windows of {TRAIN['seq_len']} tokens, evenly spread over the split. BLiMP and the supplement: eval_blimp.py's {PROTOCOL} protocol (--protocol {PROTOCOL}; eval_blimp.py's default is the official 2025 one). {sizes} Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}. Compute so far: {hours:.1f} hours of "
        "wall time on these cores (every training run, sweep and evaluation).", "",
        "## 1. Learning-rate sweeps", "",
        "The learning rates of the teacher and of the baseline are tuned on validation CE before the comparison (BabyLlama-2's "
        "second claim: the gain is not an artefact of badly tuned teachers or baselines); the student uses the baseline's "
        "(the same architecture), and alpha and T are the papers' (not swept). The chosen run of each sweep is itself "
        "teacher1 or baseline_s1.", "",
        *sweeps, "![learning-rate sweeps](RESULTS_lr_sweep.png)", "",
        "## Summary over seeds", "", "Mean ± standard deviation over seeds (teachers: over the teacher models).", "", *summary(roles),
        "## 2. Does the student beat the baseline and its teachers?", "", how, "", *claims,
        "## 3. Does the ensemble matter?", "",
        "The same student recipe and seeds, distilled from teacher1 alone, from teacher2 alone, from the two-teacher ensemble "
        "(the student of section 2) and from three teachers (teacher3: the teacher recipe with another seed). BabyLlama-2's third "
        "claim is that the ensemble beats a single teacher. Mean ± standard deviation over seeds:", "",
        *summary([r for r in ("student", "single_t1", "single_t2", "three") if r in roles]), *(ensemble or ["Not run yet.", ""]),
        "## 4. Ablations of the loss", "",
        "Two choices of the published loss, changed one at a time: `kl_reduction=mean` averages the KL over tokens instead of "
        "summing it over positions and dividing by the batch (\"paper\": with 128 positions the KL term weighs 128 times more "
        "against the CE); `ensemble=probs` averages the teachers' probabilities instead of their logits. Mean ± standard "
        "deviation over seeds:", "",
        *summary([r for r in ("student", "mean", "probs") if r in roles]), *(ablations or ["Not run yet.", ""]),
        "## 5. Students from a teacher cache", "",
        "The same student, its distillation targets read from a cache built once (teacher_cache.py; the build is part of the "
        "first seed's train seconds) instead of running the teachers at every step. Both caches store 16 slots per token "
        "(100 bytes per token); mean ± standard deviation over seeds:", "",
        *summary([r for r in ("student", "cache_sampled", "cache_topk") if r in roles]), *(cache or ["Not run yet.", ""]),
        "## All models", "", *models_table(m), "",
        "train s: wall time of the training run on the shared 2 cores (a run beside other work on the machine is slower). "
        f"best step = {info['steps']}, the last: the model was still improving on validation when training stopped.", "",
        *([f"Resumed after a kill: {', '.join(info['resumed'])}. Their train s, and the compute total, count only the run "
           "that finished them, not the part before the kill.", ""] if info.get("resumed") else []),
        "## BLiMP by field", "", "Pooled accuracy over the pairs of each field, as eval_blimp.py reports it. BLiMP's own files spell "
        "one field two ways (syntax_semantics in 13 paradigms, syntax/semantics in 1); the labels are kept as given.", "", *field_table(m), "",
        "![validation CE](RESULTS_val_ce.png)", "",
        "## Commands", "", f"Run from the project root, in this order, with WORK the work folder (each model then gets `eval_blimp.py --protocol {PROTOCOL}` "
        "on its `ckpt.pt`, full sets; teacher1 and baseline_s1 are links to the sweeps' runs at the chosen learning rate):", "", "```",
        *commands_block(cmds, info.get("work")), "```", ""])
    atomic_write(path, lambda f: f.write(text), "w")


def pyplot():
    """matplotlib.pyplot without a display, or None (it is optional: the report is written without plots)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plots written")
        return None
    return plt


def plot(m, info, curves_path, sweep_path):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for family, rows in info["sweeps"].items():
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=family)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("best validation CE (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(sweep_path, dpi=100)
    plt.close(fig)
    plot_curves(m, curves_path, plt)


def plot_curves(m, curves_path, plt):
    """Validation CE against the step: the teachers and the first seed of every other model."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    shown = [name for name, x in m.items() if x["role"] == "teacher" or name.endswith("_s1")]  # teachers, first seed of the rest
    for k, name in enumerate(shown):
        steps, vals = zip(*m[name]["val_curve"])
        ax.plot(steps, vals, label=name, color=plt.get_cmap("tab20")(k % 20),  # 20 colours: the default 10 repeat here
                linestyle="-" if m[name]["role"] in ("teacher", "student", "baseline") else ":")
    ax.set_xlabel("step")
    ax.set_ylabel("validation CE (nats/token)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(curves_path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    run_main(main)
