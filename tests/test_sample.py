"""model.generate and sample.py: greedy decoding is the argmax of a full forward at every step, top-k keeps
only the k most likely tokens, the context is cropped to max_seq_len, and the command prints text from a
checkpoint. Run: python -m pytest tests/test_sample.py"""

import pytest
import torch

from config import InputError
from model import Llama, ModelConfig
from sample import main

pytestmark = pytest.mark.core


def small_model(max_seq_len=16):
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=max_seq_len))
    with torch.no_grad():
        model.output.weight.mul_(50)  # peaked next-token distributions, so argmax and samples differ visibly
    return model.eval()


def test_generate_greedy_is_the_argmax_of_a_full_forward_at_every_step():
    model = small_model()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = model.generate(prompt, max_new_tokens=8, temperature=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :3], prompt), "the prompt is kept, 8 tokens are added"
    for t in range(3, 11):  # token t is the most likely next token after out[:, :t], by a forward of the whole prefix
        expected = model(out[:, :t])[:, -1].argmax(-1)
        assert torch.equal(out[:, t], expected), f"generated token {t - 3} is not the argmax of the logits after its prefix"


def test_generate_crops_the_context_to_max_seq_len():
    model = small_model(max_seq_len=8)
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=12, temperature=0)  # 15 tokens > max_seq_len
    for t in range(8, 15):
        expected = model(out[:, t - 8 : t])[:, -1].argmax(-1)  # the last max_seq_len tokens only
        assert torch.equal(out[:, t], expected), f"token {t} should be predicted from the last 8 tokens"


def test_generate_top_k_keeps_only_the_k_most_likely_tokens_and_is_seeded():
    model = small_model()
    prompt = torch.tensor([[7, 8]] * 200)
    draw = lambda seed, **kw: model.generate(prompt, 1, generator=torch.Generator().manual_seed(seed), **kw)[:, -1]
    top3 = model(prompt[:1])[0, -1].topk(3).indices.tolist()
    sampled = draw(0, temperature=5.0, top_k=3)  # a high temperature: without top_k, other tokens would appear
    assert set(sampled.tolist()) <= set(top3) and len(set(sampled.tolist())) > 1, (sampled.unique(), top3)
    assert len(set(draw(0, temperature=5.0, top_k=0).tolist()) - set(top3)) > 0, "top_k=0 samples from every token"
    assert torch.equal(draw(0, temperature=1.0, top_k=1), torch.full((200,), top3[0])), "top_k=1 is greedy"
    assert torch.equal(draw(1, temperature=1.0), draw(1, temperature=1.0)), "the same seed, the same samples"


def test_sample_command_prints_continuations_of_a_checkpoint(random_ckpt, capsys):
    args = ["--ckpt", random_ckpt, "--prompt", "the cat", "--max_new_tokens", "5", "--num_samples", "2", "--seed", "3"]
    samples = main(args)
    printed = capsys.readouterr().out
    assert len(samples) == 2 and all(s.startswith("the cat") for s in samples), samples
    assert "--- sample 1" in printed and "--- sample 2" in printed and samples[1] in printed
    assert main(args) == samples, "the same seed gives the same text"
    greedy = main(args[:-2] + ["--temperature", "0"])
    assert greedy[0] == greedy[1]
    with pytest.raises(InputError, match="--ckpt: required"):
        main(["--prompt", "x"])
    with pytest.raises(InputError, match="nope.pt: checkpoint not found"):
        main(["--ckpt", "nope.pt"])
