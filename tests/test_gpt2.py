"""gpt2.py: the forward pass against a float64 reference written from GPT-2's formulas, causality, dropout (in
training only), the initialisation, parameter counts, optimizer groups, checkpoints that record the arch, and a
tiny GPT-2 teacher run through train_teacher.py that learns and resumes bit for bit despite its dropout.
(tests/test_export.py compares it with transformers' GPT2LMHeadModel.) Run: python -m pytest tests/test_gpt2.py"""

import math
import os

import pytest
import torch

from checkpoint import load_checkpoint, model_checkpoint, read_log, save_checkpoint
from config import InputError
from conftest import strip_timing, tiny_argv
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig
from train_teacher import main

TINY = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, max_seq_len=16)


def tiny_gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT2(GPT2Config(**{**TINY, **kw}))


def reference_logits(model, idx):
    """GPT-2's forward pass written out in float64 from its formulas (Radford et al. 2019; Hugging Face GPT-2):
    learned positions, pre-LayerNorm blocks, softmax(q k^T / sqrt(head_dim)) under the causal mask, the tanh
    GELU, a final LayerNorm, and the head tied to the token embedding. Dropout is off (eval)."""
    p = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.config
    B, T = idx.shape
    H, hd = cfg.n_heads, cfg.dim // cfg.n_heads

    def layer_norm(x, name):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + cfg.norm_eps) * p[name + ".weight"] + p[name + ".bias"]

    def linear(x, name):
        return x @ p[name + ".weight"].t() + p[name + ".bias"]

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = p["tok_embeddings.weight"][idx] + p["pos_embeddings.weight"][:T]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg.n_layers):
        pre = f"layers.{i}."
        q, k, v = linear(layer_norm(x, pre + "ln_1"), pre + "attn.c_attn").split(cfg.dim, dim=-1)
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(future, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, cfg.dim)
        x = x + linear(y, pre + "attn.c_proj")
        x = x + linear(gelu_tanh(linear(layer_norm(x, pre + "ln_2"), pre + "mlp.c_fc")), pre + "mlp.c_proj")
    return layer_norm(x, "norm") @ p["tok_embeddings.weight"].t()


def test_forward_matches_a_float64_reference():
    model = tiny_gpt2().eval().double()  # float64 throughout: tight enough to tell the tanh GELU from the exact one
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("norm."):
                prm.add_(0.1 * torch.randn_like(prm))  # non-zero biases and LayerNorm parameters: each one is checked
            else:
                prm.mul_(10)  # activations of order 1, where the two GELUs differ (by up to ~5e-4)
    idx = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(model(idx), reference_logits(model, idx), rtol=1e-10, atol=1e-10)
    assert model.output.weight is model.tok_embeddings.weight, "the head is tied to the token embedding"


def test_causal_logits_ignore_the_future_and_bidirectional_ones_do_not():
    model = tiny_gpt2().eval()
    idx = torch.randint(0, 97, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 97
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.allclose(a[:, 7], b[:, 7])
    assert not torch.allclose(model(idx, causal=False)[:, 3], model(changed, causal=False)[:, 3])


def test_positions_are_learned_and_matter():
    """The same token at two positions gets two different outputs (there is no RoPE: only the position table)."""
    model = tiny_gpt2().eval()
    h = model(torch.full((1, 2), 5))
    assert not torch.allclose(h[0, 0], h[0, 1])
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_acts_in_training_only():
    model = tiny_gpt2()
    idx = torch.randint(0, 97, (2, 12))
    model.eval()
    assert torch.equal(model(idx), model(idx)), "eval mode: no dropout"
    model.train()
    torch.manual_seed(1)
    a = model(idx)
    torch.manual_seed(1)
    assert torch.equal(a, model(idx)), "the masks come from the global generator: the same seed, the same masks"
    assert not torch.allclose(a, model(idx)), "training mode: dropout 0.1"
    quiet = tiny_gpt2(dropout=0.0).train()
    torch.testing.assert_close(quiet(idx), quiet.eval()(idx))


def test_initialisation_scales_the_residual_projections():
    """N(0, 0.02), except c_proj (the layers that write into the residual stream): N(0, 0.02 / sqrt(2 n_layers))."""
    model = GPT2(GPT2Config(vocab_size=512, dim=256, n_layers=8, n_heads=4))
    for name, prm in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(prm) == 0, name
        elif ".ln_" in name or name.startswith("norm."):
            assert torch.all(prm == 1), name
        else:
            want = 0.02 / math.sqrt(2 * 8) if name.endswith("c_proj.weight") else 0.02
            assert prm.std().item() == pytest.approx(want, rel=0.05), name
            assert abs(prm.mean().item()) < want / 20, name


def test_parameter_counts_and_flops():
    V, P, d, L = 97, 16, 32, 2
    model = tiny_gpt2()
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d  # attention, MLP, 2 LayerNorms
    assert model.num_params() == V * d + P * d + L * block + 2 * d  # the tied head counted once
    matmul = V * d + L * 12 * d * d  # the head and the weight matrices: no lookups, biases or norms
    assert model.num_params(matmul_only=True) == matmul
    assert model.flops_per_token(10) == 6 * matmul + 3 * 4 * L * d * 10
    assert model.flops_per_token(10, backward=False) == 2 * matmul + 4 * L * d * 10


def test_optimizer_decays_matrices_and_embeddings_not_biases_or_norms():
    model = tiny_gpt2()
    opt = model.configure_optimizer(1e-3, 0.1, (0.9, 0.95), 1e-8)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, prm in model.named_parameters():
        assert (id(prm) in decayed) == (name.endswith("weight") and ".ln_" not in name and not name.startswith("norm.")), name


def test_generate_continues_greedily():
    model = tiny_gpt2().eval()
    out = model.generate(torch.tensor([[1, 2, 3]]), 4, temperature=0)
    assert out.shape == (1, 7) and out[0, :3].tolist() == [1, 2, 3]
    assert out[0, 3].item() == model(out[:, :3])[0, -1].argmax().item()


def test_checkpoint_records_the_arch_and_the_loader_builds_the_right_model(tmp_path):
    model = tiny_gpt2(dropout=0.2).eval()
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model_checkpoint(model, {"vocab_size": 97}))
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["model_config"]["arch"] == "gpt2" and isinstance(loaded, GPT2) and loaded.config == model.config
    idx = torch.randint(0, 97, (1, 8))
    assert torch.equal(loaded.eval()(idx), model(idx))
    # a Llama's checkpoint says "llama"; one written before the arch was recorded (no "arch") is a Llama too
    llama = Llama(ModelConfig(vocab_size=97, dim=32, n_layers=1, n_heads=4, hidden_dim=48, max_seq_len=16))
    ckpt = model_checkpoint(llama, {"vocab_size": 97})
    assert ckpt["model_config"]["arch"] == "llama"
    del ckpt["model_config"]["arch"]
    save_checkpoint(path, ckpt)
    assert isinstance(load_checkpoint(path)[0], Llama)
    ckpt["model_config"]["arch"] = "gpt3"
    save_checkpoint(path, ckpt)
    with pytest.raises(InputError, match="ckpt.pt: bad model_config \\(arch='gpt3': expected one of 'llama', 'gpt2'\\)"):
        load_checkpoint(path)


def gpt2_argv(prepared, out, **kw):
    """A tiny GPT-2 teacher run: the tiny Llama run's keys with arch='gpt2'."""
    return tiny_argv(prepared, out, **{"arch": "gpt2", "n_kv_heads": 0, "hidden_dim": 0, **kw})


def test_tiny_gpt2_teacher_run_learns(prepared, tmp_path, capsys):
    out = str(tmp_path / "g")
    summary = main(gpt2_argv(prepared, out, max_iters=60, eval_interval=20))
    vals = [e["val_loss"] for e in read_log(os.path.join(out, "log.jsonl")) if "val_loss" in e]
    assert len(vals) == 3 and vals[-1] < vals[0] - 0.5, vals
    assert summary["best_val_loss"] == min(vals)
    model, ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert isinstance(model, GPT2) and ckpt["model_config"]["arch"] == "gpt2" and ckpt["model_config"]["dropout"] == 0.1
    assert "note:" not in capsys.readouterr().out


def test_a_llama_config_with_arch_gpt2_says_which_keys_it_does_not_use(prepared, tmp_path, capsys):
    main(tiny_argv(prepared, str(tmp_path / "g"), arch="gpt2", max_iters=2, eval_interval=2, warmup_iters=1))
    assert "note: arch='gpt2' does not use n_kv_heads=2, hidden_dim=64 (Llama-only keys" in capsys.readouterr().out
    with pytest.raises(InputError, match="--arch: arch='gpt3': expected one of 'llama', 'gpt2'"):
        main(tiny_argv(prepared, str(tmp_path / "h"), arch="gpt3"))
    with pytest.raises(InputError, match="dim=30 is not divisible by n_heads=4"):
        main(gpt2_argv(prepared, str(tmp_path / "h"), dim=30))


def test_gpt2_resume_with_dropout_equals_uninterrupted_run(prepared, tmp_path):
    """Dropout draws from the global generator: a resumed run must draw the masks the uninterrupted run drew."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = dict(max_iters=10, eval_interval=4, batch_size=8, micro_batch_size=4)  # 2 micro-steps: their masks differ too
    main(gpt2_argv(prepared, a, **args))
    main(gpt2_argv(prepared, b, stop_at=5, **args))
    torch.manual_seed(12345)  # whatever the generator's state when the resumed run starts
    main(gpt2_argv(prepared, b, resume=True, **args))
    read = lambda d: strip_timing(read_log(os.path.join(d, "log.jsonl")))
    assert read(a) == read(b), "losses after resume differ from the uninterrupted run"
    wa, wb = (load_checkpoint(os.path.join(d, "last.pt"))[0].state_dict() for d in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
