"""model.py: causality, bidirectional mode, RoPE against an explicit rotation, GQA attention, RMSNorm and SwiGLU against
float64 references, the published parameter counts, checkpoints. Run: python -m pytest tests/test_model.py
Every test here is a `core` (teaching) test: EXERCISES.md grades its model exercises with them."""

import math
import os

import pytest
import torch

from checkpoint import build_model, load_checkpoint, model_checkpoint, save_checkpoint
from config import InputError, read_config_file
from conftest import ROOT, check_close, fp32_tol
from gpt2 import GPT2Config
from model import Attention, FeedForward, Llama, ModelConfig, RMSNorm, apply_rope, rope_tables

pytestmark = pytest.mark.core

TINY = ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=16)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY.__dict__, **kw})
    return Llama(cfg).eval()


def test_attention_causal_logits_ignore_the_future():
    model = tiny_model()
    torch.manual_seed(1)
    idx = torch.randint(0, 97, (2, 12))
    a = model(idx)
    for t in range(11):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 97
        b = model(changed)
        # 0 in exact arithmetic (a masked score's weight is exactly 0); a few ulps allowed for a summation order that
        # depends on the values
        past = (a[:, : t + 1] - b[:, : t + 1]).abs().max().item()
        assert past <= fp32_tol(a.abs().max().item(), 1), (
            f"Attention.forward: the logits at positions <= {t} changed by {past:.3g} when token {t + 1} changed (causal "
            "attention: position t attends to positions <= t only)")
        assert not torch.allclose(a[:, t + 1], b[:, t + 1]), f"Attention.forward: the logits at position {t + 1} ignore its own token"


def test_attention_bidirectional_mode_sees_the_future():
    model = tiny_model()
    torch.manual_seed(1)
    idx = torch.randint(0, 97, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 97
    a = model(idx, causal=False)
    b = model(changed, causal=False)
    assert not torch.allclose(a[:, 3], b[:, 3]), "Attention.forward: with causal=False, position 3 must attend to token 7 (no mask)"


def rope_reference(x, theta):
    """x (..., T, head_dim) rotated in float64 by RoPE's half-split convention, from its definition: at position t the
    pair (x[j], x[j + head_dim/2]) turns by the angle t * theta^(-2j/head_dim)."""
    x = x.double()
    T, hd = x.shape[-2:]
    half = hd // 2
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-2 * torch.arange(half, dtype=torch.float64) / hd)  # (T, half)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], dim=-1)


def rope_tol(x):
    """fp32 error of one rotated element: the cos/sin tables rounded to fp32, two products and a sum, on the
    magnitude |x[j]| + |x[j + head_dim/2]| of its pair."""
    pair = x.double().abs() + x.double().abs().roll(x.shape[-1] // 2, dims=-1)  # roll by half: each element's partner
    return fp32_tol(pair, 4)


def test_rope_equals_explicit_rotation_matrix():
    head_dim, T, theta = 8, 10, 10000.0
    cos, sin = rope_tables(head_dim, T, theta)
    torch.manual_seed(0)
    x = torch.randn(2, 3, T, head_dim)  # (B, n_heads, T, head_dim): every batch row and head turns alike
    got = apply_rope(x, cos, sin)
    half = head_dim // 2
    expected = torch.empty(2, 3, T, head_dim, dtype=torch.float64)
    for t in range(T):  # the rotation matrix of position t, block by block
        R = torch.zeros(head_dim, head_dim, dtype=torch.float64)
        for j in range(half):  # half-split convention: dims j and j + head_dim/2 form a rotated pair
            a = t * theta ** (-2 * j / head_dim)
            R[j, j], R[j, j + half] = math.cos(a), -math.sin(a)
            R[j + half, j], R[j + half, j + half] = math.sin(a), math.cos(a)
        expected[:, :, t] = x[:, :, t].double() @ R.T
    check_close(got, expected, rope_tol(x), "apply_rope: rotated x[b, head, t, j]",
                "the pair (x[j], x[j + head_dim/2]) at position t turned by the angle t * theta^(-2j/head_dim)")


def test_rope_scores_depend_only_on_relative_position():
    """q at position t and k at position s score (q1.k1 + q2.k2) cos((t-s) w) + (q1.k2 - q2.k1) sin((t-s) w), summed over
    the pairs (q1, q2) = (q[j], q[j + 8]) with frequency w = theta^(-2j/16): a function of t - s only."""
    cos, sin = rope_tables(16, 32, 10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    rot = lambda v, t: apply_rope(v.view(1, 1, 1, 16).expand(1, 1, 32, 16), cos, sin)[0, 0, t]
    w = 10000.0 ** (-2 * torch.arange(8, dtype=torch.float64) / 16)
    (q1, q2), (k1, k2) = q.double().view(2, 8), k.double().view(2, 8)
    magnitude = ((q1.abs() + q2.abs()) * (k1.abs() + k2.abs())).sum()
    for t, s in ((5, 2), (20, 17), (3, 3), (0, 7), (31, 1)):
        d = t - s
        expected = ((q1 * k1 + q2 * k2) * torch.cos(d * w) + (q1 * k2 - q2 * k1) * torch.sin(d * w)).sum()
        check_close(rot(q, t) @ rot(k, s), expected, fp32_tol(magnitude, 16 + 4), f"apply_rope: score of q at position {t} and k at {s}",
                    f"a rotation by the relative position t - s = {d} only")


def attention_reference(attn, x, theta, causal):
    """(y, tol): the attention layer's output in float64 from its definition, and its fp32 tolerance. Query head h
    reads key/value head h // (n_heads / n_kv_heads); RoPE from rope_reference; softmax(q k^T / sqrt(head_dim))."""
    B, T, dim = x.shape
    H, KV, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    W = {n: getattr(attn, n).weight.detach().double() for n in ("wq", "wk", "wv", "wo")}
    xd = x.double()
    heads = lambda z, n: z.view(B, T, n, hd).transpose(1, 2)  # (B, n, T, hd)
    q, k, v = rope_reference(heads(xd @ W["wq"].T, H), theta), rope_reference(heads(xd @ W["wk"].T, KV), theta), heads(xd @ W["wv"].T, KV)
    kv_of = torch.arange(H) // (H // KV)  # query heads 0 .. H/KV - 1 share KV head 0, and so on
    scores = q @ k[:, kv_of].transpose(-1, -2) / math.sqrt(hd)  # (B, H, T, T)
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    P = scores.softmax(-1)
    y = (P @ v[:, kv_of]).transpose(1, 2).reshape(B, T, H * hd) @ W["wo"].T
    # The tolerance. Roundings on the longest chain: dim (projection) + hd (score) + T (weighted sum) + H hd (output
    # projection) terms, and a few for RoPE and the softmax. Magnitudes: a score's terms sum to at most s_abs =
    # |q||k|/sqrt(hd) (q, k from |x||W|, RoPE adding a pair's two elements), and a softmax weight moves by at most 2e
    # of itself when the scores move by e, so score errors reach the output as 2 s_abs times its magnitude |wo| (P |v|).
    absd = lambda z, n: heads(xd.abs() @ W[z].T.abs(), n)
    pair = lambda z: z + z.roll(hd // 2, dims=-1)
    s_abs = pair(absd("wq", H)) @ pair(absd("wk", KV))[:, kv_of].transpose(-1, -2) / math.sqrt(hd)
    magnitude = (P @ absd("wv", KV)[:, kv_of]).transpose(1, 2).reshape(B, T, H * hd) @ W["wo"].T.abs()
    return y, fp32_tol(magnitude * (1 + 2 * s_abs.max()), dim + hd + T + H * hd + 8)


@pytest.mark.parametrize("n_heads, n_kv_heads", [(6, 2), (6, 6), (6, 1)])
def test_attention_gqa_equals_expanded_heads_and_manual_softmax(n_heads, n_kv_heads):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=10, dim=48, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads, max_seq_len=16)
    attn = Attention(cfg)
    x = torch.randn(2, 9, 48)
    cos, sin = rope_tables(cfg.head_dim, 9, cfg.rope_theta)
    for causal in (True, False):
        expected, tol = attention_reference(attn, x, cfg.rope_theta, causal)
        check_close(attn(x, cos, sin, causal), expected, tol, f"Attention.forward: output[b, t, :] ({n_heads} query heads, {n_kv_heads} KV heads, causal={causal})",
                    "query head h reads KV head h // (n_heads / n_kv_heads); softmax(q k^T / sqrt(head_dim)) v with RoPE on q and k; then wo")


def test_rmsnorm_formula():
    norm = RMSNorm(8, 0.1)  # a large eps, so that a wrong sign or place of eps shows
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-1.4, 2.1, 8))  # a gain per feature, negative ones included, none 0
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8) * 0.3  # (B, T, dim): the mean is over the last dimension only
    xd, w = x.double(), norm.weight.detach().double()
    expected = xd / torch.sqrt((xd**2).mean(-1, keepdim=True) + 0.1) * w
    # one chain of roundings per element: 8 squares summed, / 8, + eps, sqrt, divide (or rsqrt and multiply), times the gain
    check_close(norm(x), expected, fp32_tol(expected.abs(), 8 + 6), "RMSNorm.forward: output[b, t, j]",
                "x / sqrt(mean(x^2) + eps) * weight, the mean over the last dimension, eps 0.1")


def test_swiglu_feed_forward_formula():
    torch.manual_seed(0)
    ffn = FeedForward(ModelConfig(vocab_size=10, dim=8, n_heads=2, hidden_dim=10))
    x = torch.randn(2, 3, 8)
    w1, w2, w3 = (getattr(ffn, n).weight.detach().double() for n in ("w1", "w2", "w3"))  # (10, 8), (8, 10), (10, 8)
    gate, up = x.double() @ w1.T, x.double() @ w3.T
    expected = ((gate * torch.sigmoid(gate)) * up) @ w2.T  # w2(silu(w1 x) * w3 x), silu(a) = a sigmoid(a)
    # |silu(a)| <= |a|, so the terms' magnitude is that of |w2| (|w1||x| * |w3||x|); roundings: 8 + 10 products, silu, *
    magnitude = ((x.double().abs() @ w1.abs().T) * (x.double().abs() @ w3.abs().T)) @ w2.abs().T
    check_close(ffn(x), expected, fp32_tol(magnitude, 8 + 10 + 4), "FeedForward.forward: output[b, t, j]", "w2(silu(w1 x) * w3 x)")


def test_swiglu_hidden_rule():
    """Not an exercise: the width of the SwiGLU layer (ModelConfig.ffn_hidden_dim) the exercise's layer is built with."""
    for cfg, expected in ((ModelConfig(dim=512, hidden_dim=1024), 1024), (ModelConfig(dim=768, multiple_of=256), 2048),  # 2/3 * 4 * 768 = 2048
                          (ModelConfig(dim=4096, multiple_of=256), 11008)):  # Llama-7B
        assert cfg.ffn_hidden_dim() == expected, (f"ModelConfig.ffn_hidden_dim: {cfg.ffn_hidden_dim()} for dim {cfg.dim}, hidden_dim {cfg.hidden_dim}, "
                                                  f"expected {expected} (hidden_dim, else 2/3 of 4 dim rounded up to a multiple of {cfg.multiple_of})")


@pytest.mark.parametrize("config, expected", [
    ("babyllama_58m.py", 58_343_936),  # BabyLlama student (2023)
    ("teacher_llama_360m.py", 359_973_888),  # BabyLlama's Llama teacher
    ("teacher_gpt2_705m.py", 704_928_768),  # BabyLlama's GPT-2 teacher (256 positions)
    ("tiny_gpt2_teacher.py", 2_874_112),  # its tiny CPU version
    ("student.py", 345_355_200),  # BabyLlama-2 student
    ("teacher1.py", 345_355_200),  # BabyLlama-2 teachers
    ("teacher2.py", 345_355_200),
])
def test_published_parameter_counts(config, expected):
    values = read_config_file(os.path.join(ROOT, "configs", config))  # the model keys of a training config
    config_class = GPT2Config if values.get("arch") == "gpt2" else ModelConfig
    with torch.device("meta"):
        model = build_model(config_class.from_dict({**values, "vocab_size": 16000}))
    assert model.num_params() == expected


def test_tied_embeddings_share_one_matrix():
    model = tiny_model(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight
    assert model.num_params() == tiny_model().num_params() - 97 * 32


def test_checkpoint_roundtrip_strips_compile_prefix_and_checks_tokenizer(tmp_path):
    model = tiny_model()
    tok = {"name": "bpe97", "vocab_size": 97, "sha256": "abc"}
    ckpt = model_checkpoint(model, tok, step=3)
    ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}  # as saved from a compiled model
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, ckpt)
    assert os.listdir(tmp_path) == ["ckpt.pt"], "no temporary file may be left behind"
    loaded, meta = load_checkpoint(path, tokenizer=tok)
    idx = torch.randint(0, 97, (1, 8))
    assert torch.equal(loaded.eval()(idx), model(idx)) and meta["step"] == 3
    with pytest.raises(InputError, match="tokenizer"):
        load_checkpoint(path, tokenizer={"name": "gpt2", "vocab_size": 50259, "sha256": "def"})


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model_checkpoint(tiny_model(), {"vocab_size": 97}))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="ckpt.pt: not a readable checkpoint"):
        load_checkpoint(str(path))


def test_sequence_longer_than_max_seq_len_is_refused():
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_model()(torch.zeros(1, 17, dtype=torch.long))
