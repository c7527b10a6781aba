"""AntLM in train_teacher.py: schedule parsing, phase per step, MLM masking statistics, loss on selected
positions only, attention per phase, resume across a phase boundary. Run: python -m pytest tests/test_antlm.py"""

import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from checkpoint import read_log
from config import InputError
from conftest import strip_timing, tiny_argv
from model import Llama, ModelConfig
from train import Batch, CausalLM
from train_teacher import AntLM, main, mask_tokens, parse_objective

INFO = {"bos_id": 317, "mask_id": 319}


def cfg(objective, **kw):
    return SimpleNamespace(objective=objective, mlm_probability=0.15, seed=0, loss_impl="chunked", loss_chunk=256, seq_len=16, **kw)


@pytest.mark.core
def test_antlm_schedule_parsing():
    assert parse_objective("clm") == [("clm", None)]
    assert parse_objective("clm:4, mlm:16,clm:4") == [("clm", 4.0), ("mlm", 16.0), ("clm", 4.0)]
    assert parse_objective("clm:0.5,mlm:1.5") == [("clm", 0.5), ("mlm", 1.5)]
    for bad in ("clm:4,mlmm:16", "clm:4,mlm", "clm:-1", "cml", "clm:4;mlm:16"):
        with pytest.raises(InputError, match="objective="):
            parse_objective(bad)


@pytest.mark.core
def test_antlm_phase_at_each_step():
    model = Llama(ModelConfig(vocab_size=320, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    obj = AntLM(model, cfg("clm:1,mlm:2,clm:0.5"), steps_per_epoch=10, tok_info=INFO)
    phases = [obj.phase(s) for s in range(40)]
    assert phases[:10] == ["clm"] * 10 and phases[10:30] == ["mlm"] * 20 and phases[30:35] == ["clm"] * 5
    assert obj.epochs == 3.5
    assert AntLM(model, cfg("mlm"), 10, INFO).phase(123) == "mlm"
    assert AntLM(model, cfg("mlm"), 10, INFO).epochs is None, "a single objective leaves the run length to epochs"


@pytest.mark.core
def test_masking_statistics_on_a_large_batch():
    x = torch.randint(0, 300, (1024, 129))  # ~19,700 selected positions: 1 sd of the 80% share is 0.003
    y = torch.roll(x, -1, dims=1)
    xm, ym = mask_tokens(x, y, 0.15, mask_id=319, n_regular=317, generator=torch.Generator().manual_seed(0))
    selected = torch.zeros_like(x, dtype=torch.bool)
    selected[:, 1:] = ym[:, :-1] != -1
    assert not selected[:, 0].any()
    share = selected[:, 1:].float().mean().item()
    assert abs(share - 0.15) < 0.005, share
    masked = (xm == 319) & selected
    changed = (xm != x) & selected & ~masked  # random replacements that differ from the original
    kept = (xm == x) & selected
    n = selected.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.015
    assert abs(changed.sum().item() / n - 0.1) < 0.01  # a random token equals the original 1/317 of the time
    assert abs(kept.sum().item() / n - 0.1) < 0.01
    assert torch.equal(xm[~selected], x[~selected]), "unselected positions are untouched"
    assert (xm[selected & ~masked] < 317).all(), "random replacements are regular tokens, never specials"
    assert torch.equal(ym[:, :-1][selected[:, 1:]], x[:, 1:][selected[:, 1:]]), "targets are the original tokens"


@pytest.mark.core
def test_masking_mlm_loss_covers_selected_positions_only():
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=320, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    x = torch.randint(0, 300, (4, 16))
    xm, ym = mask_tokens(x, torch.roll(x, -1, 1), 0.3, 319, 317, torch.Generator().manual_seed(1))
    loss, _ = CausalLM(model, cfg("clm")).loss(model, xm, ym, causal=False)
    logits = model(xm, causal=False)
    keep = ym != -1
    expected = F.cross_entropy(logits[keep], ym[keep])
    torch.testing.assert_close(loss, expected)


def test_mlm_phase_sees_the_future_clm_phase_does_not(prepared, tmp_path):
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=320, dim=16, n_layers=1, n_heads=2, hidden_dim=32)).eval()
    obj = AntLM(model, cfg("clm:1,mlm:1"), steps_per_epoch=5, tok_info=INFO)
    x = torch.randint(0, 300, (1, 12))
    later = x.clone()
    later[0, 9] = (later[0, 9] + 1) % 300
    for step, sees_future in ((2, False), (7, True)):
        *_, causal = obj.inputs(Batch(x, x, None, step, 0, 0))  # the attention the loop uses at this step
        a, b = model(x, causal=causal), model(later, causal=causal)
        assert (not torch.allclose(a[0, 3], b[0, 3])) == sees_future


def test_antlm_run_switches_phases_and_resumes_across_a_boundary(prepared, tmp_path):
    # 850 train windows of 32 tokens / batch 8 -> ~106 steps per epoch; phases: 0.1 epoch CLM, 0.1 MLM, 0.05 CLM
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = dict(objective="'clm:0.1,mlm:0.1,clm:0.05'", max_iters=0, eval_interval=5, log_interval=1)
    main(tiny_argv(prepared, a, **args))
    log_a = read_log(os.path.join(a, "log.jsonl"))
    phases = [e["phase"] for e in log_a if "phase" in e]
    assert phases[0] == "clm" and "mlm" in phases and phases[-1] == "clm"
    first_mlm = phases.index("mlm")
    main(tiny_argv(prepared, b, stop_at=first_mlm - 2, **args))  # stopped in CLM, resumed into MLM
    main(tiny_argv(prepared, b, resume=True, **args))
    assert strip_timing(log_a) == strip_timing(read_log(os.path.join(b, "log.jsonl")))
