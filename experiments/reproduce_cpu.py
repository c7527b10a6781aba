"""
Does an ensemble-distilled student beat its teachers, and a same-size model trained without distillation?
(BabyLlama, arXiv 2308.02019; BabyLlama-2, arXiv 2409.17312) An end-to-end experiment at CPU scale that
runs the project's own commands on real BabyLM text and writes RESULTS.md and a plot.

    python experiments/reproduce_cpu.py                   # the full experiment (~41 min on 2 uncontended cores)
    python experiments/reproduce_cpu.py --cache           # + students from a teacher cache (sampled and top-k), ~20 min more
    python experiments/reproduce_cpu.py --smoke           # a few minutes: the same pipeline, tiny sizes

Resumable: run the same command again after a kill (or in another session); finished steps are skipped
(a marker in work/logs/), a killed training run continues from its last.pt. Every command is printed before
it runs, its output is shown as it runs (and kept in work/logs/), and a one-line result follows it.

How the sizes were chosen: a first teacher that still improved at the end of its run (configs/tiny_teacher1.py,
0.2 epochs of 4.3M tokens) shows nothing about the claim, so the corpus is cut to ~280k tokens and every model
sees it 8 times; the 3.9M-parameter teachers reach their best validation CE at epoch 7 and then rise slightly.
The regime of the papers: several epochs over a small corpus, teachers trained past their best validation
epoch, every model kept at its best validation checkpoint. The corpus is the first --words words of each
of the six babylm_2024_mini training sources (with the official dev files as the test split), a 4,096-token
BPE keeps the output head cheap, and the teachers are larger than the student (as in BabyLlama) so that
they overfit the small corpus within --epochs. Pipeline:
  1. prepare_data.py on the subset corpus
  2. two teachers (train_teacher.py), same architecture, different seeds
  3. the student (distill.py, the papers' loss: alpha 0.5, T 1, logits ensemble, "paper" reduction), and a
     baseline of the student's size with plain CE for the same steps, each with --seeds seeds
  4. optional ablations of the student (--ablations): the "mean" KL reduction and the "probs" ensemble
  4b. optional (--cache): students trained from a teacher cache instead of live teachers (teacher_cache.py):
     the unbiased sampled estimator and top-k at the same storage (k = 16 slots), --seeds seeds each
  5. every model: validation CE (best checkpoint), test CE, full BLiMP and supplement (eval_blimp.py)
Results: experiments/work/results.json, RESULTS.md (every number generated), RESULTS_val_ce.png
(a --smoke run writes its report into the work folder instead).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/stats.py
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")

import torch  # noqa: E402

from checkpoint import load_checkpoint, read_log  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from stats import blimp_diff_ci, ce_diff_ci, seeds_diff_ci, verdict  # noqa: E402
from train import Windows, eval_indices  # noqa: E402

TEACHER = dict(dim=192, n_layers=6, n_heads=6, n_kv_heads=2, hidden_dim=512)
STUDENT = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384)
TRAIN = dict(seq_len=128, batch_size=32, micro_batch_size=32, lr=2e-3, min_lr=2e-4, weight_decay=0.1, log_interval=10, eval_windows=1024)


def subset_corpus(src, dst, words):
    """The first `words` words of each training source (lines kept whole), the dev files as they are."""
    for split, suffix in (("train_10M", ".train"), ("dev", ".dev")):
        os.makedirs(os.path.join(dst, split), exist_ok=True)
        for fn in sorted(os.listdir(os.path.join(src, split))):
            if not fn.endswith(suffix):
                continue
            text = open(os.path.join(src, split, fn), encoding="utf-8").read()
            if split == "train_10M":
                out, n = [], 0
                for line in text.splitlines():
                    w = line.split()
                    out.append(" ".join(w[: max(0, words - n)]) if n + len(w) > words else line)
                    n += len(w)
                    if n >= words:
                        break
                text = "\n".join(out) + "\n"
            with open(os.path.join(dst, split, fn), "w", encoding="utf-8") as f:
                f.write(text)


def run(cmd, log_path):
    """Run one of the project's commands, showing its output as it comes and keeping it in log_path.
    Returns the wall time; a failed command stops the experiment with its last lines."""
    t0 = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while chunk := proc.stdout.read1(1 << 16):
            log.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        if proc.wait():
            sys.exit(f"error: {' '.join(cmd[:1])} failed (exit {proc.returncode}); its output is in {log_path}; run the experiment again to continue")
    return time.perf_counter() - t0


def run_once(name, cmd, out_dir, work, k, total):
    """Run a step of the experiment unless a marker says it finished; a killed training run resumes.
    Returns the wall time of the run that finished it (recorded in the marker)."""
    marker = os.path.join(work, "logs", f"{name}.done")
    if os.path.isfile(marker):
        seconds = json.load(open(marker))["seconds"]
        print(f"[{k}/{total}] {name}: done already ({seconds:.0f} s), skipped", flush=True)
        return seconds
    if out_dir and os.path.isfile(os.path.join(out_dir, "last.pt")):
        cmd = cmd + ["--resume=True"]  # killed earlier: continue
    elif out_dir and os.path.isfile(os.path.join(out_dir, "log.jsonl")):
        cmd = cmd + ["--overwrite=True"]  # killed before its first checkpoint: start again
    print(f"\n[{k}/{total}] {name}: python {' '.join(cmd)}".replace(ROOT + "/", ""), flush=True)
    seconds = run(cmd, os.path.join(work, "logs", f"{name}.log"))
    with open(marker, "w") as f:
        json.dump({"seconds": seconds}, f)
    result = ""
    if out_dir and os.path.isfile(os.path.join(out_dir, "log.jsonl")):
        vals = [e["val_loss"] for e in read_log(os.path.join(out_dir, "log.jsonl")) if "val_loss" in e]
        result = f", best val_loss {min(vals):.4f}" if vals else ""
    print(f"[{k}/{total}] {name}: finished in {seconds:.0f} s{result}", flush=True)
    return seconds


def kv(**kw):
    return [f"--{k}={v}" for k, v in kw.items()]


def prepare_command(work, data):
    return ("prepare", "data", ["prepare_data.py", "--src", os.path.join(work, "src"), "--out", data, "--vocab_size", "4096"])


def commands(args, work, data, steps_per_epoch):
    """[(name, role, argv)]: every command of the experiment, in order (also printed in RESULTS.md)."""
    max_iters = round(args.epochs * steps_per_epoch)
    common = dict(TRAIN, data_dir=data, max_iters=max_iters, warmup_iters=max(2, max_iters // 20),
                  eval_interval=max(1, steps_per_epoch // 2), compile=False, **({"eval_windows": 64} if args.smoke else {}))
    train = lambda name, role, script, **kw: (name, role, [script, *kv(**{**common, "out_dir": os.path.join(work, "out", name), **kw})])
    out = [prepare_command(work, data)]
    out += [train(f"teacher{k}", "teacher", "train_teacher.py", seed=k, **TEACHER) for k in (1, 2)]
    teachers = [os.path.join(work, "out", f"teacher{k}", "ckpt.pt") for k in (1, 2)]
    variants = [("student", "student", {})]
    if args.ablations:
        variants += [("student_mean", "ablation", {"kl_reduction": "mean"}), ("student_probs", "ablation", {"ensemble": "probs"})]
    if getattr(args, "cache", False):  # the same student, its targets read from a cache built once (k = 16 slots each)
        variants += [(f"student_cache_{m}", f"cache_{m}", {"teacher_cache": os.path.join(work, f"cache_{m}"), "cache_method": m, "cache_k": 16})
                     for m in ("sampled", "topk")]
    for s in range(1, args.seeds + 1):
        for name, role, extra in variants:
            if role == "ablation" and s > 1:
                continue
            out.append(train(f"{name}_s{s}", role, "distill.py", seed=100 + s, teachers=",".join(teachers),
                             alpha=0.5, temperature=1.0, **{"ensemble": "logits", "kl_reduction": "paper", **extra}, **STUDENT))
        out.append(train(f"baseline_s{s}", "baseline", "train_teacher.py", seed=100 + s, **STUDENT))
    return out


@torch.no_grad()
def test_ce_windows(ckpt_path, data_dir, windows):
    """The mean next-token CE of each of `windows` fixed test windows (the same windows for every model):
    their mean is the test CE, and a paired bootstrap resamples them."""
    model, ckpt = load_checkpoint(ckpt_path)
    model.eval()
    w = Windows(os.path.join(data_dir, "test.bin"), ckpt["config"]["seq_len"])
    idx, out = eval_indices(w.n, windows), []
    for i in range(0, len(idx), 32):
        x, y = w.get(idx[i : i + 32], torch.device("cpu"))
        ce = F.cross_entropy(model.logits(x).float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        out += ce.mean(1).tolist()  # (B,): one number per window
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", default=os.path.join(ROOT, "experiments", "work"))
    p.add_argument("--words", type=int, default=30000, help="words per training source (6 sources)")
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--ablations", action="store_true")
    p.add_argument("--cache", action="store_true", help="also students from a teacher cache (sampled and top-k)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and --limit'ed BLiMP: checks the pipeline")
    p.add_argument("--report_only", action="store_true", help="rewrite RESULTS.md from work/results.json")
    args = p.parse_args()
    if args.smoke:
        args.words, args.epochs, args.seeds = 3000, 2.0, 2
    work, data = args.work, os.path.join(args.work, "data")
    where = work if args.smoke else ROOT  # a smoke run is not a result: it stays in the work folder
    if args.report_only:
        results = json.load(open(os.path.join(work, "results.json")))
        write_report(results, os.path.join(where, "RESULTS.md"), "RESULTS_val_ce.png", commands(args, work, data, results["steps_per_epoch"]))
        return
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    subset_corpus(os.path.join(SHARED, "babylm_2024_mini"), os.path.join(work, "src"), args.words)
    n_train = 1 + 2 + args.seeds * (2 + 2 * args.cache) + 2 * args.ablations
    print(f"{n_train} training runs and {n_train - 1} BLiMP evaluations; on 2 uncontended CPU cores the base experiment took "
          f"41 min and --cache adds ~20 min (a busy machine takes longer). Interrupt at any time: run it again to continue.", flush=True)
    prep = prepare_command(work, data)
    total = n_train + (n_train - 1)
    timings = {"prepare": run_once("prepare", prep[2], None, work, 1, total)}
    n_windows = Windows(os.path.join(data, "train.bin"), TRAIN["seq_len"]).n
    steps_per_epoch = n_windows // TRAIN["batch_size"]
    max_iters = round(args.epochs * steps_per_epoch)
    models = {}  # name -> (role, out_dir, wall time)
    for k, (name, role, cmd) in enumerate(commands(args, work, data, steps_per_epoch)[1:], start=2):
        out_dir = os.path.join(work, "out", name)
        models[name] = (role, out_dir, run_once(name, cmd, out_dir, work, k, total))

    results = {"words_per_source": args.words, "epochs": args.epochs, "steps": max_iters, "steps_per_epoch": steps_per_epoch,
               "train_tokens": int(n_windows * TRAIN["seq_len"]), "smoke": args.smoke, "timings": timings, "models": {}}
    blimp_limit = ["--limit", "20"] if args.smoke else []
    for k, (name, (role, out, seconds)) in enumerate(models.items(), start=len(models) + 2):
        ckpt_path = os.path.join(out, "ckpt.pt")
        blimp_json = os.path.join(out, "blimp.json")
        run_once(f"{name}_blimp", ["eval_blimp.py", "--ckpt", ckpt_path, "--data", os.path.join(SHARED, "blimp_filtered"), "--supplement",
                                   os.path.join(SHARED, "blimp_supplement"), "--out", blimp_json, *blimp_limit], None, work, k, total)
        b = json.load(open(blimp_json))
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        ce_windows = test_ce_windows(ckpt_path, data, 64 if args.smoke else 2048)
        log = read_log(os.path.join(out, "log.jsonl"))
        results["models"][name] = {
            "role": role, "params": sum(v.numel() for v in ckpt["model"].values()), "best_step": ckpt["step"],
            "tokens_seen": max_iters * TRAIN["batch_size"] * TRAIN["seq_len"], "train_seconds": seconds,
            "val_ce": ckpt["val_loss"], "test_ce": sum(ce_windows) / len(ce_windows), "test_ce_windows": ce_windows,
            "blimp_correct": {t: r["correct"] for t, r in b["blimp"]["tasks"].items()},
            "supplement_correct": {t: r["correct"] for t, r in b["supplement"]["tasks"].items()},
            "blimp": b["blimp"]["score"], "supplement": b["supplement"]["score"], "blimp_field": b["blimp"]["field"],
            "val_curve": [(e["step"], e["val_loss"]) for e in log if "val_loss" in e]}
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_report(results, os.path.join(where, "RESULTS.md"), "RESULTS_val_ce.png", commands(args, work, data, steps_per_epoch))
    plot(results, os.path.join(where, "RESULTS_val_ce.png"))


def spread(values):
    return (max(values) - min(values)) if len(values) > 1 else float("nan")


def write_report(r, path, png, cmds=()):
    m = r["models"]
    rows = ["| model | role | params | best step | tokens seen | train s | val CE | test CE | BLiMP | supplement |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, x in m.items():
        rows.append(f"| {name} | {x['role']} | {x['params']:,} | {x['best_step']} | {x['tokens_seen']:,} | {x['train_seconds']:.0f} | "
                    f"{x['val_ce']:.4f} | {x['test_ce']:.4f} | {x['blimp']:.1f} | {x['supplement']:.1f} |")
    fields = sorted({f for x in m.values() for f in x["blimp_field"]})
    frows = ["| model | " + " | ".join(fields) + " |", "|---|" + "---|" * len(fields)]
    for name, x in m.items():
        frows.append(f"| {name} | " + " | ".join(f"{x['blimp_field'].get(f, float('nan')):.1f}" for f in fields) + " |")
    summary = []
    for metric, better in (("val_ce", min), ("test_ce", min), ("blimp", max), ("supplement", max)):
        group = lambda role: [x[metric] for x in m.values() if x["role"] == role]
        st, bl, te = group("student"), group("baseline"), group("teacher")
        if not (st and bl and te):
            continue
        mean = lambda v: sum(v) / len(v)
        gap_t = mean(st) - better(te)
        gap_b = mean(st) - mean(bl)
        sp = max(spread(st), spread(bl))
        summary.append(f"| {metric} | {mean(st):.4g} | {mean(bl):.4g} | {better(te):.4g} | {gap_b:+.3g} | {gap_t:+.3g} | {sp:.3g} | "
                       f"{'yes' if abs(gap_b) > sp else 'no'} | {'yes' if abs(gap_t) > sp else 'no'} |")
    ci_section = confidence_intervals(m)
    cache_rows = []
    for role, label in (("student", "live teachers"), ("cache_sampled", "cache, sampled (unbiased), k = 16"), ("cache_topk", "cache, top-k, k = 16")):
        xs = [x for x in m.values() if x["role"] == role]
        if xs and any(x["role"].startswith("cache") for x in m.values()):
            cell = lambda key, fmt: f"{sum(x[key] for x in xs) / len(xs):{fmt}} ± {spread([x[key] for x in xs]) / 2:{fmt}}"
            cache_rows.append(f"| {label} | {len(xs)} | {cell('val_ce', '.4f')} | {cell('test_ce', '.4f')} | {cell('blimp', '.1f')} | "
                              f"{cell('supplement', '.1f')} | {sum(x['train_seconds'] for x in xs) / len(xs):.0f} |")
    cache_section = ["## Students from a teacher cache", "",
                     "The same student recipe, its distillation targets read from a cache built once (the build time is part of the first "
                     "seed's train seconds) instead of running the teachers at every step. Mean ± half the max-min spread over seeds.", "",
                     "| targets | seeds | val CE | test CE | BLiMP | supplement | train s |", "|---|---|---|---|---|---|---|", *cache_rows, ""] if cache_rows else []
    text = "\n".join([
        "# Reproducing the distillation claim on a CPU" + (" (smoke run: tiny sizes, not a result)" if r["smoke"] else ""),
        "", f"Generated by `python experiments/reproduce_cpu.py{' --smoke' if r['smoke'] else ''}`; do not edit by hand.",
        f"Corpus: the first {r['words_per_source']:,} words of each babylm_2024_mini training source ({r['train_tokens']:,} training tokens), "
        f"{r['epochs']} epochs = {r['steps']} steps of 32 x 128 tokens ({r['steps_per_epoch']} per epoch). Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}.",
        "", "## Models", "", *rows, "", "## BLiMP by field", "", *frows, "",
        "## Student vs teachers and baseline", "",
        "Student and baseline are means over seeds; teachers: the better teacher. Spread = largest max-min over seeds of student or baseline.", "",
        "| metric | student | baseline | best teacher | student - baseline | student - teacher | spread | vs baseline exceeds spread | vs teacher exceeds spread |",
        "|---|---|---|---|---|---|---|---|---|", *summary, "", *ci_section, *cache_section, f"![validation CE]({png})", "",
        "## Commands", "", "Run from the project root, in this order (then `eval_blimp.py` on each `ckpt.pt`, full sets):", "", "```",
        *[f"python {' '.join(c if ' ' not in c and '[' not in c else repr(c) for c in cmd)}".replace(ROOT + "/", "") for _, _, cmd in cmds], "```", ""])
    with open(path, "w") as f:
        f.write(text)


def flags(per_task):
    """(0/1 array, paradigm labels) of a model's per-pair correctness, tasks in name order."""
    tasks = sorted(per_task)
    return [int(c) for t in tasks for c in per_task[t]], [t for t in tasks for _ in per_task[t]]


def confidence_intervals(m):
    """The report's 95% intervals: paired bootstraps over the same items (BLiMP pairs within each paradigm,
    supplement items within each task, test windows) for each seed's student against the baseline of the
    same seed and against the best teacher, and Welch t intervals across seeds. One sentence each."""
    students = sorted(n for n, x in m.items() if x["role"] == "student" and "blimp_correct" in x)
    teachers = [n for n, x in m.items() if x["role"] == "teacher" and "blimp_correct" in x]
    if not students or not teachers:
        return []
    best = min(teachers, key=lambda n: m[n]["val_ce"])
    lines = ["## Confidence intervals (95%)", "",
             f"Paired bootstraps on the same items (10,000 resamples; BLiMP pairs and supplement items resampled within each "
             f"paradigm or task, test CE over {len(m[students[0]]['test_ce_windows'])} test windows), each student seed against the "
             f"baseline of the same seed and against the best teacher by validation CE ({best}); then Welch t intervals over seeds. "
             "BLiMP and supplement in points (higher is better), test CE in nats (lower is better).", ""]
    for s in students:
        others = [(f"baseline_{s.split('_')[-1]}", "baseline"), (best, "best teacher")]
        for other, label in others:
            if other not in m or "blimp_correct" not in m[other]:
                continue
            a, b = m[s], m[other]
            for metric, key in (("BLiMP", "blimp_correct"), ("supplement", "supplement_correct")):
                (ca, labels), (cb, _) = flags(a[key]), flags(b[key])
                lines.append("- " + verdict(blimp_diff_ci(ca, cb, labels), f"{s} - {other} ({label}), {metric}"))
            lines.append("- " + verdict(ce_diff_ci(a["test_ce_windows"], b["test_ce_windows"]), f"{s} - {other} ({label}), test CE"))
    baselines = sorted(n for n, x in m.items() if x["role"] == "baseline")
    if len(students) >= 2 and len(baselines) >= 2:
        for metric in ("blimp", "supplement", "test_ce", "val_ce"):
            ci = seeds_diff_ci([m[n][metric] for n in students], [m[n][metric] for n in baselines])
            lines.append("- " + verdict(ci, f"student - baseline over seeds, {metric}"))
    return lines + [""]


def plot(r, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, x in r["models"].items():
        steps, vals = zip(*x["val_curve"])
        ax.plot(steps, vals, label=name, linestyle="-" if x["role"] in ("teacher", "student") else ":" if x["role"].startswith("cache") else "--")
    ax.set_xlabel("step")
    ax.set_ylabel("validation CE (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
