"""
Stage 3: distil a student Llama from an ensemble of teacher checkpoints (BabyLlama, BabyLlama-2).

    python distill.py configs/tiny_student.py                          # CPU, tiny, after the two tiny teachers
    python distill.py configs/student.py                               # one GPU: the BabyLlama-2 345M student
    torchrun --nproc_per_node=8 distill.py configs/student.py          # 8 GPUs, same global batch
    python distill.py configs/babyllama_58m.py --teachers="['out/t1/ckpt.pt','out/t2/ckpt.pt']"

The loss (babyllama.md section 2.4), for student logits s and K teachers' logits z_k at each position:

    loss = alpha * CE(s, next token) + (1 - alpha) * T^2 * KL(p || q),   q = softmax(s / T)

with the ensemble target p either
    ensemble="logits":  p = softmax(sum_k w_k z_k / T)      mean of logits (what both papers do): a
                        renormalised geometric mean of the teachers' distributions, a product of experts;
    ensemble="probs":   p = sum_k w_k softmax(z_k / T)      mean of probabilities: a mixture.
w_k = teacher_weights (normalised), equal by default.

The KL reduction, kl_reduction=
    "paper": the published code calls kl_div(..., reduction="batchmean") on (B, T, V) tensors, which sums
             the KL over all T positions and divides by the batch size B only, while CE is a per-token mean.
             So per token the KL weighs T times more than the formula suggests: at alpha 0.5, T=1 and
             seq_len 128 the KL:CE weight ratio is 128:1 (and 512:1 at the 58M recipe's T=2). Default, to
             reproduce the papers.
    "mean":  the per-token mean KL, so alpha means what it says (KL:CE = (1-alpha) T^2 : alpha).

The whole step (teacher forwards, student forward, loss) is one torch.compile'd function with fixed
shapes when compile is on (default on CUDA). Teachers are frozen, in eval mode, run without autograd,
and cast to bf16 on CUDA. The training loop is train_teacher.train(): same optimiser, schedule,
checkpoints, resume, DDP (the student only; each rank holds plain teacher replicas).
"""

import math
import os
import sys

import torch
import torch.nn.functional as F

from model import InputError, Llama, ModelConfig, check_same_tokenizer, load_checkpoint, unwrap
from prepare_data import load_tokenizer
from train_teacher import DEFAULTS as TEACHER_DEFAULTS
from train_teacher import Windows, check_config, eval_indices, evaluate, load_config, model_config, print0, resume_checkpoint, runtime, train

DEFAULTS = dict(
    TEACHER_DEFAULTS,
    out_dir="out/student",
    teachers=["out/teacher1/ckpt.pt", "out/teacher2/ckpt.pt"],  # checkpoint paths (the best epoch of each)
    teacher_weights=[],  # one weight per teacher; empty = equal weights
    alpha=0.5,  # weight of the hard-label CE
    temperature=1.0,  # BabyLlama-2: 1.0; BabyLlama (58M): 2.0
    ensemble="logits",  # "logits" (the papers) or "probs"
    kl_reduction="paper",  # "paper" (sum over positions / batch, as published) or "mean" (per token)
    loss_chunk=256,  # positions per chunk of the fused head + loss (0 = all at once); larger on GPUs
)


def ensemble_log_probs(teacher_logits, weights, temperature, ensemble):
    """log p (B, T, V) of the ensemble target, in fp32, from a list of teacher logits."""
    if ensemble == "logits":
        mean = sum(w * z.float() for w, z in zip(weights, teacher_logits))
        return F.log_softmax(mean / temperature, dim=-1)
    # mixture: log sum_k w_k p_k = logsumexp_k (log w_k + log p_k), stable in log space
    stacked = torch.stack([F.log_softmax(z.float() / temperature, dim=-1) + (math.log(w) if w > 0 else -math.inf) for w, z in zip(weights, teacher_logits)])
    return torch.logsumexp(stacked, dim=0)


def distill_loss_from_logits(student_logits, target_log_probs, y, alpha, temperature, kl_reduction):
    """(total loss, CE, per-token KL) from student logits s (B, T, V), ensemble log p (B, T, V), targets y (B, T).

    Written so that no (B, T, V) log-softmax of the student is ever materialised (nor saved for backward):
        KL(p || q) = sum_v p log p - sum_v p log q,   log q = s/T - logsumexp(s/T),   sum_v p = 1
                   = sum_v p log p - (p . s)/T + logsumexp(s/T)
        CE         = logsumexp(s) - s[y]
    Per position this needs two reductions over the vocabulary (logsumexp, and p . s as a batched dot
    product); the gradient (softmax(s/T) - p)/T comes out of autograd without extra (B, T, V) buffers."""
    B, T, V = student_logits.shape
    s = student_logits.float()
    with torch.no_grad():  # the teachers' side: a constant for the student
        p = target_log_probs.exp()
        p_log_p = torch.einsum("btv,btv->bt", p, target_log_probs)
    lse_t = torch.logsumexp(s / temperature, dim=-1)  # (B, T)
    kl_pos = p_log_p - torch.einsum("btv,btv->bt", p, s) / temperature + lse_t  # (B, T), KL at each position
    kl_sum = kl_pos.sum()
    lse_1 = lse_t if temperature == 1.0 else torch.logsumexp(s, dim=-1)
    ce = (lse_1 - s.gather(-1, y.unsqueeze(-1)).squeeze(-1)).mean()
    kl = kl_sum / B if kl_reduction == "paper" else kl_sum / (B * T)
    total = alpha * ce + (1 - alpha) * temperature**2 * kl
    return total, ce, kl_sum / (B * T)


class FusedHeadLoss(torch.autograd.Function):
    """The student's output head, CE and KL to the teacher ensemble in one pass over chunks of positions,
    with the gradient computed during the forward pass (the loss is a scalar, so d loss / d logits is known
    as soon as the logits are). Neither the student's nor the teachers' (B, T, V) logits ever exist in
    full: only (chunk, V) pieces, small enough to stay in cache on a CPU and in memory on a GPU. Autograd
    only sees the student's final hidden states h and head weight W.

    For one position with student logits s, ensemble log-probs log p and label y (see
    distill_loss_from_logits for the formula) the gradient is
        d loss / d s = a_ce * (softmax(s) - onehot(y)) + a_kl * (softmax(s / T) - p),
        a_ce = alpha / (B T),   a_kl = (1 - alpha) * T^2 / T / kl_denominator  (B: "paper", B T: "mean").
    """

    @staticmethod
    def forward(ctx, h, W, teacher_h, teacher_W, y, weights, alpha, T, ensemble, kl_denom, chunk):
        N = y.numel()
        h2, y2 = h.reshape(N, -1), y.reshape(N)
        t_h2 = [t.reshape(N, -1) for t in teacher_h]
        a_ce, a_kl = alpha / N, (1 - alpha) * T / kl_denom
        grad_h, grad_W = torch.empty_like(h2), torch.zeros_like(W)
        ce_sum = torch.zeros((), device=h.device)
        kl_sum = torch.zeros((), device=h.device)
        for i in range(0, N, chunk):
            hc, yc = h2[i : i + chunk], y2[i : i + chunk]
            s = (hc @ W.t()).float()  # (chunk, V) student logits
            log_p = ensemble_log_probs([(th[i : i + chunk] @ tw.t()) for th, tw in zip(t_h2, teacher_W)], weights, T, ensemble)
            log_q = F.log_softmax(s / T, dim=-1)
            p = log_p.exp()
            kl_sum += (p * (log_p - log_q)).sum()
            log_s = log_q if T == 1.0 else F.log_softmax(s, dim=-1)
            ce_sum -= log_s.gather(1, yc[:, None]).sum()
            g = log_q.exp().sub_(p).mul_(a_kl)  # a_kl * (softmax(s/T) - p)
            g.add_(log_s.exp(), alpha=a_ce)  # + a_ce * softmax(s)
            g[torch.arange(len(yc), device=g.device), yc] -= a_ce  # - a_ce * onehot(y)
            grad_h[i : i + chunk] = (g @ W.to(g.dtype)).to(grad_h.dtype)
            grad_W += (g.t() @ hc.to(g.dtype)).to(grad_W.dtype)
        ctx.save_for_backward(grad_h.view_as(h), grad_W)
        loss = alpha * ce_sum / N + (1 - alpha) * T**2 * kl_sum / kl_denom
        ce, kl = ce_sum / N, kl_sum / N
        ctx.mark_non_differentiable(ce, kl)
        return loss, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_kl):
        grad_h, grad_W = ctx.saved_tensors
        return grad_h * grad_loss, grad_W * grad_loss, None, None, None, None, None, None, None, None, None


def make_distill_loss(teachers, weights, cfg):
    """loss_fn(student, x, y) -> (loss, {"ce", "kl"}) for train_teacher.train()."""
    alpha, T, ensemble, reduction, chunk = cfg.alpha, cfg.temperature, cfg.ensemble, cfg.kl_reduction, cfg.loss_chunk

    def loss_fn(student, x, y):
        with torch.no_grad():
            teacher_h = [t.hidden_states(x) for t in teachers]  # (B, T, dim_k) each: small
        h = student(x, head=False)  # (B, T, dim): through the (DDP) wrapper's forward
        B, L = y.shape
        W = unwrap(student).output.weight
        loss, ce, kl = FusedHeadLoss.apply(h, W, teacher_h, [t.output.weight for t in teachers], y, weights, alpha, T,
                                           ensemble, B if reduction == "paper" else B * L, chunk or B * L)
        return loss, {"ce": ce, "kl": kl}

    return loss_fn


def load_teachers(paths, tok_info, data_dir, rt):
    """Frozen, eval-mode teachers on rt.device, all with the data's tokenizer (one-line error otherwise)."""
    if not paths:
        raise InputError("teachers: expected at least one teacher checkpoint path")
    teachers, infos = [], []
    for path in paths:
        model, ckpt = load_checkpoint(path, rt.device)
        info = ckpt.get("tokenizer", {})
        if infos:  # teachers among themselves first: the message then names both teacher files
            check_same_tokenizer(info, infos[0], path, paths[0])
        check_same_tokenizer(info, tok_info, path, os.path.join(data_dir, "meta.json"))
        model.eval().requires_grad_(False)
        if rt.dtype == "bfloat16":
            model.to(torch.bfloat16)  # teachers need no fp32 master weights
        teachers.append(model)
        infos.append(info)
    return teachers


def teacher_weights(cfg):
    n = len(cfg.teachers)
    w = list(cfg.teacher_weights) or [1.0] * n
    if len(w) != n or any(x < 0 for x in w) or sum(w) <= 0:
        raise InputError(f"teacher_weights={cfg.teacher_weights}: expected {n} non-negative weights, not all zero")
    return [x / sum(w) for x in w]


def check_distill_config(cfg):
    check_config(cfg)
    if cfg.ensemble not in ("logits", "probs"):
        raise InputError(f"ensemble={cfg.ensemble!r}: expected 'logits' or 'probs'")
    if cfg.kl_reduction not in ("paper", "mean"):
        raise InputError(f"kl_reduction={cfg.kl_reduction!r}: expected 'paper' or 'mean'")
    if cfg.objective != "clm":
        raise InputError(f"objective={cfg.objective!r}: distillation trains the causal LM only (AntLM is a train_teacher.py option)")
    if not 0.0 <= cfg.alpha <= 1.0 or cfg.temperature <= 0:
        raise InputError(f"alpha={cfg.alpha}, temperature={cfg.temperature}: expected 0 <= alpha <= 1 and temperature > 0")


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    check_distill_config(cfg)
    weights = teacher_weights(cfg)
    rt = runtime(cfg)
    _, tok_info = load_tokenizer(cfg.data_dir)
    teachers = load_teachers(cfg.teachers, tok_info, cfg.data_dir, rt)
    torch.manual_seed(cfg.seed)
    start = resume_checkpoint(cfg, tok_info, rt.device)
    student = Llama(ModelConfig(**start["model_config"]) if start else model_config(cfg, tok_info)).to(rt.device)
    if start:
        student.load_state_dict(start["model"])

    # Each teacher's validation CE on the very windows the student is validated on, once.
    val_w = Windows(os.path.join(cfg.data_dir, "val.bin"), cfg.seq_len)
    val_idx = eval_indices(val_w.n, cfg.eval_windows)
    teacher_val = {f"teacher{k + 1}_val_loss": evaluate(t, val_w, val_idx, cfg.micro_batch_size, rt) for k, t in enumerate(teachers)}
    print0(" | ".join(f"{k} {v:.4f}" for k, v in teacher_val.items()))

    # FLOPs per token: 6N for the student (forward + backward), 2N per teacher (forward only).
    flops = student.flops_per_token(cfg.seq_len) + sum(t.flops_per_token(cfg.seq_len, backward=False) for t in teachers)
    loss_fn = make_distill_loss(teachers, weights, cfg)
    summary = train(cfg, rt, student, loss_fn, tok_info, flops, extra_eval=lambda: teacher_val,
                    ckpt_extra={"teacher_val_loss": teacher_val, "teachers": list(cfg.teachers)}, start=start)
    print0(f"done: {summary['steps']} steps in {summary['seconds']:.0f}s, best student val_loss {summary['best_val_loss']:.4f} "
           f"(teachers: {', '.join(f'{v:.4f}' for v in teacher_val.values())}), checkpoints in {cfg.out_dir}")
    if rt.ddp:
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    try:
        main()
    except (InputError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
