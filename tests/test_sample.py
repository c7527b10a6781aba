"""model.generate and sample.py: greedy decoding is the argmax of a full forward at every step, the context is
cropped to max_seq_len, samples follow softmax(logits / T) over the top k, drawn from the given generator, and the
command prints text from a checkpoint. Run: python -m pytest tests/test_sample.py"""

import math

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
    assert out.shape == (2, 11) and torch.equal(out[:, :3], prompt), (
        f"Llama.generate: returned shape {tuple(out.shape)}, expected (2, 11): the prompt (2, 3) followed by 8 new tokens")
    for t in range(3, 11):  # token t is the most likely next token after out[:, :t], by a forward of the whole prefix
        expected = model(out[:, :t])[:, -1].argmax(-1)
        assert torch.equal(out[:, t], expected), (
            f"Llama.generate: new token {t - 3} is {out[:, t].tolist()}, expected {expected.tolist()} (temperature 0: the argmax "
            "of the last position's logits after the tokens so far)")


def test_generate_crops_the_context_to_max_seq_len():
    model = small_model(max_seq_len=8)
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=12, temperature=0)  # 15 tokens > max_seq_len
    for t in range(8, 15):
        expected = model(out[:, t - 8 : t])[:, -1].argmax(-1)  # the last max_seq_len tokens only
        assert torch.equal(out[:, t], expected), (
            f"Llama.generate: token {t} is {out[0, t].item()}, expected {expected.item()} (the argmax after the last 8 = max_seq_len tokens)")


N_DRAWS = 4000  # one token for each of 4000 copies of a prompt


def draw_counts(model, prompt, temperature, top_k, seed):
    out = model.generate(prompt.expand(N_DRAWS, -1), 1, temperature=temperature, top_k=top_k, generator=torch.Generator().manual_seed(seed))
    assert out.shape == (N_DRAWS, prompt.shape[1] + 1), f"Llama.generate: returned shape {tuple(out.shape)}, expected {(N_DRAWS, prompt.shape[1] + 1)}"
    return torch.bincount(out[:, -1], minlength=50)


def binomial_tail(count, n, p):
    """How likely a Binomial(n, p) count lands at least as far from n p as `count`, on its side (the tail, doubled);
    exact, in float64, valid for rare tokens too (where a normal approximation is not)."""
    if p in (0.0, 1.0):
        return float(count == n * p)
    k = torch.arange(n + 1, dtype=torch.float64)
    pmf = (math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)).exp()
    return min(1.0, 2 * min(pmf[count:].sum().item(), pmf[: count + 1].sum().item()))


@pytest.mark.parametrize("temperature, top_k", [(5.0, 5), (5.0, 0), (2.0, 0), (0.7, 3), (1.0, 1)])
def test_generate_samples_softmax_of_logits_over_temperature_within_the_top_k(temperature, top_k):
    """Sampled tokens follow softmax(logits / T) over the top_k most likely tokens (all for top_k 0), in float64 here.
    Statistical, with a fixed seed: each of the 50 tokens' counts in 4000 draws must have an exact binomial tail
    probability above 1e-6 / 50 (a correct sampler fails about once in a million seeds; a wrong distribution by
    far: a token 0.05 too frequent is 10 standard errors off, a tail probability of 1e-23)."""
    model = small_model()
    prompt = torch.tensor([[7, 8]])
    logits = model(prompt)[0, -1].double() / temperature
    if top_k:
        logits[logits < logits.topk(top_k).values[-1]] = -math.inf
    p = logits.softmax(-1).tolist()
    counts = draw_counts(model, prompt, temperature, top_k, seed=0).tolist()
    tails = [binomial_tail(c, N_DRAWS, pv) for c, pv in zip(counts, p)]
    worst = min(range(50), key=lambda v: tails[v])
    assert tails[worst] > 1e-6 / 50, (
        f"Llama.generate: token {worst} drawn {counts[worst]} times in {N_DRAWS}, expected {N_DRAWS * p[worst]:.1f} (probability {p[worst]:.4g}: softmax "
        f"of the last position's logits / temperature {temperature}, cut to the top_k={top_k} most likely tokens{'' if top_k else ' (0 = all)'}; "
        f"a correct sampler lands this far with probability {tails[worst]:.2g})")


def test_generate_draws_from_the_generator_it_is_given():
    model = small_model()
    prompt = torch.tensor([[7, 8]] * 200)
    draw = lambda seed: model.generate(prompt, 3, temperature=2.0, generator=torch.Generator().manual_seed(seed))
    first = draw(1)
    torch.manual_seed(123)  # the global generator moves: it must not matter
    torch.rand(10)
    assert torch.equal(first, draw(1)), "Llama.generate: the same generator seed gave other tokens (draw with generator=, not the global generator)"
    assert not torch.equal(first, draw(2)), "Llama.generate: two generator seeds gave the same 600 tokens"


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
