"""
Stage 3: distil a student Llama from an ensemble of teacher checkpoints (BabyLlama, BabyLlama-2).

    python distill.py configs/tiny_student.py                          # CPU, tiny, after the two tiny teachers
    python distill.py configs/student.py                               # one GPU: the BabyLlama-2 345M student
    torchrun --nproc_per_node=8 distill.py configs/student.py          # 8 GPUs, same global batch
    python distill.py configs/babyllama_58m.py                         # BabyLlama 58M: a Llama 360M and a GPT-2 705M teacher
    python distill.py configs/babyllama_58m.py --teachers=out/t1/ckpt.pt,out/t2/ckpt.pt
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
The log shows ce and kl_term exactly as they enter the loss (loss = alpha ce + (1 - alpha) kl_term), and
kl, the per-token KL(p || q).

What trains: Distillation.loss computes the student's and the teachers' logits and calls distill_loss(),
the formula as written above, on full (B, T, V) logits; train.py compiles it where runtime() compiles.
With teacher_cache=DIR the teachers run once, over every training window, and the student then learns from
a stored sparse estimate of p (teacher_cache.py: k sampled tokens with importance weights, an unbiased
estimate of the distillation gradient; or top-k, the biased baseline): sparse_distill_loss() and
CachedDistillation below, the same formula over the k stored tokens.
The same loss, at scale (loss_impl="fused", an opt-in): FusedHeadLoss applies the output heads chunk by
chunk and computes the gradient during the forward pass, so that no (B, T, V) tensor ever exists; it saves
memory on a GPU and time on a CPU (the README's numbers). The tests check it against the plain loss, in
value and every gradient.
Teachers may differ in architecture, width and depth (BabyLlama: a GPT-2 and a Llama, gpt2.py and model.py),
as long as they share the tokenizer: only their logits meet. They are frozen, in eval mode (a GPT-2's dropout
is then off: its logits are a function of its input), and cast to bf16 when the run uses bf16 autocast. The
loop is train.py's (the same optimiser, schedule, checkpoints, resume, DDP: the student only; each rank holds
teacher replicas).
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import build_model, check_same_tokenizer, config_from_dict, load_checkpoint, unwrap
from config import InputError, load_config, merge_keys, print0, run_main, runtime
from data import load_tokenizer, split_words
from run_dir import run_inputs, start_run, take_out_dir
from teacher_cache import CACHE_KEYS, TeacherCache, build_cache, cache_header, cache_identity, check_cache_path, clear_stale_lock, sparse_target
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
        "loss_impl": ("plain", "'plain' (the formula on full logits, as written) or 'fused' (the same loss chunked, hand-differentiated)", ("plain", "fused")),
        "loss_chunk": (256, "positions per chunk of the fused loss (loss_impl='fused') and of a cache build's teacher pass (0 = all at once)", ">=0"),
    },
}, CACHE_KEYS)


# -----------------------------------------------------------------------------------------------
# The loss as written in the papers: what trains by default


def ensemble_log_probs(teacher_logits, weights, temperature, ensemble):
    """log p (..., V) of the ensemble target, in fp32, from a list of teacher logits."""
    if ensemble == "logits":
        mean = sum(w * z.float() for w, z in zip(weights, teacher_logits))
        return F.log_softmax(mean / temperature, dim=-1)
    # mixture: log sum_k w_k p_k = logsumexp_k (log w_k + log p_k), stable in log space
    stacked = torch.stack([F.log_softmax(z.float() / temperature, dim=-1) + (math.log(w) if w > 0 else -math.inf) for w, z in zip(weights, teacher_logits)])
    return torch.logsumexp(stacked, dim=0)


def distill_loss(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """(loss, ce, kl_term, per-token kl) from student logits (B, L, V), teacher logits [(B, L, V)], labels y (B, L)."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    log_p = ensemble_log_probs(teacher_logits, weights, temperature, ensemble)  # the target: no gradient flows to it
    log_q = F.log_softmax(s / temperature, dim=-1)  # the student at temperature T
    log_s = log_q if temperature == 1.0 else F.log_softmax(s, dim=-1)  # at T = 1 the same tensor: (B, L, V) once, not twice
    ce = F.nll_loss(log_s.reshape(B * L, V), y.reshape(B * L))  # -log softmax(s)[y], averaged over the B L positions
    kl_sum = F.kl_div(log_q, log_p, log_target=True, reduction="sum")  # sum over B, L, V of p (log p - log q)
    kl_term = temperature**2 * kl_sum / (B if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


class Distillation(CausalLM):
    """The student's objective: distill_loss against frozen teachers, whose logits are computed for every batch."""

    def __init__(self, student, teachers, weights, cfg, teacher_val=None):
        super().__init__(student)
        self.teachers, self.weights = teachers, weights
        self.alpha, self.temperature, self.ensemble, self.kl_reduction = cfg.alpha, cfg.temperature, cfg.ensemble, cfg.kl_reduction
        self.chunk = cfg.loss_chunk  # used by the fused loss only
        self.record = dict(teacher_val or {})  # the teachers' validation losses, beside the student's in the log

    def flops_per_token(self, seq_len):
        """6N for the student (forward + backward), 2N per teacher (forward only)."""
        return self.model.flops_per_token(seq_len) + sum(t.flops_per_token(seq_len, backward=False) for t in self.teachers)

    def loss(self, student, x, y):
        with torch.no_grad():
            teacher_logits = [t.logits(x) for t in self.teachers]  # (B, L, V) each
        student_logits = unwrap(student).output(student(x))  # (B, L, V): through the (DDP) wrapper's forward, then the head
        loss, ce, kl_term, kl = distill_loss(student_logits, teacher_logits, y, self.weights, self.alpha, self.temperature,
                                             self.ensemble, self.kl_reduction)
        return loss, {"ce": ce, "kl_term": kl_term, "kl": kl}


# -----------------------------------------------------------------------------------------------
# The teachers run once: a cached sparse target (teacher_cache.py) and the loss that reads it


@torch.no_grad()
def teacher_block(teachers, windows, lo, hi, header, rt, chunk=256):
    """What the cache stores for windows lo..hi-1: (ids (n, L, k) uint16, weights (n, L, k) float32,
    plogp (n, L) float32), from one pass of the teachers (teacher_cache.build_cache calls it per block)."""
    L, k, T = header["seq_len"], header["k"], header["temperature"]
    x, _ = windows.get(torch.arange(lo, hi), rt.device)
    with rt.autocast:
        t_h = [t(x).reshape((hi - lo) * L, -1) for t in teachers]  # (n L, dim_k) final hidden states
    u = None
    if header["method"] == "sampled":  # the uniforms of window i depend on (seed, i) only
        g = torch.Generator()
        u = torch.cat([torch.rand(L * k, generator=g.manual_seed(header["seed"] * 1_000_003 + i)) for i in range(lo, hi)]).view(-1, k)
    N = (hi - lo) * L
    out_ids, out_w, out_plogp = torch.empty(N, k, dtype=torch.int64), torch.empty(N, k), torch.empty(N)
    for i in range(0, N, chunk):
        log_p = ensemble_log_probs([th[i : i + chunk] @ t.output.weight.t() for th, t in zip(t_h, teachers)], header["teacher_weights"], T, header["ensemble"])
        out_plogp[i : i + chunk] = (log_p.exp() * log_p).sum(-1).cpu()  # log_p is finite (a log-softmax): no 0 * inf
        ids, w = sparse_target(log_p.cpu(), k, header["method"], None if u is None else u[i : i + chunk], header["proposal_temperature"] or 1.0)
        out_ids[i : i + chunk], out_w[i : i + chunk] = ids, w
    n = hi - lo
    return out_ids.view(n, L, k).numpy().astype(np.uint16), out_w.view(n, L, k).numpy(), out_plogp.view(n, L).numpy()


def sparse_distill_loss(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """distill_loss with the ensemble target p replaced by the cache's sparse estimate p_hat: per position, k
    token ids and weights (B, L, k), and plogp (B, L) = sum_v p_v log p_v, stored exactly when the cache was built.
    As log q_v = s_v / T - logsumexp(s / T) and sum_v p_v = 1,
        KL(p || q) = sum_v p_v log p_v - (p . s) / T + logsumexp(s / T),
    and only the middle term needs p: with p_hat, a sum over the k stored slots. It is linear in p, so with the
    sampled cache (E[p_hat] = p) the loss and its gradient are unbiased estimates of the live ones."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    ce = F.cross_entropy(s.reshape(B * L, V), y.reshape(B * L))
    p_hat_dot_s = (weights.float() * s.gather(-1, ids)).sum()  # over B, L and the k slots
    kl_sum = plogp.float().sum() - p_hat_dot_s / temperature + torch.logsumexp(s / temperature, dim=-1).sum()
    kl_term = temperature**2 * kl_sum / (B if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


class CachedDistillation(Distillation):
    """The student's objective with a teacher cache: each batch's targets are read by window index, and no
    teacher runs (so the FLOPs per token are the student's alone)."""

    def __init__(self, student, cache, cfg, teacher_val=None):
        super().__init__(student, [], [], cfg, teacher_val)
        self.cache = cache

    def batch(self, x, y, idx, step, micro, rank):
        ids, weights, plogp = self.cache.get(idx)
        return x, y, ids.to(x.device), weights.to(x.device), plogp.to(x.device)

    def loss(self, student, x, y, ids, weights, plogp):
        student_logits = unwrap(student).output(student(x))  # (B, L, V): through the (DDP) wrapper's forward, then the head
        loss, ce, kl_term, kl = sparse_distill_loss(student_logits, y, ids, weights, plogp, self.alpha, self.temperature, self.kl_reduction)
        return loss, {"ce": ce, "kl_term": kl_term, "kl": kl}


# -----------------------------------------------------------------------------------------------
# The same loss, at scale (loss_impl="fused"): chunked, with a hand-written gradient
#
# The plain loss holds (B, L, V) logits for the student and every teacher, and autograd keeps several more
# of that size for the backward: at 345M on a GPU (micro-batch 32 x 128, V = 16k) each is 262 MB in fp32.
# The fused loss never holds more than (chunk, V): it applies the output heads to `chunk` positions at a
# time and, since d loss / d logits is known in closed form, computes the gradient in the same pass.
# tests/test_distill.py checks both fused objectives against the plain ones, in value and every gradient.


def add_ce_gradient_and_backprop(g, log_s, yc, a_ce, hc, W, grad_h_rows, grad_W):
    """The part of a fused chunk both fused losses share: g (the KL part of d loss / d logits, (chunk, V))
    += a_ce * (softmax(s) - onehot(y)), then the chunk's d loss / d h (into grad_h_rows) and d loss / d W."""
    g.add_(log_s.exp(), alpha=a_ce)  # + a_ce * softmax(s)
    g[torch.arange(len(yc), device=g.device), yc] -= a_ce  # - a_ce * onehot(y)
    grad_h_rows.copy_(g @ W.to(g.dtype))  # (chunk, V) @ (V, dim)
    grad_W += (g.t() @ hc.to(g.dtype)).to(grad_W.dtype)  # (V, chunk) @ (chunk, dim)


def fused_outputs(ctx, h, grad_h, grad_W, ce_sum, kl_sum, N, alpha, temperature, kl_denom):
    """Save the gradients for backward; return (loss, ce, kl_term, kl) as they enter and explain the loss."""
    ctx.save_for_backward(grad_h.view_as(h), grad_W)
    ce, kl_term = ce_sum / N, temperature**2 * kl_sum / kl_denom
    loss = alpha * ce + (1 - alpha) * kl_term
    kl = kl_sum / N
    ctx.mark_non_differentiable(ce, kl_term, kl)
    return loss, ce, kl_term, kl


class FusedHeadLoss(torch.autograd.Function):
    """The student's output head, CE and KL to the teacher ensemble in one pass over chunks of positions,
    with the gradient computed during the forward pass (the loss is a scalar, so d loss / d logits is known
    as soon as the logits are). Neither the student's nor the teachers' (B, L, V) logits ever exist in
    full: only (chunk, V) pieces, small enough to stay in cache on a CPU and in memory on a GPU. Autograd
    only sees the student's final hidden states h and head weight W.

    For one position with student logits s, ensemble probabilities p and label y, over N = B L positions:
        d loss / d s = a_ce * (softmax(s) - onehot(y)) + a_kl * (softmax(s / T) - p),
        a_ce = alpha / N,   a_kl = (1 - alpha) * T^2 / T / kl_denominator,   kl_denominator = B ("paper") or N ("mean").
    """

    @staticmethod
    def forward(ctx, h, W, teacher_h, teacher_W, y, weights, alpha, temperature, ensemble, kl_denom, chunk):
        N = y.numel()
        h2, y2 = h.reshape(N, -1), y.reshape(N)  # (N, dim), (N,)
        t_h2 = [t.reshape(N, -1) for t in teacher_h]  # (N, dim_k) each
        a_ce, a_kl = alpha / N, (1 - alpha) * temperature / kl_denom
        grad_h, grad_W = torch.empty_like(h2), torch.zeros_like(W)
        ce_sum = torch.zeros((), device=h.device)
        kl_sum = torch.zeros((), device=h.device)
        for i in range(0, N, chunk):
            hc, yc = h2[i : i + chunk], y2[i : i + chunk]
            s = (hc @ W.t()).float()  # (chunk, V) student logits
            log_p = ensemble_log_probs([(th[i : i + chunk] @ tw.t()) for th, tw in zip(t_h2, teacher_W)], weights, temperature, ensemble)
            log_q = F.log_softmax(s / temperature, dim=-1)
            p = log_p.exp()
            kl_sum += (p * (log_p - log_q)).sum()
            log_s = log_q if temperature == 1.0 else F.log_softmax(s, dim=-1)
            ce_sum -= log_s.gather(1, yc[:, None]).sum()
            g = log_q.exp().sub_(p).mul_(a_kl)  # a_kl * (softmax(s/T) - p)
            add_ce_gradient_and_backprop(g, log_s, yc, a_ce, hc, W, grad_h[i : i + chunk], grad_W)
        return fused_outputs(ctx, h, grad_h, grad_W, ce_sum, kl_sum, N, alpha, temperature, kl_denom)

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_kl_term, grad_kl):
        grad_h, grad_W = ctx.saved_tensors
        return grad_h * grad_loss, grad_W * grad_loss, None, None, None, None, None, None, None, None, None


class FusedDistillation(Distillation):
    """Distillation with FusedHeadLoss: the same loss, chunked, without (B, L, V) logits."""

    def loss(self, student, x, y):
        with torch.no_grad():
            teacher_h = [t(x) for t in self.teachers]  # (B, L, dim_k) final hidden states: small
        h = student(x)  # (B, L, dim): through the (DDP) wrapper's forward
        B, L = y.shape
        W = unwrap(student).output.weight
        loss, ce, kl_term, kl = FusedHeadLoss.apply(h, W, teacher_h, [t.output.weight for t in self.teachers], y, self.weights, self.alpha,
                                                    self.temperature, self.ensemble, B if self.kl_reduction == "paper" else B * L, self.chunk or B * L)
        return loss, {"ce": ce, "kl_term": kl_term, "kl": kl}


class FusedSparseHeadLoss(torch.autograd.Function):
    """FusedHeadLoss with the teachers replaced by a stored sparse target (ids, weights) = p_hat per position.

    For one position with student logits s, label y, sparse target p_hat and its stored sum_v p log p:
        KL_hat     = sum_v p log p - (p_hat . s) / T + logsumexp(s / T)     (unbiased for KL(p || q_T))
        d loss / d s = a_ce (softmax(s) - onehot(y)) + a_kl (softmax(s / T) - p_hat),
        a_ce = alpha / N,   a_kl = (1 - alpha) T^2 / T / kl_denominator   (B: "paper", N = B L: "mean").
    p_hat . s needs only the k stored slots (a gather); the (chunk, V) softmax is the only dense work, as in
    FusedHeadLoss. Duplicate or padded slots (id 0, weight 0) are harmless: the scatter adds."""

    @staticmethod
    def forward(ctx, h, W, y, ids, wts, plogp, alpha, temperature, kl_denom, chunk):
        N = y.numel()
        h2, y2 = h.reshape(N, -1), y.reshape(N)  # (N, dim), (N,)
        ids2, w2 = ids.reshape(N, -1), wts.reshape(N, -1).float()  # (N, k) each
        a_ce, a_kl = alpha / N, (1 - alpha) * temperature / kl_denom
        grad_h, grad_W = torch.empty_like(h2), torch.zeros_like(W)
        ce_sum = torch.zeros((), device=h.device)
        kl_sum = plogp.float().sum()
        for i in range(0, N, chunk):
            hc, yc, ic, wc = h2[i : i + chunk], y2[i : i + chunk], ids2[i : i + chunk], w2[i : i + chunk]
            s = (hc @ W.t()).float()  # (chunk, V) student logits
            lse_t = torch.logsumexp(s / temperature, dim=-1)
            log_q = s / temperature - lse_t[:, None]
            kl_sum += lse_t.sum() - (wc * s.gather(1, ic)).sum() / temperature
            log_s = log_q if temperature == 1.0 else F.log_softmax(s, dim=-1)
            ce_sum -= log_s.gather(1, yc[:, None]).sum()
            g = log_q.exp().mul_(a_kl)  # a_kl * softmax(s/T) (not in place: log_s may be log_q)
            g.scatter_add_(1, ic, wc * -a_kl)  # - a_kl * p_hat
            add_ce_gradient_and_backprop(g, log_s, yc, a_ce, hc, W, grad_h[i : i + chunk], grad_W)
        return fused_outputs(ctx, h, grad_h, grad_W, ce_sum, kl_sum, N, alpha, temperature, kl_denom)

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_kl_term, grad_kl):
        grad_h, grad_W = ctx.saved_tensors
        return grad_h * grad_loss, grad_W * grad_loss, None, None, None, None, None, None, None, None


class FusedCachedDistillation(CachedDistillation):
    """CachedDistillation with FusedSparseHeadLoss: the same sparse loss, chunked, without (B, L, V) logits."""

    def loss(self, student, x, y, ids, weights, plogp):
        h = student(x)  # (B, L, dim): through the (DDP) wrapper's forward
        B, L = y.shape
        W = unwrap(student).output.weight
        loss, ce, kl_term, kl = FusedSparseHeadLoss.apply(h, W, y, ids, weights, plogp, self.alpha, self.temperature,
                                                          B if self.kl_reduction == "paper" else B * L, self.chunk or B * L)
        return loss, {"ce": ce, "kl_term": kl_term, "kl": kl}

def load_teachers(paths, tok_info, data_dir, rt):
    """Frozen, eval-mode teachers on rt.device, all with the data's tokenizer (one-line error otherwise)."""
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
    n = len(cfg.teachers)
    w = list(cfg.teacher_weights) or [1.0] * n
    if len(w) != n or any(not isinstance(x, (int, float)) or x < 0 for x in w) or sum(w) <= 0:
        raise InputError(f"teacher_weights={cfg.teacher_weights}: expected {n} non-negative numbers, not all zero")
    return [x / sum(w) for x in w]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DISTILL_KEYS, argv or ["--help"], __doc__)
    check_train_config(cfg)
    if cfg.cache_only and not cfg.teacher_cache:
        raise InputError("cache_only=True needs --teacher_cache=DIR, the folder of the cache to build (or check)")
    weights = teacher_weights(cfg)
    rt = runtime(cfg)
    _, tok_info = load_tokenizer(cfg.data_dir)
    train_w = Windows(os.path.join(cfg.data_dir, "train.bin"), cfg.seq_len)
    plan_run(cfg, rt.world, train_w.n, corpus=split_words(cfg.data_dir))  # the batch, the run's length, milestones, BabyLM's rules: before any work
    teachers = load_teachers(cfg.teachers, tok_info, cfg.data_dir, rt)
    inputs = run_inputs(cfg.data_dir, cfg.teachers)  # the data and teachers by content: resume compares them, not their paths
    cache = None
    if cfg.teacher_cache:  # a built cache is checked now (header and every file's sha256), a path to build into too
        header = cache_header(cfg, weights, train_w, teacher_sha256=inputs["teachers"])
        if os.path.isfile(os.path.join(cfg.teacher_cache, "header.json")):
            cache = TeacherCache(cfg.teacher_cache, expect=header)
            if rt.master:
                clear_stale_lock(cfg.teacher_cache)
        elif rt.master:
            check_cache_path(cfg.teacher_cache, header)
    if cfg.cache_only and cache is not None:
        print0(f"teacher cache ready in {cfg.teacher_cache} (checked)")
        return None
    inputs["teacher_cache"] = cache_identity(header) if cfg.teacher_cache else None  # a cache is a function of its header
    start = None if cfg.cache_only else start_run(cfg, tok_info, rt, inputs)  # out_dir is taken only after the teachers' work below

    # Each teacher's validation CE on the very windows the student is validated on, once.
    val_w = Windows(os.path.join(cfg.data_dir, "val.bin"), cfg.seq_len)
    val_idx = eval_indices(val_w.n, cfg.eval_windows)
    teacher_val = {f"teacher{k + 1}_val_loss": evaluate(t, val_w, val_idx, cfg.micro_batch_size, rt) for k, t in enumerate(teachers)}
    print0(" | ".join(f"{k} {v:.4f}" for k, v in teacher_val.items()))
    if cfg.teacher_cache and cache is None:  # the teachers run once, here, and never again
        build_cache(lambda lo, hi: teacher_block(teachers, train_w, lo, hi, header, rt, cfg.loss_chunk or 256), header, cfg.teacher_cache, rt, cfg.cache_block)
        cache = TeacherCache(cfg.teacher_cache, expect=header)
    if cfg.cache_only:
        print0(f"teacher cache ready in {cfg.teacher_cache}")
        return None
    if cache is not None:
        del teachers

    take_out_dir(cfg, rt, start)
    torch.manual_seed(cfg.seed)
    student = build_model(config_from_dict(start["model_config"]) if start else model_config(cfg, tok_info)).to(rt.device)
    if start:
        student.load_state_dict(start["model"])
    fused = cfg.loss_impl == "fused"
    if cache is not None:
        objective = (FusedCachedDistillation if fused else CachedDistillation)(student, cache, cfg, teacher_val)
    else:
        objective = (FusedDistillation if fused else Distillation)(student, teachers, weights, cfg, teacher_val)
    summary = train(cfg, rt, student, objective, train_w, tok_info, start=start, inputs=inputs)
    finish(summary, "student", cfg.out_dir)
    print0("teachers: " + ", ".join(f"{v:.4f}" for v in teacher_val.values()))
    if rt.ddp:
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    run_main(main)
