"""teacher_cache.py: the cached step equals the live step (k = V), plain or chunked, the sparse target's draws and
weights (unbiased for any proposal; top-k renormalised) and the sparse loss against float64 references, the header check, and an
interrupted (raised, or SIGKILLed) or rank-sharded build equals an uninterrupted one bit for bit.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_teacher_cache.py   (~20 s; -m "not slow" skips the
torchrun and torch.compile tests, ~7 s)"""

import math
import os
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from checkpoint import model_checkpoint, save_checkpoint
from conftest import check_close, fp32_tol
from config import InputError, flat_defaults
from distill import Distillation, ensemble_log_probs, main
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig
from data import load_tokenizer
from teacher_cache import CACHE_KEYS, CachedDistillation, TeacherCache, build_cache, cache_header, sparse_distill_loss, sparse_target, teacher_block
from train import Batch, EpochSampler, Windows

CACHE_DEFAULTS = flat_defaults(CACHE_KEYS)

torch.set_num_threads(1)
RT = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext(), rank=0, world=1, dtype="float32", master=True, ddp=False)
SEQ, N_WINDOWS = 16, 20


def tiny(seed, vocab, dim=16):
    torch.manual_seed(seed)
    return Llama(ModelConfig(vocab_size=vocab, dim=dim, n_layers=1, n_heads=2, hidden_dim=32, max_seq_len=SEQ))


def tiny_gpt2(seed, vocab, dim=24):
    torch.manual_seed(seed)
    return GPT2(GPT2Config(vocab_size=vocab, dim=dim, n_layers=2, n_heads=2, max_seq_len=SEQ))


@pytest.fixture(scope="module")
def setup(prepared, tmp_path_factory):
    """Two random tiny teachers saved as checkpoints of the prepared tokenizer, and the training windows. The
    ensemble is BabyLlama's heterogeneous one: a Llama and a GPT-2 of another width and depth."""
    _, info = load_tokenizer(prepared)
    base = tmp_path_factory.mktemp("cache_teachers")
    teachers, paths = [], []
    for seed, make in ((1, tiny), (2, tiny_gpt2)):
        t = make(seed, info["vocab_size"])
        with torch.no_grad():  # sharper than N(0, 0.02) logits, so top-k and sampling differ visibly
            t.output.weight.mul_(100)
        paths.append(str(base / f"t{seed}.pt"))
        save_checkpoint(paths[-1], model_checkpoint(t, info))
        teachers.append(t.eval().requires_grad_(False))
    windows = Windows(os.path.join(prepared, "train.bin"), SEQ)
    windows.n = N_WINDOWS  # a prefix of the windows keeps the builds at milliseconds
    return SimpleNamespace(data=prepared, vocab=info["vocab_size"], teachers=teachers, paths=paths, windows=windows)


def build(s, weights, cfg, path, **kw):
    """The cache of this run, built as distill.main builds it: the header, then the teachers' pass per block."""
    header = cache_header(cfg, weights, s.windows)
    target = lambda z: ensemble_log_probs(z, weights, cfg.temperature, cfg.ensemble)
    return build_cache(lambda lo, hi: teacher_block(s.teachers, target, s.windows, lo, hi, header, RT, cfg.loss_chunk or 256),
                       header, path, RT, cfg.cache_block, **kw)


def cfg_of(s, **kw):
    base = dict(data_dir=s.data, teachers=s.paths, alpha=0.4, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_chunk=7,
                loss_impl="chunked", seq_len=SEQ)
    return SimpleNamespace(**{**base, **CACHE_DEFAULTS, "cache_block": 6, **kw})


# -----------------------------------------------------------------------------------------------
# Exactness: with every token stored, the cached step is the live step


@pytest.mark.parametrize("loss_impl", ["plain", "chunked"])
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["paper", "mean"])
@pytest.mark.parametrize("ensemble", ["logits", "probs"])
def test_full_vocabulary_cache_step_equals_live_step(setup, tmp_path, ensemble, reduction, T, loss_impl):
    """Both the live and the cached objective, plain or chunked (one sequence per chunk here: 4 chunks)."""
    cfg = cfg_of(setup, ensemble=ensemble, kl_reduction=reduction, temperature=T, cache_method="topk", cache_k=setup.vocab,
                 loss_impl=loss_impl, loss_chunk=SEQ)
    weights = [0.3, 0.7]
    build(setup, weights, cfg, str(tmp_path / "c"))
    cache = TeacherCache(str(tmp_path / "c"), expect=cache_header(cfg, weights, setup.windows))
    idx = EpochSampler(N_WINDOWS, 4, 4, 1, seed=5).indices(step=1, micro_step=0, rank=0)  # what the loop draws
    x, y = setup.windows.get(idx, RT.device)
    student = tiny(0, setup.vocab)
    live, live_logs = Distillation(student, setup.teachers, weights, cfg).loss(student, x, y)
    live.backward()
    g_live = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    objective = CachedDistillation(student, cache, cfg)
    cached, cached_logs = objective.loss(student, *objective.inputs(Batch(x, y, idx, 1, 0, 0)))  # as the loop calls it
    cached.backward()
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-6)
    for key in ("ce", "kl_term", "kl"):
        torch.testing.assert_close(cached_logs[key], live_logs[key], rtol=1e-5, atol=1e-6)
    for (name, p), g in zip(student.named_parameters(), g_live):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7), name


# -----------------------------------------------------------------------------------------------
# The sparse loss is its formula


def sparse_reference(s, y, ids, w, plogp, alpha, T, reduction):
    """(loss, ce, kl_term, kl), d loss / d s and their fp32 tolerances, in float64 from the formula, position by position:
    KL_hat = sum p log p - (p_hat . s) / T + logsumexp(s / T), p_hat the k slots (ids, weights; an id may repeat);
    d KL_hat / d s = (softmax(s / T) - p_hat) / T. Tolerances: CE a log-softmax over V tokens averaged over N
    positions; KL_hat a sum of N plogp, N k slot products and N log-sum-exps over V, each on its terms' magnitude."""
    s, w, plogp = s.double(), w.double(), plogp.double()
    B, L, V = s.shape
    N, D, k = B * L, (B if reduction == "paper" else B * L), ids.shape[-1]
    ce = kl_sum = 0.0
    grad = torch.zeros(B, L, V, dtype=torch.float64)
    for b in range(B):
        for t in range(L):
            lse1, lseT = torch.logsumexp(s[b, t], 0), torch.logsumexp(s[b, t] / T, 0)
            p_hat = torch.zeros(V, dtype=torch.float64).index_add_(0, ids[b, t], w[b, t])  # repeated ids add up
            ce += (lse1 - s[b, t, y[b, t]]).item()
            kl_sum += (plogp[b, t] - (p_hat * s[b, t]).sum() / T + lseT).item()
            onehot = torch.nn.functional.one_hot(y[b, t], V).double()
            grad[b, t] = alpha / N * (s[b, t].softmax(0) - onehot) + (1 - alpha) * T**2 / D * ((s[b, t] / T).softmax(0) - p_hat) / T
    ce, kl_term = ce / N, T**2 * kl_sum / D
    smax = s.abs().max().item()
    tol_ce = fp32_tol(smax + math.log(V), V + N + 4)
    tol_kl_sum = fp32_tol(plogp.abs().sum().item() + (w.abs() * s.abs().max()).sum().item() / T + N * (smax / T + math.log(V)), N * k + N + V + 8)
    tols = (alpha * tol_ce + (1 - alpha) * T**2 * tol_kl_sum / D, tol_ce, T**2 * tol_kl_sum / D, tol_kl_sum / N)
    tol_grad = fp32_tol((2 * alpha / N + (1 - alpha) * T / D * (1 + w.abs().sum(-1, keepdim=True))) * (smax + math.log(V) + 1), V + k + 8)
    return (alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / N), tols, grad, tol_grad


def check_sparse_loss(got, expected, tols, why):
    assert isinstance(got, tuple) and len(got) == 4, "sparse_distill_loss: expected a tuple (loss, ce, kl_term, kl)"
    meaning = {"loss": "alpha ce + (1 - alpha) kl_term", "ce": "cross-entropy of softmax(s) with the labels, averaged over the positions",
               "kl_term": "T^2 KL_hat / D", "kl": "KL_hat summed over positions / (B L)"}
    for i in (1, 2, 3, 0):  # the parts first: a wrong part is named before the total it spoils
        name = ("loss", "ce", "kl_term", "kl")[i]
        check_close(got[i], expected[i], tols[i], f"sparse_distill_loss: {name}", f"{meaning[name]}; {why}")


@pytest.mark.core
@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_sparse_distill_loss_with_every_token_stored_is_the_exact_loss(reduction):
    """With p_hat = p on all V slots, the sparse loss is alpha CE + (1 - alpha) T^2 KL(p || softmax(s/T)) / D exactly."""
    torch.manual_seed(0)
    B, L, V, T, alpha = 2, 3, 11, 2.0, 0.4
    s, z = torch.randn(B, L, V) * 2, torch.randn(B, L, V, dtype=torch.float64) * 2
    y = torch.randint(0, V, (B, L))
    log_p = torch.log_softmax(z, -1)
    ids, weights, plogp = torch.arange(V).expand(B, L, V), log_p.exp().float(), (log_p.exp() * log_p).sum(-1).float()
    got = sparse_distill_loss(s, y, ids, weights, plogp, alpha, T, reduction)
    expected, tols, _, _ = sparse_reference(s, y, ids, weights, plogp, alpha, T, reduction)
    D = B if reduction == "paper" else B * L
    exact_kl = (log_p.exp() * (log_p - torch.log_softmax(s.double() / T, -1))).sum().item()  # summed over B, L and V
    assert abs(expected[2] - T**2 * exact_kl / D) < 1e-6 * abs(expected[2]), "the reference's KL_hat is the exact KL when every token is stored"
    check_sparse_loss(got, expected, tols, f"every token stored: the exact KL(p || softmax(s/T)); {REDUCTION[reduction]}")


REDUCTION = {"paper": "D = B (paper reduction: KL summed over positions / B)", "mean": "D = B L (mean reduction)"}


@pytest.mark.core
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_sparse_distill_loss_equals_the_formula_over_the_stored_slots(T, reduction):
    torch.manual_seed(0)
    B, L, V, k = 3, 5, 13, 4
    s = (torch.randn(B, L, V) * 2).requires_grad_()
    y, ids = torch.randint(0, V, (B, L)), torch.randint(0, V, (B, L, k))  # repeated ids included
    ids[0, 0] = torch.tensor([3, 3, 5, 3])  # one for sure
    w, plogp = torch.rand(B, L, k), -torch.rand(B, L)  # sum(w) != 1: a sampled p_hat with a proposal
    got = sparse_distill_loss(s, y, ids, w, plogp, 0.3, T, reduction)
    expected, tols, grad, tol_grad = sparse_reference(s.detach(), y, ids, w, plogp, 0.3, T, reduction)
    why = f"KL_hat = sum p log p - (p_hat . s) / T + logsumexp(s / T), the middle term over the k slots (a repeated id counts each time); T {T}; {REDUCTION[reduction]}"
    check_sparse_loss(got, expected, tols, why)
    (g,) = torch.autograd.grad(got[0], [s])
    check_close(g, grad, tol_grad, "sparse_distill_loss: d loss / d s[b, t, v]",
                "alpha/N (softmax(s) - onehot(y)) + (1 - alpha) T^2/D (softmax(s/T) - p_hat)/T, p_hat the slots' weights added up per id")


# -----------------------------------------------------------------------------------------------
# The sparse target: the draws by inverse CDF, unbiased for any proposal temperature; top-k renormalised


def slots(ids, w):
    """{id: weight} of one position's used slots (weight > 0), and whether every unused slot has id 0."""
    used = {int(i): float(x) for i, x in zip(ids, w) if x > 0}
    return used, all(int(i) == 0 for i, x in zip(ids, w) if x == 0)


@pytest.mark.core
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_sparse_target_sampled_draws_by_inverse_cdf_and_weighs_count_over_k_times_p_over_r(tau):
    """Draw j is the first token v whose cumulative proposal probability exceeds u_j (r = softmax(log p / tau)); each
    distinct token keeps one slot with weight count / k * p_v / r_v; unused slots hold id 0 and weight 0."""
    torch.manual_seed(0)
    N, V, k = 4, 7, 6
    log_p = torch.log_softmax(torch.randn(N, V) * 2, -1)
    r = torch.softmax(log_p.double() / tau, -1)
    cdf = r.cumsum(-1)
    # uniforms in the middle of the tokens' intervals (never on a boundary, where float rounding decides)
    picks = torch.randint(0, V, (N, k))
    picks[0] = torch.tensor([2, 2, 2, 5, 5, 0])  # repeats
    u = ((cdf - r / 2).gather(1, picks) / cdf[:, -1:]).float()
    ids, w = sparse_target(log_p, k, "sampled", u, tau)
    assert ids.shape == (N, k) and w.shape == (N, k) and ids.dtype == torch.int64, (
        f"sparse_target: returned ids {tuple(ids.shape)} {ids.dtype} and weights {tuple(w.shape)}, expected ({N}, {k}) int64 and ({N}, {k})")
    p = log_p.double().exp()
    for n in range(N):
        counts = torch.bincount(picks[n], minlength=V).double()
        expected = {v: (counts[v] / k * p[n, v] / r[n, v]).item() for v in range(V) if counts[v] > 0}
        got, unused_zero = slots(ids[n], w[n])
        assert set(got) == set(expected), (f"sparse_target: position {n} holds the tokens {sorted(got)}, expected {sorted(expected)} "
                                            f"(the draws by inverse CDF of the proposal, tau {tau}, each distinct token once)")
        assert unused_zero, f"sparse_target: position {n}: an unused slot (weight 0) has an id other than 0"
        for v in expected:
            check_close(got[v], expected[v], fp32_tol(expected[v], V + 8), f"sparse_target: weight of token {v} at position {n}",
                        f"count / k * p / r: {int(counts[v])} / {k} draws, proposal tau {tau}")


@pytest.mark.core
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_sparse_target_sampled_is_unbiased(tau):
    """E[p_hat] = p: the mean of M = 20000 draws of p_hat against p, in standard errors of the estimator
    (count_v ~ Binomial(k, r_v), so Var[p_hat_v] = p_v^2 (1 - r_v) / (k r_v)); every |z| < 5 over 3 x 30
    coordinates (a correct estimator fails with probability ~1e-4; the seed is fixed)."""
    N, V, k, M = 3, 30, 8, 20000
    log_p = torch.log_softmax(torch.randn(N, V, generator=torch.Generator().manual_seed(0)) * 2, -1)
    u = torch.rand(M * N, k, generator=torch.Generator().manual_seed(1))
    ids, w = sparse_target(log_p.repeat(M, 1), k, "sampled", u, tau)
    p_hat = torch.zeros(M * N, V, dtype=torch.float64).scatter_add_(1, ids, w.double()).view(M, N, V)
    p, r = log_p.double().exp(), torch.softmax(log_p.double() / tau, -1)
    se = (p**2 * (1 - r) / (k * r) / M).sqrt()
    z = (p_hat.mean(0) - p) / se
    n, v = divmod(int(z.abs().argmax()), V)
    assert z.abs().max() < 5, (f"sparse_target: the mean p_hat of token {v} at position {n} is {p_hat.mean(0)[n, v]:.5f} over {M} draws, expected p = "
                               f"{p[n, v]:.5f} ({z[n, v]:.1f} standard errors off: biased; weights count / k * p / r, proposal tau {tau})")
    if tau == 1.0:
        check_close(w.double().sum(-1), torch.ones(M * N), fp32_tol(1.0, k), "sparse_target: sum of a position's weights", "r = p: counts / k add up to 1")


@pytest.mark.core
def test_sparse_target_topk_keeps_the_most_likely_tokens_renormalised():
    torch.manual_seed(0)
    log_p = torch.log_softmax(torch.randn(5, 30) * 2, -1)
    ids, w = sparse_target(log_p, 4, "topk")
    p = log_p.double().exp()
    for n in range(5):
        top = p[n].topk(4).indices.tolist()
        got, _ = slots(ids[n], w[n])
        assert set(got) == set(top), f"sparse_target: top-k at position {n} holds the tokens {sorted(got)}, expected the 4 most likely {sorted(top)}"
        for v in top:
            expected = (p[n, v] / p[n, top].sum()).item()
            check_close(got[v], expected, fp32_tol(expected, 8), f"sparse_target: top-k weight of token {v} at position {n}", "p_v / (sum of the top k p), renormalised")


# -----------------------------------------------------------------------------------------------
# The header: a changed teacher, temperature or k is refused in one line


def test_header_catches_a_changed_teacher_temperature_and_k(setup, tmp_path):
    cfg = cfg_of(setup)
    path = str(tmp_path / "c")
    build(setup, [0.5, 0.5], cfg, path)
    TeacherCache(path, expect=cache_header(cfg, [0.5, 0.5], setup.windows))  # same run: fine
    changed = str(tmp_path / "t2b.pt")
    model = tiny(3, setup.vocab, 24)
    save_checkpoint(changed, model_checkpoint(model, load_tokenizer(setup.data)[1]))
    old_sha = cache_header(cfg, [0.5, 0.5], setup.windows)["teacher_sha256"][1][:12]
    with pytest.raises(InputError, match=rf"^{path}: teacher cache built for another run: teacher_sha256\[1\]: {old_sha} -> [0-9a-f]{{12}} \(delete"):
        TeacherCache(path, expect=cache_header(cfg_of(setup, teachers=[setup.paths[0], changed]), [0.5, 0.5], setup.windows))
    with pytest.raises(InputError, match=r"temperature: 2.0 -> 1.0"):
        TeacherCache(path, expect=cache_header(cfg_of(setup, temperature=1.0), [0.5, 0.5], setup.windows))
    with pytest.raises(InputError, match=r": k: 16 -> 8 "):
        build(setup, [0.5, 0.5], cfg_of(setup, cache_k=8), path)
    with pytest.raises(InputError, match=r"method: sampled -> topk"):
        TeacherCache(path, expect=cache_header(cfg_of(setup, cache_method="topk"), [0.5, 0.5], setup.windows))
    with pytest.raises(InputError, match=r"no teacher cache here"):
        TeacherCache(str(tmp_path / "nope"))


@pytest.mark.parametrize("field, value", [("temperature", 1.0), ("ensemble", "probs"), ("teacher_weights", [0.9, 0.1]), ("k", 8),
                                          ("method", "topk"), ("seed", 7), ("proposal_temperature", 2.0), ("n_windows", 10),
                                          ("train_sha256", "0" * 64), ("files", {})])
def test_a_header_edited_on_disk_is_refused_even_when_the_run_agrees_with_it(setup, tmp_path, field, value):
    """The reported case: the header's temperature edited to the run's (2.0 -> 1.0 with --temperature=1.0) passes the
    comparison with the run's header, but the targets on disk were built at 2.0. Every field that shapes the stored
    targets is sealed at build time, so the edit itself is refused, in one line."""
    import json
    cfg = cfg_of(setup)
    path = str(tmp_path / "c")
    build(setup, [0.5, 0.5], cfg, path)
    header_path = os.path.join(path, "header.json")
    header = json.load(open(header_path))
    header[field] = value
    json.dump(header, open(header_path, "w"))
    edited_run = cfg_of(setup, **{"temperature": value} if field == "temperature" else {})
    with pytest.raises(InputError, match=rf"^{header_path}: edited after the build .* delete {path} to rebuild it$"):
        TeacherCache(path, expect=cache_header(edited_run, [0.5, 0.5], setup.windows))


# -----------------------------------------------------------------------------------------------
# Atomic, resumable, rank-sharded builds


def cache_bytes_of(path):
    return {name: open(os.path.join(path, name), "rb").read() for name in ("ids.u16", "weights.f32", "plogp.f32")}


def test_interrupted_and_sharded_builds_equal_an_uninterrupted_build(setup, tmp_path, capsys):
    cfg, weights = cfg_of(setup, ensemble="probs"), [0.5, 0.5]  # 20 windows in blocks of 6: 4 blocks, the last short
    whole = str(tmp_path / "whole")
    build(setup, weights, cfg, whole)
    reference = cache_bytes_of(whole)

    class Killed(Exception):
        pass

    def kill_after_two(b):
        if b == 1:
            raise Killed

    resumed = str(tmp_path / "resumed")
    with pytest.raises(Killed):
        build(setup, weights, cfg, resumed, on_block=kill_after_two)
    assert not os.path.exists(resumed) and os.path.isdir(resumed + ".partial")  # nothing half-built is visible
    with pytest.raises(InputError, match="a build was interrupted"):
        TeacherCache(resumed)
    ids = np.memmap(os.path.join(resumed + ".partial", "ids.u16"), dtype=np.uint16, mode="r+")
    ids[-100:] = 7  # a block that was being written when the process died: garbage, not recorded as done
    ids.flush()
    del ids
    build(setup, weights, cfg, resumed)
    assert not os.path.exists(resumed + ".partial")
    assert cache_bytes_of(resumed) == reference

    # four ranks (simulated one after the other): rank r builds blocks r, r + 4, ... only, and the cache
    # is finalised by rank 0 once all blocks are there, not a block earlier
    sharded = str(tmp_path / "sharded")
    for rank in (3, 1, 2, 0):
        built = []
        result = build(setup, weights, cfg, sharded, rank=rank, world=4, on_block=built.append)
        assert built == [rank]
        assert (result is None) == (rank != 0) and os.path.exists(sharded) == (rank == 0)
    assert cache_bytes_of(sharded) == reference
    # the size is announced before the build: 16 slots x (2 + 4) bytes + 4 bytes of entropy a token
    assert "20 windows x 16 tokens x k=16 (sampled) = 0.000 GB, 100 bytes/token" in capsys.readouterr().out

    # another block size changes the units of progress, not the result (draws are seeded per window)
    other = str(tmp_path / "other_blocks")
    build(setup, weights, cfg_of(setup, ensemble="probs", cache_block=7), other)
    assert cache_bytes_of(other) == reference


KILLED_BUILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from contextlib import nullcontext
from types import SimpleNamespace
import torch
from checkpoint import load_checkpoint
from distill import ensemble_log_probs
from teacher_cache import build_cache, cache_header, teacher_block
from train import Windows
torch.set_num_threads(1)
teachers = [load_checkpoint(p)[0].eval().requires_grad_(False) for p in {paths!r}]
windows = Windows(os.path.join({data!r}, "train.bin"), {seq})
windows.n = {n}
cfg = SimpleNamespace(**{cfg!r})
rt = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext(), rank=0, world=1)
header = cache_header(cfg, [0.5, 0.5], windows)
target = lambda z: ensemble_log_probs(z, [0.5, 0.5], cfg.temperature, cfg.ensemble)
build_cache(lambda lo, hi: teacher_block(teachers, target, windows, lo, hi, header, rt, 256), header, {path!r}, rt, cfg.cache_block,
            on_block=lambda b: b == 2 and os.kill(os.getpid(), signal.SIGKILL))
"""


def test_build_killed_by_sigkill_resumes_to_the_same_bytes(setup, tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    cfg, weights = cfg_of(setup, ensemble="logits", temperature=1.0), [0.5, 0.5]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    build(setup, weights, cfg, whole)
    script = KILLED_BUILD.format(root=ROOT, paths=setup.paths, data=setup.data, seq=SEQ, n=N_WINDOWS, cfg=vars(cfg), path=killed)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not os.path.exists(killed) and os.path.isdir(killed + ".partial")
    resumed = []
    build(setup, weights, cfg, killed, on_block=resumed.append)
    assert resumed == [3]  # blocks 0-2 were committed before the kill and are not recomputed
    assert cache_bytes_of(killed) == cache_bytes_of(whole)


def test_command_line_errors_are_one_line(setup):
    from distill import DISTILL_KEYS
    from config import load_config
    with pytest.raises(InputError, match="cache_method='top': expected one of 'sampled', 'topk'"):
        load_config(DISTILL_KEYS, ["--cache_method=top"])
    with pytest.raises(InputError, match="cache_k=0: expected a number >0"):
        load_config(DISTILL_KEYS, ["--cache_k=0"])
    with pytest.raises(InputError, match="cache_k=100000 is larger than the vocabulary"):
        cache_header(cfg_of(setup, cache_method="topk", cache_k=100000), [0.5, 0.5], setup.windows)


@pytest.mark.slow
def test_torchrun_two_ranks_build_the_same_cache_as_one_process(setup, tmp_path):
    import socket
    import subprocess
    import sys

    from conftest import ROOT

    args = [f"--data_dir={setup.data}", f"--teachers={setup.paths!r}", "--seq_len=16", "--max_seq_len=16", "--device=cpu",
            "--ensemble=probs", "--cache_block=64", "--cache_only=True", "--dim=16", "--n_heads=2", "--hidden_dim=32", "--n_layers=1",
            "--batch_size=8", "--micro_batch_size=4", "--eval_windows=8"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    main(args + [f"--teacher_cache={one}", f"--out_dir={tmp_path / 'run_one'}"])
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           os.path.join(ROOT, "distill.py"), *args, f"--teacher_cache={two}", f"--out_dir={tmp_path / 'run_two'}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "teacher cache ready" in result.stdout
    assert cache_bytes_of(two) == cache_bytes_of(one)
    assert not os.path.exists(two + ".partial")


@pytest.mark.slow
def test_compiled_chunked_cached_step_equals_eager_step(setup):
    """The chunked cached loss (one sequence per chunk) under torch.compile, as a GPU runs it."""
    cfg = cfg_of(setup, loss_chunk=SEQ)
    student = tiny(0, setup.vocab)
    x, y = torch.randint(0, setup.vocab, (2, 2, SEQ))
    ids, w = sparse_target(torch.log_softmax(torch.randn(2 * SEQ, setup.vocab), -1), 16, "sampled", torch.rand(2 * SEQ, 16))
    batch = (ids.view(2, SEQ, 16), w.view(2, SEQ, 16), -torch.rand(2, SEQ))
    fn = CachedDistillation(student, None, cfg).loss
    eager, _ = fn(student, x, y, *batch)
    eager.backward()
    g_eager = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    compiled, _ = torch.compile(fn)(student, x, y, *batch)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for g, p in zip(g_eager, student.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_distillation_from_a_full_cache_trains_like_live_teachers_and_resumes(prepared, tiny_teachers, tmp_path):
    """distill.py with --teacher_cache, through the training loop: with every token stored (top-k, k = V) the
    run's losses equal live distillation's; a resumed cached run equals an uninterrupted one."""
    from checkpoint import read_log
    from conftest import strip_timing, student_argv

    args = dict(max_iters=8, eval_interval=4, log_interval=1)
    live, cached, resumed = str(tmp_path / "live"), str(tmp_path / "cached"), str(tmp_path / "resumed")
    cache = [f"--teacher_cache={tmp_path / 'cache'}", "--cache_method=topk", "--cache_k=320"]
    main(student_argv(prepared, live, tiny_teachers, **args))
    main(student_argv(prepared, cached, tiny_teachers, **args) + cache)
    log_live, log_cached = read_log(os.path.join(live, "log.jsonl")), read_log(os.path.join(cached, "log.jsonl"))
    assert [e["step"] for e in log_live] == [e["step"] for e in log_cached]
    for a, b in zip(log_live, log_cached):
        for key in ("loss", "ce", "kl_term", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)
    main(student_argv(prepared, resumed, tiny_teachers, stop_at=5, **args) + cache)  # the cache is built: reused
    main(student_argv(prepared, resumed, tiny_teachers, resume=True, **args) + cache)
    assert strip_timing(read_log(os.path.join(resumed, "log.jsonl"))) == strip_timing(log_cached)


def test_a_second_build_of_the_same_cache_waits_and_one_of_another_is_refused(setup, tmp_path, capsys):
    import json
    import subprocess
    import sys
    import threading
    import time

    cfg, weights = cfg_of(setup), [0.5, 0.5]
    path = str(tmp_path / "c")
    header = cache_header(cfg, weights, setup.windows)
    os.makedirs(path + ".partial")
    same = {"header": {k: v for k, v in header.items() if k not in ("info", "files")}, "block": cfg.cache_block}
    open(os.path.join(path + ".partial", "build.json"), "w").write(json.dumps(same))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])  # a live builder of the same cache
    threading.Thread(target=holder.wait, daemon=True).start()  # reaped when it ends (a zombie would look alive forever)
    open(path + ".lock", "w").write(str(holder.pid))
    t0 = time.time()
    build(setup, weights, cfg, path)
    assert time.time() - t0 > 2, "the build did not wait for the live builder"
    assert "is being built by pid" in capsys.readouterr().out and os.path.isfile(os.path.join(path, "header.json"))
    assert not os.path.exists(path + ".lock")

    other = str(tmp_path / "d")  # a live builder with other settings: refused at once, its files untouched
    os.makedirs(other + ".partial")
    open(os.path.join(other + ".partial", "build.json"), "w").write(json.dumps({**same, "block": 999}))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    open(other + ".lock", "w").write(str(holder.pid))
    try:
        with pytest.raises(InputError, match=rf"is being built by another process \(pid {holder.pid}\) with other settings"):
            build(setup, weights, cfg, other)
        assert os.listdir(other + ".partial") == ["build.json"]
    finally:
        holder.kill()
