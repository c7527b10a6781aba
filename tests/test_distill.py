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

from conftest import ROOT, student_argv
from distill import distill_loss_from_logits, ensemble_log_probs, make_distill_loss
from distill import main as distill_main
from model import InputError, Llama, ModelConfig, model_checkpoint, save_checkpoint
from train_teacher import read_log

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
def test_loss_matches_float64_reference(ensemble, reduction):
    torch.manual_seed(0)
    s, z1, z2 = (torch.randn(2, 5, V) * 3 for _ in range(3))
    y = torch.randint(0, V, (2, 5))
    weights, alpha, T = [0.3, 0.7], 0.4, 2.0
    target = ensemble_log_probs([z1, z2], weights, T, ensemble)
    loss, ce, kl = distill_loss_from_logits(s, target, y, alpha, T, reduction)
    expected = reference_loss(s, [z1, z2], y, weights, alpha, T, ensemble, reduction)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_when_student_equals_the_ensemble():
    z = torch.randn(3, 4, V)
    for ensemble in ("logits", "probs"):
        target = ensemble_log_probs([z], [1.0], 1.5, ensemble)
        _, _, kl = distill_loss_from_logits(z, target, torch.zeros(3, 4, dtype=torch.long), 0.5, 1.5, "paper")
        assert abs(kl.item()) < 1e-6


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
    return SimpleNamespace(**{**dict(alpha=0.5, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_chunk=0), **kw})


def test_gradients_reach_only_the_student_and_teachers_stay_fixed():
    student, teachers = small(0), [small(1).eval().requires_grad_(False), small(2, dim=24).eval().requires_grad_(False)]
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    x, y = torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6))
    loss, logs = make_distill_loss(teachers, [0.5, 0.5], cfg_ns())(student, x, y)
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for t in teachers for p in t.parameters())
    for t, b in zip(teachers, before):
        assert all(torch.equal(v, b[k]) for k, v in t.state_dict().items())


def test_chunked_target_equals_whole_sequence_target():
    student, teachers = small(0), [small(1).eval(), small(2).eval()]
    x, y = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    whole = make_distill_loss(teachers, [0.5, 0.5], cfg_ns())(student, x, y)[0]
    chunked = make_distill_loss(teachers, [0.5, 0.5], cfg_ns(loss_chunk=3))(student, x, y)[0]
    torch.testing.assert_close(whole, chunked)


@pytest.mark.slow
def test_compiled_step_equals_eager_step():
    student, teachers = small(0), [small(1).eval().requires_grad_(False), small(2).eval().requires_grad_(False)]
    fn = make_distill_loss(teachers, [0.5, 0.5], cfg_ns())
    x, y = torch.randint(0, V, (4, 8)), torch.randint(0, V, (4, 8))
    eager, _ = fn(student, x, y)
    eager.backward()
    g_eager = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    compiled, _ = torch.compile(fn)(student, x, y)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    for g, p in zip(g_eager, student.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-4, rtol=1e-3)


def test_tiny_distillation_run(prepared, tiny_teachers, tmp_path):
    out = str(tmp_path / "s")
    summary = distill_main(student_argv(prepared, out, tiny_teachers))
    log = read_log(os.path.join(out, "log.jsonl"))
    train_logs = [e for e in log if "ce" in e]
    assert train_logs and all({"loss", "ce", "kl"} <= set(e) for e in train_logs)
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
        for key in ("loss", "ce", "kl", "val_loss"):
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
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("ms_per_step", "tok_per_s", "mfu")} for e in log]
    assert strip(read_log(os.path.join(a, "log.jsonl"))) == strip(read_log(os.path.join(b, "log.jsonl")))
