"""
Owning a run's out_dir: start or resume, one run per folder, and a clean stop on a signal.

train.py's loop calls these; a reader learning how training works can skip this file. What it guarantees:
- a fresh start never overwrites a run silently (--overwrite=True replaces one on purpose);
- --resume=True continues from out_dir/last.pt only with the config that wrote it (RESUMABLE_KEYS may change);
  a run that never wrote last.pt has not started: the same command, with or without --resume=True, starts it;
- one run per out_dir at a time: run.lock names the holder's pid; a dead holder's lock is taken over;
- a replaced run leaves nothing behind, its milestone folders (chck_<words>/) included;
- Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes and torchrun send on preemption) do not kill the
  process mid-step: they set a flag, and the loop saves last.pt at the next step boundary, then exits.
"""

import atexit
import os
import signal
from contextlib import contextmanager

import torch.distributed as dist

from checkpoint import check_same_tokenizer, file_sha256, read_checkpoint
from config import InputError, print0

# Keys that may differ between a run and its resumption: they change where and how it is computed or
# logged, not what is learned. Anything else (the data, the model, the schedule, the seed, the batch)
# would make the resumed steps differ from the run that wrote last.pt, so resume refuses it.
RESUMABLE_KEYS = {"resume", "overwrite", "out_dir", "stop_at", "log_interval", "micro_batch_size", "device", "compile",
                  "loss_impl", "loss_chunk", "wandb_log", "wandb_project", "wandb_run_name", "track"}
# Paths may change too (a folder moved to another disk, a job on another node): what they hold is compared
# instead, through the sha256 of every input the run reads (run_inputs), recorded in each checkpoint.
PATH_KEYS = {"data_dir", "teachers", "teacher_cache"}


def run_inputs(data_dir, teacher_paths=()):
    """The identity of what a run learns from: the sha256 of train.bin, val.bin and each teacher checkpoint.
    A file rewritten in place at the same path is another input; the same file moved is the same input."""
    return {"train.bin": file_sha256(os.path.join(data_dir, "train.bin")), "val.bin": file_sha256(os.path.join(data_dir, "val.bin")),
            "teachers": [file_sha256(p) for p in teacher_paths]}


def start_run(cfg, tok_info, rt, inputs=None):
    """The checkpoint to resume from (cfg.resume) or None for a fresh start, after every check that
    protects an existing run. Touches nothing: out_dir is taken later by take_out_dir.

    The rule: a run exists once it has written last.pt. A run killed before its first last.pt (even one killed
    between its first ckpt.pt and that last.pt) saved nothing to continue from, so the plain command and
    --resume=True both start it again from step 0 (the leftovers are cleared by take_out_dir).
    `inputs` (run_inputs) must equal what last.pt recorded: the same data and teachers, wherever they are now."""
    for t in getattr(cfg, "teachers", []):  # a fresh start clears out_dir's ckpt.pt: it must not be a teacher
        if os.path.abspath(os.path.dirname(t)) == os.path.abspath(cfg.out_dir):
            raise InputError(f"--teachers: {t} lies in --out_dir={cfg.out_dir}, where the student's run writes its own "
                             "ckpt.pt and last.pt: choose another --out_dir")
    last = os.path.join(cfg.out_dir, "last.pt")
    if not os.path.isfile(last):
        if cfg.resume:
            print0(f"{last} does not exist (nothing saved yet): starting from step 0")
        return None
    if not cfg.resume:
        if not cfg.overwrite:
            raise InputError(f"{cfg.out_dir} already holds a run: resume it with --resume=True, "
                             "choose another --out_dir, or replace it with --overwrite=True")
        return None
    try:
        ckpt = read_checkpoint(last, rt.device)
    except InputError as e:
        best = os.path.join(cfg.out_dir, "ckpt.pt")
        hint = f"; {best} (best validation) may still be good: copy it to last.pt to resume from it" if os.path.isfile(best) else ""
        raise InputError(f"{e}{hint}") from None
    old = ckpt.get("config", {})
    check_same_tokenizer(ckpt["tokenizer"], tok_info, last, f"the data in {cfg.data_dir}",
                         f"resume with the data folder the run started with (--data_dir={old.get('data_dir')})")
    changed = [f"{k} {old[k]!r} -> {v!r}" for k, v in vars(cfg).items()
               if k in old and k not in RESUMABLE_KEYS | PATH_KEYS and old[k] != v]
    recorded = ckpt.get("inputs") or {}
    for name, sha in (inputs or {}).items():  # (a checkpoint written before inputs were recorded has none to compare)
        was = recorded.get(name, sha)
        if name == "teachers" and len(was) == len(sha):
            changed += [f"teacher {i + 1} ({cfg.teachers[i]}) sha256 {a[:12]} -> {b[:12]}" for i, (a, b) in enumerate(zip(was, sha)) if a != b]
        elif was != sha:
            changed.append(f"{name} sha256 {str(was)[:12]} -> {str(sha)[:12]}" if name != "teachers" else f"teachers {len(was)} -> {len(sha)}")
    if changed:
        raise InputError(f"{last} was written with another config: {'; '.join(changed)} "
                         f"(only {', '.join(sorted(RESUMABLE_KEYS))} may change on resume, and paths only to files of the same "
                         "contents; resume with what the run started with, or start afresh with --overwrite=True)")
    return ckpt


def take_out_dir(cfg, rt, start):
    """Rank 0 makes out_dir, locks it for this run, and clears what a killed or replaced run left there."""
    if rt.ddp:  # every rank has looked at out_dir (start_run) before rank 0 changes it
        dist.barrier()
    if rt.master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        atexit.register(release_lock, lock_out_dir(cfg.out_dir))
        clear(cfg.out_dir, start is None)
        for name in os.listdir(cfg.out_dir):  # milestones, chck_<words>/ckpt.pt (train.save_milestones): the same
            milestone = os.path.join(cfg.out_dir, name)
            if name.startswith("chck_") and os.path.isdir(milestone):
                clear(milestone, start is None)
                if not os.listdir(milestone):  # a replaced run's milestone
                    os.rmdir(milestone)
    return start


def clear(folder, fresh):
    """What a killed run leaves in folder (a *.tmp beside the intact file) and, on a fresh start
    (--overwrite=True), the replaced run's files."""
    for name in os.listdir(folder):
        if name.endswith(".tmp") or (fresh and name in ("last.pt", "ckpt.pt", "log.jsonl")):
            os.remove(os.path.join(folder, name))


def lock_out_dir(out_dir):
    """One run per out_dir: a lock file naming the holder's pid; a dead holder's lock is taken over."""
    path = os.path.join(out_dir, "run.lock")
    pid = take_lock(path)
    if pid:
        raise InputError(f"{out_dir} is in use by another run (pid {pid}, {path}); wait for it or choose another out_dir "
                         f"(if no run of yours holds it, delete {path})")
    return path


def take_lock(path):
    """Create the lock file `path` holding this process's pid. Returns 0 when taken (a lock whose process is
    gone, or is this very process, is taken over), else the pid of the live process that holds it."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a lock file: remove it")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:  # the pid is written before the lock appears (os.link): a lock is never seen empty
        f.write(str(os.getpid()))
    try:
        for _ in range(3):
            try:
                link_or_create(tmp, path)  # fails if the lock exists: one process wins
                return 0
            except FileExistsError:
                text = open(path, errors="replace").read().strip() if os.path.isfile(path) else ""
                pid = int(text) if text.isdigit() and len(text) < 10 else 0  # else not a pid: a stale or broken lock
                try:
                    if pid <= 0 or pid == os.getpid():  # broken, or this process's own earlier run (in-process tests)
                        raise ProcessLookupError
                    os.kill(pid, 0)  # raises if no such process
                except (ProcessLookupError, FileNotFoundError):
                    os.remove(path) if os.path.isfile(path) else None  # stale: its process is gone
                    continue
                except PermissionError:
                    pass  # alive, owned by someone else
                return pid
    finally:
        os.remove(tmp)
    raise InputError(f"{path}: cannot take the lock (delete it if no process of yours holds it)")


def link_or_create(tmp, path):
    """path appears holding tmp's text, or FileExistsError. A hard link where the filesystem has them (atomic, and
    the text is there the moment the name is); else create-exclusive, then write."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FUSE filesystems)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, open(tmp, "rb").read())
        os.close(fd)


def release_lock(path):
    if os.path.isfile(path) and open(path).read() == str(os.getpid()):
        os.remove(path)


class StopSignal:
    """Ctrl-C (SIGINT) and SIGTERM set a flag; the loop saves last.pt at the next step boundary and exits.
    A second Ctrl-C stops at once. `doing` says what happens before the exit."""

    def __init__(self, doing="finishing this step, saving last.pt"):
        self.signum, self.doing = 0, doing

    def __call__(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print0(f"\n{signal.Signals(signum).name}: {self.doing}, then exiting (Ctrl-C again to abort)")


@contextmanager
def stop_signals(doing="finishing this step, saving last.pt"):
    """Within the block, Ctrl-C and SIGTERM go to a StopSignal (yielded); afterwards the old handlers come back."""
    stop = StopSignal(doing)
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in old_handlers.items():
            signal.signal(s, handler)


@contextmanager
def running(cfg, rt):
    """While the loop runs: signals go to a StopSignal (yielded); afterwards out_dir's lock is released (the
    process may go on: a notebook, a test, an experiment script)."""
    try:
        with stop_signals() as stop:
            yield stop
    finally:
        if rt.master:
            release_lock(os.path.join(cfg.out_dir, "run.lock"))
