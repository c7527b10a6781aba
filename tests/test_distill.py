"""distill.py: the ensemble target and the loss against float64 references, the loss's gradient against its
closed form, frozen teachers (the `core` teaching tests); the chunked loss against the plain one in value and
every gradient, compiled == eager, vocabulary errors, end-to-end tiny runs and the 2-process torchrun run.
Run: python -m pytest tests/test_distill.py   (the compiled and torchrun tests are marked slow)"""

import math
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from checkpoint import model_checkpoint, read_log, save_checkpoint
from config import InputError
from conftest import ROOT, check_close, fp32_tol, strip_timing, student_argv
import distill
from distill import Distillation, distill_loss, ensemble_log_probs
from distill import main as distill_main
from data import load_tokenizer
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig

V = 11


def reference_loss(s, teachers, y, weights, alpha, T, ensemble, reduction):
    """(loss, ce, kl_term, kl) written out in float64, position by position, from distill.py's docstring."""
    s, teachers = s.double(), [z.double() for z in teachers]
    B, L, _ = s.shape
    ce = kl_total = 0.0
    for b in range(B):
        for t in range(L):
            log_q1 = s[b, t] - torch.log(torch.exp(s[b, t]).sum())
            ce -= log_q1[y[b, t]].item()
            if ensemble == "logits":
                zbar = sum(w * z[b, t] for w, z in zip(weights, teachers)) / T
                p = torch.exp(zbar) / torch.exp(zbar).sum()
            else:
                p = sum(w * torch.exp(z[b, t] / T) / torch.exp(z[b, t] / T).sum() for w, z in zip(weights, teachers))
            q = torch.exp(s[b, t] / T) / torch.exp(s[b, t] / T).sum()
            kl_total += (p * (torch.log(p) - torch.log(q))).sum().item()
    ce /= B * L
    kl_term = T**2 * (kl_total / B if reduction == "paper" else kl_total / (B * L))
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_total / (B * L)


def reference_log_p(teachers, weights, T, ensemble):
    """log p of the ensemble target in float64, from its definition (distill.py's docstring)."""
    z = [t.double() / T for t in teachers]
    if ensemble == "logits":  # softmax of the weighted mean of logits
        mean = sum(w * zk for w, zk in zip(weights, z))
        return mean - torch.log(torch.exp(mean).sum(-1, keepdim=True))
    mix = sum(w * torch.exp(zk) / torch.exp(zk).sum(-1, keepdim=True) for w, zk in zip(weights, z))  # weighted mean of probabilities
    return torch.log(mix)


def log_p_tol(teachers, weights, T):
    """fp32 tolerance of log p, per element: the weighted mean of K teachers' logits (2K roundings), a log-softmax over
    V tokens (V terms in the sum, and exp, log, subtractions), a log-sum-exp over K teachers for the mixture, on the
    magnitude of what is rounded: |z| / T (twice: the logit and the log-sum-exp), log V and |log w|."""
    K, V = len(teachers), teachers[0].shape[-1]
    magnitude = 2 * max(z.abs().max().item() for z in teachers) / T + math.log(V) + max(abs(math.log(w)) for w in weights if w > 0)
    return fp32_tol(magnitude, V + 2 * K + 8)


ENSEMBLE_RULE = {"logits": "softmax of the weighted mean of the teachers' logits / T",
                 "probs": "log of the weighted mean of the teachers' softmax(z / T)"}


@pytest.mark.core
@pytest.mark.parametrize("ensemble", ["logits", "probs"])
def test_ensemble_target_matches_float64_reference(ensemble):
    torch.manual_seed(0)
    z1, z2, z3 = (torch.randn(2, 3, V) * 3 for _ in range(3))
    weights = [0.2, 0.5, 0.3]
    got = ensemble_log_probs([z1, z2, z3], weights, 2.0, ensemble)
    assert got.dtype == torch.float32, f"ensemble_log_probs: returned {got.dtype} for float32 logits, expected torch.float32"
    check_close(got, reference_log_p([z1, z2, z3], weights, 2.0, ensemble), log_p_tol([z1, z2, z3], weights, 2.0),
                f"ensemble_log_probs: log p[b, t, v] (ensemble={ensemble!r})", f"{ENSEMBLE_RULE[ensemble]}, T 2, weights {weights}")
    check_close(got.double().exp().sum(-1), torch.ones(2, 3), fp32_tol(1.0, V + 8), "ensemble_log_probs: sum over v of exp(log p[b, t, v])",
                "p is a distribution at each position")


@pytest.mark.core
@pytest.mark.parametrize("ensemble", ["logits", "probs"])
def test_ensemble_target_is_finite_for_confident_teachers(ensemble):
    """Teachers 100 nats apart from their tail: a tail probability (e^-300) is below fp32's smallest number (1e-45),
    so log p must be computed in log space (log-softmax, log-sum-exp), never as the log of a probability."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(2, 3, V) * 100, torch.randn(2, 3, V) * 100
    got = ensemble_log_probs([z1, z2], [0.5, 0.5], 1.0, ensemble)
    check_close(got, reference_log_p([z1, z2], [0.5, 0.5], 1.0, ensemble), log_p_tol([z1, z2], [0.5, 0.5], 1.0),
                f"ensemble_log_probs: log p[b, t, v] of confident teachers (ensemble={ensemble!r})",
                f"{ENSEMBLE_RULE[ensemble]}, in log space: finite even where p underflows fp32")


def loss_tol(s, teachers, weights, alpha, T, reduction):
    """fp32 tolerances of (loss, ce, kl_term, kl). CE: a log-softmax over V (V + 4 roundings on |s| + log V), averaged
    over N = B L positions (N more). KL: per position log p - log q (log_p_tol, and the same for log q on |s| / T),
    weighted by p (which sums to 1), summed over N V terms; kl_term = T^2 KL / D, D = B (paper) or N (mean)."""
    B, L, V = s.shape
    N, D = B * L, (B if reduction == "paper" else B * L)
    ce = fp32_tol(s.abs().max().item() + math.log(V), V + N + 4)
    per_position = log_p_tol(teachers, weights, T) + log_p_tol([s], [1.0], T)
    kl_sum = N * per_position + fp32_tol(N * (2 * max(z.abs().max().item() for z in [s, *teachers]) / T + 2 * math.log(V)), N * V)
    kl_term = T**2 * kl_sum / D
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / N


REDUCTION = {"paper": "paper reduction: KL summed over positions / B", "mean": "mean reduction: KL averaged over the B L positions"}


@pytest.mark.core
@pytest.mark.parametrize("ensemble", ["logits", "probs"])
@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_distill_loss_matches_float64_reference(ensemble, reduction):
    torch.manual_seed(0)
    s, z1, z2 = (torch.randn(2, 5, V) * 3 for _ in range(3))
    y = torch.randint(0, V, (2, 5))
    weights, alpha, T = [0.3, 0.7], 0.4, 2.0
    got = distill_loss(s, [z1, z2], y, weights, alpha, T, ensemble, reduction)
    assert isinstance(got, tuple) and len(got) == 4, "distill_loss: expected a tuple (loss, ce, kl_term, kl)"
    expected = reference_loss(s, [z1, z2], y, weights, alpha, T, ensemble, reduction)
    tols = loss_tol(s, [z1, z2], weights, alpha, T, reduction)
    why = {"loss": "alpha ce + (1 - alpha) kl_term, alpha 0.4", "ce": "cross-entropy of softmax(s) (at T = 1) with the labels, averaged over the B L positions",
           "kl_term": f"T^2 KL(p || softmax(s / T)), T 2, {REDUCTION[reduction]}", "kl": "the per-token KL: KL summed over positions / (B L)"}
    for i in (1, 2, 3, 0):  # the parts first: a wrong part is named before the total it spoils
        name = ("loss", "ce", "kl_term", "kl")[i]
        check_close(got[i], expected[i], tols[i], f"distill_loss: {name}", f"{why[name]}; ensemble={ensemble!r}")


@pytest.mark.core
def test_distill_loss_is_finite_for_confident_logits():
    """Logits 100 nats apart: softmax probabilities of the tail (e^-300) underflow fp32, so log q must be a
    log-softmax (s/T - logsumexp(s/T)), never the log of a softmax (log 0 = -inf, and p * -inf = inf or NaN)."""
    torch.manual_seed(2)
    s, z1, z2 = (torch.randn(2, 3, V) * 100 for _ in range(3))
    y = torch.randint(0, V, (2, 3))
    got = distill_loss(s, [z1, z2], y, [0.5, 0.5], 0.5, 1.0, "logits", "paper")
    expected = reference_loss(s, [z1, z2], y, [0.5, 0.5], 0.5, 1.0, "logits", "paper")
    for name, g, e, tol in zip(("loss", "ce", "kl_term", "kl"), got, expected, loss_tol(s, [z1, z2], [0.5, 0.5], 0.5, 1.0, "paper")):
        check_close(g, e, tol, f"distill_loss: {name} of confident logits", "computed in log space: finite where a probability underflows fp32")


def closed_form_gradient(s, teachers, y, weights, alpha, T, ensemble, reduction):
    """(d loss / d s in float64, its fp32 tolerance per position). d loss / d s = alpha/N (softmax(s) - onehot(y)) +
    (1 - alpha) T^2 / D (softmax(s/T) - p) / T per position, N = B L positions, D = B ("paper") or N ("mean").
    Each softmax entry is off by at most (V + 8) U32 of the logits' magnitude (times the entry): per position,
    the coefficients times (1 + 1 + 1) (softmax, onehot or p, both summing to 1) times that magnitude."""
    B, L, V = s.shape
    N, D = B * L, (B if reduction == "paper" else B * L)
    sd, p = s.double(), reference_log_p(teachers, weights, T, ensemble).exp()
    onehot = torch.nn.functional.one_hot(y, V).double()
    grad = alpha / N * (sd.softmax(-1) - onehot) + (1 - alpha) * T / D * ((sd / T).softmax(-1) - p)
    magnitude = 3 * (alpha / N + (1 - alpha) * T / D) * (2 * max(z.abs().max().item() for z in [s, *teachers]) + math.log(V) + 1)
    return grad, fp32_tol(magnitude, V + 2 * len(teachers) + 8)


@pytest.mark.core
@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_distill_loss_gradient_is_the_closed_form(reduction):
    torch.manual_seed(1)
    B, L, alpha, T = 2, 4, 0.3, 2.0
    s = (torch.randn(B, L, V) * 3).requires_grad_()
    z1, z2 = torch.randn(B, L, V) * 3, torch.randn(B, L, V) * 3
    y = torch.randint(0, V, (B, L))
    loss = distill_loss(s, [z1, z2], y, [0.5, 0.5], alpha, T, "logits", reduction)[0]
    assert loss.requires_grad, "distill_loss: the loss does not depend on the student's logits (no gradient can reach them: detached?)"
    loss.backward()
    expected, tol = closed_form_gradient(s.detach(), [z1, z2], y, [0.5, 0.5], alpha, T, "logits", reduction)
    check_close(s.grad, expected, tol, "distill_loss: d loss / d student logits[b, t, v]",
                f"alpha/N (softmax(s) - onehot(y)) + (1 - alpha) T^2/D (softmax(s/T) - p)/T, N = B L, D = {'B' if reduction == 'paper' else 'B L'}")


@pytest.mark.core
def test_distill_loss_kl_is_zero_when_the_student_is_the_teacher():
    torch.manual_seed(0)
    z = torch.randn(3, 4, V)
    for ensemble in ("logits", "probs"):
        _, _, kl_term, kl = distill_loss(z, [z], torch.zeros(3, 4, dtype=torch.long), [1.0], 0.5, 1.5, ensemble, "paper")
        tol = loss_tol(z, [z], [1.0], 0.5, 1.5, "paper")
        check_close(kl, 0.0, tol[3], f"distill_loss: kl (ensemble={ensemble!r})", "KL(p || q) = 0 when the student's logits are the only teacher's")
        check_close(kl_term, 0.0, tol[2], f"distill_loss: kl_term (ensemble={ensemble!r})", "T^2 KL(p || q) = 0 when the student's logits are the only teacher's")


@pytest.mark.core
def test_ensemble_of_two_identical_teachers_equals_one_teacher():
    torch.manual_seed(0)
    z = torch.randn(2, 3, V)
    one = reference_log_p([z], [1.0], 2.0, "logits")
    for ensemble in ("logits", "probs"):
        check_close(ensemble_log_probs([z, z.clone()], [0.5, 0.5], 2.0, ensemble), one, log_p_tol([z, z], [0.5, 0.5], 2.0),
                    f"ensemble_log_probs: log p of two identical teachers (ensemble={ensemble!r})", "the one teacher's log_softmax(z / T)")


@pytest.mark.core
def test_ensemble_of_logits_and_of_probs_differ_for_different_teachers():
    torch.manual_seed(0)
    z1, z2 = torch.randn(1, 2, V), torch.randn(1, 2, V)
    a = ensemble_log_probs([z1, z2], [0.5, 0.5], 1.0, "logits")
    b = ensemble_log_probs([z1, z2], [0.5, 0.5], 1.0, "probs")
    assert not torch.allclose(a, b), "ensemble_log_probs: the mean of logits and the mean of probabilities gave the same target for different teachers"


def small(seed, **kw):
    torch.manual_seed(seed)
    return Llama(ModelConfig(**{**dict(vocab_size=V, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_seq_len=8), **kw}))


def cfg_ns(**kw):
    return SimpleNamespace(**{**dict(alpha=0.5, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_impl="chunked", loss_chunk=256,
                                      seq_len=8, teachers=["a", "b"]), **kw})


def small_gpt2(seed, **kw):
    torch.manual_seed(seed)
    return GPT2(GPT2Config(**{**dict(vocab_size=V, dim=24, n_layers=2, n_heads=3, max_seq_len=8), **kw}))


def student_and_teachers():
    """A student and BabyLlama's heterogeneous ensemble: a Llama and a GPT-2 of another width and depth (the
    ensemble mixes logits, not hidden states). The GPT-2 has dropout 0.1: in eval mode it must not act."""
    return small(0), [small(1).eval().requires_grad_(False), small_gpt2(2).eval().requires_grad_(False)]


def plain_loss_and_grads(student, teachers, x, y, weights, cfg):
    """Autograd of the formula as written (distill_loss on full logits): the reference for the trained path."""
    with torch.no_grad():
        teacher_logits = [t(x) for t in teachers]
    loss = distill_loss(student(x), teacher_logits, y, weights, cfg.alpha, cfg.temperature, cfg.ensemble, cfg.kl_reduction)[0]
    return loss.detach(), torch.autograd.grad(loss, list(student.parameters()))


def trained_loss_and_grads(loss_fn, student, x, y):
    """The loss exactly as train.train() calls it: objective.loss(model, x, y), then backward of loss / grad_accum
    (here 3, so the incoming gradient is not 1 and the backward must scale by it)."""
    student.zero_grad(set_to_none=True)
    loss, logs = loss_fn(student, x, y)
    (loss / 3).backward()
    return loss.detach(), logs, [3 * p.grad for p in student.parameters()]


@pytest.mark.parametrize("ensemble", ["logits", "probs"])
@pytest.mark.parametrize("reduction", ["paper", "mean"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [8, 16])
def test_chunked_loss_equals_the_plain_loss_in_value_and_every_gradient(ensemble, reduction, temperature, chunk):
    """loss_impl="chunked" (distill_loss per chunk of sequences, autograd per chunk: chunked_loss.py) against
    loss_impl="plain" (autograd of distill_loss on the whole batch): 3 sequences of 8 positions in chunks of one or
    two sequences (the last chunk shorter), every parameter's gradient, through a GPT-2 + Llama ensemble."""
    student, teachers = student_and_teachers()
    plain = cfg_ns(alpha=0.3, temperature=temperature, ensemble=ensemble, kl_reduction=reduction, loss_impl="plain")
    chunked = cfg_ns(alpha=0.3, temperature=temperature, ensemble=ensemble, kl_reduction=reduction, loss_chunk=chunk)
    weights = [0.35, 0.65]
    x, y = torch.randint(0, V, (3, 8)), torch.randint(0, V, (3, 8))
    want_loss, want_logs, want_grads = trained_loss_and_grads(Distillation(student, teachers, weights, plain).loss, student, x, y)
    loss, logs, grads = trained_loss_and_grads(Distillation(student, teachers, weights, chunked).loss, student, x, y)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for key in ("ce", "kl_term", "kl"):
        torch.testing.assert_close(logs[key], want_logs[key], rtol=1e-5, atol=1e-6)
    for (name, _), g, want in zip(student.named_parameters(), grads, want_grads):
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-7, msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.core
def test_distill_loss_is_what_the_default_objective_trains(monkeypatch):
    """The objective train.py runs (distill.py's Distillation.loss, not an exercise) calls your distill_loss once, on
    the student's logits and one logits tensor per teacher: the loss it trains is distill_loss's, and its gradient with
    respect to the student's logits is the closed form, in float64 (through a Llama student and a GPT-2 + Llama ensemble)."""
    student, teachers = student_and_teachers()
    cfg = cfg_ns(alpha=0.3, temperature=2.0, ensemble="probs", kl_reduction="mean")
    torch.manual_seed(0)
    x, y = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    calls = []
    monkeypatch.setattr(distill, "distill_loss", lambda *a: calls.append((a, distill_loss(*a))) or calls[-1][1])
    loss, logs = Distillation(student, teachers, [0.4, 0.6], cfg).loss(student, x, y)
    assert len(calls) == 1, f"Distillation.loss: called distill_loss {len(calls)} times on a micro-batch of 2 sequences, expected once"
    (s, z, y_seen, weights, alpha, T, ensemble, reduction), returned = calls[0]
    assert s.shape == (2, 8, V) and len(z) == 2 and torch.equal(y_seen, y), "Distillation.loss: distill_loss must get logits (B, L, V), one per teacher, and the labels"
    assert (weights, alpha, T, ensemble, reduction) == ([0.4, 0.6], 0.3, 2.0, "probs", "mean"), "Distillation.loss: distill_loss must get the run's settings"
    with torch.no_grad():
        for k, (zk, t) in enumerate(zip(z, teachers)):
            want = t(x)  # the same computation, through the teacher's own forward
            check_close(zk, want.double(), fp32_tol(want.abs().max().item(), 4), f"Distillation.loss: teacher {k + 1}'s logits given to distill_loss", "teacher(x)")
    check_close(loss, returned[0].detach().double(), 0.0, "distill_loss: loss as Distillation.loss trains it", "the value distill_loss returned")
    for name, value in zip(("ce", "kl_term", "kl"), returned[1:]):
        check_close(logs[name], value.detach().double(), 0.0, f"distill_loss: {name} as the log shows it", "the value distill_loss returned")
    assert loss.requires_grad, "distill_loss: the loss does not depend on the student's logits (no gradient can reach them: detached?)"
    (grad,) = torch.autograd.grad(loss, [s])
    expected, tol = closed_form_gradient(s.detach(), [zk.detach() for zk in z], y, [0.4, 0.6], 0.3, 2.0, "probs", "mean")
    check_close(grad, expected, tol, "distill_loss: d loss / d student logits[b, t, v] of the trained loss",
                "alpha/N (softmax(s) - onehot(y)) + (1 - alpha) T^2/N (softmax(s/T) - p)/T, N = B L (mean reduction), p the mixture of the teachers")


def test_every_loss_impl_trains_with_distill_loss(prepared, tiny_teachers, tmp_path, monkeypatch):
    """One formula at every scale: with distill_loss blanked, neither a plain nor a chunked run can train."""
    def blanked(*args):
        raise NotImplementedError
    monkeypatch.setattr(distill, "distill_loss", blanked)
    for impl in ("plain", "chunked"):
        with pytest.raises(NotImplementedError):
            distill_main(student_argv(prepared, str(tmp_path / impl), tiny_teachers, max_iters=4, eval_interval=2, warmup_iters=1,
                                      loss_impl=impl, loss_chunk=16))


@pytest.mark.core
def test_distill_loss_gradients_reach_only_the_student_and_teachers_stay_fixed():
    student, teachers = student_and_teachers()
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    torch.manual_seed(0)
    x, y = torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6))
    loss, logs = Distillation(student, teachers, [0.5, 0.5], cfg_ns()).loss(student, x, y)
    assert loss.requires_grad, "distill_loss: the loss does not depend on the student's logits (no gradient can reach the student: detached?)"
    loss.backward()
    opt.step()
    for name, p in student.named_parameters():
        assert p.grad is not None, f"distill_loss: no gradient reached the student's {name} (the loss must be differentiable in the student's logits)"
    for k, (t, b) in enumerate(zip(teachers, before)):
        assert all(p.grad is None for p in t.parameters()), f"distill_loss: a gradient reached teacher {k + 1} (the target carries no gradient)"
        assert all(torch.equal(v, b[k_]) for k_, v in t.state_dict().items()), f"distill_loss: teacher {k + 1} changed in a training step (teachers are frozen)"


@pytest.mark.slow
def test_compiled_chunked_loss_equals_autograd_of_the_plain_formula():
    """The chunked loss (one sequence per chunk) under torch.compile, as a GPU runs it."""
    student, teachers = student_and_teachers()
    cfg = cfg_ns(temperature=2.0, ensemble="probs", kl_reduction="paper", loss_chunk=8)
    x, y = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    want_loss, want_grads = plain_loss_and_grads(student, teachers, x, y, [0.4, 0.6], cfg)
    compiled = torch.compile(Distillation(student, teachers, [0.4, 0.6], cfg).loss)
    loss, _, grads = trained_loss_and_grads(compiled, student, x, y)
    torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
    for g, want in zip(grads, want_grads):
        torch.testing.assert_close(g, want, atol=1e-6, rtol=1e-3)


def test_tiny_distillation_run(prepared, tiny_teachers, tmp_path):
    out = str(tmp_path / "s")
    summary = distill_main(student_argv(prepared, out, tiny_teachers))
    log = read_log(os.path.join(out, "log.jsonl"))
    train_logs = [e for e in log if "ce" in e]
    assert train_logs and all({"loss", "ce", "kl_term", "kl"} <= set(e) for e in train_logs)
    for e in train_logs:  # the log adds up: loss = alpha ce + (1 - alpha) kl_term (alpha 0.5)
        assert e["loss"] == pytest.approx(0.5 * e["ce"] + 0.5 * e["kl_term"], rel=1e-5)
    vals = [e for e in log if "val_loss" in e]
    assert {"teacher1_val_loss", "teacher2_val_loss"} <= set(vals[-1])
    assert vals[-1]["val_loss"] < math.log(320) - 1.0, vals  # well below a uniform guess over 320 tokens
    assert summary["best_val_loss"] == min(v["val_loss"] for v in vals)
    assert train_logs[-1]["ce"] < train_logs[0]["ce"] - 0.5


def test_tiny_distillation_run_from_a_gpt2_and_a_llama_teacher(prepared, tiny_gpt2_teacher, tiny_teachers, tmp_path):
    """BabyLlama's 2023 recipe in miniature: a Llama student of a GPT-2 and a Llama teacher (both wider than it),
    plain and chunked; the teachers load as what they are, frozen and in eval mode."""
    rt = SimpleNamespace(device=torch.device("cpu"), dtype="float32")
    _, info = load_tokenizer(prepared)
    gpt2, llama = distill.load_teachers([tiny_gpt2_teacher, tiny_teachers[1]], info, prepared, rt)
    assert isinstance(gpt2, GPT2) and isinstance(llama, Llama) and gpt2.config.dim != llama.config.dim
    x = torch.randint(0, 320, (2, 16))
    assert torch.equal(gpt2(x), gpt2(x)), "a teacher's dropout is off: its logits are a function of its input"
    for impl in ("plain", "chunked"):
        out = str(tmp_path / impl)
        distill_main(student_argv(prepared, out, [tiny_gpt2_teacher, tiny_teachers[1]], loss_impl=impl, loss_chunk=16))
        log = read_log(os.path.join(out, "log.jsonl"))
        train_logs, vals = [e for e in log if "ce" in e], [e for e in log if "val_loss" in e]
        assert vals[-1]["teacher1_val_loss"] < math.log(320) - 1.0, "the GPT-2 teacher learned"
        assert vals[-1]["val_loss"] < math.log(320) - 1.0 and train_logs[-1]["ce"] < train_logs[0]["ce"] - 0.5
        if impl == "plain":
            first = train_logs[0]
        else:  # the same run, chunked: the same first step
            assert train_logs[0]["loss"] == pytest.approx(first["loss"], rel=1e-5)


def test_teacher_with_another_vocabulary_is_refused(prepared, tiny_teachers, tmp_path):
    other = str(tmp_path / "other.pt")
    model = small(0, vocab_size=400)
    save_checkpoint(other, model_checkpoint(model, {"name": "bpe400", "vocab_size": 400, "sha256": "x"}))
    with pytest.raises(InputError, match=r"other.pt was made with tokenizer 'bpe400'.* but .*ckpt.pt uses"):
        distill_main(student_argv(prepared, str(tmp_path / "s"), [tiny_teachers[0], other]))
    with pytest.raises(InputError, match="ckpt.pt: checkpoint not found"):
        distill_main(student_argv(prepared, str(tmp_path / "s"), [str(tmp_path / "nope" / "ckpt.pt")]))


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(prepared, tiny_teachers, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    args = dict(max_iters=6, eval_interval=3, batch_size=8, warmup_iters=1)
    distill_main(student_argv(prepared, one, tiny_teachers, micro_batch_size=4, **args))
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           os.path.join(ROOT, "distill.py"), *student_argv(prepared, two, tiny_teachers, micro_batch_size=2, **args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    output = [l for l in (result.stdout + result.stderr).replace("\r", "\n").splitlines() if l.strip() and "it/s" not in l]
    assert result.returncode == 0, "\n".join(output[-40:])
    log1 = [e for e in read_log(os.path.join(one, "log.jsonl"))]
    log2 = [e for e in read_log(os.path.join(two, "log.jsonl"))]
    assert [e["step"] for e in log1] == [e["step"] for e in log2]
    for a, b in zip(log1, log2):
        for key in ("loss", "ce", "kl_term", "kl", "val_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a, b)


def test_student_vocabulary_must_match_the_teachers(prepared, tmp_path):
    other = str(tmp_path / "other.pt")
    save_checkpoint(other, model_checkpoint(small(0, vocab_size=400), {"name": "bpe400", "vocab_size": 400, "sha256": "x"}))
    with pytest.raises(InputError, match=r"other.pt was made with tokenizer 'bpe400'.*meta.json uses"):
        distill_main(student_argv(prepared, str(tmp_path / "s"), [other]))


def test_distillation_resume_equals_uninterrupted(prepared, tiny_teachers, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = dict(max_iters=12, eval_interval=4, log_interval=1)
    distill_main(student_argv(prepared, a, tiny_teachers, **args))
    distill_main(student_argv(prepared, b, tiny_teachers, stop_at=6, **args))
    distill_main(student_argv(prepared, b, tiny_teachers, resume=True, **args))
    assert strip_timing(read_log(os.path.join(a, "log.jsonl"))) == strip_timing(read_log(os.path.join(b, "log.jsonl")))


def test_resume_compares_the_inputs_by_content_not_by_path(prepared, tiny_teachers, tmp_path):
    """A teacher rewritten in place is another teacher: resume refuses it, naming it. The same teachers, data
    and cache moved elsewhere are the same inputs: resume accepts the new paths and continues the same run.
    Switching between live teachers and a cache is another run."""
    import shutil

    t1, t2 = str(tmp_path / "t1.pt"), str(tmp_path / "t2.pt")
    shutil.copy(tiny_teachers[0], t1)
    shutil.copy(tiny_teachers[1], t2)
    args = dict(max_iters=8, eval_interval=2, log_interval=1)
    for cache in ("", str(tmp_path / "cache")):
        ref, run = str(tmp_path / f"ref{bool(cache)}"), str(tmp_path / f"run{bool(cache)}")
        distill_main(student_argv(prepared, ref, [t1, t2], teacher_cache=cache, **args))
        distill_main(student_argv(prepared, run, [t1, t2], teacher_cache=cache, stop_at=4, **args))
        if not cache:
            saved = open(t2, "rb").read()
            shutil.copy(t1, t2)  # teacher 2 replaced in place by another model
            with pytest.raises(InputError, match=r"last\.pt was written with another config: teacher 2 \(.*t2\.pt\) sha256 \w+ -> \w+"):
                distill_main(student_argv(prepared, run, [t1, t2], resume=True, **args))
            open(t2, "wb").write(saved)
            with pytest.raises(InputError, match=r"another config: teacher_cache sha256 None -> \w+"):
                distill_main(student_argv(prepared, run, [t1, t2], resume=True, teacher_cache=str(tmp_path / "other"), **args))
        moved = tmp_path / f"moved{bool(cache)}"  # the same files in other places: data folder, teachers, cache
        shutil.copytree(prepared, moved / "data")
        shutil.copy(t1, moved / "t1.pt")
        shutil.copy(t2, moved / "t2.pt")
        if cache:
            shutil.move(cache, moved / "cache")
        distill_main(student_argv(str(moved / "data"), run, [str(moved / "t1.pt"), str(moved / "t2.pt")], resume=True,
                                  teacher_cache=str(moved / "cache") if cache else "", **args))
        assert strip_timing(read_log(os.path.join(ref, "log.jsonl"))) == strip_timing(read_log(os.path.join(run, "log.jsonl")))


def test_an_out_dir_that_holds_a_teacher_is_refused(prepared, tiny_teachers, tmp_path):
    """`--teachers=T/ckpt.pt --out_dir=T --overwrite=True` replaced the teacher by the student (exit 0), and the run
    could never be resumed (the teacher's sha256 had changed)."""
    import shutil
    teacher_dir = tmp_path / "teacher"
    shutil.copytree(os.path.dirname(tiny_teachers[0]), teacher_dir)
    teacher = str(teacher_dir / "ckpt.pt")
    before = open(teacher, "rb").read()
    with pytest.raises(InputError, match="lies in --out_dir="):
        distill_main(student_argv(prepared, str(teacher_dir), [teacher, tiny_teachers[1]], overwrite=True))
    assert open(teacher, "rb").read() == before
