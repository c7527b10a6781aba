"""
Stage 4a: zero-shot BLiMP and BLiMP-supplement scoring of a checkpoint, the official BabyLM way.

    python eval_blimp.py --ckpt out/tiny_student/ckpt.pt --data ../shared/data/blimp_filtered \
        --supplement ../shared/data/blimp_supplement --limit 50          # CPU, a quick look
    python eval_blimp.py --ckpt out/student/ckpt.pt --data ../shared/data/blimp_filtered \
        --supplement ../shared/data/blimp_supplement                     # full sets (GPU if present)

The protocol of the BabyLM evaluation pipelines (github.com/babylm/evaluation-pipeline-2024, built on EleutherAI's
lm-evaluation-harness, and github.com/babylm/evaluation-pipeline-2025, which the 2026 Strict tracks run from
github.com/babylm-org/babylm-eval; BLiMP: Warstadt et al., TACL 2020). --protocol 2025 by default, the current
official one (2023 and 2024 on request, for numbers of earlier years); the output names the protocol it used:
- a sentence's score is the SUM of the log-probabilities of all its tokens (no length normalisation),
  conditioned on a single boundary token (prepare_data.py's <|endoftext|>, which is BOS and EOS):
      2024: context BOS, text " " + sentence   (lm-eval 0.4 fork; multiple_choice with an empty context)
      2023: context EOS, text " " + sentence   (our BOS and EOS are one token, so as 2024 here)
      2025: context BOS, text sentence with no leading space (an exported tokenizer that prepends BOS)
- log-softmax in fp32; a pair is correct when score(good) >= score(bad): ties count as correct, as
  every official pipeline breaks them toward the good sentence. Strict (>) accuracy and ties are
  reported too, since a model that gives both sentences the same score would otherwise look right.
- accuracy per paradigm (UID); BLiMP = unweighted mean over paradigms (2024/2025) or over the 12
  phenomena (linguistics_term) with pairs pooled within each (2023); supplement = unweighted mean over
  its 5 tasks (file stems). Newlines inside supplement items are kept.

Fast and exact: every unique (context, text) is scored once (BLiMP repeats many sentences), sentences
are sorted by length and batched with right padding. Under the causal mask a real token never attends
to the pads after it, so a batched score equals the one-by-one score (tests check this on real pairs).
"""

import json
import os
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import atomic_write, check_writable, load_model_and_tokenizer
from config import RUNTIME_KEYS, InputError, load_config, merge_keys, run_main, runtime

PROTOCOLS = {"2023": (" ", "eos_id"), "2024": (" ", "bos_id"), "2025": ("", "bos_id")}  # (prefix, context token)

BLIMP_KEYS = merge_keys({
    "evaluation": {
        "ckpt": ("", "checkpoint to score (ckpt.pt of a run)"),
        "data": ("", "folder of BLiMP .jsonl files, e.g. ../shared/data/blimp_filtered"),
        "supplement": ("", "folder of the BLiMP supplement .jsonl files (optional)"),
        "data_dir": ("", "prepared data folder with the tokenizer; empty = the one the checkpoint records"),
        "protocol": ("2025", "the BabyLM pipeline whose scoring to follow: '2025' (the official one in 2025 and 2026), "
                             "'2024' or '2023' (earlier years' numbers)", tuple(PROTOCOLS)),
        "limit": (0, "pairs per paradigm/task; 0 = all", ">=0"),
        "batch_tokens": (2048, "about this many tokens per forward pass (small batches stay in cache: faster on CPUs)", ">0"),
        "out": ("", "JSON results file; empty = blimp_<protocol>.json next to the checkpoint"),
    },
}, RUNTIME_KEYS, {"runtime": {
    # fp32 by default even on a GPU: bf16 logits round nearby sentence scores together and manufacture ties.
    "dtype": ("float32", "'float32' or 'bfloat16' (autocast; the log-softmax stays fp32)", ("float32", "bfloat16")),
    "compile": (False, "not used by evaluation", (False,)),
}})


# -----------------------------------------------------------------------------------------------
# Data


def read_tasks(folder):
    """{task: [pair dict]} from a folder of .jsonl files. Reads the BabyLM fields (UID, pair_id) and the
    original BLiMP release (pairID); a file without UID is one task named after the file."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: BLiMP folder not found")
    files = sorted(f for f in os.listdir(folder) if f.endswith((".jsonl", ".json")) and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise InputError(f"{folder}: no .jsonl files")
    tasks = defaultdict(list)
    for fn in files:
        path = os.path.join(folder, fn)
        stem = fn.rsplit(".", 1)[0]
        n_pairs = 0
        with open(path, "rb") as f:
            for lineno, line in enumerate(utf8_lines(f, path), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    good, bad = obj["sentence_good"], obj["sentence_bad"]
                    if not isinstance(good, str) or not isinstance(bad, str):
                        raise TypeError
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{path}:{lineno}: expected a JSON object with string fields sentence_good and sentence_bad") from None
                odd = [k for k in ("UID", "field", "linguistics_term") if not isinstance(obj.get(k, ""), str)]
                if odd:  # they name the task and its groups: a dict there was a TypeError, after all the scoring
                    raise InputError(f"{path}:{lineno}: {odd[0]} is {type(obj[odd[0]]).__name__}, expected text")
                tasks[obj.get("UID") or stem].append({
                    "good": good, "bad": bad, "field": obj.get("field", ""),
                    "term": obj.get("linguistics_term", ""),
                    "pair_id": obj.get("pair_id", obj.get("pairID", obj.get("pair_ID", lineno - 1))),
                })
                n_pairs += 1
        if not n_pairs:  # a paradigm silently missing from the mean would change the headline number
            raise InputError(f"{path}: no pairs (empty file; expected one JSON pair per line); remove it or restore it")
    return dict(tasks)


def utf8_lines(f, path):
    """The lines of a file opened in binary, decoded; a byte that is not UTF-8 names the file and line."""
    for lineno, raw in enumerate(f, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#x})") from None


def limit_tasks(tasks, limit):
    return {k: v[:limit] for k, v in tasks.items()} if limit > 0 else tasks


# -----------------------------------------------------------------------------------------------
# Scoring


def encode_sentence(enc, info, sentence, protocol):
    """(context id, token ids) of a sentence under a protocol."""
    prefix, ctx_key = PROTOCOLS[protocol]
    return info[ctx_key], enc.encode_ordinary(prefix + sentence)


@torch.no_grad()
def score_one(model, ctx, ids, device):
    """Sum of log p(ids[i] | ctx, ids[:i]) for one sentence, unbatched: the reference."""
    x = torch.tensor([[ctx] + ids[:-1]], device=device)
    logp = F.log_softmax(model(x).float(), dim=-1)[0]
    return logp[torch.arange(len(ids)), torch.tensor(ids, device=device)].sum().item()


@torch.no_grad()
def score_batch(model, items, pad_id, device):
    """Scores of a list of (ctx, ids), each the sum of log p(ids[i] | ctx, ids[:i]), from one forward pass of the
    right-padded batch (the pads masked out of the sums)."""
    T = max(len(ids) for _, ids in items)
    x = torch.full((len(items), T), pad_id, dtype=torch.long)
    y = torch.zeros((len(items), T), dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.bool)
    for b, (ctx, ids) in enumerate(items):
        x[b, 0], x[b, 1 : len(ids)] = ctx, torch.tensor(ids[:-1])
        y[b, : len(ids)], mask[b, : len(ids)] = torch.tensor(ids), True
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    logp = F.log_softmax(model(x).float(), dim=-1)  # (B, T, V), in fp32 even under bf16 autocast
    token_logp = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return (token_logp * mask).sum(-1).tolist()


def score_sentences(model, enc, info, sentences, protocol, device, batch_tokens=2048, progress=True):
    """{sentence: score} for unique sentences, batched by length (about batch_tokens tokens per batch)."""
    items = {s: encode_sentence(enc, info, s, protocol) for s in set(sentences)}
    longest = model.config.max_seq_len
    for s, (_, ids) in items.items():
        if not ids:
            raise InputError(f"an empty sentence cannot be scored: {s!r}")
        if len(ids) > longest:
            raise InputError(f"a sentence of {len(ids)} tokens is longer than the model's max_seq_len={longest}: {s[:60]!r}...")
    order = sorted(items, key=lambda s: (len(items[s][1]), s))  # similar lengths together: little padding
    scores, batch = {}, []
    bar = tqdm(total=len(order), desc=f"score ({protocol})", disable=not progress, mininterval=1)
    for i, s in enumerate(order):
        batch.append(s)
        longest = len(items[s][1])  # sorted, so the last one is the longest
        if (len(batch) + 1) * longest > batch_tokens or i == len(order) - 1:
            for s_, v in zip(batch, score_batch(model, [items[b] for b in batch], info["pad_id"], device)):
                scores[s_] = v
            bar.update(len(batch))
            batch = []
    bar.close()
    return scores


# -----------------------------------------------------------------------------------------------
# Aggregation


def pair_results(tasks, scores):
    """Per task: n, accuracy (>=), strict (>), ties and the correctness of each pair ("1"/"0", file order);
    plus pooled counts per linguistics_term and field."""
    per_task, per_term, per_field = {}, defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    for task, pairs in tasks.items():
        correct = strict = ties = 0
        flags = []  # "1"/"0" per pair in file order: what a paired bootstrap of two models resamples
        for p in pairs:
            g, b = scores[p["good"]], scores[p["bad"]]
            correct += g >= b
            strict += g > b
            ties += g == b
            flags.append("1" if g >= b else "0")
            for table, key in ((per_term, p["term"]), (per_field, p["field"])):
                if key:
                    table[key][0] += g >= b
                    table[key][1] += 1
        per_task[task] = {"n": len(pairs), "acc": 100.0 * correct / len(pairs), "strict_acc": 100.0 * strict / len(pairs), "ties": ties,
                          "correct": "".join(flags)}
    pooled = lambda table: {k: 100.0 * c / n for k, (c, n) in sorted(table.items())}
    return per_task, pooled(per_term), pooled(per_field)


def summarize(per_task, per_term, protocol):
    """The headline number: unweighted mean over tasks (2024/2025) or over pooled phenomena (2023)."""
    if protocol == "2023" and per_term:
        return sum(per_term.values()) / len(per_term)
    return sum(t["acc"] for t in per_task.values()) / len(per_task)


def evaluate_set(model, enc, info, tasks, protocol, device, batch_tokens=2048, progress=True):
    sentences = [s for pairs in tasks.values() for p in pairs for s in (p["good"], p["bad"])]
    t0 = time.perf_counter()
    scores = score_sentences(model, enc, info, sentences, protocol, device, batch_tokens, progress)
    per_task, per_term, per_field = pair_results(tasks, scores)
    n_pairs = sum(len(p) for p in tasks.values())
    return {"score": summarize(per_task, per_term, protocol), "strict_score": sum(t["strict_acc"] for t in per_task.values()) / len(per_task),
            "ties": sum(t["ties"] for t in per_task.values()), "pairs": n_pairs, "unique_sentences": len(scores),
            "seconds": time.perf_counter() - t0, "tasks": per_task, "linguistics_term": per_term, "field": per_field}


def print_table(name, result):
    print(f"\n{name}: {'paradigm/task':<52}{'n':>6}{'acc':>7}{'strict':>8}{'ties':>6}")
    for task, r in result["tasks"].items():
        print(f"  {task:<58}{r['n']:>6}{r['acc']:>7.1f}{r['strict_acc']:>8.1f}{r['ties']:>6}")
    for title in ("linguistics_term", "field"):
        if result[title]:
            print(f"  by {title}: " + ", ".join(f"{k} {v:.1f}" for k, v in result[title].items()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = load_config(BLIMP_KEYS, argv or ["--help"], __doc__)
    for key in ("ckpt", "data"):
        if not getattr(args, key):
            raise InputError(f"--{key}: required (see --help)")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), f"blimp_{args.protocol}.json")
    check_writable(out)  # now, not after the whole evaluation
    rt = runtime(args)
    tqdm.write(f"reading {args.data}" + (f" and {args.supplement}" if args.supplement else ""))
    tasks = limit_tasks(read_tasks(args.data), args.limit)
    supplement = limit_tasks(read_tasks(args.supplement), args.limit) if args.supplement else None
    model, _, enc, info = load_model_and_tokenizer(args.ckpt, args.data_dir or None, rt.device)
    model.eval()

    results = {"ckpt": args.ckpt, "protocol": args.protocol, "limit": args.limit, "dtype": rt.dtype}
    with rt.autocast:
        results["blimp"] = evaluate_set(model, enc, info, tasks, args.protocol, rt.device, args.batch_tokens)
        print_table("BLiMP", results["blimp"])
        if supplement:
            results["supplement"] = evaluate_set(model, enc, info, supplement, args.protocol, rt.device, args.batch_tokens)
            print_table("BLiMP supplement", results["supplement"])
    atomic_write(out, lambda f: json.dump(results, f, indent=1), mode="w")
    b = results["blimp"]
    line = f"protocol {args.protocol} | BLiMP {b['score']:.1f} (strict {b['strict_score']:.1f}, {b['ties']} ties, {len(b['tasks'])} tasks, {b['pairs']} pairs)"
    if supplement:
        s = results["supplement"]
        line += f" | supplement {s['score']:.1f} (strict {s['strict_score']:.1f}, {s['ties']} ties)"
    print(f"\nwrote {out}\n{line}")
    return results


if __name__ == "__main__":
    run_main(main)
