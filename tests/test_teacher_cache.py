"""teacher_cache.py: the cached step equals the live step (k = V), the sampled estimator is unbiased (and
top-k is not), the sparse loss is its formula and the fused one equals it, the header check, and an
interrupted (raised, or SIGKILLed) or rank-sharded build equals an uninterrupted one bit for bit.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_teacher_cache.py   (~20 s; -m "not slow" skips the
torchrun and torch.compile tests, ~7 s)"""

import os
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checkpoint import model_checkpoint, save_checkpoint
from config import InputError, flat_defaults
from distill import (CachedDistillation, Distillation, FusedCachedDistillation, FusedDistillation, FusedSparseHeadLoss, ensemble_log_probs,
                     main, sparse_distill_loss, teacher_block)
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig
from data import load_tokenizer
from teacher_cache import CACHE_KEYS, TeacherCache, build_cache, cache_header, sparse_target
from train import EpochSampler, Windows

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
    return build_cache(lambda lo, hi: teacher_block(s.teachers, s.windows, lo, hi, header, RT, cfg.loss_chunk or 256),
                       header, path, RT, cfg.cache_block, **kw)


def cfg_of(s, **kw):
    base = dict(data_dir=s.data, teachers=s.paths, alpha=0.4, temperature=2.0, ensemble="logits", kl_reduction="paper", loss_chunk=7)
    return SimpleNamespace(**{**base, **CACHE_DEFAULTS, "cache_block": 6, **kw})


# -----------------------------------------------------------------------------------------------
# Exactness: with every token stored, the cached step is the live step


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["paper", "mean"])
@pytest.mark.parametrize("ensemble", ["logits", "probs"])
def test_full_vocabulary_cache_step_equals_live_step(setup, tmp_path, ensemble, reduction, T, fused):
    cfg = cfg_of(setup, ensemble=ensemble, kl_reduction=reduction, temperature=T, cache_method="topk", cache_k=setup.vocab)
    weights = [0.3, 0.7]
    build(setup, weights, cfg, str(tmp_path / "c"))
    cache = TeacherCache(str(tmp_path / "c"), expect=cache_header(cfg, weights, setup.windows))
    idx = EpochSampler(N_WINDOWS, 4, 4, 1, seed=5).indices(step=1, micro_step=0, rank=0)  # what the loop draws
    x, y = setup.windows.get(idx, RT.device)
    student = tiny(0, setup.vocab)
    live, live_logs = (FusedDistillation if fused else Distillation)(student, setup.teachers, weights, cfg).loss(student, x, y)
    live.backward()
    g_live = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    objective = (FusedCachedDistillation if fused else CachedDistillation)(student, cache, cfg)
    cached, cached_logs = objective.loss(student, *objective.batch(x, y, idx, 1, 0, 0))  # as the loop calls it
    cached.backward()
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-6)
    for key in ("ce", "kl_term", "kl"):
        torch.testing.assert_close(cached_logs[key], live_logs[key], rtol=1e-5, atol=1e-6)
    for (name, p), g in zip(student.named_parameters(), g_live):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7), name


# -----------------------------------------------------------------------------------------------
# The sparse loss is its formula; the fused one equals it


def plain_sparse_loss(h, W, y, ids, w, plogp, alpha, T, kl_denom):
    """alpha CE + (1 - alpha) T^2 KL_hat / denom, KL_hat = sum p log p - (p_hat . s)/T + logsumexp(s/T), autograd."""
    s = h.reshape(-1, h.shape[-1]) @ W.t()
    N = s.shape[0]
    ce = F.cross_entropy(s, y.reshape(-1))
    kl_sum = plogp.sum() - (w.reshape(N, -1) * s.gather(1, ids.reshape(N, -1))).sum() / T + torch.logsumexp(s / T, -1).sum()
    return alpha * ce + (1 - alpha) * T**2 * kl_sum / kl_denom


@pytest.mark.core
@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_sparse_distill_loss_with_every_token_stored_is_the_exact_loss(reduction):
    """With p_hat = p on all V slots, the sparse loss is alpha CE + (1 - alpha) T^2 KL(p || softmax(s/T)) / D exactly."""
    torch.manual_seed(0)
    B, L, V, T, alpha = 2, 3, 11, 2.0, 0.4
    s, z = torch.randn(B, L, V, dtype=torch.float64) * 2, torch.randn(B, L, V, dtype=torch.float64) * 2
    y = torch.randint(0, V, (B, L))
    log_p = torch.log_softmax(z, -1)
    ids, weights, plogp = torch.arange(V).expand(B, L, V), log_p.exp(), (log_p.exp() * log_p).sum(-1)
    loss, ce, kl_term, kl = sparse_distill_loss(s, y, ids, weights, plogp, alpha, T, reduction)
    kl_exact = (log_p.exp() * (log_p - torch.log_softmax(s / T, -1))).sum()  # summed over B, L and V
    D = B if reduction == "paper" else B * L
    close = lambda a, b, msg=None: torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6, msg=msg)  # the loss runs in fp32
    close(ce, F.cross_entropy(s.reshape(-1, V), y.reshape(-1)))
    close(kl, kl_exact / (B * L), msg="kl is the per-token KL")
    close(loss, alpha * F.cross_entropy(s.reshape(-1, V), y.reshape(-1)) + (1 - alpha) * T**2 * kl_exact / D)


@pytest.mark.core
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_sparse_distill_loss_equals_the_formula_over_the_stored_slots(T):
    torch.manual_seed(0)
    B, L, d, V, k = 3, 5, 8, 13, 4
    h, W = torch.randn(B, L, d, dtype=torch.float64), torch.randn(V, d, dtype=torch.float64)
    y, ids = torch.randint(0, V, (B, L)), torch.randint(0, V, (B, L, k))  # duplicate ids included
    w, plogp = torch.rand(B, L, k, dtype=torch.float64), -torch.rand(B, L, dtype=torch.float64)  # sum(w) != 1
    W1, W2 = W.clone().requires_grad_(), W.clone().requires_grad_()
    loss = sparse_distill_loss(h @ W1.t(), y, ids, w, plogp, 0.3, T, "paper")[0]
    loss.backward()
    want = plain_sparse_loss(h, W2, y, ids, w, plogp, 0.3, T, B)
    want.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)  # the loss runs in fp32
    torch.testing.assert_close(W1.grad.double(), W2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_fused_sparse_loss_equals_plain_autograd(T, reduction):
    torch.manual_seed(0)
    B, L, d, V, k = 3, 5, 8, 13, 4
    h, W = torch.randn(B, L, d, dtype=torch.float64), torch.randn(V, d, dtype=torch.float64)
    y, ids = torch.randint(0, V, (B, L)), torch.randint(0, V, (B, L, k))  # duplicate ids included
    w, plogp = torch.rand(B, L, k, dtype=torch.float64), -torch.rand(B, L, dtype=torch.float64)  # sum(w) != 1
    denom = B if reduction == "paper" else B * L
    h1, W1 = h.clone().requires_grad_(), W.clone().requires_grad_()
    fused, ce, kl_term, kl = FusedSparseHeadLoss.apply(h1, W1, y, ids, w, plogp, 0.3, T, denom, 4)
    (2.0 * fused).backward()  # a non-unit upstream gradient
    h2, W2 = h.clone().requires_grad_(), W.clone().requires_grad_()
    plain = plain_sparse_loss(h2, W2, y, ids, w, plogp, 0.3, T, denom)
    (2.0 * plain).backward()
    torch.testing.assert_close(fused.double(), plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(W1.grad, W2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ce.double(), F.cross_entropy((h @ W.t()).reshape(-1, V), y.reshape(-1)), rtol=1e-6, atol=1e-6)


# -----------------------------------------------------------------------------------------------
# Unbiasedness of the sampled estimator (and the bias of top-k), measured on the whole step's gradient


@pytest.mark.core
def test_sparse_target_sampled_gradient_is_unbiased_and_topk_is_biased():
    torch.manual_seed(0)
    N, d, V, k, T, alpha, M = 6, 8, 40, 4, 2.0, 0.5, 1500
    h, W = torch.randn(N, d, dtype=torch.float64), torch.randn(V, d, dtype=torch.float64)
    y = torch.randint(0, V, (N,))
    z1, z2 = torch.randn(N, V) * 2, torch.randn(N, V) * 2
    for ensemble in ("logits", "probs"):
        log_p = ensemble_log_probs([z1, z2], [0.5, 0.5], T, ensemble)

        def grad_W(ids, w):  # the gradient of the whole step's loss (CE and KL) with p_hat as the target
            Wr = W.clone().requires_grad_()
            s = (h @ Wr.t()).view(1, N, V)
            sparse_distill_loss(s, y.view(1, N), ids.view(1, N, -1), w.double().view(1, N, -1), torch.zeros(1, N), alpha, T, "mean")[0].backward()
            return Wr.grad

        exact = grad_W(*sparse_target(log_p, V, "topk"))
        for tau in (1.0, 2.0):  # draws from p itself, and from a flatter proposal with weights p / r
            g = torch.Generator().manual_seed(1)
            draws = torch.stack([grad_W(*sparse_target(log_p, k, "sampled", torch.rand(N, k, generator=g), tau)) for _ in range(M)])
            mean, se = draws.mean(0), draws.std(0) / M**0.5
            z = (mean - exact).abs() / se.clamp_min(1e-12)
            assert z.max() < 5.0, (ensemble, tau, z.max())  # 320 coordinates: |z| > 5 has probability ~2e-4 in all
            assert ((mean - exact).norm() / exact.norm()) < 0.05
        topk = grad_W(*sparse_target(log_p, k, "topk"))
        z_topk = (topk - exact).abs() / se.clamp_min(1e-12)
        assert z_topk.max() > 20.0, z_topk.max()  # top-k's error is many standard errors of the sampled mean


@pytest.mark.core
def test_sparse_target_sampled_is_unbiased_sums_to_one_and_fills_unique_slots():
    log_p = torch.log_softmax(torch.randn(3, 30) * 2, -1)
    u = torch.rand(20000, 3, 8, generator=torch.Generator().manual_seed(0))
    ids, w = sparse_target(log_p.repeat(20000, 1), 8, "sampled", u.view(-1, 8))
    p_hat = torch.zeros(60000, 30).scatter_add_(1, ids, w).view(20000, 3, 30)
    torch.testing.assert_close(w.sum(-1), torch.ones(60000))  # r = p: counts / k
    se = p_hat.std(0) / 20000**0.5
    assert ((p_hat.mean(0) - log_p.exp()).abs() / se.clamp_min(1e-9)).max() < 5.0
    nonzero = w > 0
    assert torch.all(nonzero[:, :-1] | ~nonzero[:, 1:])  # the used slots come first
    first = ids[0][nonzero[0]]
    assert len(first.unique()) == len(first)  # unique ids


@pytest.mark.core
def test_sparse_target_topk_keeps_the_most_likely_tokens_renormalised():
    log_p = torch.log_softmax(torch.randn(5, 30) * 2, -1)
    ids, w = sparse_target(log_p, 4, "topk")
    p = log_p.exp()
    torch.testing.assert_close(ids, p.topk(4, -1).indices)
    torch.testing.assert_close(w, p.gather(1, ids) / p.gather(1, ids).sum(-1, keepdim=True))  # sums to 1


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
from distill import teacher_block
from teacher_cache import build_cache, cache_header
from train import Windows
torch.set_num_threads(1)
teachers = [load_checkpoint(p)[0].eval().requires_grad_(False) for p in {paths!r}]
windows = Windows(os.path.join({data!r}, "train.bin"), {seq})
windows.n = {n}
cfg = SimpleNamespace(**{cfg!r})
rt = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext(), rank=0, world=1)
header = cache_header(cfg, [0.5, 0.5], windows)
build_cache(lambda lo, hi: teacher_block(teachers, windows, lo, hi, header, rt, 256), header, {path!r}, rt, cfg.cache_block,
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
def test_compiled_fused_cached_step_equals_eager_step(setup):
    """loss_impl="fused" with a cache, under torch.compile (tests/test_bf16.py compiles the default, plain loss)."""
    cfg = cfg_of(setup, loss_chunk=0)
    student = tiny(0, setup.vocab)
    x, y = torch.randint(0, setup.vocab, (2, 2, SEQ))
    ids, w = sparse_target(torch.log_softmax(torch.randn(2 * SEQ, setup.vocab), -1), 16, "sampled", torch.rand(2 * SEQ, 16))
    batch = (ids.view(2, SEQ, 16), w.view(2, SEQ, 16), -torch.rand(2, SEQ))
    fn = FusedCachedDistillation(student, None, cfg).loss
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
