"""Other solutions, and plausible mistakes, for every exercise of EXERCISES.md. tests/test_exercises.py puts each in
place of the repository's function and runs the exercise's grading tests: every solution must pass, every mistake
must fail with a message that names the function. Each is written the way a student might, not the way the
repository does. This file holds solutions: the handout (python tests/test_exercises.py --handout) leaves it out.

VARIANTS maps a function, as the table of EXERCISES.md names it, to its "correct" and "wrong" implementations."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from model import apply_rope

# -----------------------------------------------------------------------------------------------
# 1. RMSNorm.forward


def rmsnorm_divide_by_sqrt(self, x):
    """x / sqrt(mean(x^2) + eps): a division instead of the rsqrt."""
    xf = x.float()
    return (xf / torch.sqrt((xf * xf).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rmsnorm_functional(self, x):
    """PyTorch's own F.rms_norm, the gain applied after the cast back."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def rmsnorm_vector_norm(self, x):
    """Through the Euclidean norm: mean(x^2) = |x|^2 / dim."""
    xf = x.float()
    ms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True) ** 2 / xf.shape[-1]
    return (xf * (ms + self.eps).rsqrt()).type_as(x) * self.weight


def rmsnorm_eps_outside_the_sqrt(self, x):
    """Mistake: x / (sqrt(mean(x^2)) + eps)."""
    xf = x.float()
    return (xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)).type_as(x) * self.weight


def rmsnorm_sum_not_mean(self, x):
    """Mistake: the sum of squares instead of their mean."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rmsnorm_no_gain(self, x):
    """Mistake: the learned weight forgotten."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rmsnorm_over_every_dimension(self, x):
    """Mistake: the mean over the whole tensor, not per position."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean() + self.eps)).type_as(x) * self.weight


# -----------------------------------------------------------------------------------------------
# 2. apply_rope


def rope_complex(x, cos, sin):
    """Each pair (x[j], x[j + half]) as the complex number x[j] + i x[j + half], multiplied by e^(i angle)."""
    half = x.shape[-1] // 2
    xf = x.float()
    z = torch.complex(xf[..., :half].contiguous(), xf[..., half:].contiguous())
    turned = z * torch.complex(cos[:, :half], sin[:, :half])  # the tables' two halves are equal: one angle per pair
    return torch.cat([turned.real, turned.imag], dim=-1).type_as(x)


def rope_written_out(x, cos, sin):
    """The rotation of each half written out: (x1 cos - x2 sin, x2 cos + x1 sin)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    c, s = cos[:, :half], sin[:, :half]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).type_as(x)


def rope_interleaved(x, cos, sin):
    """Mistake: meta-llama's interleaved pairs (x[2j], x[2j + 1]) instead of the half-split convention."""
    half = x.shape[-1] // 2
    xe, xo = x[..., 0::2].float(), x[..., 1::2].float()
    c, s = cos[:, :half], sin[:, :half]
    return torch.stack([xe * c - xo * s, xo * c + xe * s], dim=-1).flatten(-2).type_as(x)


def rope_turns_backwards(x, cos, sin):
    """Mistake: rotate_half as (x2, -x1), a rotation by minus the angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat([x[..., half:], -x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


def rope_cos_and_sin_swapped(x, cos, sin):
    """Mistake: the tables swapped."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * sin + rotated.float() * cos).type_as(x)


# -----------------------------------------------------------------------------------------------
# 3. FeedForward.forward


def swiglu_sigmoid_written_out(self, x):
    """silu(a) = a * sigmoid(a), written out."""
    gate = self.w1(x)
    return self.w2(gate * torch.sigmoid(gate) * self.w3(x))


def swiglu_from_the_weights(self, x):
    """The three projections as matrix products with the weights, silu(a) = a / (1 + exp(-a))."""
    gate, up = x @ self.w1.weight.t(), x @ self.w3.weight.t()
    return (gate / (1 + torch.exp(-gate)) * up) @ self.w2.weight.t()


def swiglu_gate_on_the_wrong_projection(self, x):
    """Mistake: silu on w3 x instead of w1 x."""
    return self.w2(self.w1(x) * F.silu(self.w3(x)))


def swiglu_gelu(self, x):
    """Mistake: GELU (GeGLU) instead of SiLU."""
    return self.w2(F.gelu(self.w1(x)) * self.w3(x))


def swiglu_sigmoid_gate(self, x):
    """Mistake: sigmoid instead of silu (the original GLU)."""
    return self.w2(torch.sigmoid(self.w1(x)) * self.w3(x))


def swiglu_no_up_projection(self, x):
    """Mistake: w2(silu(w1 x)), the w3 branch forgotten."""
    return self.w2(F.silu(self.w1(x)))


# -----------------------------------------------------------------------------------------------
# 4. Attention.forward


def _qkv(self, x, cos, sin, rope_keys=True):
    B, T, _ = x.shape
    q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
    k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
    v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin) if rope_keys else k, v


def _out(self, y):
    B, _, T, _ = y.shape
    return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def attention_by_hand(self, x, cos, sin, causal):
    """Keys and values repeated for each group of query heads, the softmax written out with a -inf mask."""
    q, k, v = _qkv(self, x, cos, sin)
    group, T = self.n_heads // self.n_kv_heads, x.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
    if causal:
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1), float("-inf"))
    return _out(self, torch.softmax(scores, dim=-1) @ v)


def attention_grouped_einsum(self, x, cos, sin, causal):
    """No copies: the query heads viewed as (KV heads, group), one einsum per product, an additive mask."""
    q, k, v = _qkv(self, x, cos, sin)
    B, T = x.shape[:2]
    g = q.reshape(B, self.n_kv_heads, self.n_heads // self.n_kv_heads, T, self.head_dim)
    scores = torch.einsum("bkgtd,bksd->bkgts", g, k) * self.head_dim**-0.5
    if causal:
        scores = scores + torch.full((T, T), float("-inf")).triu(1)
    y = torch.einsum("bkgts,bksd->bkgtd", scores.softmax(-1), v)
    return _out(self, y.reshape(B, self.n_heads, T, self.head_dim))


def attention_unscaled(self, x, cos, sin, causal):
    """Mistake: the scores not divided by sqrt(head_dim)."""
    q, k, v = _qkv(self, x, cos, sin)
    group = self.n_heads // self.n_kv_heads
    y = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), is_causal=causal, scale=1.0)
    return _out(self, y)


def attention_heads_tiled(self, x, cos, sin, causal):
    """Mistake: the KV heads tiled (repeat), so query head h reads KV head h % n_kv_heads, not h // group."""
    q, k, v = _qkv(self, x, cos, sin)
    group = self.n_heads // self.n_kv_heads
    y = F.scaled_dot_product_attention(q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1), is_causal=causal)
    return _out(self, y)


def attention_rope_on_queries_only(self, x, cos, sin, causal):
    """Mistake: RoPE on the queries, the keys left unrotated."""
    q, k, v = _qkv(self, x, cos, sin, rope_keys=False)
    return _out(self, F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True))


def attention_always_causal(self, x, cos, sin, causal):
    """Mistake: the causal flag ignored (the masked-LM epochs of AntLM would not see the future)."""
    q, k, v = _qkv(self, x, cos, sin)
    return _out(self, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))


def attention_mask_off_by_one(self, x, cos, sin, causal):
    """Mistake: the causal mask lets position t see position t + 1."""
    q, k, v = _qkv(self, x, cos, sin)
    T = x.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool).tril(1) if causal else None
    return _out(self, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))


# -----------------------------------------------------------------------------------------------
# 5. Llama.generate


@torch.no_grad()
def generate_gumbel_max(self, idx, max_new_tokens, temperature=1.0, top_k=0, generator=None):
    """The Gumbel-max trick: argmax(logits / T + Gumbel noise) is a sample of softmax(logits / T)."""
    for _ in range(max_new_tokens):
        logits = self(idx[:, -self.config.max_seq_len :])[:, -1].float()
        if temperature > 0:
            if top_k:
                kth = logits.sort(dim=-1, descending=True).values[:, top_k - 1 : top_k]
                logits = torch.where(logits >= kth, logits, float("-inf"))
            u = torch.rand(logits.shape, generator=generator).clamp_(1e-20, 1.0)
            logits = logits / temperature - torch.log(-torch.log(u))
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


@torch.no_grad()
def generate_inverse_cdf(self, idx, max_new_tokens, temperature=1.0, top_k=0, generator=None):
    """Sort the logits, keep the first k, and invert the cumulative distribution with one uniform per row."""
    for _ in range(max_new_tokens):
        logits = self(idx[:, -self.config.max_seq_len :])[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            values, order = logits.sort(dim=-1, descending=True)
            if top_k:
                values, order = values[:, :top_k], order[:, :top_k]
            cdf = torch.softmax(values / temperature, dim=-1).cumsum(-1)
            u = torch.rand(len(idx), 1, generator=generator) * cdf[:, -1:]
            pos = torch.searchsorted(cdf, u, right=True).clamp_(max=values.shape[1] - 1)
            nxt = order.gather(1, pos)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@torch.no_grad()
def generate_top_k_then_multinomial(self, idx, max_new_tokens, temperature=1.0, top_k=0, generator=None):
    """torch.topk, a draw among the k, then the drawn position mapped back to its token id."""
    V = self.config.vocab_size
    for _ in range(max_new_tokens):
        logits = self(idx[:, -self.config.max_seq_len :])[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            values, ids = logits.topk(top_k if top_k else V, dim=-1)
            nxt = ids.gather(1, torch.multinomial(torch.softmax(values / temperature, -1), 1, generator=generator))
        idx = torch.cat([idx, nxt], dim=1)
    return idx


def _generate_with(pick, name, doc):
    """A generate loop around pick(logits (B, V), temperature, top_k, generator) -> next ids (B, 1): the mistakes below
    differ from a correct generate only in that step."""
    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, generator=None):
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.max_seq_len :])[:, -1].float()
            nxt = logits.argmax(-1, keepdim=True) if temperature == 0 else pick(logits, temperature, top_k, generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
    generate.__name__, generate.__doc__ = name, doc
    return generate


def _drop_below_kth(logits, top_k, strict=True):
    if not top_k:
        return logits
    kth = logits.topk(top_k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth if strict else logits <= kth, float("-inf"))


generate_temperature_ignored = _generate_with(
    lambda logits, T, k, g: torch.multinomial(F.softmax(_drop_below_kth(logits, k), -1), 1, generator=g),
    "generate_temperature_ignored", "Mistake: samples softmax(logits), whatever the temperature.")
generate_top_k_drops_the_kth = _generate_with(
    lambda logits, T, k, g: torch.multinomial(F.softmax(_drop_below_kth(logits / T, k, strict=False), -1), 1, generator=g),
    "generate_top_k_drops_the_kth", "Mistake: masks the logits <= the k-th largest, keeping k - 1 tokens.")
generate_position_in_the_top_k = _generate_with(
    lambda logits, T, k, g: torch.multinomial(F.softmax(logits.topk(k or logits.shape[-1], -1).values / T, -1), 1, generator=g),
    "generate_position_in_the_top_k", "Mistake: returns the drawn position among the top k, not its token id.")
generate_global_generator = _generate_with(
    lambda logits, T, k, g: torch.multinomial(F.softmax(_drop_below_kth(logits / T, k), -1), 1),
    "generate_global_generator", "Mistake: draws from the global generator, not the one given.")


@torch.no_grad()
def generate_keeps_the_first_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=0, generator=None):
    """Mistake: crops the context to its first max_seq_len tokens instead of its last."""
    for _ in range(max_new_tokens):
        logits = self(idx[:, : self.config.max_seq_len])[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial(F.softmax(_drop_below_kth(logits / temperature, top_k), -1), 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


# -----------------------------------------------------------------------------------------------
# 6. ensemble_log_probs


def _log_softmax_by_hand(a):
    m = a.max(dim=-1, keepdim=True).values
    return a - m - torch.log(torch.exp(a - m).sum(dim=-1, keepdim=True))


def _fp32(t):
    return t if t.dtype == torch.float64 else t.float()


def ensemble_by_hand(teacher_logits, weights, temperature, ensemble):
    """Both rules with the log-sum-exp written out (the maximum subtracted first)."""
    if ensemble == "logits":
        mean = torch.zeros_like(_fp32(teacher_logits[0]))
        for w, z in zip(weights, teacher_logits):
            mean = mean + w * _fp32(z)
        return _log_softmax_by_hand(mean / temperature)
    terms = torch.stack([math.log(w) + _log_softmax_by_hand(_fp32(z) / temperature) for w, z in zip(weights, teacher_logits) if w > 0])
    m = terms.max(dim=0).values
    return m + torch.log(torch.exp(terms - m).sum(dim=0))


def ensemble_logaddexp(teacher_logits, weights, temperature, ensemble):
    """The textbook z/T - logsumexp(z/T) for the mean of logits; for the mixture, one teacher at a time with logaddexp."""
    if ensemble == "logits":
        zbar = torch.stack([w * _fp32(z) for w, z in zip(weights, teacher_logits)]).sum(0) / temperature
        return zbar - torch.logsumexp(zbar, dim=-1, keepdim=True)
    total = None
    for w, z in zip(weights, teacher_logits):
        term = math.log(w) + torch.log_softmax(_fp32(z) / temperature, dim=-1)
        total = term if total is None else torch.logaddexp(total, term)
    return total


def ensemble_weights_ignored(teacher_logits, weights, temperature, ensemble):
    """Mistake: the plain mean over teachers, the weights ignored."""
    K = len(teacher_logits)
    if ensemble == "logits":
        return F.log_softmax(sum(_fp32(z) for z in teacher_logits) / K / temperature, dim=-1)
    return torch.logsumexp(torch.stack([F.log_softmax(_fp32(z) / temperature, -1) for z in teacher_logits]), 0) - math.log(K)


def ensemble_temperature_ignored(teacher_logits, weights, temperature, ensemble):
    """Mistake: the teachers' distributions at T = 1."""
    if ensemble == "logits":
        return F.log_softmax(sum(w * _fp32(z) for w, z in zip(weights, teacher_logits)), dim=-1)
    return torch.logsumexp(torch.stack([math.log(w) + F.log_softmax(_fp32(z), -1) for w, z in zip(weights, teacher_logits)]), 0)


def ensemble_mixture_in_probability_space(teacher_logits, weights, temperature, ensemble):
    """Mistake: the mixture's log taken after the probabilities are added (log 0 = -inf where they underflow)."""
    if ensemble == "logits":
        return F.log_softmax(sum(w * _fp32(z) for w, z in zip(weights, teacher_logits)) / temperature, dim=-1)
    return torch.log(sum(w * F.softmax(_fp32(z) / temperature, dim=-1) for w, z in zip(weights, teacher_logits)))


def ensemble_mixture_of_log_probs(teacher_logits, weights, temperature, ensemble):
    """Mistake: "probs" as the weighted mean of log-probabilities (a geometric mean, not renormalised)."""
    if ensemble == "logits":
        return F.log_softmax(sum(w * _fp32(z) for w, z in zip(weights, teacher_logits)) / temperature, dim=-1)
    return sum(w * F.log_softmax(_fp32(z) / temperature, dim=-1) for w, z in zip(weights, teacher_logits))


def ensemble_probabilities_not_logs(teacher_logits, weights, temperature, ensemble):
    """Mistake: returns p instead of log p."""
    return ensemble_logaddexp(teacher_logits, weights, temperature, ensemble).exp()


# -----------------------------------------------------------------------------------------------
# 7. distill_loss (the target from distill.ensemble_log_probs, as a student would call it)


def _target(teacher_logits, weights, temperature, ensemble):
    import distill

    return distill.ensemble_log_probs(teacher_logits, weights, temperature, ensemble)


def _reduce(kl_sum, B, L, temperature, kl_reduction, ce, alpha):
    kl_term = temperature**2 * kl_sum / (B if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


def distill_loss_kl_div_none(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """F.kl_div with reduction="none", summed by hand; F.cross_entropy for the CE."""
    B, L, V = student_logits.shape
    s = _fp32(student_logits)
    log_p = _target(teacher_logits, weights, temperature, ensemble)
    kl_sum = F.kl_div(F.log_softmax(s / temperature, dim=-1), log_p, reduction="none", log_target=True).sum()
    ce = F.cross_entropy(s.reshape(-1, V), y.reshape(-1))
    return _reduce(kl_sum, B, L, temperature, kl_reduction, ce, alpha)


def distill_loss_logsumexp_by_hand(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """log q with the log-sum-exp written out; the KL as sum p (log p - log q)."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    log_p = _target(teacher_logits, weights, temperature, ensemble)
    log_q = _log_softmax_by_hand(s / temperature)
    log_q1 = _log_softmax_by_hand(s)
    ce = -log_q1.gather(-1, y.unsqueeze(-1)).mean()
    kl_sum = (log_p.exp() * (log_p - log_q)).sum()
    return _reduce(kl_sum, B, L, temperature, kl_reduction, ce, alpha)


def distill_loss_textbook(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """The textbook log q = s/T - logsumexp(s/T), and KL = sum p log p - sum p log q."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    log_p = _target(teacher_logits, weights, temperature, ensemble)
    log_q = s / temperature - torch.logsumexp(s / temperature, dim=-1, keepdim=True)
    p = log_p.exp()
    kl_sum = (p * log_p).sum() - (p * log_q).sum()
    ce = (torch.logsumexp(s, -1) - s.gather(-1, y.unsqueeze(-1)).squeeze(-1)).mean()
    return _reduce(kl_sum, B, L, temperature, kl_reduction, ce, alpha)


def distill_loss_per_position(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """A loop over the positions, as the formula reads."""
    B, L, V = student_logits.shape
    log_p = _target(teacher_logits, weights, temperature, ensemble)
    ce = kl_sum = 0.0
    for b in range(B):
        for t in range(L):
            s = _fp32(student_logits[b, t])
            ce = ce - torch.log_softmax(s, -1)[y[b, t]]
            kl_sum = kl_sum + (log_p[b, t].exp() * (log_p[b, t] - torch.log_softmax(s / temperature, -1))).sum()
    return _reduce(kl_sum, B, L, temperature, kl_reduction, ce / (B * L), alpha)


def _kl_sum_and_ce(student_logits, teacher_logits, y, weights, temperature, ensemble, ce_temperature=1.0, reverse=False):
    B, L, V = student_logits.shape
    s = student_logits.float()
    log_p = _target(teacher_logits, weights, temperature, ensemble)
    log_q = F.log_softmax(s / temperature, -1)
    kl = F.kl_div(log_p, log_q, log_target=True, reduction="sum") if reverse else F.kl_div(log_q, log_p, log_target=True, reduction="sum")
    return kl, F.cross_entropy((s / ce_temperature).reshape(-1, V), y.reshape(-1))


def distill_loss_no_t_squared(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """Mistake: the KL not multiplied by T^2."""
    B, L, _ = student_logits.shape
    kl_sum, ce = _kl_sum_and_ce(student_logits, teacher_logits, y, weights, temperature, ensemble)
    kl_term = kl_sum / (B if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


def distill_loss_t_not_squared(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """Mistake: T instead of T^2."""
    B, L, _ = student_logits.shape
    kl_sum, ce = _kl_sum_and_ce(student_logits, teacher_logits, y, weights, temperature, ensemble)
    kl_term = temperature * kl_sum / (B if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


def distill_loss_ce_at_temperature(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """Mistake: the CE of softmax(s / T) instead of softmax(s)."""
    B, L, _ = student_logits.shape
    kl_sum, ce = _kl_sum_and_ce(student_logits, teacher_logits, y, weights, temperature, ensemble, ce_temperature=temperature)
    return _reduce(kl_sum, B, L, temperature, kl_reduction, ce, alpha)


def distill_loss_reversed_kl(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """Mistake: KL(q || p) instead of KL(p || q)."""
    B, L, _ = student_logits.shape
    kl_sum, ce = _kl_sum_and_ce(student_logits, teacher_logits, y, weights, temperature, ensemble, reverse=True)
    return _reduce(kl_sum, B, L, temperature, kl_reduction, ce, alpha)


def distill_loss_mean_for_paper(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """Mistake: the per-token mean KL whatever kl_reduction says (the paper reduction sums over positions / B)."""
    B, L, _ = student_logits.shape
    kl_sum, ce = _kl_sum_and_ce(student_logits, teacher_logits, y, weights, temperature, ensemble)
    return _reduce(kl_sum, B, L, temperature, "mean", ce, alpha)


def distill_loss_paper_over_l(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """Mistake: the paper reduction divides by L (the sequence length) instead of B."""
    B, L, _ = student_logits.shape
    kl_sum, ce = _kl_sum_and_ce(student_logits, teacher_logits, y, weights, temperature, ensemble)
    kl_term = temperature**2 * kl_sum / (L if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


def distill_loss_detached_student(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """Mistake: the student's logits detached, as the teachers' are (no gradient reaches the student)."""
    return distill_loss_kl_div_none(student_logits.detach(), teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction)


def distill_loss_log_of_softmax(student_logits, teacher_logits, y, weights, alpha, temperature, ensemble, kl_reduction):
    """Mistake: log q as the log of a softmax (-inf where the softmax underflows)."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    log_p = _target(teacher_logits, weights, temperature, ensemble)
    kl_sum = (log_p.exp() * (log_p - torch.log(torch.softmax(s / temperature, -1)))).sum()
    return _reduce(kl_sum, B, L, temperature, kl_reduction, F.cross_entropy(s.reshape(-1, V), y.reshape(-1)), alpha)


# -----------------------------------------------------------------------------------------------
# 8. lr_at


def lr_cos_squared(step, cfg, max_iters):
    """The half cosine as cos^2: (1 + cos(pi p)) / 2 = cos(pi p / 2)^2."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    p = min(step - cfg.warmup_iters, max_iters - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * math.cos(math.pi * p / 2) ** 2


def lr_in_fp32(step, cfg, max_iters):
    """The schedule in fp32 tensors, read out as a Python number."""
    s = torch.tensor(float(step))
    warm = cfg.lr * (s + 1) / cfg.warmup_iters
    p = ((s - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters)).clamp(0.0, 1.0)
    decayed = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + torch.cos(torch.pi * p))
    return float(torch.where(s < cfg.warmup_iters, warm, decayed))


def lr_warmup_from_zero(step, cfg, max_iters):
    """Mistake: the warmup starts at 0 (lr step / warmup_iters) and reaches lr one step late."""
    if step < cfg.warmup_iters:
        return cfg.lr * step / cfg.warmup_iters
    progress = min(1.0, (step - cfg.warmup_iters) / (max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def lr_cosine_over_all_steps(step, cfg, max_iters):
    """Mistake: the cosine's progress counted from step 0, not from the end of the warmup."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max_iters))) * (cfg.lr - cfg.min_lr)


def lr_no_floor_after_max_iters(step, cfg, max_iters):
    """Mistake: the cosine goes on after max_iters (and climbs back up)."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / (max_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def lr_linear_decay(step, cfg, max_iters):
    """Mistake: a linear decay instead of the cosine."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    progress = min(1.0, (step - cfg.warmup_iters) / (max_iters - cfg.warmup_iters))
    return cfg.lr - progress * (cfg.lr - cfg.min_lr)


# -----------------------------------------------------------------------------------------------
# 9. EpochSampler.indices


def sampler_numpy_permutation(self, step, micro_step, rank):
    """No cache: numpy's generator seeded by the pair (seed, epoch), the global batch reshaped (micro-steps, ranks, micro)."""
    epoch, within = divmod(step, self.steps_per_epoch)
    perm = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(self.n))
    batch = perm[within * self.batch : (within + 1) * self.batch]
    return batch.view(-1, self.world, self.micro)[micro_step, rank]


def sampler_rank_major(self, step, micro_step, rank):
    """Each rank takes a contiguous share of the global batch, micro-batch after micro-batch (another valid layout)."""
    epoch = step // self.steps_per_epoch
    g = torch.Generator().manual_seed(1_000_003 * self.seed + epoch)
    perm = torch.randperm(self.n, generator=g)
    per_rank = self.batch // self.world
    start = (step % self.steps_per_epoch) * self.batch + rank * per_rank + micro_step * self.micro
    return perm[start : start + self.micro]


def sampler_same_order_every_epoch(self, step, micro_step, rank):
    """Mistake: one permutation, seeded by the seed only, for every epoch."""
    perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
    start = (step % self.steps_per_epoch) * self.batch + (micro_step * self.world + rank) * self.micro
    return perm[start : start + self.micro]


def sampler_no_shuffle(self, step, micro_step, rank):
    """Mistake: the windows in order."""
    start = (step % self.steps_per_epoch) * self.batch + (micro_step * self.world + rank) * self.micro
    return torch.arange(start, start + self.micro)


def sampler_rank_ignored(self, step, micro_step, rank):
    """Mistake: every rank takes the same micro-batch."""
    perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + step // self.steps_per_epoch))
    start = (step % self.steps_per_epoch) * self.batch + micro_step * self.micro * self.world
    return perm[start : start + self.micro]


def sampler_generator_that_advances(self, step, micro_step, rank):
    """Mistake: one generator, advanced at every new epoch: epoch e's order depends on which epochs were asked before."""
    epoch = step // self.steps_per_epoch
    if getattr(self, "_variant_epoch", None) != epoch:
        if not hasattr(self, "_variant_g"):
            self._variant_g = torch.Generator().manual_seed(self.seed)
        self._variant_epoch, self._variant_perm = epoch, torch.randperm(self.n, generator=self._variant_g)
    start = (step % self.steps_per_epoch) * self.batch + (micro_step * self.world + rank) * self.micro
    return self._variant_perm[start : start + self.micro]


def sampler_no_wrap(self, step, micro_step, rank):
    """Mistake: the step not taken modulo the epoch's length (the second epoch reads past the permutation's end)."""
    perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + step // self.steps_per_epoch))
    start = step * self.batch + (micro_step * self.world + rank) * self.micro
    return perm[start : start + self.micro]


# -----------------------------------------------------------------------------------------------
# 10. mask_tokens


def _shifted_targets(y, select):
    targets = torch.full_like(y, -1)
    targets[:, :-1] = torch.where(select[:, 1:], y[:, :-1], -1)
    return targets


def masking_one_uniform(x, y, probability, mask_id, n_regular, generator):
    """One uniform u per position decides everything: u < p selects, and u / p in [0, .8), [.8, .9), [.9, 1) picks the action."""
    u = torch.rand(x.shape, generator=generator)
    u[:, 0] = 1.0  # position 0 is never selected
    random_tokens = torch.randint(0, n_regular, x.shape, generator=generator)
    select = u < probability
    out = x.clone()
    out[u < 0.8 * probability] = mask_id
    swap = (u >= 0.8 * probability) & select & (u < 0.9 * probability)
    out[swap] = random_tokens[swap]
    return out, _shifted_targets(y, select)


def masking_bernoulli(x, y, probability, mask_id, n_regular, generator):
    """Hugging Face's DataCollatorForLanguageModeling: nested Bernoulli draws (0.8 mask, then half of the rest random)."""
    select = torch.bernoulli(torch.full(x.shape, probability), generator=generator).bool()
    select[:, 0] = False
    replaced = torch.bernoulli(torch.full(x.shape, 0.8), generator=generator).bool() & select
    randomised = torch.bernoulli(torch.full(x.shape, 0.5), generator=generator).bool() & select & ~replaced
    out = torch.where(replaced, torch.full_like(x, mask_id), x)
    out = torch.where(randomised, torch.randint(n_regular, x.shape, generator=generator), out)
    return out, _shifted_targets(y, select)


def _mask_with(x, select, action, random_tokens, mask_id):
    out = x.clone()
    out[select & (action < 0.8)] = mask_id
    swap = select & (action >= 0.8) & (action < 0.9)
    out[swap] = random_tokens[swap]
    return out


def masking_not_shifted(x, y, probability, mask_id, n_regular, generator):
    """Mistake: output t predicts the token at t (BERT's read-out), not t + 1."""
    select = torch.rand(x.shape, generator=generator) < probability
    select[:, 0] = False
    action, random_tokens = torch.rand(x.shape, generator=generator), torch.randint(0, n_regular, x.shape, generator=generator)
    return _mask_with(x, select, action, random_tokens, mask_id), torch.where(select, x, -1)


def masking_position_zero_too(x, y, probability, mask_id, n_regular, generator):
    """Mistake: position 0 may be selected (no output predicts it: it is masked without a target)."""
    select = torch.rand(x.shape, generator=generator) < probability
    action, random_tokens = torch.rand(x.shape, generator=generator), torch.randint(0, n_regular, x.shape, generator=generator)
    return _mask_with(x, select, action, random_tokens, mask_id), _shifted_targets(y, select)


def masking_specials_as_random_tokens(x, y, probability, mask_id, n_regular, generator):
    """Mistake: random replacements drawn from every id below <|mask|>, special tokens included."""
    select = torch.rand(x.shape, generator=generator) < probability
    select[:, 0] = False
    action, random_tokens = torch.rand(x.shape, generator=generator), torch.randint(0, mask_id, x.shape, generator=generator)
    return _mask_with(x, select, action, random_tokens, mask_id), _shifted_targets(y, select)


def masking_no_random_tokens(x, y, probability, mask_id, n_regular, generator):
    """Mistake: 90% <|mask|> and 10% kept, no random replacements."""
    select = torch.rand(x.shape, generator=generator) < probability
    select[:, 0] = False
    out = x.clone()
    out[select & (torch.rand(x.shape, generator=generator) < 0.9)] = mask_id
    return out, _shifted_targets(y, select)


def masking_ignore_index_minus_100(x, y, probability, mask_id, n_regular, generator):
    """Mistake: Hugging Face's -100 for "no target" (train.py's loss ignores -1)."""
    out, targets = masking_one_uniform(x, y, probability, mask_id, n_regular, generator)
    return out, targets.masked_fill(targets == -1, -100)


def masking_global_generator(x, y, probability, mask_id, n_regular, generator):
    """Mistake: the draws from the global generator."""
    select = torch.rand(x.shape) < probability
    select[:, 0] = False
    return _mask_with(x, select, torch.rand(x.shape), torch.randint(0, n_regular, x.shape), mask_id), _shifted_targets(y, select)


# -----------------------------------------------------------------------------------------------
# 11. sparse_target


def sparse_target_dense_counts(log_p, k, method, u=None, proposal_temperature=1.0):
    """Draws by counting the cumulative probabilities below u; counts in a dense (N, V) table; the drawn ids gathered
    in increasing order."""
    N, V = log_p.shape
    if method == "topk":
        p = log_p.exp()
        top = p.sort(dim=-1, descending=True)
        w = top.values[:, :k]
        return top.indices[:, :k], w / w.sum(-1, keepdim=True)
    log_r = F.log_softmax(log_p / proposal_temperature, dim=-1)
    cdf = log_r.double().exp().cumsum(-1)  # float64: the tail's intervals stay exact
    draws = (cdf.unsqueeze(1) <= (u.double() * cdf[:, -1:]).unsqueeze(-1)).sum(-1).clamp(max=V - 1)  # first v with cdf_v > u
    counts = torch.zeros(N, V, dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    order = torch.argsort((counts == 0).to(torch.int8), dim=-1, stable=True)[:, :k]  # drawn ids first, in increasing order
    c = counts.gather(1, order)
    ids = torch.where(c > 0, order, 0)
    w = c / k * (log_p.double().gather(1, ids) - log_r.double().gather(1, ids)).exp()
    return ids, torch.where(c > 0, w, 0.0).float()


def sparse_target_unique_keys(log_p, k, method, u=None, proposal_temperature=1.0):
    """torch.searchsorted for the draws, then torch.unique over (position, token) keys for the counts, each position's
    distinct tokens placed in its slots 0, 1, ...; top-k through a sort."""
    N, V = log_p.shape
    if method == "topk":
        vals, ids = log_p.double().sort(dim=-1, descending=True)
        w = vals[:, :k].exp()
        return ids[:, :k], (w / w.sum(-1, keepdim=True)).float()
    r = torch.softmax(log_p.double() / proposal_temperature, dim=-1)
    cdf = r.cumsum(-1)
    drawn = torch.searchsorted(cdf, u.double() * cdf[:, -1:], right=True).clamp(max=V - 1)
    keys, counts = torch.unique(torch.arange(N)[:, None] * V + drawn, return_counts=True)  # sorted by position, then token
    row, token = keys // V, keys % V
    slot = torch.arange(len(keys)) - torch.searchsorted(keys, row * V)  # rank among the position's distinct tokens
    ids, w = torch.zeros(N, k, dtype=torch.int64), torch.zeros(N, k, dtype=torch.float64)
    ids[row, slot] = token
    w[row, slot] = counts / k * log_p.double()[row, token].exp() / r[row, token]
    return ids, w.float()


def _draws(log_p, u, log_r):
    cdf = log_r.exp().double().cumsum(-1)
    return torch.searchsorted(cdf, (u.double() * cdf[:, -1:]).contiguous(), right=True).clamp_(max=log_p.shape[1] - 1)


def _unique_slots(draws, k):
    draws = draws.sort(dim=-1).values
    new = torch.ones_like(draws, dtype=torch.bool)
    new[:, 1:] = draws[:, 1:] != draws[:, :-1]
    slot = new.long().cumsum(-1) - 1
    ids = torch.zeros_like(draws).scatter_(1, slot, draws)
    counts = torch.zeros(draws.shape[0], k, dtype=torch.float64).scatter_add_(1, slot, torch.ones(draws.shape, dtype=torch.float64))
    return ids, counts


def sparse_target_no_importance_weights(log_p, k, method, u=None, proposal_temperature=1.0):
    """Mistake: weights count / k even when the draws come from a proposal r != p (the factor p / r forgotten)."""
    if method == "topk":
        return sparse_target_dense_counts(log_p, k, method)
    ids, counts = _unique_slots(_draws(log_p, u, F.log_softmax(log_p / proposal_temperature, -1)), k)
    return ids, (counts / k).float()


def sparse_target_counts_ignored(log_p, k, method, u=None, proposal_temperature=1.0):
    """Mistake: each distinct token weighs p / r / k, however many times it was drawn."""
    if method == "topk":
        return sparse_target_dense_counts(log_p, k, method)
    log_r = F.log_softmax(log_p / proposal_temperature, -1)
    ids, counts = _unique_slots(_draws(log_p, u, log_r), k)
    w = (counts > 0).double() / k * (log_p.double().gather(1, ids) - log_r.double().gather(1, ids)).exp()
    return ids, w.float()


def sparse_target_self_normalised(log_p, k, method, u=None, proposal_temperature=1.0):
    """Mistake: the importance weights renormalised to sum to 1 (self-normalised importance sampling: biased)."""
    ids, w = sparse_target_dense_counts(log_p, k, method, u, proposal_temperature)
    return ids, w / w.sum(-1, keepdim=True)


def sparse_target_drawn_from_p(log_p, k, method, u=None, proposal_temperature=1.0):
    """Mistake: the draws from p itself, weighted by p / r as if they came from the proposal."""
    if method == "topk":
        return sparse_target_dense_counts(log_p, k, method)
    log_r = F.log_softmax(log_p / proposal_temperature, -1)
    ids, counts = _unique_slots(_draws(log_p, u, log_p), k)
    return ids, (counts / k * (log_p.double().gather(1, ids) - log_r.double().gather(1, ids)).exp()).float()


def sparse_target_topk_not_renormalised(log_p, k, method, u=None, proposal_temperature=1.0):
    """Mistake: top-k keeps the probabilities as they are (their sum < 1)."""
    if method == "topk":
        vals, ids = log_p.topk(k, dim=-1)
        return ids, vals.exp()
    return sparse_target_dense_counts(log_p, k, method, u, proposal_temperature)


# -----------------------------------------------------------------------------------------------
# 12. sparse_distill_loss


def _sparse_reduce(ce, kl_sum, B, L, alpha, temperature, kl_reduction):
    kl_term = temperature**2 * kl_sum / (B if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


def sparse_loss_dense_target(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """p_hat scattered (added) into a dense (B, L, V) tensor, then the dense formula."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    p_hat = torch.zeros_like(s).scatter_add_(-1, ids, weights.float())
    kl_sum = plogp.float().sum() - (p_hat * s).sum() / temperature + torch.logsumexp(s / temperature, -1).sum()
    return _sparse_reduce(F.cross_entropy(s.reshape(-1, V), y.reshape(-1)), kl_sum, B, L, alpha, temperature, kl_reduction)


def sparse_loss_by_hand(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """The log-sum-exps written out, the slots' term as an einsum over the gathered logits."""
    B, L, V = student_logits.shape
    s = student_logits.double() if student_logits.dtype == torch.float64 else student_logits.float()

    def lse(a):
        m = a.max(-1, keepdim=True).values
        return (m + torch.log(torch.exp(a - m).sum(-1, keepdim=True))).squeeze(-1)

    ce = (lse(s) - s.gather(-1, y.unsqueeze(-1)).squeeze(-1)).mean()
    slots_term = torch.einsum("blk,blk->", weights.to(s.dtype), s.gather(-1, ids))
    kl_sum = plogp.to(s.dtype).sum() - slots_term / temperature + lse(s / temperature).sum()
    return _sparse_reduce(ce, kl_sum, B, L, alpha, temperature, kl_reduction)


def sparse_loss_per_position(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """A loop over positions and slots."""
    B, L, V = student_logits.shape
    ce = kl_sum = 0.0
    for b in range(B):
        for t in range(L):
            s = student_logits[b, t].float()
            ce = ce + torch.logsumexp(s, 0) - s[y[b, t]]
            dot = sum(weights[b, t, j].float() * s[ids[b, t, j]] for j in range(ids.shape[-1]))
            kl_sum = kl_sum + plogp[b, t].float() - dot / temperature + torch.logsumexp(s / temperature, 0)
    return _sparse_reduce(ce / (B * L), kl_sum, B, L, alpha, temperature, kl_reduction)


def sparse_loss_log_softmax_of_slots(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """Mistake: - sum over slots of w log q: the log-sum-exp then weighs sum(w), not 1 (wrong when the weights do not sum to 1)."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    log_q = F.log_softmax(s / temperature, -1)
    kl_sum = plogp.float().sum() - (weights.float() * log_q.gather(-1, ids)).sum()
    return _sparse_reduce(F.cross_entropy(s.reshape(-1, V), y.reshape(-1)), kl_sum, B, L, alpha, temperature, kl_reduction)


def sparse_loss_scatter_not_add(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """Mistake: p_hat written with scatter, so a repeated id keeps one slot's weight instead of their sum."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    p_hat = torch.zeros_like(s).scatter_(-1, ids, weights.float())
    kl_sum = plogp.float().sum() - (p_hat * s).sum() / temperature + torch.logsumexp(s / temperature, -1).sum()
    return _sparse_reduce(F.cross_entropy(s.reshape(-1, V), y.reshape(-1)), kl_sum, B, L, alpha, temperature, kl_reduction)


def sparse_loss_slots_not_over_t(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """Mistake: the slots' term (p_hat . s) not divided by T."""
    B, L, V = student_logits.shape
    s = student_logits.float()
    kl_sum = plogp.float().sum() - (weights.float() * s.gather(-1, ids)).sum() + torch.logsumexp(s / temperature, -1).sum()
    return _sparse_reduce(F.cross_entropy(s.reshape(-1, V), y.reshape(-1)), kl_sum, B, L, alpha, temperature, kl_reduction)


def sparse_loss_no_t_squared(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """Mistake: the KL not multiplied by T^2."""
    loss, ce, kl_term, kl = sparse_loss_dense_target(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction)
    kl_term = kl_term / temperature**2
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl


def sparse_loss_plogp_forgotten(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """Mistake: the sum p log p term left out (the gradient is right, the logged KL is not)."""
    return sparse_loss_dense_target(student_logits, y, ids, weights, torch.zeros_like(plogp), alpha, temperature, kl_reduction)


# -----------------------------------------------------------------------------------------------
# 13. score_batch


def _right_padded(items, pad_id):
    T = max(len(ids) for _, ids in items)
    x = torch.full((len(items), T), pad_id, dtype=torch.long)
    for b, (ctx, ids) in enumerate(items):
        x[b, : len(ids)] = torch.tensor([ctx] + ids[:-1])
    return x


@torch.no_grad()
def score_batch_cross_entropy(model, items, pad_id, device):
    """Targets -100 on the pads, F.cross_entropy(reduction="none") ignores them."""
    x = _right_padded(items, pad_id).to(device)
    y = torch.full(x.shape, -100, dtype=torch.long)
    for b, (_, ids) in enumerate(items):
        y[b, : len(ids)] = torch.tensor(ids)
    logits = model(x).float()
    nll = F.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none", ignore_index=-100)
    return (-nll.sum(dim=1)).tolist()


@torch.no_grad()
def score_batch_loop_over_rows(model, items, pad_id, device):
    """One forward pass, then each sentence's own positions read out in a loop."""
    logp = torch.log_softmax(model(_right_padded(items, pad_id).to(device)).double(), dim=-1)
    return [logp[b, torch.arange(len(ids)), torch.tensor(ids)].sum().item() for b, (_, ids) in enumerate(items)]


@torch.no_grad()
def score_batch_no_mask(model, items, pad_id, device):
    """Mistake: the padded positions' log-probabilities (of the pad token) are summed too."""
    x = _right_padded(items, pad_id)
    y = torch.full(x.shape, pad_id, dtype=torch.long)
    for b, (_, ids) in enumerate(items):
        y[b, : len(ids)] = torch.tensor(ids)
    logp = F.log_softmax(model(x.to(device)).float(), dim=-1)
    return logp.gather(-1, y.unsqueeze(-1).to(device)).squeeze(-1).sum(-1).tolist()


@torch.no_grad()
def score_batch_left_padded(model, items, pad_id, device):
    """Mistake: left padding (the real tokens move to later positions and see the pads before them)."""
    T = max(len(ids) for _, ids in items)
    x = torch.full((len(items), T), pad_id, dtype=torch.long)
    for b, (ctx, ids) in enumerate(items):
        x[b, T - len(ids) :] = torch.tensor([ctx] + ids[:-1])
    logp = F.log_softmax(model(x.to(device)).float(), dim=-1)
    return [logp[b, T - len(ids) + torch.arange(len(ids)), torch.tensor(ids)].sum().item() for b, (_, ids) in enumerate(items)]


@torch.no_grad()
def score_batch_without_the_context(model, items, pad_id, device):
    """Mistake: the sentence alone as input, so its first token is never scored (and nothing sees the context token)."""
    T = max(len(ids) for _, ids in items)
    x = torch.full((len(items), T), pad_id, dtype=torch.long)
    for b, (_, ids) in enumerate(items):
        x[b, : len(ids)] = torch.tensor(ids)
    logp = F.log_softmax(model(x.to(device)).float(), dim=-1)
    return [logp[b, torch.arange(len(ids) - 1), torch.tensor(ids[1:], dtype=torch.long)].sum().item() for b, (_, ids) in enumerate(items)]


@torch.no_grad()
def score_batch_mask_from_the_pad_token(model, items, pad_id, device):
    """Mistake: the mask taken from the targets' token (!= pad_id) rather than from the lengths."""
    x = _right_padded(items, pad_id)
    y = torch.full(x.shape, pad_id, dtype=torch.long)
    for b, (_, ids) in enumerate(items):
        y[b, : len(ids)] = torch.tensor(ids)
    logp = F.log_softmax(model(x.to(device)).float(), dim=-1).gather(-1, y.unsqueeze(-1).to(device)).squeeze(-1)
    return (logp * (y != pad_id).to(device)).sum(-1).tolist()


@torch.no_grad()
def score_batch_logits_not_log_probs(model, items, pad_id, device):
    """Mistake: the raw logits summed, no log-softmax."""
    x = _right_padded(items, pad_id)
    logits = model(x.to(device)).float()
    return [logits[b, torch.arange(len(ids)), torch.tensor(ids)].sum().item() for b, (_, ids) in enumerate(items)]


# -----------------------------------------------------------------------------------------------

VARIANTS = {
    "RMSNorm.forward": {"correct": [rmsnorm_divide_by_sqrt, rmsnorm_functional, rmsnorm_vector_norm],
                        "wrong": [rmsnorm_eps_outside_the_sqrt, rmsnorm_sum_not_mean, rmsnorm_no_gain, rmsnorm_over_every_dimension]},
    "apply_rope": {"correct": [rope_complex, rope_written_out],
                   "wrong": [rope_interleaved, rope_turns_backwards, rope_cos_and_sin_swapped]},
    "FeedForward.forward": {"correct": [swiglu_sigmoid_written_out, swiglu_from_the_weights],
                            "wrong": [swiglu_gate_on_the_wrong_projection, swiglu_gelu, swiglu_sigmoid_gate, swiglu_no_up_projection]},
    "Attention.forward": {"correct": [attention_by_hand, attention_grouped_einsum],
                          "wrong": [attention_unscaled, attention_heads_tiled, attention_rope_on_queries_only, attention_always_causal,
                                    attention_mask_off_by_one]},
    "Llama.generate": {"correct": [generate_gumbel_max, generate_inverse_cdf, generate_top_k_then_multinomial],
                       "wrong": [generate_temperature_ignored, generate_top_k_drops_the_kth, generate_position_in_the_top_k,
                                 generate_global_generator, generate_keeps_the_first_tokens]},
    "ensemble_log_probs": {"correct": [ensemble_by_hand, ensemble_logaddexp],
                           "wrong": [ensemble_weights_ignored, ensemble_temperature_ignored, ensemble_mixture_in_probability_space,
                                     ensemble_mixture_of_log_probs, ensemble_probabilities_not_logs]},
    "distill_loss": {"correct": [distill_loss_kl_div_none, distill_loss_logsumexp_by_hand, distill_loss_textbook, distill_loss_per_position],
                     "wrong": [distill_loss_no_t_squared, distill_loss_t_not_squared, distill_loss_ce_at_temperature, distill_loss_reversed_kl,
                               distill_loss_mean_for_paper, distill_loss_paper_over_l, distill_loss_log_of_softmax, distill_loss_detached_student]},
    "lr_at": {"correct": [lr_cos_squared, lr_in_fp32],
              "wrong": [lr_warmup_from_zero, lr_cosine_over_all_steps, lr_no_floor_after_max_iters, lr_linear_decay]},
    "EpochSampler.indices": {"correct": [sampler_numpy_permutation, sampler_rank_major],
                             "wrong": [sampler_same_order_every_epoch, sampler_no_shuffle, sampler_rank_ignored, sampler_generator_that_advances,
                                       sampler_no_wrap]},
    "mask_tokens": {"correct": [masking_one_uniform, masking_bernoulli],
                    "wrong": [masking_not_shifted, masking_position_zero_too, masking_specials_as_random_tokens, masking_no_random_tokens,
                              masking_ignore_index_minus_100, masking_global_generator]},
    "sparse_target": {"correct": [sparse_target_dense_counts, sparse_target_unique_keys],
                      "wrong": [sparse_target_no_importance_weights, sparse_target_counts_ignored, sparse_target_self_normalised,
                                sparse_target_drawn_from_p, sparse_target_topk_not_renormalised]},
    "sparse_distill_loss": {"correct": [sparse_loss_dense_target, sparse_loss_by_hand, sparse_loss_per_position],
                            "wrong": [sparse_loss_log_softmax_of_slots, sparse_loss_scatter_not_add, sparse_loss_slots_not_over_t,
                                      sparse_loss_no_t_squared, sparse_loss_plogp_forgotten]},
    "score_batch": {"correct": [score_batch_cross_entropy, score_batch_loop_over_rows],
                    "wrong": [score_batch_no_mask, score_batch_left_padded, score_batch_without_the_context, score_batch_mask_from_the_pad_token,
                              score_batch_logits_not_log_probs]},
}
