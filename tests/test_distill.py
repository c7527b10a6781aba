"""distill.py: the loss against a float64 reference, ensembles, gradients, frozen teachers, compiled ==
eager, vocabulary errors, an end-to-end tiny run and the 2-process torchrun run.
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
from conftest import ROOT, strip_timing, student_argv
from distill import Distillation, distill_loss, ensemble_log_probs
from distill import main as distill_main
from model import Llama, ModelConfig

V = 11


def reference_loss(s, teachers, y, weights, alpha, T, ensemble, reduction):
    """The loss written out in float64, position by position."""
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
    kl = kl_total / B if reduction == "paper" else kl_total / (B * L)
    return alpha * ce + (1 - alpha) * T**2 * kl


@pytest.mark.parametrize("ensemble", ["logits", "probs"])
@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_plain_formula_matches_float64_reference(ensemble, reduction):
    torch.manual_seed(0)
    s, z1, z2 = (torch.randn(2, 5, V) * 3 for _ in range(3))
    y = torch.randint(0, V, (2, 5))
    weights, alpha, T = [0.3, 0.7], 0.4, 2.0
    loss, ce, kl_term, kl = distill_loss(s, [z1, z2], y, weights, alpha, T, ensemble, reduction)
    expected = reference_loss(s, [z1, z2], y, weights, alpha, T, ensemble, reduction)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(alpha * ce.item() + (1 - alpha) * kl_term.item(), rel=1e-6)


def test_kl_is_zero_when_student_equals_the_ensemble():
    z = torch.randn(3, 4, V)
    for ensemble in ("logits", "probs"):
        _, _, kl_term, kl = distill_loss(z, [z], torch.zeros(3, 4, dtype=torch.long), [1.0], 0.5, 1.5, ensemble, "paper")
        assert abs(kl.item()) < 1e-6 and abs(kl_term.item()) < 1e-5


def test_two_identical_teachers_equal_one_teacher():
    z = torch.randn(2, 3, V)
    one = ensemble_log_probs([z], [1.0], 2.0, "logits")
    for ensemble in ("logits", "probs"):
        torch.testing.assert_close(ensemble_log_probs([z, z.clone()], [0.5, 0.5], 2.0, ensemble), one, atol=1e-5, rtol=1e-5)


def test_logits_and_probs_ensembles_differ_for_different_teachers():
    z1, z2 = torch.randn(1, 2, V), torch.randn(1, 2, V)
    a = ensemble_log_probs([z1, z2], [0.5, 0.5], 1.0, "logits")
    b = ensemble_log_probs([z1, z2], [0.5, 0.5], 1.0, "probs")
    assert not torch.allclose(a, b)


def small(seed, **kw):
    torch.manual_seed(seed)
    return Llama(ModelConfig(**{**dict(vocab_size=V, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_seq_len=8), **kw}))


def cfg_ns(**kw):
    return SimpleNamespace(**{**dict(alpha=0.5, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_chunk=0, teachers=["a", "b"]), **kw})


def student_and_teachers():
    """A student and two teachers of different widths (the ensemble mixes logits, not hidden states)."""
    return small(0), [small(1).eval().requires_grad_(False), small(2, dim=24, n_heads=3).eval().requires_grad_(False)]


def plain_loss_and_grads(student, teachers, x, y, weights, cfg):
    """Autograd of the formula as written (distill_loss on full logits): the reference for the trained path."""
    with torch.no_grad():
        teacher_logits = [t.logits(x) for t in teachers]
    loss = distill_loss(student.logits(x), teacher_logits, y, weights, cfg.alpha, cfg.temperature, cfg.ensemble, cfg.kl_reduction)[0]
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
@pytest.mark.parametrize("chunk", [0, 5])
def test_trained_loss_equals_autograd_of_the_plain_formula(ensemble, reduction, temperature, chunk):
    """Value and every student gradient of the fused, hand-differentiated loss that training runs."""
    student, teachers = student_and_teachers()
    cfg = cfg_ns(alpha=0.3, temperature=temperature, ensemble=ensemble, kl_reduction=reduction, loss_chunk=chunk)
    weights = [0.35, 0.65]
    x, y = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    want_loss, want_grads = plain_loss_and_grads(student, teachers, x, y, weights, cfg)
    loss, logs, grads = trained_loss_and_grads(Distillation(student, teachers, weights, cfg).loss, student, x, y)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for (name, _), g, want in zip(student.named_parameters(), grads, want_grads):
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-7, msg=lambda m: f"gradient of {name}: {m}")
    # the logged terms are the ones that enter the loss, and kl is the per-token KL
    torch.testing.assert_close(loss, cfg.alpha * logs["ce"] + (1 - cfg.alpha) * logs["kl_term"])
    per_token = logs["kl_term"] / temperature**2 * (2 if reduction == "paper" else 16) / 16
    torch.testing.assert_close(logs["kl"], per_token)


def test_gradients_reach_only_the_student_and_teachers_stay_fixed():
    student, teachers = student_and_teachers()
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    x, y = torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6))
    loss, logs = Distillation(student, teachers, [0.5, 0.5], cfg_ns()).loss(student, x, y)
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for t in teachers for p in t.parameters())
    for t, b in zip(teachers, before):
        assert all(torch.equal(v, b[k]) for k, v in t.state_dict().items())


@pytest.mark.slow
def test_compiled_trained_loss_equals_autograd_of_the_plain_formula():
    student, teachers = student_and_teachers()
    cfg = cfg_ns(temperature=2.0, ensemble="probs", kl_reduction="paper", loss_chunk=5)
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
