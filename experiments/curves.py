"""
Learning curves over BabyLM milestones: score every chck_<words> checkpoint of one or more runs on BLiMP and the
BLiMP supplement, then draw score against words seen (log scale), one line per run, beside a markdown table.

    python experiments/curves.py --runs=out/tiny_teacher1,out/tiny_teacher2 --blimp=../shared/data/blimp_filtered \\
        --supplement=../shared/data/blimp_supplement --out=curves/tiny
    python experiments/curves.py ... --protocol=2024                    # the 2024 pipeline's scoring (2025's is the default)
    python experiments/curves.py ... --blimp_limit=0 --supplement_limit=0   # the full sets

A run's milestones are the folders train.py writes with --checkpoints_at (out_dir/chck_1M/ckpt.pt, ...; each
records its words seen). What is scored, by default, is the size of the BabyLM 2025 fast evaluation, the one the
organisers run on every intermediate checkpoint (the pipeline's collate_preds.py: BLIMP_FAST_SIZE 200,
SUPPLEMENT_FAST_SIZE 50): the first 200 pairs of each BLiMP paradigm and the first 50 of each supplement task
(eval_blimp.py's --limit, with its scoring: eval_blimp.evaluate_set, the 2025 protocol by default, named in curves.md
and on the plot). The pipeline's own fast files are a subsample
of their own, not the first pairs: to score those very pairs, point --blimp and --supplement at them with limits 0.

Resumable: OUT/curves.json records each score with the checkpoint file it came from (size and modification
time) and is rewritten after every milestone; running the same command again skips what is scored, scores a
checkpoint that changed (a run replaced with --overwrite=True) again, and refuses other settings (another
protocol, limit or data set: choose another --out). Writes OUT/curves.json, OUT/curves.md (the table) and
OUT/curves.png (needs matplotlib; without it the table alone, with a note).
"""

import io
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoint import atomic_write, check_writable_dir, load_model_and_tokenizer  # noqa: E402
from config import InputError, load_config, merge_keys, run_main, runtime  # noqa: E402
from eval_blimp import BLIMP_KEYS, PROTOCOLS, evaluate_set, limit_tasks, read_tasks  # noqa: E402
from babylm import run_milestones  # noqa: E402

CURVES_KEYS = merge_keys({
    "learning curves": {
        "runs": ([], "run folders (out_dir of train_teacher.py or distill.py) whose chck_* milestones to score: a,b"),
        "blimp": ("", "folder of BLiMP .jsonl files, e.g. ../shared/data/blimp_filtered"),
        "supplement": ("", "folder of the BLiMP supplement .jsonl files (optional)"),
        "blimp_limit": (200, "pairs per BLiMP paradigm: 200 = the size of BabyLM's fast evaluation; 0 = all", ">=0"),
        "supplement_limit": (50, "pairs per supplement task: 50 = the size of BabyLM's fast evaluation; 0 = all", ">=0"),
        "protocol": ("2025", "eval_blimp.py's protocol: '2025' (the official pipeline's, 2025 and 2026), '2024' or '2023'", tuple(PROTOCOLS)),
        "data_dir": ("", "prepared data folder with the tokenizer; empty = the one each checkpoint records"),
        "batch_tokens": (2048, "about this many tokens per forward pass", ">0"),
        "out": ("", "output folder: curves.json, curves.md, curves.png"),
    },
}, {"runtime": BLIMP_KEYS["runtime"]})


def milestones(run):
    """[(label, checkpoint path)] of a run folder, in the order of words seen."""
    if not os.path.isdir(run):
        raise InputError(f"{run}: run folder not found")
    found = run_milestones(run)
    if not found:
        raise InputError(f"{run}: no milestone checkpoints chck_<words>/ckpt.pt (train with --checkpoints_at=..., e.g. babylm or 100k,200k)")
    return found


def run_names(runs):
    """A short name per run for the plot and the table: the folder's name, or its path where two names clash."""
    base = [os.path.basename(os.path.normpath(r)) for r in runs]
    return {r: b if base.count(b) == 1 else os.path.normpath(r) for r, b in zip(runs, base)}


def fingerprint(path):
    """What identifies a checkpoint file cheaply: a rewritten checkpoint (a replaced run) gets scored again."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def read_record(path, settings):
    """curves.json of an earlier call with the same settings, or a fresh one; other settings are refused."""
    if not os.path.isfile(path):
        return {"settings": settings, "scores": {}}
    try:
        record = json.load(open(path))
        old = record["settings"]
        record["scores"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{path}: damaged (not the JSON curves.py writes); move it away to score again") from None
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    if changed:
        raise InputError(f"{path} was scored with other settings: {'; '.join(changed)} (choose another --out)")
    return record


def score(args, rt, ckpt_path, tasks, supplement):
    """BLiMP (and supplement) scores of one checkpoint, as eval_blimp.py computes them."""
    model, ckpt, enc, info = load_model_and_tokenizer(ckpt_path, args.data_dir or None, rt.device)
    model.eval()
    with rt.autocast:
        blimp = evaluate_set(model, enc, info, tasks, args.protocol, rt.device, args.batch_tokens)
        supp = evaluate_set(model, enc, info, supplement, args.protocol, rt.device, args.batch_tokens) if supplement else None
    return {"words_seen": ckpt.get("words_seen"), "step": ckpt.get("step"), "blimp": blimp["score"], "blimp_pairs": blimp["pairs"],
            "supplement": supp["score"] if supp else None, "supplement_pairs": supp["pairs"] if supp else 0}


def table(record, names):
    """The markdown table: one row per milestone, runs in the order given, milestones by words seen."""
    rows = ["| run | milestone | words seen | step | BLiMP | supplement |", "|---|---|---:|---:|---:|---:|"]
    for run, name in names.items():
        for s in sorted((s for s in record["scores"].values() if s["run"] == run), key=lambda s: s["words_seen"]):
            supp = f"{s['supplement']:.1f}" if s["supplement"] is not None else "-"
            rows.append(f"| {name} | {s['milestone']} | {s['words_seen']:,} | {s['step']} | {s['blimp']:.1f} | {supp} |")
    return "\n".join(rows)


def plot(record, names, path):
    """Score against words seen (log x), one line per run; a panel for BLiMP and one for the supplement."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install matplotlib): no plot written, the table is in curves.md")
        return False
    s = record["settings"]
    panels = [("blimp", f"BLiMP ({s['blimp_limit'] or 'all'} pairs per paradigm)")]
    if s["supplement"]:
        panels.append(("supplement", f"BLiMP supplement ({s['supplement_limit'] or 'all'} per task)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for run, name in names.items():
            points = sorted((p["words_seen"], p[key]) for p in record["scores"].values() if p["run"] == run)
            ax.plot(*zip(*points), marker="o", label=name)
        ax.axhline(50, color="grey", linestyle=":", linewidth=1)  # chance: two sentences, one right
        ax.set_xscale("log")
        ax.set_xlabel("words seen")
        ax.set_ylabel(f"accuracy (%), protocol {s['protocol']}")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(png.getvalue()))
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = load_config(CURVES_KEYS, argv or ["--help"], __doc__)
    for key in ("runs", "blimp", "out"):
        if not getattr(args, key):
            raise InputError(f"--{key}: required (see --help)")
    if any(not isinstance(r, str) for r in args.runs):
        raise InputError(f"--runs={args.runs!r}: expected run folders, as --runs=out/a,out/b")
    check_writable_dir(args.out, "--out")
    runs = {os.path.normpath(r): milestones(r) for r in args.runs}  # every run checked before any scoring
    names = run_names(list(runs))
    tasks = limit_tasks(read_tasks(args.blimp), args.blimp_limit)
    supplement = limit_tasks(read_tasks(args.supplement), args.supplement_limit) if args.supplement else None
    settings = {"protocol": args.protocol, "blimp": os.path.abspath(args.blimp), "blimp_limit": args.blimp_limit,
                "supplement": os.path.abspath(args.supplement) if args.supplement else "", "supplement_limit": args.supplement_limit}
    record_path = os.path.join(args.out, "curves.json")
    record = read_record(record_path, settings)
    rt = runtime(args)
    for run, items in runs.items():
        for label, path in items:
            key, file = f"{run}/{label}", fingerprint(path)
            if record["scores"].get(key, {}).get("file") == file:
                print(f"{names[run]} {label}: scored before, skipped")
                continue
            s = {"run": run, "milestone": label, **score(args, rt, path, tasks, supplement), "file": file}
            record["scores"][key] = s
            atomic_write(record_path, lambda f: json.dump(record, f, indent=1), mode="w")  # a kill loses one milestone at most
            supp = f", supplement {s['supplement']:.1f}" if s["supplement"] is not None else ""
            print(f"{names[run]} {label}: {s['words_seen']:,} words seen (step {s['step']}), BLiMP {s['blimp']:.1f}{supp}")
    scored = {f"{run}/{label}" for run, items in runs.items() for label, _ in items}
    record["scores"] = {k: v for k, v in record["scores"].items() if k in scored}  # the table shows these runs only
    text = table(record, names) + f"\n\nScored with eval_blimp.py's {args.protocol} protocol (--protocol={args.protocol})."
    atomic_write(os.path.join(args.out, "curves.md"), lambda f: f.write(text + "\n"), mode="w")
    drew = plot(record, names, os.path.join(args.out, "curves.png"))
    print(f"\n{text}\n\nwrote {os.path.join(args.out, 'curves.md')}" + (f" and {os.path.join(args.out, 'curves.png')}" if drew else ""))
    return record


if __name__ == "__main__":
    run_main(main)
