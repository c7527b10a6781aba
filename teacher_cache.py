"""
A teacher cache for distillation: the ensemble target of every training window, computed once and stored
as a sparse, unbiased estimate, then read in every epoch instead of running the teachers.

    python distill.py configs/tiny_student.py --teacher_cache=out/tiny_cache        # build once, then distil from it
    python distill.py configs/tiny_student.py --teacher_cache=out/tiny_cache --cache_only=True   # build only
    torchrun --nproc_per_node=8 distill.py configs/student.py --teacher_cache=out/cache345m      # each rank builds a share

This file is the cache, top to bottom: what is stored per position (sparse_target), the header that says
what it was built from, reading it (TeacherCache), building it in resumable blocks (build_cache) from the
teachers' pass (teacher_block), the loss that reads it (sparse_distill_loss, CachedDistillation), and the two
calls distill.py makes (check, then ready). Live teachers stay the default and the reference; with a cache the
step runs no teacher forward at all.

Why it is possible: train.Windows cuts train.bin into fixed non-overlapping windows and every epoch
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
      (a_ce = alpha / N, a_kl = (1 - alpha) T / kl_denominator). The loss value uses the identity
      KL = sum_v p log p - (p . s) / T + logsumexp(s / T),
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
naming what differs, old -> new. Paths are recorded but not compared (the same file moves). A finished build
seals the header (header_seal: the sha256 of those fields and of the files' hashes), so a header.json edited on disk is
refused on use, even where the edit agrees with the run (the targets on disk were built with the original fields).

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
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import atomic_write, check_writable_dir, file_sha256
from config import InputError
from run_dir import release_lock, stop_signals, take_lock
from train import CausalLM

FORMAT = "babydistill-teacher-cache-3"  # 2: the files' sha256 in the header, checked on every use; 3: the header sealed

CACHE_KEYS = {
    "teacher cache": {
        "teacher_cache": ("", "folder of a teacher cache to build once and train from; empty = live teachers (the reference)"),
        "cache_only": (False, "build (or check) the teacher cache, then exit without training"),
        "cache_method": ("sampled", "'sampled' (unbiased, arXiv 2503.16870) or 'topk' (the biased baseline)", ("sampled", "topk")),
        "cache_k": (16, "draws per position (sampled) or kept tokens (topk): slots stored per position", ">0"),
        "cache_proposal_temperature": (1.0, "sampled: draw from softmax(log p / tau); 1.0 = from p itself", ">0"),
        "cache_seed": (0, "seed of the draws (window i uses seed * 1_000_003 + i)", ">=0"),
        "cache_block": (256, "windows per block: the unit of progress (and of the teachers' batch)", ">0"),
    },
}


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
# The header: what a cache was built from, checked on use


def cache_header(cfg, weights, windows, teacher_paths=None, teacher_sha256=None):
    """The header a cache for this run must have. `windows` is the train.Windows of train.bin;
    cfg has data_dir, teachers, temperature, ensemble and the cache_* keys (CACHE_KEYS).
    teacher_sha256: the teachers' file hashes when the caller has them already (they take seconds at 345M)."""
    paths = list(teacher_paths if teacher_paths is not None else cfg.teachers)
    with open(os.path.join(cfg.data_dir, "meta.json")) as f:
        tok = json.load(f)["tokenizer"]
    if tok["vocab_size"] > 65536:
        raise InputError(f"vocab {tok['vocab_size']}: the cache stores token ids as uint16 (at most 65,536)")
    if cfg.cache_k > tok["vocab_size"]:
        raise InputError(f"cache_k={cfg.cache_k} is larger than the vocabulary ({tok['vocab_size']}): at most one slot per token")
    tokens = np.asarray(windows.tokens)
    return {
        "format": FORMAT,
        "teacher_sha256": list(teacher_sha256) if teacher_sha256 is not None else [file_sha256(p) for p in paths],
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


def cache_identity(header):
    """The sha256 of a header's compared fields: the build is deterministic, so equal identities mean equal caches."""
    return hashlib.sha256(json.dumps({k: v for k, v in header.items() if k not in ("info", "files", "seal")}, sort_keys=True).encode()).hexdigest()


def header_seal(header):
    """The sha256 of every field that shapes the stored targets (temperature, ensemble, teacher weights, k, method,
    seed, proposal temperature, the inputs' hashes, ...) and of the files' hashes, written when a build finishes.
    Comparing the header with the run's would not catch a header.json edited on disk (temperature 1.0 -> 2.0 with
    --temperature=2.0 agrees with a cache built at T = 1); the seal, recomputed on every use, does."""
    return hashlib.sha256(json.dumps({k: v for k, v in header.items() if k not in ("info", "seal")}, sort_keys=True).encode()).hexdigest()


def _short(v):
    return v[:12] if isinstance(v, str) and len(v) == 64 else v  # sha256 -> 12 characters


def header_differences(old, new):
    """["key: old -> new", ...] over the compared keys (all but "info" and "files"); lists and dicts item by item."""
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

    walk({k: v for k, v in old.items() if k not in ("info", "files", "seal")}, {k: v for k, v in new.items() if k not in ("info", "files", "seal")}, "")
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
    distill.CachedDistillation.loss. `expect`: the header this run needs (cache_header); mismatch = InputError."""

    def __init__(self, path, expect=None):
        header_path = os.path.join(path, "header.json")
        if not os.path.isfile(header_path):
            hint = " (a build was interrupted: run it again to continue)" if os.path.isdir(path + ".partial") else ""
            raise InputError(f"{path}: no teacher cache here{hint}")
        try:
            with open(header_path) as f:
                self.header = json.load(f)
            self.header["format"], self.header["files"]  # a dict with the keys a finished build writes
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
            raise InputError(f"{header_path}: damaged (not the header a finished build writes); delete {path} to rebuild it") from None
        if self.header.get("seal") != header_seal(self.header):
            raise InputError(f"{header_path}: edited after the build (its fields no longer match the seal the build wrote; the stored "
                             f"targets were made with the original ones); delete {path} to rebuild it")
        if expect is not None:
            diffs = header_differences(self.header, expect)
            if diffs:
                raise InputError(f"{path}: teacher cache built for another run: {'; '.join(diffs)} (delete it to rebuild)")
        self.path = path
        self.arrays = {}
        for name, shape in _shapes(self.header).items():
            file, dtype = FILES[name]
            full = os.path.join(path, file)
            if not os.path.isfile(full) or os.path.getsize(full) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                size = f"size {os.path.getsize(full)} bytes" if os.path.isfile(full) else "missing"
                raise InputError(f"{full}: {size}, not the header's shape {shape}; delete {path} to rebuild it")
            # Bytes changed since the build (a copy gone wrong, a disk error, an edit) would train on garbage
            # silently: the build recorded every file's sha256, and it is checked on every use (~1 s per GB).
            if file_sha256(full) != self.header["files"].get(file):
                raise InputError(f"{full}: contents differ from the sha256 recorded when the cache was built; delete {path} to rebuild it")
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


def _open_arrays(folder, header, create):
    arrays = {}
    for name, shape in _shapes(header).items():
        file, dtype = FILES[name]
        full, size = os.path.join(folder, file), int(np.prod(shape)) * np.dtype(dtype).itemsize
        if create and (not os.path.isfile(full) or os.path.getsize(full) != size):
            with open(full, "wb") as f:  # allocated now: a full disk is an error here, not a SIGBUS mid-build
                try:
                    os.posix_fallocate(f.fileno(), 0, size)
                except OSError as e:
                    raise InputError(f"{full}: cannot allocate {size:,} bytes ({e.strerror or e})") from None
        arrays[name] = np.memmap(full, dtype=dtype, mode="r+", shape=shape)
    return arrays


def _done_blocks(folder):
    done = set()
    for name in os.listdir(folder):
        if name.startswith("progress.") and name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                done.update(json.load(f)["done"])
    return done


def check_cache_path(path, header):
    """Refuse, before the teachers run, a cache path that the build could not finish into: a file, under a file,
    read-only, a folder holding something that is not a teacher cache, or a disk without room for the cache."""
    check_writable_dir(path, "teacher_cache")
    if os.path.isfile(os.path.join(path, "header.json")):
        return  # a built cache: TeacherCache checks it
    if os.path.isdir(path) and os.listdir(path):
        raise InputError(f"teacher_cache={path}: holds files that are not a teacher cache; choose another folder")
    part = path + ".partial"
    have = sum(os.path.getsize(os.path.join(part, f)) for f, _ in FILES.values() if os.path.isfile(os.path.join(part, f)))
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    need, free = cache_bytes(header) - have, shutil.disk_usage(existing).free
    if need > free:
        raise InputError(f"teacher_cache={path}: the cache needs {need / 1e9:.3f} GB more, and {free / 1e9:.3f} GB are free on that disk "
                         "(a smaller cache_k, or a folder on a larger disk)")


def lock_cache(path, build):
    """One builder per cache: path.lock names its pid. A live builder of the same cache (the same build.json) is
    waited for, and its cache then used; a builder of another one is refused (it would rebuild over it)."""
    lock, said = path + ".lock", False
    while True:
        pid = take_lock(lock)
        if not pid:
            return lock
        state = os.path.join(path + ".partial", "build.json")
        other = None
        try:
            other = json.load(open(state)) if os.path.isfile(state) else None
        except (json.JSONDecodeError, OSError):
            pass
        if other is not None and other != build:
            raise InputError(f"teacher_cache={path} is being built by another process (pid {pid}) with other settings: wait for it "
                             f"or choose another --teacher_cache (if no build of yours holds it, delete {lock})")
        if not said:
            print(f"teacher cache: {path} is being built by pid {pid} with the same settings: waiting for it")
            said = True
        time.sleep(2)


def clear_stale_lock(path):
    """Remove the lock of a builder that died after finishing the cache (a kill right after its last rename)."""
    if os.path.exists(path + ".lock") and not take_lock(path + ".lock"):
        release_lock(path + ".lock")


def build_cache(compute_block, header, path, rt, block=256, rank=None, world=None, on_block=None):
    """Build the cache described by `header` into the directory `path` (see the file docstring), or continue
    an interrupted build; compute_block(lo, hi) -> (ids, weights, plogp) numpy arrays of windows lo..hi-1
    (distill.teacher_block: the teachers' pass). Returns the
    header when this call completed the cache, None when other ranks still have blocks to do (world > 1
    without torch.distributed: each rank is called in turn, the last one to finish finalises).
    rank/world default to rt.rank/rt.world; on_block(b) is called after block b is committed (tests)."""
    rank = rt.rank if rank is None else rank
    world = rt.world if world is None else world
    ddp = dist.is_available() and dist.is_initialized()
    if os.path.isfile(os.path.join(path, "header.json")):
        TeacherCache(path, expect=header)  # already built: only check it
        if rank == 0:
            clear_stale_lock(path)
        return header
    part = path + ".partial"
    build = {"header": {k: v for k, v in header.items() if k not in ("info", "files")}, "block": block}
    lock = None
    if rank == 0 or not ddp:
        check_cache_path(path, header)
        lock = lock_cache(path, build)
        if os.path.isfile(os.path.join(path, "header.json")):  # built by the process we waited for
            release_lock(lock)
            TeacherCache(path, expect=header)
            return header
    try:
        return _build(compute_block, header, path, part, build, rank, world, ddp, on_block)
    finally:
        if lock:
            release_lock(lock)


def _build(compute_block, header, path, part, build, rank, world, ddp, on_block):
    """build_cache's work, under the lock: the partial folder, the blocks, then the finished cache."""
    n, B = header["n_windows"], build["block"]
    n_blocks = math.ceil(n / B)
    if rank == 0 or not ddp:  # start, or continue a build of the same cache (same blocks), or restart a stale one
        state = os.path.join(part, "build.json")
        if os.path.isdir(part):
            try:
                old = json.load(open(state)) if os.path.isfile(state) else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                old = None  # torn: the blocks cannot be trusted to be this build's
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
    with stop_signals("finishing this block of the teacher cache") as stop:
        try:
            for b in todo:
                lo, hi = b * B, min(n, (b + 1) * B)
                out = compute_block(lo, hi)
                for name, values in zip(("ids", "weights", "plogp"), out):
                    arrays[name][lo:hi] = values
                    arrays[name].flush()  # the data is on disk before the block is recorded as done
                my_done.append(b)
                atomic_write(progress_file, lambda f: f.write(json.dumps({"done": my_done})), mode="w")
                bar.update(1)
                if on_block is not None:
                    on_block(b)
                if stop.signum:
                    bar.close()
                    print(f"teacher cache: stopped with {len(my_done)} of {len(mine)} blocks of rank {rank} done in {part}; "
                          "run the same command to continue")
                    raise SystemExit(128 + stop.signum)
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
    files = {file: file_sha256(os.path.join(part, file)) for file, _ in FILES.values()}  # checked on every use
    sealed = {**header, "files": files}
    sealed["seal"] = header_seal(sealed)  # an edit of header.json is refused on use
    atomic_write(os.path.join(part, "header.json"), lambda f: f.write(json.dumps(sealed, indent=1) + "\n"), mode="w")
    for name in os.listdir(part):
        if name.startswith("progress.") or name == "build.json":
            os.remove(os.path.join(part, name))
    os.replace(part, path)  # the complete cache appears in one step
    if ddp:
        dist.barrier()
    return header


# -----------------------------------------------------------------------------------------------
# Filling it: the teachers' pass over a block of windows


@torch.no_grad()
def teacher_block(teachers, target, windows, lo, hi, header, rt, chunk=256):
    """What the cache stores for windows lo..hi-1: (ids (n, L, k) uint16, weights (n, L, k) float32, plogp (n, L)
    float32), from one pass of the teachers. target(teacher logits) -> log p: the run's ensemble target
    (distill.ensemble_log_probs with its weights, temperature and ensemble), applied `chunk` positions at a time."""
    L, k = header["seq_len"], header["k"]
    x, _ = windows.get(torch.arange(lo, hi), rt.device)
    with rt.autocast:
        t_h = [t(x, return_hidden=True).reshape((hi - lo) * L, -1) for t in teachers]  # (n L, dim_k) final hidden states
    u = None
    if header["method"] == "sampled":  # the uniforms of window i depend on (seed, i) only
        g = torch.Generator()
        u = torch.cat([torch.rand(L * k, generator=g.manual_seed(header["seed"] * 1_000_003 + i)) for i in range(lo, hi)]).view(-1, k)
    N = (hi - lo) * L
    out_ids, out_w, out_plogp = torch.empty(N, k, dtype=torch.int64), torch.empty(N, k), torch.empty(N)
    for i in range(0, N, chunk):
        log_p = target([t.output(th[i : i + chunk]) for th, t in zip(t_h, teachers)])  # (chunk, V)
        out_plogp[i : i + chunk] = (log_p.exp() * log_p).sum(-1).cpu()  # log_p is finite (a log-softmax): no 0 * inf
        ids, w = sparse_target(log_p.cpu(), k, header["method"], None if u is None else u[i : i + chunk], header["proposal_temperature"] or 1.0)
        out_ids[i : i + chunk], out_w[i : i + chunk] = ids, w
    n = hi - lo
    return out_ids.view(n, L, k).numpy().astype(np.uint16), out_w.view(n, L, k).numpy(), out_plogp.view(n, L).numpy()


# -----------------------------------------------------------------------------------------------
# Learning from it: the distillation loss with p replaced by the stored p_hat


def sparse_distill_loss(student_logits, y, ids, weights, plogp, alpha, temperature, kl_reduction):
    """distill.distill_loss with the ensemble target p replaced by the cache's sparse estimate p_hat: per position, k
    token ids and weights (B, L, k), and plogp (B, L) = sum_v p_v log p_v, stored exactly when the cache was built.
    As log q_v = s_v / T - logsumexp(s / T) and sum_v p_v = 1,
        KL(p || q) = sum_v p_v log p_v - (p . s) / T + logsumexp(s / T),
    and only the middle term needs p: with p_hat, a sum over the k stored slots. It is linear in p, so with the
    sampled cache (E[p_hat] = p) the loss and its gradient are unbiased estimates of the live ones."""
    B, L, V = student_logits.shape
    s = student_logits if student_logits.dtype == torch.float64 else student_logits.float()  # at least fp32 (distill.fp32)
    ce = F.cross_entropy(s.reshape(B * L, V), y.reshape(B * L))
    p_hat_dot_s = (weights.to(s.dtype) * s.gather(-1, ids)).sum()  # over B, L and the k slots
    kl_sum = plogp.to(s.dtype).sum() - p_hat_dot_s / temperature + torch.logsumexp(s / temperature, dim=-1).sum()
    kl_term = temperature**2 * kl_sum / (B if kl_reduction == "paper" else B * L)
    return alpha * ce + (1 - alpha) * kl_term, ce, kl_term, kl_sum / (B * L)


class CachedDistillation(CausalLM):
    """The student's objective with a teacher cache: each batch's targets are read by window index, and no teacher
    runs (so the FLOPs per token are the student's alone)."""

    def __init__(self, student, cache, cfg, teacher_val=None):
        super().__init__(student, cfg)
        self.cache = cache
        self.alpha, self.temperature, self.kl_reduction = cfg.alpha, cfg.temperature, cfg.kl_reduction
        self.record = dict(teacher_val or {})  # the teachers' validation losses, beside the student's in the log

    def inputs(self, batch):
        ids, weights, plogp = self.cache.get(batch.idx)
        return batch.x, batch.y, ids.to(batch.x.device), weights.to(batch.x.device), plogp.to(batch.x.device)

    def loss(self, student, x, y, ids, weights, plogp):
        return self.apply(student, x, [y, ids, weights, plogp])  # formula() on the whole micro-batch, or on a chunk of its sequences

    def formula(self, student_logits, y, ids, weights, plogp):
        loss, ce, kl_term, kl = sparse_distill_loss(student_logits, y, ids, weights, plogp, self.alpha, self.temperature, self.kl_reduction)
        return loss, {"ce": ce, "kl_term": kl_term, "kl": kl}


# -----------------------------------------------------------------------------------------------
# What distill.py calls: check (before any work), then ready (after the teachers' validation)


def check(cfg, weights, windows, rt, inputs):
    """--teacher_cache, before any work: the header this run needs, whose identity joins `inputs` (resume compares
    it), and either the built cache, opened and checked (header and every file's sha256), or the folder a build will
    fill, checked (a file, read-only, other files, no room). None for live teachers (no --teacher_cache)."""
    inputs["teacher_cache"] = None
    if not cfg.teacher_cache:
        if cfg.cache_only:
            raise InputError("cache_only=True needs --teacher_cache=DIR, the folder of the cache to build (or check)")
        return None
    header = cache_header(cfg, weights, windows, teacher_sha256=inputs["teachers"])
    inputs["teacher_cache"] = cache_identity(header)  # a cache is a function of its header
    built = os.path.isfile(os.path.join(cfg.teacher_cache, "header.json"))
    cache = TeacherCache(cfg.teacher_cache, expect=header) if built else None
    if rt.master:
        clear_stale_lock(cfg.teacher_cache) if built else check_cache_path(cfg.teacher_cache, header)
    return SimpleNamespace(path=cfg.teacher_cache, header=header, built=built, cache=cache, block=cfg.cache_block, chunk=cfg.loss_chunk or 256)


def ready(plan, teachers, target, windows, rt):
    """The cache of check(), built now by one pass of the teachers over every window if it was not built yet."""
    if plan.cache is None:
        build_cache(lambda lo, hi: teacher_block(teachers, target, windows, lo, hi, plan.header, rt, plan.chunk), plan.header, plan.path, rt, plan.block)
        plan.cache = TeacherCache(plan.path, expect=plan.header)
    return plan.cache
