"""model.py: causality, bidirectional mode, RoPE against an explicit rotation, GQA against expanded heads,
RMSNorm, SwiGLU, the published parameter counts, checkpoints. Run: python -m pytest tests/test_model.py
Every test here is a `core` (teaching) test: EXERCISES.md grades its model exercises with them."""

import math
import os

import pytest
import torch

from checkpoint import build_model, load_checkpoint, model_checkpoint, save_checkpoint
from config import InputError, read_config_file
from conftest import ROOT
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
    idx = torch.randint(0, 97, (2, 12))
    for t in range(11):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 97
        a = model(idx)
        b = model(changed)
        assert torch.equal(a[:, : t + 1], b[:, : t + 1]), f"logits at <= {t} changed when token {t + 1} changed"
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_attention_bidirectional_mode_sees_the_future():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 97
    a = model(idx, causal=False)
    b = model(changed, causal=False)
    assert not torch.allclose(a[:, 3], b[:, 3]), "with causal=False, position 3 must depend on token 7"


def test_rope_equals_explicit_rotation_matrix():
    head_dim, T, theta = 8, 10, 10000.0
    cos, sin = rope_tables(head_dim, T, theta)
    x = torch.randn(1, 1, T, head_dim, dtype=torch.float64)
    got = apply_rope(x.float(), cos, sin).double()
    half = head_dim // 2
    for t in range(T):
        R = torch.zeros(head_dim, head_dim, dtype=torch.float64)
        for j in range(half):  # half-split convention: dims j and j + head_dim/2 form a rotated pair
            a = t * theta ** (-2 * j / head_dim)
            R[j, j], R[j, j + half] = math.cos(a), -math.sin(a)
            R[j + half, j], R[j + half, j + half] = math.sin(a), math.cos(a)
        torch.testing.assert_close(got[0, 0, t], R @ x[0, 0, t], atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(16, 32, 10000.0)
    q, k = torch.randn(16), torch.randn(16)
    rot = lambda v, t: apply_rope(v.view(1, 1, 1, 16).expand(1, 1, 32, 16), cos, sin)[0, 0, t]
    assert torch.allclose(rot(q, 5) @ rot(k, 2), rot(q, 20) @ rot(k, 17), atol=1e-4)


def test_attention_gqa_equals_expanded_heads_and_manual_softmax():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=10, dim=48, n_layers=1, n_heads=6, n_kv_heads=2, max_seq_len=16)
    attn = Attention(cfg)
    x = torch.randn(2, 9, 48)
    cos, sin = rope_tables(cfg.head_dim, 9, cfg.rope_theta)
    for causal in (True, False):
        got = attn(x, cos, sin, causal)
        B, T, hd = 2, 9, cfg.head_dim
        q = apply_rope(attn.wq(x).view(B, T, 6, hd).transpose(1, 2), cos, sin)
        k = apply_rope(attn.wk(x).view(B, T, 2, hd).transpose(1, 2), cos, sin)
        v = attn.wv(x).view(B, T, 2, hd).transpose(1, 2)
        k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)  # query heads 0-2 share KV head 0
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if causal:
            scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 48)
        torch.testing.assert_close(got, attn.wo(y), atol=1e-5, rtol=1e-5)


def test_rmsnorm_formula():
    norm = RMSNorm(8, 0.1)  # a large eps, so that a wrong sign or place of eps shows
    norm.weight.data = torch.arange(8.0)
    x = torch.randn(3, 8, dtype=torch.float64) * 0.3
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 0.1) * torch.arange(8.0, dtype=torch.float64)
    torch.testing.assert_close(norm(x.float()).double(), expected, rtol=1e-5, atol=1e-6)


def test_swiglu_feed_forward_formula():
    torch.manual_seed(0)
    ffn = FeedForward(ModelConfig(vocab_size=10, dim=8, n_heads=2, hidden_dim=10))
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    w1, w2, w3 = (getattr(ffn, n).weight.double() for n in ("w1", "w2", "w3"))  # (10, 8), (8, 10), (10, 8)
    gate = x @ w1.t()
    expected = ((gate * torch.sigmoid(gate)) * (x @ w3.t())) @ w2.t()  # w2(silu(w1 x) * w3 x), silu(a) = a sigmoid(a)
    torch.testing.assert_close(ffn.double()(x), expected)
    assert ffn.w1.weight.shape == (10, 8) and ffn.w3.weight.shape == (10, 8) and ffn.w2.weight.shape == (8, 10)


def test_swiglu_hidden_rule():
    assert ModelConfig(dim=512, hidden_dim=1024).ffn_hidden_dim() == 1024
    assert ModelConfig(dim=768, multiple_of=256).ffn_hidden_dim() == 2048  # 2/3 * 4 * 768 = 2048
    assert ModelConfig(dim=4096, multiple_of=256).ffn_hidden_dim() == 11008  # Llama-7B


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
