"""
BabyLlama-2's claim at 58M on one GPU, in one command: does a student distilled from two teachers beat
them and a same-size model trained without distillation? (BabyLlama, arXiv 2308.02019; BabyLlama-2,
arXiv 2409.17312)

    python experiments/reproduce_gpu.py                          # one GPU: about 9 minutes on an H100/H200 (the plan it prints)
    python experiments/reproduce_gpu.py --seeds 3                # 3 seeds of student and baseline: intervals over seeds too
    python experiments/reproduce_gpu.py --tiny                   # the same pipeline at tiny sizes on a CPU (about 2 minutes on 2 cores)
    python experiments/reproduce_gpu.py --plan_only --gpu H100   # only the plan, for a GPU of config.GPU_PEAK_FLOPS
    python experiments/reproduce_gpu.py --report_only            # rewrite the results file from what has finished

What it runs, each an ordinary command of this project, printed before it runs:
  1. prepare_data.py on ../shared/data/babylm_2024_mini (3.15M words: the official dev files are the test
     split), the 16k BPE of BabyLlama.
  2. teacher1 and teacher2: train_teacher.py with configs/teacher1.py, BabyLlama-2's recipe (batch 128 x 128,
     lr 7e-4, weight decay 5.0, cosine to 0, 8 epochs), at the 58M shape of configs/babyllama_58m.py
     (BabyLlama's student: 16 layers of width 512), differing by seed (initialisation and data order).
  3. for each seed: the student, distill.py with configs/student.py (the papers' loss: alpha 0.5, T 1, the
     teachers' mean logits, the KL summed over positions), and the baseline, train_teacher.py with the same
     recipe and seed at the same size, plain CE, the same steps.
  Each model, once trained (its best-validation checkpoint, validated once per epoch): validation CE, test CE
  over every window of the test split, full BLiMP and the supplement (eval_blimp.py).
Two settings differ from the published configs, because the corpus is a third of the 10M-word one:
warmup_iters keeps the recipe's share of the run (600 of ~6.7k steps, 9%), and validation runs once per
epoch. micro_batch_size=128 (no gradient accumulation) is memory, not the recipe.

Before it starts it prints a plan: minutes per step, estimated as FLOPs per token x tokens / (an assumed
MFU x the device's peak: config.GPU_PEAK_FLOPS on a known GPU, a measured matmul on a CPU), plus allowances
for process starts, torch.compile, checkpoints and evaluation. The results file puts the plan beside what
each step took.

Resumable like experiments/reproduce_cpu.py, whose pieces it runs: interrupt it at any time and run the
same command again; a finished step is skipped (a marker in WORK/logs/, written when its command exited
cleanly; a model is finished once its results file is written, after its evaluation), a killed training run
continues from its last.pt. Ctrl-C (SIGTERM) is passed on once to the running command, which saves and exits;
then one line, status 130 (143). --report_only works from the work folder alone (data/ may be gone). Results: WORK/results/*.json (one per model), then RESULTS_GPU.md and
RESULTS_GPU_val_ce.png at the repository root (--tiny: in the work folder, as it is not a result):
the models, the paired-bootstrap and seed intervals of experiments/stats.py, the plot, every command.
"""

import functools
import json
import os
import sys
import time

EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, EXPERIMENTS)

import torch  # noqa: E402

from reproduce_cpu import (ROOT, SHARED, blimp_command, commands_block, count_intervals, main_claims,  # noqa: E402
                           evaluate_model, field_table, how_to_read, kv, models_table, plot_curves, pyplot, run_once,
                           subset_corpus, summary_table)
from checkpoint import atomic_write  # noqa: E402
from config import GPU_PEAK_FLOPS, InputError, load_config, peak_flops, read_config_file, run_main  # noqa: E402
from model import Llama, ModelConfig  # noqa: E402

CORPUS = os.path.join(SHARED, "babylm_2024_mini")
TEACHER_CONFIG, STUDENT_CONFIG = "configs/teacher1.py", "configs/student.py"  # BabyLlama-2's recipe (and the baseline's)
SHAPE_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len")
WARMUP_SHARE = 600 / 6720  # configs/teacher1.py: 600 warmup steps of ~6.7k (8 epochs x ~840 steps of 10M words)
# tokens per word of prepare_data.py's BPE on babylm_2024_mini's training split, by vocabulary (16k: 4,316,884
# tokens for 2,957,151 words; 1k, --tiny: ~2.0): the plan's estimate before the data is prepared
TOKENS_PER_WORD = {16000: 1.46, 1024: 2.0}
TRAIN_SHARE = 0.95  # prepare_data.py keeps the first 95% of each training source for training (the rest: validation)
BLIMP_TOKENS_PER_PAIR = 20  # two sentences of ~10 tokens, for the plan only
PROTOCOL = "2025"  # BLiMP as the official BabyLM pipeline scores it (2025, and the 2026 Strict tracks)
FULL = dict(micro_batch_size=128, blimp_extra=["--batch_tokens", "16384"], blimp_limit=0, test_windows=0)
# --tiny: the same pipeline as small as still meaningful on 2 CPU cores: 2,000 words of each source and of each
# dev file (~24k training tokens, 11 steps per epoch at batch 16), a 1,024-token BPE, a 2-layer Llama of width
# 64, 8 epochs; the recipe's lr and weight decay are for 2,100 steps of a 58M model: in 90 steps a tiny model
# needs more lr and far less decay. BLiMP and the supplement are cut to 20 pairs per paradigm, test CE to 128 windows.
TINY = dict(words=2000, vocab_size=1024, shape=dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=192, max_seq_len=256),
            train=dict(batch_size=16, micro_batch_size=16, lr=3e-3, weight_decay=0.1), blimp_extra=[], blimp_limit=20, test_windows=128)

# The plan. An assumed MFU per device kind, and the seconds that the FLOPs do not account for. GPU: guesses,
# since no GPU run has been made yet (bench/gpu_check.py measures the distillation step's MFU at 58M: pass it
# as --mfu); CPU: fitted to --tiny runs on the 2-core development machine.
ASSUMED_MFU = {"cuda": 0.30, "cpu": 0.20}
ALLOWANCE = {  # seconds: a process start (import torch, CUDA init), torch.compile of an objective the first time
    # and again (the on-disk inductor cache), the data preparation (the BPE is trained on one core)
    "cuda": dict(start=15, compile_first=60, compile_again=20, prepare=40, disk_bytes_per_s=1e9),
    "cpu": dict(start=6, compile_first=0, compile_again=0, prepare=15, disk_bytes_per_s=2e8),
}

KEYS = {"experiment": {
    "work": ("", "work folder (empty = experiments/work_gpu, --tiny: experiments/work_gpu_tiny)"),
    "seeds": (1, "seeds of the student and the baseline (2 or more: t intervals over seeds)", "1..10"),
    "tiny": (False, "tiny sizes on a CPU: checks the pipeline in a few minutes"),
    "mfu": (0.0, f"the plan's assumed MFU, a fraction (0 = {ASSUMED_MFU['cuda']:.0%} on a GPU, {ASSUMED_MFU['cpu']:.0%} on a CPU)", "0..1"),
    "gpu": ("", "plan for this GPU instead of the one here: " + ", ".join(GPU_PEAK_FLOPS), ("", *GPU_PEAK_FLOPS)),
    "plan_only": (False, "print the plan and stop"),
    "report_only": (False, "rewrite the results file from WORK (results, markers, the plan: data/ may be gone)"),
}}


# -----------------------------------------------------------------------------------------------
# The runs: settings, then one command per model


def recipe():
    """(every key of configs/teacher1.py, BabyLlama-2's recipe), the 58M shape of configs/babyllama_58m.py."""
    teacher = read_config_file(os.path.join(ROOT, TEACHER_CONFIG))
    small = read_config_file(os.path.join(ROOT, "configs", "babyllama_58m.py"))
    # n_kv_heads: 0 (= n_heads) in babyllama_58m.py, set explicitly because teacher1.py's 5 would carry over
    return teacher, {k: small.get(k, 0) for k in SHAPE_KEYS}


def settings(args, tokens):
    """Everything the commands and the plan need, from the recipe, the size and the training tokens."""
    teacher, shape = recipe()
    tiny = TINY if args.tiny else {}
    train = {"batch_size": teacher["batch_size"], "micro_batch_size": FULL["micro_batch_size"], **tiny.get("train", {})}
    seq_len, epochs = teacher["seq_len"], teacher["epochs"]
    steps_per_epoch = (tokens["train"] - 1) // seq_len // train["batch_size"]
    max_iters = round(epochs * steps_per_epoch)
    return dict(shape=tiny.get("shape", shape), train=train, seq_len=seq_len, epochs=epochs, train_tokens=tokens["train"],
                steps_per_epoch=steps_per_epoch, max_iters=max_iters, warmup_iters=max(1, round(WARMUP_SHARE * max_iters)),
                eval_windows=min(teacher["eval_windows"], (tokens["val"] - 1) // seq_len), vocab_size=TINY["vocab_size"] if args.tiny else 16000,
                **{k: (TINY if args.tiny else FULL)[k] for k in ("blimp_extra", "blimp_limit", "test_windows")})


def prepare_command(args, work):
    data = os.path.join(work, "data")
    if args.tiny:  # a subset of the corpus, written by subset_corpus before the command runs
        return ["prepare_data.py", "--src", os.path.join(work, "src"), "--out", data, "--vocab_size", str(TINY["vocab_size"])]
    return ["prepare_data.py", "--src", CORPUS, "--out", data]


def model_steps(args, work, s):
    """[(name, role, argv, out_dir)]: every model, in the order it runs."""
    out = lambda name: os.path.join(work, "out", name)
    common = dict(data_dir=os.path.join(work, "data"), **s["shape"], **s["train"], warmup_iters=s["warmup_iters"],
                  eval_interval=s["steps_per_epoch"])

    def run(name, role, script, config, **kw):
        return (name, role, [script, config, *kv(**{**common, "out_dir": out(name), **kw})], out(name))

    teachers = ",".join(os.path.join(out(f"teacher{k}"), "ckpt.pt") for k in (1, 2))
    steps = [run(f"teacher{k}", "teacher", "train_teacher.py", TEACHER_CONFIG, seed=k) for k in (1, 2)]
    for seed in range(1, args.seeds + 1):
        steps.append(run(f"student_s{seed}", "student", "distill.py", STUDENT_CONFIG, seed=100 + seed, teachers=teachers))
        steps.append(run(f"baseline_s{seed}", "baseline", "train_teacher.py", TEACHER_CONFIG, seed=100 + seed))
    return steps


# -----------------------------------------------------------------------------------------------
# The plan: minutes per step from FLOPs, before anything runs


def model_flops(shape, vocab_size, seq_len):
    """(FLOPs per token forward + backward, forward only, parameters) of a Llama of this shape (model.py's count)."""
    with torch.device("meta"):  # the shapes only: no memory, no initialisation cost
        model = Llama(ModelConfig(vocab_size=vocab_size, **shape))
    return model.flops_per_token(seq_len), model.flops_per_token(seq_len, backward=False), model.num_params()


def plan_rows(s, names, kind, peak, mfu):
    """[(step, FLOPs per token, training tokens, {part: seconds})] for the data and each model, in order.
    A model's parts: compute (training tokens x FLOPs per token, and validation, at mfu x peak), compile,
    other (its process start, checkpoints), evaluation (eval_blimp.py's start, BLiMP and test CE)."""
    a = ALLOWANCE[kind]
    train_flops, fwd_flops, params = model_flops(s["shape"], s["vocab_size"], s["seq_len"])
    tokens = s["max_iters"] * s["train"]["batch_size"] * s["seq_len"]
    n_evals = -(-s["max_iters"] // s["steps_per_epoch"])
    val_tokens = n_evals * s["eval_windows"] * s["seq_len"]
    ckpt_bytes = 3 * 4 * params * 2 * n_evals  # weights and two AdamW moments in fp32, ckpt.pt and last.pt per validation
    pairs = (67 + 5) * s["blimp_limit"] if s["blimp_limit"] else 59875 + 5218  # BLiMP filtered and the supplement
    test_tokens = (s["test_windows"] or 7580) * s["seq_len"]  # the test split: 970k tokens of babylm_2024_mini's dev files
    rate = mfu * peak
    rows, compiled = [("prepare", None, None, {"other": a["prepare"]})], set()
    for name in names:
        student = name.startswith("student")
        per_token = train_flops + 2 * fwd_flops if student else train_flops  # distill.Distillation: + 2N per teacher
        compile_s = a["compile_again"] if student in compiled else a["compile_first"]
        compiled.add(student)
        compute = (tokens * per_token + val_tokens * fwd_flops * (3 if student else 1)) / rate  # student: the teachers' validation too
        evaluation = a["start"] + (pairs * BLIMP_TOKENS_PER_PAIR + test_tokens) * fwd_flops / rate
        rows.append((name, per_token, tokens, {"compute": compute, "compile": compile_s, "other": a["start"] + ckpt_bytes / a["disk_bytes_per_s"],
                                               "evaluation": evaluation}))
    return rows


def print_plan(rows, s, device_line, mfu):
    total = sum(sum(parts.values()) for *_, parts in rows)
    compute = sum(parts.get("compute", 0) for *_, parts in rows)
    print(f"Plan: {device_line}, assumed MFU {mfu:.0%}. {s['max_iters']:,} steps of {s['train']['batch_size']} x {s['seq_len']} tokens "
          f"({s['epochs']:g} epochs of {s['train_tokens']:,} training tokens) per model.")
    print(f"{'step':<14}{'GFLOP/token':>12}{'tokens':>9}{'compute':>9}{'compile':>9}{'other':>7}{'eval':>7}{'minutes':>9}")
    for name, per_token, tokens, p in rows:
        cells = [f"{per_token / 1e9:.3f}" if per_token else "", f"{tokens / 1e6:.1f}M" if tokens else ""]
        cells += [f"{p[k] / 60:.2f}" if k in p else "" for k in ("compute", "compile", "other", "evaluation")]
        print(f"{name:<14}{cells[0]:>12}{cells[1]:>9}{cells[2]:>9}{cells[3]:>9}{cells[4]:>7}{cells[5]:>7}{sum(p.values()) / 60:>9.2f}")
    print(f"{'total':<14}{'':>53}{total / 60:>9.1f} minutes (at half the assumed MFU: {(total + compute) / 60:.1f})", flush=True)
    return total


def device_for_plan(args):
    """(kind, peak FLOP/s, a line naming both) for the plan: --gpu's data sheet, this GPU's, or this CPU's matmul."""
    if args.gpu:
        return "cuda", GPU_PEAK_FLOPS[args.gpu], f"{args.gpu} (data-sheet dense bf16 peak {GPU_PEAK_FLOPS[args.gpu] / 1e12:.0f} TFLOP/s)"
    if torch.cuda.is_available():
        name, peak = torch.cuda.get_device_name(0), peak_flops(torch.device("cuda"))
        known = peak in GPU_PEAK_FLOPS.values()
        return "cuda", peak, f"{name} ({'data-sheet dense bf16 peak' if known else 'measured fp32 matmul, not in config.GPU_PEAK_FLOPS:'} {peak / 1e12:.0f} TFLOP/s)"
    peak = peak_flops(torch.device("cpu"))
    return "cpu", peak, f"this CPU ({os.cpu_count()} cores; measured fp32 matmul {peak / 1e9:.0f} GFLOP/s)"


def tokens_of(args, work):
    """{"train": tokens, "val": tokens}: the prepared data's (kept in WORK/logs/data.json too, so that --report_only
    works from the work folder alone), else, before the data is prepared, an estimate from the words of the sources."""
    meta, record = os.path.join(work, "data", "meta.json"), os.path.join(work, "logs", "data.json")
    if os.path.isfile(meta):
        tokens = json.load(open(meta))["tokens"]
        if os.path.isdir(os.path.dirname(record)) and not os.path.isfile(record):
            atomic_write(record, lambda f: json.dump({"tokens": tokens}, f), "w")
        return tokens
    if os.path.isfile(record):
        return json.load(open(record))["tokens"]
    if args.report_only:
        raise InputError(f"{meta} not found, nor {record}: the report needs the size of the prepared data "
                         "(run the experiment without --report_only to prepare it again)")
    tokens = source_words(TINY["words"] if args.tiny else 10**12) * TOKENS_PER_WORD[TINY["vocab_size"] if args.tiny else 16000]
    return {"train": round(tokens * TRAIN_SHARE), "val": round(tokens * (1 - TRAIN_SHARE))}


@functools.lru_cache(maxsize=None)
def source_words(cap):
    """Words of the corpus's training sources, at most `cap` of each (16 MB of text: read once per process)."""
    folder = os.path.join(CORPUS, "train_10M")
    return sum(min(len(open(os.path.join(folder, f), encoding="utf-8").read().split()), cap) for f in sorted(os.listdir(folder)) if f.endswith(".train"))


# -----------------------------------------------------------------------------------------------
# Running it


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = load_config(KEYS, argv, __doc__)
    work = os.path.abspath(args.work or os.path.join(EXPERIMENTS, "work_gpu_tiny" if args.tiny else "work_gpu"))
    # every mistake in one line, before any work
    if args.report_only:
        if not os.path.isdir(os.path.join(work, "results")):
            raise InputError(f"{os.path.join(work, 'results')} does not exist: no model of this experiment has finished")
    elif not os.path.isdir(CORPUS):
        raise InputError(f"{CORPUS} not found: the experiment reads babylm_2024_mini from ../shared/data beside the repository")
    elif not (args.tiny or args.plan_only or torch.cuda.is_available()):
        raise InputError("no GPU is visible: the 58M run needs one (python experiments/reproduce_gpu.py --plan_only --gpu H100 "
                         "prints its plan); --tiny runs the same pipeline at tiny sizes on this CPU")

    s = settings(args, tokens_of(args, work))
    steps = model_steps(args, work, s)
    names = [name for name, *_ in steps]
    where = work if args.tiny else ROOT  # a tiny run is not a result: its report stays in the work folder
    cmds = lambda: [prepare_command(args, work)] + [c for name, _, cmd, out_dir in steps for c in (cmd, blimp_command(out_dir, s["blimp_limit"], s["blimp_extra"], PROTOCOL))]
    if args.report_only:
        report(work, where, names, report_info(args, work, s), cmds())
        print(f"report: {os.path.join(where, 'RESULTS_GPU.md')}")
        return
    kind, peak, device_line = device_for_plan(args)
    mfu = args.mfu or ASSUMED_MFU[kind]
    rows = plan_rows(s, names, kind, peak, mfu)
    total = print_plan(rows, s, device_line, mfu)
    if args.plan_only:
        return
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    atomic_write(os.path.join(work, "plan.json"), lambda f: json.dump({"device": device_line, "mfu": mfu, "rows": rows, "total_seconds": total}, f), "w")
    t_start = time.perf_counter()

    if args.tiny:
        subset_corpus(CORPUS, os.path.join(work, "src"), TINY["words"], dev_words=TINY["words"])
    run_once("prepare", prepare_command(args, work), None, work, "prepare")
    if settings(args, tokens_of(args, work)) != s:  # the plan used an estimate: the commands use the real counts
        s = settings(args, tokens_of(args, work))
        steps = model_steps(args, work, s)
    finished = [name for name in names if os.path.isfile(os.path.join(work, "results", f"{name}.json"))]
    if finished:
        print(f"{len(finished)} of {len(names)} models finished already (skipped): {', '.join(finished)}", flush=True)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    for k, (name, role, cmd, out_dir) in enumerate(steps, start=1):
        label = f"{k}/{len(steps)}"
        if not os.path.isfile(os.path.join(work, "results", f"{name}.json")):
            seconds = run_once(name, cmd, out_dir, work, label)
            evaluate_model(work, os.path.join(work, "data"), name, role, out_dir, seconds, label, limit=s["blimp_limit"],
                           test_windows=s["test_windows"], device=device, blimp_extra=s["blimp_extra"], protocol=PROTOCOL)
            report(work, where, names, report_info(args, work, s), cmds())
    report(work, where, names, report_info(args, work, s), cmds())
    print(f"this invocation: {(time.perf_counter() - t_start) / 60:.1f} minutes; planned {total / 60:.1f}")
    print(f"report: {os.path.join(where, 'RESULTS_GPU.md')}")


def report_info(args, work, s):
    return {"work": work, "tiny": args.tiny, "seeds": args.seeds, "settings": s, "command": " ".join(a for a in sys.argv[1:] if a != "--report_only")}


# -----------------------------------------------------------------------------------------------
# The report: every number comes from WORK/results/*.json, the markers and the plan


def report(work, where, names, info, cmds):
    """RESULTS_GPU.md and the plot in `where`, from the models in `names` that have finished."""
    m = {n: json.load(open(os.path.join(work, "results", f"{n}.json"))) for n in names if os.path.isfile(os.path.join(work, "results", f"{n}.json"))}
    logs = os.path.join(work, "logs")
    markers = {f[:-5]: json.load(open(os.path.join(logs, f))) for f in os.listdir(logs) if f.endswith(".done")} if os.path.isdir(logs) else {}
    plan = json.load(open(os.path.join(work, "plan.json"))) if os.path.isfile(os.path.join(work, "plan.json")) else None
    write_report(m, info, plan, markers, os.path.join(where, "RESULTS_GPU.md"), [n for n in names if n not in m], cmds)
    plt = pyplot()
    if plt is not None and m:
        plot_curves(m, os.path.join(where, "RESULTS_GPU_val_ce.png"), plt)


def plan_table(plan, markers, m):
    """The plan beside what each step took (the markers: training and BLiMP wall time; test CE's own seconds)."""
    rows = ["| step | planned min | measured min | planned: compute / compile / other / evaluation |", "|---|---|---|---|"]
    for name, _, _, parts in plan["rows"]:
        done = [markers[k]["seconds"] for k in (name, f"{name}_blimp") if k in markers] + [m.get(name, {}).get("test_seconds", 0)]
        measured = f"{sum(done) / 60:.2f}" if name in markers else "not run yet"
        split = " / ".join(f"{parts[k] / 60:.2f}" for k in ("compute", "compile", "other", "evaluation") if k in parts)
        rows.append(f"| {name} | {sum(parts.values()) / 60:.2f} | {measured} | {split} |")
    measured = sum(x["seconds"] for x in markers.values()) + sum(x.get("test_seconds", 0) for x in m.values())
    rows.append(f"| total | {plan['total_seconds'] / 60:.1f} | {measured / 60:.1f} | |")
    return rows


def write_report(m, info, plan, markers, path, missing=(), cmds=()):
    s = info["settings"]
    roles = [r for r in ("teacher", "student", "baseline") if any(x["role"] == r for x in m.values())]
    best, claims = main_claims(m, "Context for the claim: are the teachers better than the baseline at all? "
                                  "(Here they have its size and recipe, and differ by seed only.)")
    how = how_to_read(m, count_intervals(claims), "section 2",
                      "Validation CE is each model's best over its run (once per epoch), on the split it was stopped on, so it is "
                      "slightly optimistic; test CE was used for no choice.")
    status = (f"**Partial: {len(m)} of {len(m) + len(missing)} models finished.** Still to run: {', '.join(missing)}. "
              "Run the same command again to continue." if missing else f"All {len(m)} models finished.")
    params = next((x["params"] for x in m.values()), None)
    first = next(iter(m.values()), None)
    test = f", {len(first['test_ce_windows']):,} windows of {s['seq_len']} tokens" if first else ""
    subset = f", the first {TINY['words']:,} words of each training source and each dev file" if info["tiny"] else ""
    text = "\n".join([
        "# BabyLlama-2's claim at 58M on one GPU" + (" (tiny run on a CPU: tiny sizes, not a result)" if info["tiny"] else ""), "",
        f"Generated by `python experiments/reproduce_gpu.py{' ' + info['command'] if info['command'] else ''}`; do not edit by hand. {status}", "",
        f"Corpus: babylm_2024_mini{subset} "
        f"({s['train_tokens']:,} training tokens), {s['epochs']:g} epochs = {s['max_iters']:,} steps of {s['train']['batch_size']} x "
        f"{s['seq_len']} tokens ({s['steps_per_epoch']} per epoch), warmup {s['warmup_iters']} steps; every model "
        f"{f'has {params / 1e6:.1f}M parameters' if params else 'has one size'} (teachers, student and baseline: "
        f"{', '.join(f'{k} {v}' for k, v in s['shape'].items())}). Validation: the last 5% of each training source, once per "
        f"epoch, the best checkpoint kept; test: the official dev files{test}, used for no choice. "
        f"BLiMP and the supplement: eval_blimp.py's {PROTOCOL} protocol, the official pipeline's. Machine: {plan['device'] if plan else '?'}, torch {torch.__version__}.", "",
        "## 1. Plan and measured time", "",
        f"The plan printed before the run (assumed MFU {plan['mfu']:.0%}) beside the wall time of each step (training, then "
        "eval_blimp.py and test CE). A step resumed after a kill counts only the run that finished it." if plan else "No plan recorded.", "",
        *(plan_table(plan, markers, m) if plan else []), "",
        "## Summary", "", "Mean ± standard deviation over seeds (teachers: over the two teacher models).", "", *summary_table(m, roles),
        "## 2. Does the student beat the baseline and its teachers?", "", how, "", *(claims or ["No comparison yet.", ""]),
        "## All models", "", *models_table(m), "",
        f"train s: wall time of the training run. best step = {s['max_iters']}, the last: the model was still improving on "
        "validation when training stopped.", "",
        "## BLiMP by field", "", "Pooled accuracy over the pairs of each field, as eval_blimp.py reports it (BLiMP's files spell "
        "one field two ways; the labels are kept as given).", "", *field_table(m), "",
        "![validation CE](RESULTS_GPU_val_ce.png)", "",
        "## Commands", "", "Run from the project root, in this order, with WORK the work folder (test CE is computed in the "
        "experiment's own process: reproduce_cpu.test_ce_windows on each ckpt.pt"
        + ("; $WORK/src, the subset, is written by reproduce_cpu.subset_corpus" if info["tiny"] else "") + "):", "", "```",
        *commands_block(cmds, info["work"]), "```", ""])
    atomic_write(path, lambda f: f.write(text), "w")


if __name__ == "__main__":
    run_main(main)
