"""chunked_loss.py: a loss computed a chunk of sequences at a time, each chunk differentiated by autograd, equals
the loss on the whole batch in value and in every gradient (of the hidden states, of the head, and through the
model into every parameter), for plain CE (teachers, baselines) as for the distillation loss, with tied heads, an
uneven last chunk and under accumulation; the chunked objective runs the formula itself (a mutated distill_loss
changes it), against a float64 reference written out position by position.
Run: python -m pytest tests/test_chunked_loss.py"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import distill
from chunked_loss import chunked_loss
from distill import Distillation
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig
from train import CausalLM

V, L = 13, 6


def cfg_ns(**kw):
    return SimpleNamespace(**{**dict(alpha=0.3, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_impl="chunked", loss_chunk=L,
                                      seq_len=L), **kw})


def llama(seed, **kw):
    torch.manual_seed(seed)
    return Llama(ModelConfig(**{**dict(vocab_size=V, dim=16, n_layers=1, n_heads=2, hidden_dim=24, max_seq_len=L), **kw}))


def gpt2(seed):
    torch.manual_seed(seed)
    return GPT2(GPT2Config(vocab_size=V, dim=12, n_layers=1, n_heads=2, max_seq_len=L)).eval()


def value_and_grads(loss_fn, model, x, y):
    """(loss, logs, every parameter's gradient) as train.py takes them: loss / 2 backward (accumulation of 2)."""
    model.zero_grad(set_to_none=True)
    loss, logs = loss_fn(model, x, y)
    (loss / 2).backward()
    return loss.detach(), logs, {n: 2 * p.grad for n, p in model.named_parameters()}


def assert_same(got, want, what):
    (loss, logs, grads), (want_loss, want_logs, want_grads) = got, want
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: loss: {m}")
    for k in want_logs:
        torch.testing.assert_close(logs[k], want_logs[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: logged {k}: {m}")
    for name, g in want_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-7, msg=lambda m: f"{what}: gradient of {name}: {m}")


def test_chunked_loss_equals_autograd_of_the_whole_in_float64():
    """The generic function on a formula of its own (a per-sequence mean of CE plus a squared logit), float64:
    value and gradients of h and W to 1e-12, chunks of 1, 2 and 4 of 5 sequences (the last chunk shorter)."""
    torch.manual_seed(0)
    B, d = 5, 7
    h0, W0 = torch.randn(B, L, d, dtype=torch.float64), torch.randn(V, d, dtype=torch.float64)
    y, extra = torch.randint(0, V, (B, L)), torch.randn(B, L, dtype=torch.float64)

    def formula(logits, y, extra):
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return ce + (extra * logits[..., 0] ** 2).mean(), {"ce": ce}

    h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
    want, want_logs = formula(h @ W.t(), y, extra)
    want.backward()
    for chunk in (1, 2, 4):
        hc, Wc = h0.clone().requires_grad_(), W0.clone().requires_grad_()
        got, logs = chunked_loss(formula, hc, Wc, [y, extra], chunk)
        (3.0 * got).backward()  # an upstream gradient that is not 1
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(logs["ce"], want_logs["ce"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hc.grad, 3.0 * h.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(Wc.grad, 3.0 * W.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", ["llama", "llama tied", "gpt2"])
@pytest.mark.parametrize("chunk", [L, 2 * L])
def test_chunked_ce_equals_plain_ce_in_every_gradient(model, chunk):
    """Teachers and baselines: CausalLM's CE chunked (3 sequences in chunks of 1 or 2) against the whole batch's."""
    m = {"llama": lambda: llama(0), "llama tied": lambda: llama(0, tie_embeddings=True), "gpt2": lambda: gpt2(0).train()}[model]()
    x, y = torch.randint(0, V, (2, 3, L))
    torch.manual_seed(5)  # GPT-2's dropout: the same masks for both
    want = value_and_grads(CausalLM(m, cfg_ns(loss_impl="plain")).loss, m, x, y)
    torch.manual_seed(5)
    got = value_and_grads(CausalLM(m, cfg_ns(loss_chunk=chunk)).loss, m, x, y)
    assert_same(got, want, f"CausalLM chunked ({model}, {chunk // L} sequences a chunk)")


def reference_loss(s, teacher_logits, y, weights, alpha, T, reduction):
    """The papers' loss in float64, position by position (mean-of-logits ensemble)."""
    s, zs = s.double(), [z.double() for z in teacher_logits]
    B, Lx, _ = s.shape
    ce = kl = 0.0
    for b in range(B):
        for t in range(Lx):
            ce -= torch.log_softmax(s[b, t], -1)[y[b, t]]
            p = torch.softmax(sum(w * z[b, t] for w, z in zip(weights, zs)) / T, -1)
            kl += (p * (p.log() - torch.log_softmax(s[b, t] / T, -1))).sum()
    return alpha * ce / (B * Lx) + (1 - alpha) * T**2 * kl / (B if reduction == "paper" else B * Lx)


@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_chunked_distillation_is_the_papers_loss(reduction, monkeypatch):
    """The chunked objective (3 sequences, one a chunk) against the float64 reference: a lost T^2, another reduction
    or any other change to distill_loss shows here, on the path that trains by default."""
    student, teachers = llama(0), [llama(1).eval(), gpt2(2)]
    cfg = cfg_ns(kl_reduction=reduction)
    x, y = torch.randint(0, V, (2, 3, L))
    weights = [0.4, 0.6]
    calls = []
    real = distill.distill_loss
    monkeypatch.setattr(distill, "distill_loss", lambda *a: calls.append(a[0].shape) or real(*a))
    loss, _ = Distillation(student, teachers, weights, cfg).loss(student, x, y)
    assert calls == [(1, L, V)] * 3, f"the chunked objective calls distill_loss once per chunk of one sequence: {calls}"
    with torch.no_grad():
        want = reference_loss(student(x), [t(x) for t in teachers], y, weights, cfg.alpha, cfg.temperature, reduction)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5), f"chunked distillation loss {loss.item():.6f}, expected {want.item():.6f} ({reduction} reduction)"


def test_under_compile_each_chunk_is_traced_on_its_own_not_the_loop_unrolled():
    """torch.compile of the chunked loss traces chunk_step once, whatever the number of chunks: the loop stays Python.
    Traced as one graph, the loop was unrolled (16 chunks took two minutes to compile on a CPU). The backend only
    counts what dynamo captures (no code is generated), so this takes seconds; values and gradients of the compiled
    loss are checked in tests/test_distill.py."""
    from torch._dynamo.testing import CompileCounter

    W = torch.randn(V, 8)

    def formula(logits, y):
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return loss, {"ce": loss.detach()}

    def captured(batch):
        torch._dynamo.reset()
        counter = CompileCounter()
        h = torch.randn(batch, L, 8, requires_grad=True)
        loss, _ = torch.compile(lambda h: chunked_loss(formula, h, W, [torch.randint(0, V, (batch, L))], 1), backend=counter)(h)
        loss.backward()
        return counter.op_count

    assert captured(2) == captured(8), "chunked_loss under torch.compile: operations captured grow with the chunks (the loop was unrolled)"
