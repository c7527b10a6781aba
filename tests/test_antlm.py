"""AntLM in train_teacher.py: schedule parsing, phase per step, MLM masking statistics, loss on selected
positions only, attention per phase, resume across a phase boundary. Run: python -m pytest tests/test_antlm.py"""

import math
import os
from types import SimpleNamespace

import pytest
import torch

from checkpoint import read_log
from config import InputError
from conftest import check_close, fp32_tol, strip_timing, tiny_argv
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


def masked_batch(seed, probability=0.15, shape=(1024, 129)):
    """x, its shifted targets y (in the data stream the next window's first token: here a random token), and
    mask_tokens' output from a generator seeded with `seed`."""
    x = torch.randint(0, 300, shape, generator=torch.Generator().manual_seed(100 + seed))
    y = torch.cat([x[:, 1:], torch.randint(0, 300, (shape[0], 1), generator=torch.Generator().manual_seed(200 + seed))], dim=1)
    return x, y, *mask_tokens(x, y, probability, mask_id=319, n_regular=317, generator=torch.Generator().manual_seed(seed))


@pytest.mark.core
def test_masking_statistics_on_a_large_batch():
    x, y, xm, ym = masked_batch(0)  # 1024 x 128 candidate positions: 1 sd of the 15% share is 0.001
    assert xm.shape == x.shape and ym.shape == y.shape, f"mask_tokens: returned shapes {tuple(xm.shape)}, {tuple(ym.shape)}, expected {tuple(x.shape)} twice"
    assert ((ym == -1) | (ym >= 0)).all(), f"mask_tokens: targets {sorted(set(ym[ym < -1].unique().tolist()))}: -1 marks a position without a target (train.py's ignore_index)"
    assert (ym[:, -1] == -1).all(), "mask_tokens: the last output has a target, but the token it would predict (t+1) is not in the window's input"
    selected = torch.zeros_like(x, dtype=torch.bool)
    selected[:, 1:] = ym[:, :-1] != -1  # output t predicts input token t+1: position t+1 was selected
    assert torch.equal(ym[:, :-1][selected[:, 1:]], x[:, 1:][selected[:, 1:]]), (
        "mask_tokens: a target is not the original token of the position after it (output t predicts the original token t+1)")
    assert torch.equal(xm[:, 0], x[:, 0]), "mask_tokens: position 0 was changed (it is never selected: no output predicts it)"
    assert torch.equal(xm[~selected], x[~selected]), "mask_tokens: a position without a target was changed (only selected positions are masked)"
    share = selected[:, 1:].float().mean().item()
    assert abs(share - 0.15) < 0.005, f"mask_tokens: {share:.4f} of the positions 1.. selected, expected 0.15 (the probability; 5 sd = 0.005)"
    masked = (xm == 319) & selected
    changed = (xm != x) & selected & ~masked  # random replacements that differ from the original
    kept = (xm == x) & selected
    n = selected.sum().item()
    for name, count, expected, sd5 in (("<|mask|>", masked, 0.8, 0.015), ("a random token", changed, 0.1 * 316 / 317, 0.01), ("kept", kept, 0.1 + 0.1 / 317, 0.01)):
        share = count.sum().item() / n  # a random token equals the original 1 time in 317: it then counts as kept
        assert abs(share - expected) < sd5, f"mask_tokens: {share:.4f} of the selected positions became {name}, expected {expected:.3f} (BERT's 80/10/10; 5 sd = {sd5})"
    assert (xm[selected & ~masked] < 317).all(), "mask_tokens: a random replacement is a special token (random tokens are regular: ids below n_regular)"
    randoms = xm[changed]
    assert len(randoms.unique()) > 250, f"mask_tokens: the random replacements use {len(randoms.unique())} distinct tokens, expected most of the 317 regular ones"


@pytest.mark.core
def test_masking_is_a_function_of_the_generator():
    """A resumed run draws the masks again from the same seed: mask_tokens draws from the generator it is given."""
    _, _, xm, ym = masked_batch(1, shape=(8, 33))
    torch.manual_seed(123)  # the global generator moves: it must not matter
    torch.rand(10)
    _, _, xm2, ym2 = masked_batch(1, shape=(8, 33))
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2), "mask_tokens: the same generator seed gave other masks (draw with generator=, not the global generator)"
    _, _, xm3, _ = masked_batch(2, shape=(8, 33))
    assert not torch.equal(xm, xm3), "mask_tokens: generator seeds 1 and 2 gave the same masks"


@pytest.mark.core
def test_masking_mlm_loss_covers_selected_positions_only():
    """The MLM loss (train.CausalLM with causal=False) is the cross-entropy over the positions mask_tokens gave a target,
    written out in float64 here."""
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=320, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    x = torch.randint(0, 300, (4, 16))
    xm, ym = mask_tokens(x, torch.roll(x, -1, 1), 0.3, 319, 317, torch.Generator().manual_seed(1))
    assert ((ym == -1) | ((ym >= 0) & (ym < 320))).all(), f"mask_tokens: targets {sorted(set(ym.unique().tolist()) - set(range(320)))}: a target is a token id, or -1 (no target)"
    loss, _ = CausalLM(model, cfg("clm")).loss(model, xm, ym, causal=False)
    logits = model(xm, causal=False).double()
    keep = ym != -1
    assert keep.any(), "mask_tokens: no position was selected at probability 0.3"
    per_position = torch.logsumexp(logits[keep], -1) - logits[keep].gather(1, ym[keep][:, None]).squeeze(1)
    # a log-softmax over 320 tokens per position, then the mean over the selected ones
    check_close(loss, per_position.mean(), fp32_tol(logits.abs().max().item() + math.log(320), 320 + keep.sum().item() + 4),
                "mask_tokens: MLM loss over the targets it returned", "cross-entropy averaged over the selected positions (target -1: not selected)")


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
