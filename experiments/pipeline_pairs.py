"""
The official BabyLM pipeline's BLiMP predictions beside eval_blimp.py's, pair for pair.

    python experiments/pipeline_pairs.py --data=../shared/data/blimp_filtered --eval_blimp=out/run/blimp_2025.json \
        --predictions=PIPELINE/results/NAME/chck_1M/zero_shot/causal/blimp/blimp_filtered/predictions.json
    python experiments/pipeline_pairs.py --data=../shared/data/blimp_supplement --set=supplement ...   # the supplement

The 2025 pipeline (github.com/babylm/evaluation-pipeline-2025, evaluation_pipeline/sentence_zero_shot; the 2026
Strict tracks run it from babylm-org/babylm-eval's strict/) saves, with --save_predictions, per task (the UID, or
the file's stem for the supplement) one prediction per pair in the order of the task's file: the sentence its model
scored higher (the good one on a tie). A pair is correct there when that sentence is sentence_good. eval_blimp.py
writes, per task, the correctness of each pair in the same order ("correct" in its JSON; a tie counts as correct).
Prints both accuracies (the unweighted mean over tasks, the headline number of both) and the pairs that differ.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config import InputError, load_config, run_main  # noqa: E402
from eval_blimp import read_tasks  # noqa: E402

PAIRS_KEYS = {
    "comparison": {
        "predictions": ("", "the pipeline's predictions.json of one revision and data set (run with --save_predictions)"),
        "data": ("", "the folder of .jsonl files both scored, e.g. ../shared/data/blimp_filtered"),
        "eval_blimp": ("", "eval_blimp.py's JSON of the same checkpoint on the same folder (no --limit)"),
        "set": ("blimp", "which part of the eval_blimp.py JSON: 'blimp' (--data) or 'supplement' (--supplement)", ("blimp", "supplement")),
        "shown": (10, "differing pairs to print", ">=0"),
    },
}


def read_json(path, what):
    try:
        return json.load(open(path, encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not {what} as JSON ({e})") from None


def pipeline_correct(predictions, tasks, path):
    """{task: "1"/"0" per pair, file order} from the pipeline's predictions: correct = it chose sentence_good."""
    out = {}
    for task, pairs in tasks.items():
        preds = (predictions.get(task) or {}).get("predictions")
        if not isinstance(preds, list) or len(preds) != len(pairs):
            raise InputError(f"{path}: task {task} has {len(preds) if isinstance(preds, list) else 'no'} predictions, "
                             f"the data has {len(pairs)} pairs (the same folder, scored whole?)")
        for p, pred in zip(pairs, preds):
            if pred.get("pred") not in (p["good"], p["bad"]):
                raise InputError(f"{path}: prediction {pred.get('id')} is neither sentence of its pair (another data folder?)")
        out[task] = "".join("1" if pred["pred"] == p["good"] else "0" for p, pred in zip(pairs, preds))
    return out


def compare(pipeline, ours, tasks):
    """(pipeline score, eval_blimp.py score, [(task, index)] of the pairs that differ): scores as means over tasks."""
    mean = lambda flags: sum(100.0 * f.count("1") / len(f) for f in flags.values()) / len(flags)
    differ = [(task, i) for task in tasks for i, (a, b) in enumerate(zip(pipeline[task], ours[task])) if a != b]
    return mean(pipeline), mean(ours), differ


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = load_config(PAIRS_KEYS, argv or ["--help"], __doc__)
    for key in ("predictions", "data", "eval_blimp"):
        if not getattr(args, key):
            raise InputError(f"--{key}: required (see --help)")
    tasks = read_tasks(args.data)
    result = read_json(args.eval_blimp, "eval_blimp.py's results").get(args.set)
    if not result or result.get("pairs") != sum(len(p) for p in tasks.values()) or set(result["tasks"]) != set(tasks):
        raise InputError(f"{args.eval_blimp}: its {args.set} is not the whole of {args.data} (score it without --limit)")
    ours = {task: result["tasks"][task]["correct"] for task in tasks}
    pipeline = pipeline_correct(read_json(args.predictions, "the pipeline's predictions"), tasks, args.predictions)
    theirs, mine, differ = compare(pipeline, ours, tasks)
    for task, i in differ[: args.shown]:
        p = tasks[task][i]
        print(f"differs: {task} pair {i} (pipeline {'correct' if pipeline[task][i] == '1' else 'wrong'}): {p['good']!r} / {p['bad']!r}")
    n = sum(len(p) for p in tasks.values())
    print(f"{args.set}: pipeline {theirs:.2f} | eval_blimp.py ({read_json(args.eval_blimp, 'eval_blimp.py results').get('protocol')} protocol) {mine:.2f} | "
          f"{len(tasks)} tasks, {n:,} pairs, {len(differ)} differ")
    return theirs, mine, differ


if __name__ == "__main__":
    run_main(main)
