"""
A teacher cache for distillation: the ensemble target of every training window, computed once and stored
as a sparse, unbiased estimate, then read in every epoch instead of running the teachers.

    python teacher_cache.py configs/tiny_student.py --teacher_cache=out/tiny_cache                 # build once
    python teacher_cache.py configs/babyllama_58m.py --teacher_cache=out/cache58m --cache_k=16 --cache_method=sampled
    torchrun --nproc_per_node=8 teacher_cache.py configs/student.py --teacher_cache=out/cache345m   # each rank a share

Live teachers stay the default and the reference (distill.make_distill_loss); with a cache the step is
make_cached_loss(cfg)(student, x, y, *cache.get(window_indices)), no teacher forward at all.

Why it is possible: train_teacher.Windows cuts train.bin into fixed non-overlapping windows and every epoch
(EpochSampler) is a permutation of the SAME windows, so the teacher ensemble sees the same inputs in every
epoch; 8 epochs of live distillation run the teachers 8 times on identical inputs.

What is stored per position. The full target p (V = 16k probabilities per token, 10M words) does not fit, so
a sparse vector p_hat over k slots (token ids + weights) is stored:

  method="sampled" (default; Anshumann et al., "Sparse Logit Sampling", ACL 2025, arXiv 2503.16870):
      draw k tokens v_1..v_k i.i.d. with replacement from a proposal r (r = p by default, at the cache's
      temperature T), keep the unique ids with counts c_v, and store
          p_hat_v = (c_v / k) * p_v / r_v          (= c_v / k when r = p)
      Unbiased: E[c_v] = k r_v, so E[p_hat_v] = r_v p_v / r_v = p_v for every v, i.e. E[p_hat] = p.
      The distillation gradient is linear in p: for q_T = softmax(s / T),
          d KL(p || q_T) / d s = (softmax(s / T) - p) / T,
      so the gradient with p_hat in place of p is an unbiased estimate of the exact one, and so is the
      whole step's gradient d loss / d s = a_ce (softmax(s) - onehot(y)) + a_kl (softmax(s / T) - p_hat)
      (a_ce, a_kl as distill.FusedHeadLoss). The loss value uses the same identity as
      distill.distill_loss_from_logits:  KL = sum_v p log p - (p . s) / T + logsumexp(s / T),
      whose middle term is linear in p (unbiased with p_hat) and whose first term, minus the entropy of p,
      does not depend on the student: it is computed exactly at build time and stored (4 bytes a token),
      so the logged KL is unbiased too. proposal_temperature tau != 1 draws from r = softmax(log p / tau)
      (flatter for tau > 1: more distinct tail tokens per slot, weights p/r correct for it).
  method="topk" (the baseline): the k most likely tokens with their probabilities RENORMALISED to sum to 1.
      Renormalised, because then p_hat is a distribution: the KL to it is >= 0 and the gradient sums to
      zero over the vocabulary like the exact one (unrenormalised, sum(p_hat) < 1 and every step pushes all
      of the student's logits down by 1 - sum(p_hat)). Either way it is biased: the tail mass is dropped
      (renormalised: moved onto the head), and no number of epochs averages that away. With k = V it is
      exact, which the tests use to check the cached step against the live one.

Storage (a directory, memory-mapped):
    header.json   what the cache was built from (checked on use, below) and how
    ids.u16       (n_windows, seq_len, k) uint16 token ids (the tokenizer's vocab is < 65,536)
    weights.f32   (n_windows, seq_len, k) float32 p_hat (0 in unused slots)
    plogp.f32     (n_windows, seq_len) float32 sum_v p log p (minus the entropy of p), for the logged KL
Weights are fp32, not fp16: (1) fp16 keeps 11 significant bits and flushes values below 6e-8 to zero, so
top-k tail probabilities lose their precision and the k = V cache would no longer equal the live step;
(2) round-to-nearest of c/k * p/r is a fixed, not a zero-mean, error: fp16 would re-introduce a small
bias into an estimator whose point is to have none. fp32 costs 6 instead of 4 bytes a slot: at k = 16,
100 bytes a token, 100 MB per million tokens, ~1.3 GB for BabyLM's 10M words.

The header records and checks the teachers' checkpoint sha256, the teacher weights, the tokenizer
(name, vocab, sha256), train.bin's sha256 (a full hash: tens of MB, well under a second; size+mtime
would miss an in-place rewrite and break on a copy) and window geometry (seq_len, number of windows),
temperature, ensemble, k, method, proposal temperature and seed. A mismatch is a one-line InputError
naming what differs, old -> new. Paths are recorded but not compared (the same file moves).

Building is atomic and resumable: everything is written into <path>.partial/, in blocks of windows;
after each block the arrays are flushed and the block is recorded in a per-rank progress file (written
atomically). A killed build run again skips the recorded blocks and recomputes the rest (the uniforms
of window i come from a generator seeded by (seed, i), so the result does not depend on block size, on
the number of ranks, or on where the build was interrupted). When every block is done, header.json is
written and the directory is renamed to <path>: <path> exists only when complete. Under DDP rank r builds
blocks r, r + world, ... into the same files (one node or a shared file system), and rank 0 finalises.
"""

import hashlib
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from model import InputError, atomic_write, unwrap
from distill import DEFAULTS as DISTILL_DEFAULTS
from distill import ensemble_log_probs

FORMAT = "babydistill-teacher-cache-1"

CACHE_DEFAULTS = dict(
    teacher_cache="",  # directory of the cache; "" = live teachers (the default and the reference)
    cache_method="sampled",  # "sampled" (unbiased, arXiv 2503.16870) or "topk" (biased baseline)
    cache_k=16,  # draws per position (sampled) or kept tokens (topk): slots stored per position
    cache_proposal_temperature=1.0,  # sampled: draw from softmax(log p / tau); 1.0 = from p itself
    cache_seed=0,  # seed of the draws (window i uses seed * 1_000_003 + i)
    cache_block=256,  # windows per block: the unit of progress (and of the teachers' batch)
)


# -----------------------------------------------------------------------------------------------
# The sparse target: unbiased sampling, or top-k


def sparse_target(log_p, k, method, u=None, proposal_temperature=1.0):
    """(ids (N, k) int64, weights (N, k) float32) of a sparse p_hat from ensemble log-probs log_p (N, V).
    method "sampled": u (N, k) uniforms in [0, 1), one per draw (see the file docstring for the estimator);
    unused slots have id 0 and weight 0. method "topk": the k most likely tokens, renormalised."""
    N, V = log_p.shape
    if method == "topk":
        vals, ids = log_p.topk(k, dim=-1)
        w = vals.exp()
        return ids, w / w.sum(-1, keepdim=True)
    log_r = log_p if proposal_temperature == 1.0 else F.log_softmax(log_p / proposal_temperature, dim=-1)
    # Inverse-CDF sampling, the running sum in float64 (a float32 cumsum over 16k terms would shift the
    # tail's intervals by ~1e-7, the size of a tail token's probability; the exp itself is fine in float32).
    # draw = the first v with cdf_v > u * total. Tokens with r_v = 0 have cdf_v = cdf_{v-1}: never drawn.
    cdf = log_r.exp().double().cumsum(-1)
    draws = torch.searchsorted(cdf, (u.double() * cdf[:, -1:]).contiguous(), right=True).clamp_(max=V - 1)
    draws = draws.sort(dim=-1).values
    new = torch.ones_like(draws, dtype=torch.bool)
    new[:, 1:] = draws[:, 1:] != draws[:, :-1]
    slot = new.long().cumsum(-1) - 1  # the unique ids, in order, fill slots 0, 1, ...
    ids = torch.zeros_like(draws).scatter_(1, slot, draws)
    counts = torch.zeros(N, k, dtype=torch.float64).scatter_add_(1, slot, torch.ones(N, k, dtype=torch.float64))
    w = counts / k
    if proposal_temperature != 1.0:  # importance weights p / r
        w = w * (log_p.double().gather(1, ids) - log_r.double().gather(1, ids)).exp()
    return ids, w.float()


# -----------------------------------------------------------------------------------------------
# The loss: fused head + CE + sparse KL, gradient computed in the forward pass


class FusedSparseHeadLoss(torch.autograd.Function):
    """distill.FusedHeadLoss with the teachers replaced by stored (ids, weights) = p_hat per position.

    For one position with student logits s, label y, sparse target p_hat and its stored sum_v p log p:
        loss_pos   = a_ce' CE + a_kl' KL_hat,   CE = logsumexp(s) - s_y,
        KL_hat     = sum_v p log p - (p_hat . s) / T + logsumexp(s / T)     (unbiased for KL(p || q_T))
        d loss / d s = a_ce (softmax(s) - onehot(y)) + a_kl (softmax(s / T) - p_hat),
        a_ce = alpha / (B L),   a_kl = (1 - alpha) T^2 / T / kl_denominator   (B: "paper", B L: "mean").
    p_hat . s needs only the k stored slots (a gather); the (chunk, V) softmax is the only dense work, as in
    FusedHeadLoss. Duplicate or padded slots (id 0, weight 0) are harmless: the scatter adds."""

    @staticmethod
    def forward(ctx, h, W, y, ids, wts, plogp, alpha, T, kl_denom, chunk):
        N = y.numel()
        h2, y2 = h.reshape(N, -1), y.reshape(N)
        ids2, w2 = ids.reshape(N, -1), wts.reshape(N, -1).float()
        a_ce, a_kl = alpha / N, (1 - alpha) * T / kl_denom
        grad_h, grad_W = torch.empty_like(h2), torch.zeros_like(W)
        ce_sum = torch.zeros((), device=h.device)
        kl_sum = plogp.float().sum() if plogp is not None else torch.zeros((), device=h.device)
        for i in range(0, N, chunk):
            hc, yc, ic, wc = h2[i : i + chunk], y2[i : i + chunk], ids2[i : i + chunk], w2[i : i + chunk]
            s = (hc @ W.t()).float()  # (chunk, V) student logits
            lse_t = torch.logsumexp(s / T, dim=-1)
            log_q = s / T - lse_t[:, None]
            kl_sum += lse_t.sum() - (wc * s.gather(1, ic)).sum() / T
            log_s = log_q if T == 1.0 else F.log_softmax(s, dim=-1)
            ce_sum -= log_s.gather(1, yc[:, None]).sum()
            g = log_q.exp().mul_(a_kl)  # a_kl * softmax(s/T) (not in place: log_s may be log_q)
            g.scatter_add_(1, ic, wc * -a_kl)  # - a_kl * p_hat
            g.add_(log_s.exp(), alpha=a_ce)  # + a_ce * softmax(s)
            g[torch.arange(len(yc), device=g.device), yc] -= a_ce  # - a_ce * onehot(y)
            grad_h[i : i + chunk] = (g @ W.to(g.dtype)).to(grad_h.dtype)
            grad_W += (g.t() @ hc.to(g.dtype)).to(grad_W.dtype)
        ctx.save_for_backward(grad_h.view_as(h), grad_W)
        loss = alpha * ce_sum / N + (1 - alpha) * T**2 * kl_sum / kl_denom
        ce, kl = ce_sum / N, kl_sum / N
        ctx.mark_non_differentiable(ce, kl)
        return loss, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_kl):
        grad_h, grad_W = ctx.saved_tensors
        return grad_h * grad_loss, grad_W * grad_loss, None, None, None, None, None, None, None, None


def make_cached_loss(cfg):
    """loss_fn(student, x, y, ids, weights, plogp=None) -> (loss, {"ce", "kl"}), the contract of
    distill.make_distill_loss's loss_fn plus the batch's cached target (TeacherCache.get). Without plogp
    the logged "kl" is the cross-entropy H(p, q_T) (the KL minus the entropy of p); the gradient is the same."""
    alpha, T, reduction, chunk = cfg.alpha, cfg.temperature, cfg.kl_reduction, cfg.loss_chunk

    def loss_fn(student, x, y, ids, weights, plogp=None):
        h = student(x, head=False)  # (B, L, dim) through the (DDP) wrapper's forward
        B, L = y.shape
        W = unwrap(student).output.weight
        ids, weights = ids.to(h.device, non_blocking=True), weights.to(h.device, non_blocking=True)
        plogp = plogp.to(h.device, non_blocking=True) if plogp is not None else None
        loss, ce, kl = FusedSparseHeadLoss.apply(h, W, y, ids, weights, plogp, alpha, T, B if reduction == "paper" else B * L, chunk or B * L)
        return loss, {"ce": ce, "kl": kl}

    return loss_fn


# -----------------------------------------------------------------------------------------------
# The header: what a cache was built from, checked on use


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cache_header(cfg, weights, windows, teacher_paths=None):
    """The header a cache for this run must have. `windows` is the train_teacher.Windows of train.bin;
    cfg has data_dir, teachers, temperature, ensemble and the cache_* keys (CACHE_DEFAULTS)."""
    if cfg.cache_method not in ("sampled", "topk"):
        raise InputError(f"cache_method={cfg.cache_method!r}: expected 'sampled' or 'topk'")
    if cfg.cache_k < 1 or cfg.cache_proposal_temperature <= 0 or cfg.cache_block < 1:
        raise InputError(f"cache_k={cfg.cache_k}, cache_proposal_temperature={cfg.cache_proposal_temperature}, "
                         f"cache_block={cfg.cache_block}: expected positive values")
    paths = list(teacher_paths if teacher_paths is not None else cfg.teachers)
    with open(os.path.join(cfg.data_dir, "meta.json")) as f:
        tok = json.load(f)["tokenizer"]
    if tok["vocab_size"] > 65536:
        raise InputError(f"vocab {tok['vocab_size']}: the cache stores token ids as uint16 (at most 65,536)")
    if cfg.cache_method == "topk" and cfg.cache_k > tok["vocab_size"]:
        raise InputError(f"cache_k={cfg.cache_k} is larger than the vocabulary ({tok['vocab_size']})")
    tokens = np.asarray(windows.tokens)
    return {
        "format": FORMAT,
        "teacher_sha256": [file_sha256(p) for p in paths],
        "teacher_weights": [float(w) for w in weights],
        "tokenizer": {"name": tok["name"], "vocab_size": tok["vocab_size"], "sha256": tok["sha256"]},
        "train_sha256": hashlib.sha256(tokens.tobytes()).hexdigest(),
        "train_tokens": int(len(tokens)),
        "seq_len": int(windows.seq_len),
        "n_windows": int(windows.n),
        "temperature": float(cfg.temperature),
        "ensemble": cfg.ensemble,
        "method": cfg.cache_method,
        "k": int(cfg.cache_k),
        "proposal_temperature": float(cfg.cache_proposal_temperature) if cfg.cache_method == "sampled" else None,
        "seed": int(cfg.cache_seed) if cfg.cache_method == "sampled" else None,
        # recorded, not compared (a moved file is the same file; the hashes above decide)
        "info": {"teachers": paths, "train_bin": str(getattr(windows.tokens, "filename", "")), "block": int(cfg.cache_block)},
    }


def _short(v):
    return v[:12] if isinstance(v, str) and len(v) == 64 else v  # sha256 -> 12 characters


def header_differences(old, new):
    """["key: old -> new", ...] over the compared keys (all but "info"); lists and dicts item by item."""
    diffs = []

    def walk(a, b, name):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{name}.{key}" if name else key)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{name}[{i}]")
        elif a != b:
            diffs.append(f"{name}: {_short(a)} -> {_short(b)}")

    walk({k: v for k, v in old.items() if k != "info"}, {k: v for k, v in new.items() if k != "info"}, "")
    return diffs


# -----------------------------------------------------------------------------------------------
# Reading


FILES = {"ids": ("ids.u16", np.uint16), "weights": ("weights.f32", np.float32), "plogp": ("plogp.f32", np.float32)}


def _shapes(header):
    n, L, k = header["n_windows"], header["seq_len"], header["k"]
    return {"ids": (n, L, k), "weights": (n, L, k), "plogp": (n, L)}


def cache_bytes(header):
    return sum(int(np.prod(shape)) * np.dtype(FILES[name][1]).itemsize for name, shape in _shapes(header).items())


class TeacherCache:
    """A built cache, memory-mapped. get(window_indices) -> (ids (B, L, k) int64, weights (B, L, k) float32,
    plogp (B, L) float32) for the windows EpochSampler returned; pass them after (student, x, y) to
    make_cached_loss's loss_fn. `expect`: the header this run needs (cache_header); mismatch = InputError."""

    def __init__(self, path, expect=None):
        header_path = os.path.join(path, "header.json")
        if not os.path.isfile(header_path):
            hint = " (a build was interrupted: run it again to continue)" if os.path.isdir(path + ".partial") else ""
            raise InputError(f"{path}: no teacher cache here{hint}")
        with open(header_path) as f:
            self.header = json.load(f)
        if expect is not None:
            diffs = header_differences(self.header, expect)
            if diffs:
                raise InputError(f"{path}: teacher cache built for another run: {'; '.join(diffs)} (delete it to rebuild)")
        self.path = path
        self.arrays = {}
        for name, shape in _shapes(self.header).items():
            file, dtype = FILES[name]
            full = os.path.join(path, file)
            if os.path.getsize(full) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise InputError(f"{full}: size {os.path.getsize(full)} bytes does not match the header's shape {shape}")
            self.arrays[name] = np.memmap(full, dtype=dtype, mode="r", shape=shape)

    def __len__(self):
        return self.header["n_windows"]

    def get(self, idx):
        idx = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64)
        ids = torch.from_numpy(self.arrays["ids"][idx].astype(np.int64))
        weights = torch.from_numpy(np.ascontiguousarray(self.arrays["weights"][idx]))
        plogp = torch.from_numpy(np.ascontiguousarray(self.arrays["plogp"][idx]))
        return ids, weights, plogp


# -----------------------------------------------------------------------------------------------
# Building: one pass of the teachers over every window, in blocks, resumable, rank-sharded


@torch.no_grad()
def compute_block(teachers, weights, windows, lo, hi, header, rt, chunk=256):
    """(ids (n, L, k) uint16, weights (n, L, k) float32, plogp (n, L) float32) for windows lo..hi-1."""
    L, k, T = header["seq_len"], header["k"], header["temperature"]
    x, _ = windows.get(torch.arange(lo, hi), rt.device)
    with rt.autocast:
        t_h = [t.hidden_states(x).reshape((hi - lo) * L, -1) for t in teachers]
    u = None
    if header["method"] == "sampled":  # the uniforms of window i depend on (seed, i) only
        g = torch.Generator()
        u = torch.cat([torch.rand(L * k, generator=g.manual_seed(header["seed"] * 1_000_003 + i)) for i in range(lo, hi)]).view(-1, k)
    N = (hi - lo) * L
    out_ids, out_w, out_plogp = torch.empty(N, k, dtype=torch.int64), torch.empty(N, k), torch.empty(N)
    for i in range(0, N, chunk):
        log_p = ensemble_log_probs([th[i : i + chunk] @ t.output.weight.t() for th, t in zip(t_h, teachers)], weights, T, header["ensemble"])
        out_plogp[i : i + chunk] = (log_p.exp() * log_p).sum(-1).cpu()  # log_p is finite (a log-softmax): no 0 * inf
        ids, w = sparse_target(log_p.cpu(), k, header["method"], None if u is None else u[i : i + chunk], header["proposal_temperature"] or 1.0)
        out_ids[i : i + chunk], out_w[i : i + chunk] = ids, w
    n = hi - lo
    return out_ids.view(n, L, k).numpy().astype(np.uint16), out_w.view(n, L, k).numpy(), out_plogp.view(n, L).numpy()


def _open_arrays(folder, header, create):
    arrays = {}
    for name, shape in _shapes(header).items():
        file, dtype = FILES[name]
        full, size = os.path.join(folder, file), int(np.prod(shape)) * np.dtype(dtype).itemsize
        if create and (not os.path.isfile(full) or os.path.getsize(full) != size):
            with open(full, "wb") as f:
                f.truncate(size)  # sparse: no disk written until the blocks are
        arrays[name] = np.memmap(full, dtype=dtype, mode="r+", shape=shape)
    return arrays


def _done_blocks(folder):
    done = set()
    for name in os.listdir(folder):
        if name.startswith("progress.") and name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                done.update(json.load(f)["done"])
    return done


def build_cache(teachers, weights, windows, cfg, path, rt, header=None, rank=None, world=None, on_block=None):
    """Build the cache of `teachers` (frozen Llamas, ensemble `weights`) over every window of `windows`
    into the directory `path` (see the file docstring), or continue an interrupted build. Returns the
    header when this call completed the cache, None when other ranks still have blocks to do (world > 1
    without torch.distributed: each rank is called in turn, the last one to finish finalises).
    rank/world default to rt.rank/rt.world; on_block(b) is called after block b is committed (tests)."""
    header = header or cache_header(cfg, weights, windows)
    rank = rt.rank if rank is None else rank
    world = rt.world if world is None else world
    ddp = dist.is_available() and dist.is_initialized()
    if os.path.isfile(os.path.join(path, "header.json")):
        TeacherCache(path, expect=header)  # already built: only check it
        return header
    part = path + ".partial"
    n, B = header["n_windows"], cfg.cache_block
    n_blocks = math.ceil(n / B)
    build = {"header": {k: v for k, v in header.items() if k != "info"}, "block": B}
    if rank == 0 or not ddp:  # start, or continue a build of the same cache (same blocks), or restart a stale one
        state = os.path.join(part, "build.json")
        if os.path.isdir(part):
            old = json.load(open(state)) if os.path.isfile(state) else None
            if old != build:
                print(f"teacher cache: {part} is from another build configuration: starting over")
                shutil.rmtree(part)
        if not os.path.isdir(part):
            os.makedirs(part)
            atomic_write(state, lambda f: f.write(json.dumps(build)), mode="w")
        _open_arrays(part, header, create=True)
    if ddp:
        dist.barrier()
    arrays = _open_arrays(part, header, create=False)
    done = _done_blocks(part)
    mine = [b for b in range(rank, n_blocks, world)]
    todo = [b for b in mine if b not in done]
    if rank == 0:
        size = cache_bytes(header)
        print(f"teacher cache {path}: {n:,} windows x {header['seq_len']} tokens x k={header['k']} ({header['method']}) = "
              f"{size / 1e9:.3f} GB, {size / (n * header['seq_len']) :.0f} bytes/token; "
              f"{len(done)}/{n_blocks} blocks already done")
    progress_file = os.path.join(part, f"progress.{rank}.json")
    my_done = sorted(set(mine) & done)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"teacher cache (rank {rank})", unit="block",
               disable=rank != 0, mininterval=1, dynamic_ncols=True)
    try:
        for b in todo:
            lo, hi = b * B, min(n, (b + 1) * B)
            out = compute_block(teachers, header["teacher_weights"], windows, lo, hi, header, rt, cfg.loss_chunk or 256)
            for name, values in zip(("ids", "weights", "plogp"), out):
                arrays[name][lo:hi] = values
                arrays[name].flush()  # the data is on disk before the block is recorded as done
            my_done.append(b)
            atomic_write(progress_file, lambda f: f.write(json.dumps({"done": my_done})), mode="w")
            bar.update(1)
            if on_block is not None:
                on_block(b)
    finally:
        bar.close()
    del arrays
    if ddp:
        dist.barrier()
    if rank != 0 and ddp:
        dist.barrier()  # wait for rank 0 to finalise
        return header
    if len(_done_blocks(part)) < n_blocks:
        if ddp:  # every rank has passed the barrier after its blocks: a missing block is a bug, not a wait
            raise RuntimeError(f"{part}: {n_blocks - len(_done_blocks(part))} blocks missing after all ranks finished")
        print(f"teacher cache: rank {rank} done, {n_blocks - len(_done_blocks(part))} blocks left to other ranks")
        return None
    atomic_write(os.path.join(part, "header.json"), lambda f: f.write(json.dumps(header, indent=1) + "\n"), mode="w")
    for name in os.listdir(part):
        if name.startswith("progress.") or name == "build.json":
            os.remove(os.path.join(part, name))
    os.replace(part, path)  # the complete cache appears in one step
    if ddp:
        dist.barrier()
    return header


# -----------------------------------------------------------------------------------------------
# Command line: build (or check) the cache of a distillation config


def main(argv=None):
    from distill import check_distill_config, load_teachers, teacher_weights
    from prepare_data import load_tokenizer
    from train_teacher import Windows, load_config, runtime

    cfg = load_config(dict(DISTILL_DEFAULTS, **CACHE_DEFAULTS), sys.argv[1:] if argv is None else argv)
    check_distill_config(cfg)
    if not cfg.teacher_cache:
        raise InputError("teacher_cache: give the cache directory, e.g. --teacher_cache=out/cache")
    weights = teacher_weights(cfg)
    rt = runtime(cfg)
    _, tok_info = load_tokenizer(cfg.data_dir)
    teachers = load_teachers(cfg.teachers, tok_info, cfg.data_dir, rt)
    windows = Windows(os.path.join(cfg.data_dir, "train.bin"), cfg.seq_len)
    t0 = time.perf_counter()
    header = build_cache(teachers, weights, windows, cfg, cfg.teacher_cache, rt)
    if header is not None and rt.master:
        print(f"teacher cache ready in {cfg.teacher_cache} ({time.perf_counter() - t0:.0f}s)")
    if rt.ddp:
        dist.destroy_process_group()
    return header


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        sys.exit(f"error: {e}")
