"""train_teacher.py: a tiny CPU run learns, resume equals an uninterrupted run, data order, schedule,
errors. Run: python -m pytest tests/test_train.py"""

import math
import os

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint, read_log
from config import InputError, load_config
from conftest import check_close, fp32_tol, strip_timing, tiny_argv
from train import EpochSampler, lr_at
from train_teacher import TEACHER_KEYS, main


def val_losses(out_dir):
    return [e["val_loss"] for e in read_log(os.path.join(out_dir, "log.jsonl")) if "val_loss" in e]


def test_tiny_run_validation_loss_falls(prepared, tmp_path):
    out = str(tmp_path / "t")
    os.makedirs(out)
    open(os.path.join(out, "ckpt.pt.tmp"), "wb").write(b"half a checkpoint from a killed run")
    summary = main(tiny_argv(prepared, out, max_iters=60, eval_interval=20))
    vals = val_losses(out)
    assert len(vals) == 3 and vals[-1] < vals[0] - 0.5, vals
    assert summary["best_val_loss"] == min(vals)
    assert sorted(os.listdir(out)) == ["ckpt.pt", "last.pt", "log.jsonl"]
    _, ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["step"] == 60 and ckpt["val_loss"] == min(vals) and ckpt["tokenizer"]["vocab_size"] == 320


def test_resume_equals_uninterrupted_run(prepared, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    main(tiny_argv(prepared, a, max_iters=16, eval_interval=5))
    main(tiny_argv(prepared, b, max_iters=16, eval_interval=5, stop_at=7))  # stops between two evaluations
    assert load_checkpoint(os.path.join(b, "last.pt"))[1]["step"] == 7
    for stop_at in (7, 3):  # it would never be reached: the run trained to the end instead, exit 0
        with pytest.raises(InputError, match=f"--stop_at={stop_at}: the run is already at step 7"):
            main(tiny_argv(prepared, b, max_iters=16, eval_interval=5, resume=True, stop_at=stop_at))
    main(tiny_argv(prepared, b, max_iters=16, eval_interval=5, resume=True))
    log_a, log_b = read_log(os.path.join(a, "log.jsonl")), read_log(os.path.join(b, "log.jsonl"))
    assert [e["step"] for e in log_a if "loss" in e] == list(range(1, 17))
    assert strip_timing(log_a) == strip_timing(log_b), "losses after resume differ from the uninterrupted run"
    wa, wb = (load_checkpoint(os.path.join(d, "last.pt"))[0].state_dict() for d in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"


def epoch_of(sampler, epoch, world_micro):
    """The windows of one epoch as [step][micro-step][rank] -> indices, asked in that order."""
    return [[[sampler.indices(step, m, r).tolist() for r in range(world_micro[0])] for m in range(world_micro[1])]
            for step in range(epoch * sampler.steps_per_epoch, (epoch + 1) * sampler.steps_per_epoch)]


@pytest.mark.core
@pytest.mark.parametrize("n_windows", [40, 43])  # 43: three windows left over each epoch
def test_epoch_sampler_covers_each_window_once_per_epoch_and_shards_ranks(n_windows):
    one = EpochSampler(n_windows=n_windows, batch_size=8, micro_batch_size=4, world=1, seed=0)  # 2 micro-steps
    two = EpochSampler(n_windows=n_windows, batch_size=8, micro_batch_size=2, world=2, seed=0)  # 2 micro-steps x 2 ranks
    steps = n_windows // 8
    epochs = []
    for epoch in range(3):
        seen = []
        for step in range(epoch * steps, (epoch + 1) * steps):
            micro = [one.indices(step, m, 0) for m in range(2)]
            assert all(isinstance(i, torch.Tensor) and i.shape == (4,) for i in micro), (
                f"EpochSampler.indices: step {step} gave {[tuple(getattr(i, 'shape', ())) for i in micro]}, expected 4 window indices per micro-batch (a tensor)")
            batch = sorted(torch.cat(micro).tolist())
            sharded = sorted(torch.cat([two.indices(step, m, r) for m in range(2) for r in range(2)]).tolist())
            assert batch == sharded, (f"EpochSampler.indices: step {step}'s global batch is {batch} with one process, {sharded} with two "
                                      "(the same global batch whatever the number of processes, each rank its own share)")
            seen += batch
        assert len(set(seen)) == len(seen) == steps * 8 and set(seen) <= set(range(n_windows)), (
            f"EpochSampler.indices: epoch {epoch} gave {len(seen)} windows, {len(set(seen))} distinct, expected each of {steps * 8} "
            f"distinct windows of 0..{n_windows - 1} once (a permutation per epoch, cut into global batches)")
        epochs.append(seen)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2], "EpochSampler.indices: two epochs gave the same order (a fresh permutation each epoch)"
    assert epochs[0] != sorted(epochs[0]), "EpochSampler.indices: epoch 0 gave the windows in order (each epoch is a random permutation)"


@pytest.mark.core
def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    """A resumed run asks for step 1000 first: the windows may depend on (seed, epoch, step, micro-step, rank) only,
    not on what was asked before (no generator that advances from call to call)."""
    walked = EpochSampler(n_windows=40, batch_size=8, micro_batch_size=4, world=1, seed=3)
    walk = epoch_of(walked, 0, (1, 2)) + epoch_of(walked, 1, (1, 2)) + epoch_of(walked, 2, (1, 2))
    fresh = EpochSampler(n_windows=40, batch_size=8, micro_batch_size=4, world=1, seed=3)
    assert epoch_of(fresh, 2, (1, 2)) == walk[10:15], "EpochSampler.indices: epoch 2 differs when asked first (it must depend on (seed, epoch) only)"
    assert epoch_of(fresh, 0, (1, 2)) == walk[:5], "EpochSampler.indices: epoch 0 differs when asked after epoch 2"
    other = EpochSampler(n_windows=40, batch_size=8, micro_batch_size=4, world=1, seed=4)
    assert epoch_of(other, 0, (1, 2)) != walk[:5], "EpochSampler.indices: seeds 3 and 4 gave the same order (the permutation is seeded by (seed, epoch))"


@pytest.mark.core
def test_lr_schedule_warmup_then_cosine():
    cfg = load_config(TEACHER_KEYS, ["--lr=1.0", "--min_lr=0.1", "--warmup_iters=10"])
    for step in range(120):  # every step against the formula: linear warmup, then a half cosine from lr to min_lr
        if step < 10:
            expected, why = 1.0 * (step + 1) / 10, "linear warmup: lr (step + 1) / warmup_iters"
        else:
            expected, why = 0.1 + 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 10) / 100))) * (1.0 - 0.1), (
                "a half cosine from lr at warmup_iters to min_lr at max_iters, then min_lr")
        # a handful of operations, in double precision or, for a solution that uses fp32 tensors, within 8 fp32 ulps
        check_close(lr_at(step, cfg, 110), expected, fp32_tol(1.0, 2), f"lr_at: step {step}", f"{why}; lr 1, min_lr 0.1, warmup_iters 10, max_iters 110")
    assert lr_at(9, cfg, 110) == pytest.approx(1.0) and lr_at(110, cfg, 110) == pytest.approx(0.1), "lr_at: lr at the end of the warmup, min_lr at max_iters"


def test_checkpoint_from_another_tokenizer_is_refused_on_resume(prepared, tmp_path):
    out = str(tmp_path / "t")
    main(tiny_argv(prepared, out, max_iters=4, eval_interval=2, warmup_iters=1))
    ck = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    ck["tokenizer"]["sha256"] = "0" * 64
    torch.save(ck, os.path.join(out, "last.pt"))
    with pytest.raises(InputError, match="last.pt was made with tokenizer"):
        main(tiny_argv(prepared, out, max_iters=4, eval_interval=2, warmup_iters=1, resume=True))


def test_vocab_size_disagreeing_with_the_tokenizer(prepared, tmp_path):
    with pytest.raises(InputError, match="vocab_size=1000 but the tokenizer"):
        main(tiny_argv(prepared, str(tmp_path / "t"), vocab_size=1000))


def test_an_out_dir_holding_a_run_is_protected(prepared, tmp_path):
    out = str(tmp_path / "t")
    args = dict(max_iters=4, eval_interval=2, warmup_iters=1)
    main(tiny_argv(prepared, out, **args))
    before = open(os.path.join(out, "log.jsonl")).read()
    with pytest.raises(InputError, match="already holds a run: resume it with --resume=True, choose another --out_dir, or replace it with --overwrite=True"):
        main(tiny_argv(prepared, out, **args))
    assert open(os.path.join(out, "log.jsonl")).read() == before, "the refused start changed nothing"
    main(tiny_argv(prepared, out, overwrite=True, **args, seed=5))
    assert open(os.path.join(out, "log.jsonl")).read() != before


@pytest.mark.parametrize("change, message", [  # lr, seed and dim: rows of test_crash.py's table
    (dict(batch_size=4, micro_batch_size=4), "batch_size 8 -> 4"),
    (dict(max_iters=40), "max_iters 8 -> 40"),
])
def test_resume_refuses_a_changed_config(prepared, tmp_path, change, message):
    out = str(tmp_path / "t")
    args = dict(max_iters=8, eval_interval=2, warmup_iters=1)
    main(tiny_argv(prepared, out, stop_at=2, **args))
    with pytest.raises(InputError, match=f"last.pt was written with another config: {message}"):
        main(tiny_argv(prepared, out, resume=True, **{**args, **change}))
    main(tiny_argv(prepared, out, resume=True, log_interval=3, stop_at=0, **args))  # these may change


def test_a_torn_last_log_line_is_dropped(prepared, tmp_path, capsys):
    out = str(tmp_path / "t")
    args = dict(max_iters=8, eval_interval=2, warmup_iters=1)
    main(tiny_argv(prepared, out, stop_at=4, **args))
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # a kill or a full disk in the middle of an append
    main(tiny_argv(prepared, out, resume=True, **args))
    assert "dropped a torn last line" in capsys.readouterr().err
    assert [e["step"] for e in read_log(os.path.join(out, "log.jsonl")) if "loss" in e] == list(range(1, 9))


def test_one_run_per_out_dir(prepared, tmp_path):
    import subprocess, sys
    out = str(tmp_path / "t")
    os.makedirs(out)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        open(os.path.join(out, "run.lock"), "w").write(str(holder.pid))
        with pytest.raises(InputError, match=f"is in use by another run \\(pid {holder.pid}"):
            main(tiny_argv(prepared, out, max_iters=4, eval_interval=2, warmup_iters=1))
    finally:
        holder.kill()
        holder.wait()
    main(tiny_argv(prepared, out, max_iters=4, eval_interval=2, warmup_iters=1))  # a dead holder's lock is taken over
    assert not os.path.exists(os.path.join(out, "run.lock")), "released at the end"


class FakeWandb:
    """Stands in for the wandb package (not a requirement): records what the loop sends."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, values, step):
        self.logged.append({"step": step, **values})

    def finish(self):
        self.finished += 1


def test_wandb_logging_mirrors_the_log_and_is_optional(prepared, tmp_path, monkeypatch):
    import sys
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = str(tmp_path / "t")
    main(tiny_argv(prepared, out, max_iters=4, eval_interval=2, warmup_iters=1, wandb_log=True, wandb_project="p"))
    assert fake.inits[0]["project"] == "p" and fake.inits[0]["name"] == "t" and fake.inits[0]["config"]["lr"] == 3e-3
    numbers = lambda e: {k: v for k, v in e.items() if isinstance(v, (int, float))}
    assert fake.logged == [numbers(e) for e in read_log(os.path.join(out, "log.jsonl"))] and fake.finished == 1
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: one line, before any work
    with pytest.raises(InputError, match="wandb_log=True needs the wandb package: pip install wandb"):
        main(tiny_argv(prepared, str(tmp_path / "u"), wandb_log=True))
    assert not os.path.exists(tmp_path / "u")


def test_resume_refuses_training_data_rewritten_in_place(prepared, tmp_path):
    import shutil

    data, out = str(tmp_path / "data"), str(tmp_path / "t")
    shutil.copytree(prepared, data)
    main(tiny_argv(data, out, max_iters=8, eval_interval=2, stop_at=4))
    with open(os.path.join(data, "train.bin"), "r+b") as f:  # the same path, other tokens
        f.seek(100)
        f.write(b"\x05\x00")
    with pytest.raises(InputError, match=r"another config: train\.bin sha256 \w+ -> \w+"):
        main(tiny_argv(data, out, max_iters=8, eval_interval=2, resume=True))


@pytest.mark.parametrize("text", ["", "abc", "0", "-1", "99999999999999999999", "\xff\xfe"])
def test_a_lock_that_names_no_process_is_taken_over_and_a_live_one_is_not(tmp_path, text):
    """An empty run.lock was read as pid 0, and os.kill(0, 0) (this process group) said "alive" yet take_lock
    returned 0, "taken": two runs trained in one folder. A huge number was an OverflowError, a folder an
    IsADirectoryError. Now anything that is not a live pid is stale, and the lock holds its pid from the instant
    it exists (written, then linked into place)."""
    import subprocess, sys
    from run_dir import release_lock, take_lock
    lock = str(tmp_path / "run.lock")
    open(lock, "w", errors="surrogateescape").write(text)
    assert take_lock(lock) == 0 and open(lock).read() == str(os.getpid()), f"take_lock: a lock holding {text!r} was not taken over"
    release_lock(lock)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        open(lock, "w").write(str(holder.pid))
        assert take_lock(lock) == holder.pid, "take_lock: a live holder's lock was taken"
    finally:
        holder.kill()
        holder.wait()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")], "take_lock left its temporary file"


def test_a_folder_where_the_lock_goes_is_one_line(tmp_path):
    from run_dir import take_lock
    os.makedirs(tmp_path / "run.lock")
    with pytest.raises(InputError, match="is a folder, not a lock file"):
        take_lock(str(tmp_path / "run.lock"))


@pytest.mark.parametrize("stop", [KeyboardInterrupt, "Terminated"])
def test_a_ctrl_c_in_the_middle_of_a_checkpoint_write_is_an_interrupt_not_a_full_disk(tmp_path, stop):
    """torch.save turns an exception raised inside its writer into RuntimeError("unexpected pos ..."), which
    atomic_write reads as a full disk: a second Ctrl-C during a checkpoint write said "is it full?" with exit 1.
    The interrupt is raised as itself (exit 130 / 143), and no temporary file is left."""
    from checkpoint import atomic_write
    from config import Terminated
    stop = Terminated if stop == "Terminated" else stop
    calls = []

    def write(f):
        class Interrupted:
            def write(self, b):
                calls.append(len(b))
                if len(calls) == 3:
                    raise stop
                return f.write(b)

            def flush(self):
                f.flush()
        torch.save({"w": torch.zeros(100_000)}, Interrupted())

    path = str(tmp_path / "ckpt.pt")
    with pytest.raises(stop):
        atomic_write(path, write)
    assert os.listdir(tmp_path) == [], "atomic_write: a file was left behind"


@pytest.mark.parametrize("line", ["[1, 2]", '{"foo": 1}', '{"step": "5"}'])
def test_a_log_line_that_is_not_an_entry_is_one_line_naming_it(tmp_path, line):
    """Resuming a run whose log.jsonl held a JSON line that is not an entry was a TypeError or KeyError."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n' + line + '\n{"step": 2, "loss": 1.9}\n')
    with pytest.raises(InputError, match=rf"log\.jsonl:2: not a log entry"):
        read_log(str(path))


@pytest.mark.parametrize("damage", ["model_config is a list", "model_config of another width", "a weight missing",
                                    "model is a tensor", "no tokenizer", "tokenizer is text", "config is a list"])
def test_a_checkpoint_of_the_wrong_shape_is_one_line(tiny_teachers, tmp_path, damage):
    """sample.py, the evaluators and resume read checkpoints through load_checkpoint: a checkpoint whose parts are
    not what train.py writes was an AttributeError, KeyError or a size-mismatch RuntimeError."""
    ckpt = torch.load(tiny_teachers[0], weights_only=True)
    first = next(iter(ckpt["model"]))
    edit = {"model_config is a list": lambda c: c.update(model_config=[1, 2]),
            "model_config of another width": lambda c: c["model_config"].update(dim=2 * c["model_config"]["dim"]),
            "a weight missing": lambda c: c["model"].pop(first),
            "model is a tensor": lambda c: c.update(model=torch.zeros(2)),
            "no tokenizer": lambda c: c.pop("tokenizer"),
            "tokenizer is text": lambda c: c.update(tokenizer="x"),
            "config is a list": lambda c: c.update(config=[1])}
    edit[damage](ckpt)
    path = str(tmp_path / "ckpt.pt")
    torch.save(ckpt, path)
    with pytest.raises(InputError, match=r"ckpt\.pt: (not a checkpoint of this project|its weights do not fit|bad model_config)"):
        load_checkpoint(path)


def test_token_ids_past_the_vocabulary_are_one_line_before_training(prepared, tmp_path):
    """A train.bin or val.bin whose ids reach past the tokenizer's vocabulary (another folder's tokens) was an
    IndexError in the embedding, after the model was built."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    for name in ("train.bin", "val.bin"):
        ids = np.fromfile(os.path.join(prepared, name), dtype=np.uint16)
        bad = ids.copy()
        bad[len(bad) // 2] = 60000
        bad.tofile(data / name)
        with pytest.raises(InputError, match=rf"{name}: holds token id 60000, past the tokenizer's vocabulary of 320"):
            main(tiny_argv(str(data), str(tmp_path / f"out_{name}"), max_iters=4, warmup_iters=1, eval_interval=2))
        ids.tofile(data / name)
