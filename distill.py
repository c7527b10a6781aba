"""
Stage 3: distil a student Llama from an ensemble of teacher checkpoints (BabyLlama, BabyLlama-2).

    python distill.py configs/tiny_student.py                          # CPU, tiny, after the two tiny teachers
    python distill.py configs/student.py                               # one GPU: the BabyLlama-2 345M student
    torchrun --nproc_per_node=8 distill.py configs/student.py          # 8 GPUs, same global batch
    python distill.py configs/babyllama_58m.py                         # BabyLlama 58M: a Llama 360M and a GPT-2 705M teacher
    python distill.py configs/tiny_student.py --teacher_cache=out/tiny_cache   # the teachers run once (teacher_cache.py)
    python distill.py configs/student.py --track=strict-small --checkpoints_at=babylm   # a BabyLM submission
    python distill.py --help                                           # every key, its default and meaning

The loss (Timiryasov & Tastet, arXiv 2308.02019, section 3; Tastet & Timiryasov, arXiv 2409.17312), for
student logits s and K teachers' logits z_k at each position:

    loss = alpha * CE(s, next token) + (1 - alpha) * kl_term,     kl_term = T^2 * KL(p || q),   q = softmax(s / T)

with the ensemble target p either
    ensemble="logits":  p = softmax(sum_k w_k z_k / T)      mean of logits (what both papers do): a
                        renormalised geometric mean of the teachers' distributions, a product of experts;
    ensemble="probs":   p = sum_k w_k softmax(z_k / T)      mean of probabilities: a mixture.
w_k = teacher_weights (normalised), equal by default.

The KL reduction, kl_reduction=
    "paper": the published code calls kl_div(..., reduction="batchmean") on (B, T, V) tensors, which sums
             the KL over all positions of a sequence and divides by the batch size B only, while CE is a
             per-token mean. So per token the KL weighs seq_len times more than the formula suggests: at
             alpha 0.5, T=1 and seq_len 128 the KL:CE weight ratio is 128:1 (512:1 at the 58M recipe's
             T=2), and the logged kl_term is ~128 x the per-token kl. Default, to reproduce the papers.
    "mean":  the per-token mean KL, so alpha means what it says (KL:CE = (1-alpha) T^2 : alpha).
The log shows ce and kl_term as they enter the loss (loss = alpha ce + (1 - alpha) kl_term), and kl, per token.

What trains: Distillation.loss applies distill_loss, the formula as written above, to the student's and the
teachers' logits, by default a few sequences at a time, each chunk differentiated by autograd (loss_impl="chunked":
chunked_loss.py), the same values and gradients without ever holding the (B, L, V) logits.
With teacher_cache=DIR the teachers run once, over every training window, and the student learns from a stored
sparse, unbiased estimate of p (teacher_cache.py: the same formula over the k stored tokens).
Teachers may differ in architecture, width and depth (BabyLlama: a GPT-2 and a Llama), as long as they share
the tokenizer: only their logits meet. They are frozen, in eval mode, and cast to bf16 under bf16 autocast. The
loop is train.py's (optimiser, schedule, checkpoints, resume, DDP: the student only; each rank holds the teachers).
"""

import math
import os
import sys

import torch
import torch.nn.functional as F

import teacher_cache
from checkpoint import build_model, check_same_tokenizer, config_from_dict, load_checkpoint
from config import InputError, load_config, merge_keys, print0, run_main, runtime
from data import load_tokenizer, split_words
from run_dir import run_inputs, start_run, take_out_dir
from train import TRAIN_KEYS, CausalLM, Windows, check_train_config, eval_indices, evaluate, finish, model_config, plan_run, train

DISTILL_KEYS = merge_keys(TRAIN_KEYS, {
    "data and output": {"out_dir": ("out/student", "where ckpt.pt (best validation), last.pt (latest) and log.jsonl go")},
    "distillation": {
        "teachers": (["out/teacher1/ckpt.pt", "out/teacher2/ckpt.pt"], "teacher checkpoints (each its best epoch): a,b or ['a','b']"),
        "teacher_weights": ([], "one weight per teacher, normalised; empty = equal weights"),
        "alpha": (0.5, "weight of the hard-label CE; 1 - alpha weighs the KL term (both papers: 0.5)", "0..1"),
        "temperature": (1.0, "softmax temperature T of teachers and student (BabyLlama-2: 1.0; BabyLlama 58M: 2.0)", ">0"),
        "ensemble": ("logits", "'logits' (mean of logits, the papers) or 'probs' (mean of probabilities)", ("logits", "probs")),
        "kl_reduction": ("paper", "'paper' (KL summed over positions / batch, as published) or 'mean' (per token)", ("paper", "mean")),
    },
}, teacher_cache.CACHE_KEYS)


# -----------------------------------------------------------------------------------------------
# The loss as written in the papers


def fp32(t):
    """t in float32 at least: bf16 logits (autocast) are upcast for the softmax; float64 (the tests' references) stays."""
    return t if t.dtype == torch.float64 else t.float()


def ensemble_log_probs(teacher_logits, weights, temperature, ensemble):
    """log p (..., V) of the ensemble target, in fp32, from a list of teacher logits."""
    if ensemble == "logits":
        mean = sum(w * fp32(z) for w, z in zip(weights, teacher_logits))
        return F.log_softmax(mean / temperature, dim=-1)
    # mixture: log sum_k w_k p_k = logsumexp_k (log w_k + log p_k), stable in log space
    stacked = torch.stack([F.log_softmax(fp32(z) / temperature, dim=-1) + (math.log(w) if w > 0 else -math.inf) for w, z in zip(weights, teacher_logits)])
    return torch.logsumexp(stacked, dim=0)


def distill_loss(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """(loss, ce, kl_term, per-token kl) from student logits (B, L, V), teacher logits [(B, L, V)], labels y (B, L)."""
    B, L, V = student_logits.shape
    s = fp32(student_logits)
    log_p = ensemble_log_probs(teacher_logits, weights, temperature, ensemble)  # the target: no gradient flows to it
    log_q = F.log_softmax(s / temperature, dim=-1)  # the student at temperature T
    log_s = log_q if temperature == 1.0 else F.log_softmax(s, dim=-1)  # at T = 1 the same tensor: (B, L, V) once, not twice
    ce = F.nll_loss(log_s.reshape(B * L, V), y.reshape(B * L))  # -log softmax(s)[y], averaged over the B L positions
    kl_sum = F.kl_div(log_q, log_p, log_target=True, reduction="sum")  # sum over B, L, V of p (log p - log q)
    kl_term = temperature**2 * kl_sum / (B if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


class Distillation(CausalLM):
    """The student's objective: distill_loss against frozen teachers, run on every batch."""

    def __init__(self, student, teachers, weights, cfg, teacher_val=None):
        super().__init__(student, cfg)
        self.teachers, self.weights = teachers, weights
        self.alpha, self.temperature, self.ensemble, self.kl_reduction = cfg.alpha, cfg.temperature, cfg.ensemble, cfg.kl_reduction
        self.record = dict(teacher_val or {})  # the teachers' validation losses, beside the student's in the log

    def flops_per_token(self, seq_len):
        """6N for the student (forward + backward), 2N per teacher (forward only)."""
        return self.model.flops_per_token(seq_len) + sum(t.flops_per_token(seq_len, backward=False) for t in self.teachers)

    def loss(self, student, x, y):
        with torch.no_grad():  # the teachers' final hidden states (B, L, dim_k); their heads are applied beside the student's
            teacher_h = [t(x, return_hidden=True) for t in self.teachers]
        return self.apply(student, x, [y, *teacher_h])  # formula() on the whole micro-batch, or on a chunk of its sequences

    def formula(self, student_logits, y, *teacher_h):
        teacher_logits = [t.output(h) for t, h in zip(self.teachers, teacher_h)]  # (b, L, V) each
        loss, ce, kl_term, kl = distill_loss(student_logits, teacher_logits, y, self.weights, self.alpha, self.temperature,
                                             self.ensemble, self.kl_reduction)
        return loss, {"ce": ce, "kl_term": kl_term, "kl": kl}


# -----------------------------------------------------------------------------------------------
# The teachers, and the run


def load_teachers(paths, tok_info, data_dir, rt):
    """Frozen, eval-mode teachers on rt.device (a GPT-2's dropout is then off), all with the data's tokenizer."""
    if not paths:
        raise InputError("teachers: expected at least one teacher checkpoint path, as --teachers=a.pt,b.pt")
    teachers, infos = [], []
    for path in paths:
        model, ckpt = load_checkpoint(path, rt.device)
        info = ckpt.get("tokenizer", {})
        if infos:  # teachers among themselves first: the message then names both teacher files
            check_same_tokenizer(info, infos[0], path, paths[0], "an ensemble needs one tokenizer: train every teacher on one prepared data folder")
        check_same_tokenizer(info, tok_info, path, os.path.join(data_dir, "meta.json"),
                             f"distil on the data folder the teachers were trained on (--data_dir={ckpt.get('config', {}).get('data_dir')})")
        model.eval().requires_grad_(False)
        if rt.dtype == "bfloat16":
            model.to(torch.bfloat16)  # teachers need no fp32 master weights
        teachers.append(model)
        infos.append(info)
    return teachers


def teacher_weights(cfg):
    """The teacher weights w_k, normalised to sum to 1 (equal when none are given)."""
    n = len(cfg.teachers)
    w = list(cfg.teacher_weights) or [1.0] * n
    if len(w) != n or any(not isinstance(x, (int, float)) or x < 0 for x in w) or sum(w) <= 0:
        raise InputError(f"teacher_weights={cfg.teacher_weights}: expected {n} non-negative numbers, not all zero")
    return [x / sum(w) for x in w]


def validation_losses(teachers, cfg, rt, vocab_size):
    """Each teacher's CE on the windows the student is validated on, once (logged beside the student's)."""
    val_w = Windows(os.path.join(cfg.data_dir, "val.bin"), cfg.seq_len, vocab_size)
    idx = eval_indices(val_w.n, cfg.eval_windows)
    return {f"teacher{k + 1}_val_loss": evaluate(t, val_w, idx, cfg.micro_batch_size, rt) for k, t in enumerate(teachers)}


def main(argv=None):
    cfg = load_config(DISTILL_KEYS, (sys.argv[1:] if argv is None else argv) or ["--help"], __doc__)
    check_train_config(cfg)
    rt, weights = runtime(cfg), teacher_weights(cfg)
    _, tok_info = load_tokenizer(cfg.data_dir)
    train_w = Windows(os.path.join(cfg.data_dir, "train.bin"), cfg.seq_len, tok_info["vocab_size"])
    plan_run(cfg, rt.world, train_w.n, corpus=split_words(cfg.data_dir))  # the batch, the run's length, milestones, BabyLM's rules: before any work
    teachers = load_teachers(cfg.teachers, tok_info, cfg.data_dir, rt)
    inputs = run_inputs(cfg.data_dir, cfg.teachers)  # the data and teachers by content: resume compares them, not their paths
    cache = teacher_cache.check(cfg, weights, train_w, rt, inputs)  # with --teacher_cache: a built cache, checked, or a folder to build
    if cfg.cache_only and cache.built:
        return print0(f"teacher cache ready in {cfg.teacher_cache} (checked)")
    start = None if cfg.cache_only else start_run(cfg, tok_info, rt, inputs)  # out_dir is taken only after the teachers' work
    teacher_val = validation_losses(teachers, cfg, rt, tok_info["vocab_size"])
    print0(" | ".join(f"{k} {v:.4f}" for k, v in teacher_val.items()))
    if cache:  # the teachers run once, here, over every training window, and never again
        cache = teacher_cache.ready(cache, teachers, lambda z: ensemble_log_probs(z, weights, cfg.temperature, cfg.ensemble), train_w, rt)
        if cfg.cache_only:
            return print0(f"teacher cache ready in {cfg.teacher_cache}")
    take_out_dir(cfg, rt, start)
    torch.manual_seed(cfg.seed)
    student = build_model(config_from_dict(start["model_config"]) if start else model_config(cfg, tok_info)).to(rt.device)
    if start:
        student.load_state_dict(start["model"])
    objective = teacher_cache.CachedDistillation(student, cache, cfg, teacher_val) if cache else Distillation(student, teachers, weights, cfg, teacher_val)
    summary = train(cfg, rt, student, objective, train_w, tok_info, start=start, inputs=inputs)
    finish(summary, "student", cfg.out_dir)
    if rt.ddp:
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    run_main(main)
