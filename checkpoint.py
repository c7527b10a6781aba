"""
What a run leaves on disk, and how every script reads it back: one checkpoint format, one loader (with the
tokenizer it was trained with), one way to write a file, one log format.

A checkpoint is a dict of tensors and plain Python values saved with torch.save:
    model        : state_dict of the bare (uncompiled, unwrapped) model
    model_config : {"arch": "llama" or "gpt2", **asdict(its config)}: which model (model.py's Llama, gpt2.py's
                   GPT2) and its sizes; a checkpoint written before GPT-2 existed has no "arch": a Llama
    tokenizer    : {"name", "vocab_size", "sha256", ...} of the tokenizer the model was trained with
    plus whatever the trainer adds (optimizer state, step, config, best validation loss, ...).
It is read with torch.load(weights_only=True): a checkpoint received from someone else cannot run code.

Every file goes through atomic_write (a temporary file, fsync, rename), so a process killed at any moment
leaves the old file or the new one, never half of one. log.jsonl holds one JSON object per logged step or
evaluation; a torn last line (a kill or a full disk during an append) is dropped with a warning.
"""

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict

import torch

from config import InputError, Terminated
from data import load_tokenizer
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig

# The architectures a checkpoint may hold: model_config["arch"] -> the config class.
ARCHS = {"llama": ModelConfig, "gpt2": GPT2Config}


def atomic_write(path, write, mode="wb"):
    """write(f) into path + ".tmp" in the same folder, fsync, then rename over path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder: one line, and no half-written temporary file
        if os.path.exists(tmp):
            os.remove(tmp)
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None
    except RuntimeError as e:  # torch.save reports a write that fell short (a full disk) as "... unexpected pos N vs M"
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e.__context__, (KeyboardInterrupt, Terminated)):  # a Ctrl-C in the middle of the write, not a full disk
            raise e.__context__ from None
        if "unexpected pos" not in str(e) and "write" not in str(e).lower():
            raise
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        raise InputError(f"{path}: cannot write (torch.save stopped short: {free:,} bytes free on that disk; is it full?)") from None
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_writable(path):
    """Refuse, before any work, a results file path that cannot be written (a folder, under a file, read-only) or
    that holds something other than results: `--out run/last.pt` once replaced a checkpoint by the scores."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder; expected a file path")
    if os.path.isfile(path):
        try:
            json.load(open(path, encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"{path}: exists and is not a results file (JSON); it is not replaced: choose another path") from None
    _check_can_create(os.path.dirname(os.path.abspath(path)), path)


def hold_lock(path, busy):
    """An open file holding an exclusive lock on path, for as long as it stays open (the OS releases it when the
    process ends, even by SIGKILL), or the one line `busy` when another process holds it."""
    import fcntl  # POSIX

    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a lock file: remove it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for _ in range(3):
        f = open(path, "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise InputError(busy) from None
        # a holder that removes the file as it finishes (prepare_data.py) may do so between our open and flock:
        # then we locked a file no one else can see, and a third process could lock the new one at `path`
        if os.path.exists(path) and os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
            return f
        f.close()
    raise InputError(busy)


def check_writable_dir(path, what="--out"):
    """Refuse, before any work, an output folder that cannot be made or written: empty, a file, under a file,
    or in a read-only place."""
    if not str(path).strip():
        raise InputError(f"{what}: empty; expected an output folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what}={path}: exists and is not a folder")
    _check_can_create(path, f"{what}={path}")


def _check_can_create(folder, name):
    """The nearest existing folder on the way to `folder` must be a folder we may write in."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{name}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{name}: {existing} is not writable")


def file_sha256(path):
    """A file's identity: the sha256 of its bytes (what resume and the teacher cache compare, not its path)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def unwrap(model):
    """The bare model inside torch.compile (._orig_mod) and DDP (.module) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def config_from_dict(model_config):
    """The config object (model.ModelConfig or gpt2.GPT2Config) a checkpoint's model_config describes; no
    "arch" is a Llama. Raises ValueError or TypeError for an unknown arch or a field its config does not have."""
    arch = model_config.get("arch", "llama")
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: expected one of {', '.join(map(repr, ARCHS))}")
    return ARCHS[arch](**{k: v for k, v in model_config.items() if k != "arch"})


def build_model(config):
    """A freshly initialised model of a config object: gpt2.GPT2 for a GPT2Config, model.Llama for a ModelConfig."""
    return GPT2(config) if isinstance(config, GPT2Config) else Llama(config)


def model_checkpoint(model, tokenizer_info, **extra):
    """The checkpoint dict for a (possibly compiled or DDP-wrapped) model."""
    bare = unwrap(model)
    arch = "gpt2" if isinstance(bare, GPT2) else "llama"
    return {"model": bare.state_dict(), "model_config": {"arch": arch, **asdict(bare.config)}, "tokenizer": dict(tokenizer_info), **extra}


def save_checkpoint(path, ckpt):
    atomic_write(path, lambda f: torch.save(ckpt, f))


def read_checkpoint(path, device="cpu"):
    """The raw checkpoint dict, with a one-line error for a missing, truncated or foreign file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, a pickled object that is not a tensor or plain value
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: not a checkpoint of this project (expected a dict with 'model', 'model_config', 'tokenizer')")
    # what every reader takes for granted; `config` (the run's keys) is absent from an import of a Hugging Face model
    for key in ("model", "model_config", "tokenizer", *(["config"] if "config" in ckpt else [])):
        if not isinstance(ckpt.get(key), dict):
            raise InputError(f"{path}: not a checkpoint of this project ({key!r} is missing or not the dict train.py writes)")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise InputError(f"{path}: not a checkpoint of this project ('model' holds something other than tensors)")
    return ckpt


def load_checkpoint(path, device="cpu", tokenizer=None):
    """(model, checkpoint dict). Strips torch.compile's '_orig_mod.' and DDP's 'module.' prefixes, loads
    strictly, and, if `tokenizer` info is given, refuses a model trained with a different tokenizer."""
    ckpt = read_checkpoint(path, device)
    if tokenizer is not None:
        check_same_tokenizer(ckpt.get("tokenizer", {}), tokenizer, path, "the tokenizer in use")
    try:
        model = build_model(config_from_dict(ckpt["model_config"])).to(device)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: bad model_config ({e})") from None
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # weights that do not fit model_config: a missing or extra tensor, another shape
        raise InputError(f"{path}: its weights do not fit its model_config ({str(e).strip().splitlines()[-1].strip()[:160]})") from None
    return model, ckpt


def load_model_and_tokenizer(ckpt_path, data_dir=None, device="cpu"):
    """(model, checkpoint, tiktoken.Encoding, tokenizer info) for evaluation, sampling and export: the tokenizer
    comes from data_dir, or the data_dir the checkpoint was trained on, and must be the one the model was trained with."""
    ckpt_model, ckpt = load_checkpoint(ckpt_path, device)
    if not data_dir:  # the folder the run recorded (absolute), else the checkpoint's own folder (an import)
        recorded = ckpt.get("config", {}).get("data_dir") or ""
        here = os.path.dirname(os.path.abspath(ckpt_path))
        data_dir = next((d for d in (recorded, here) if d and os.path.isfile(os.path.join(d, "meta.json"))), None)
        if data_dir is None:
            raise InputError(f"{ckpt_path}: its tokenizer folder {recorded or '(none recorded)'} has no meta.json; "
                             "pass --data_dir=FOLDER, the prepared data folder the model was trained on")
    enc, info = load_tokenizer(data_dir)
    check_same_tokenizer(ckpt["tokenizer"], info, ckpt_path, os.path.join(data_dir, "meta.json"),
                         "pass --data_dir=FOLDER, the prepared data folder the model was trained on")
    return ckpt_model, ckpt, enc, info


def check_same_tokenizer(a, b, name_a, name_b, fix="use the prepared data folder the models were trained on (--data_dir)"):
    """Logits of two models (or a model and data) are only comparable if they share one tokenizer.
    The message names both tokenizers and ends with `fix`, what to do about it."""
    if a.get("vocab_size") != b.get("vocab_size") or a.get("sha256") != b.get("sha256"):
        raise InputError(
            f"{name_a} was made with tokenizer {a.get('name')!r} (vocab {a.get('vocab_size')}, "
            f"sha256 {str(a.get('sha256'))[:12]}) but {name_b} uses {b.get('name')!r} "
            f"(vocab {b.get('vocab_size')}, sha256 {str(b.get('sha256'))[:12]}): {fix}"
        )


# -----------------------------------------------------------------------------------------------
# log.jsonl


def read_log(path):
    """The entries of a log.jsonl; a torn last line (kill or full disk mid-append) is dropped with a warning."""
    if not os.path.isfile(path):
        return []
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                print(f"warning: {path}: dropped a torn last line", file=sys.stderr)
                break
            raise InputError(f"{path}:{i + 1}: not a JSON line (the log is damaged; move it away to start afresh)") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):  # every line the trainer writes has its step
            raise InputError(f"{path}:{i + 1}: not a log entry (a JSON object with its step); the log is damaged: move it away to start afresh")
        entries.append(entry)
    return entries


def write_log(path, entries):
    atomic_write(path, lambda f: f.writelines(json.dumps(e) + "\n" for e in entries), mode="w")


def append_log(path, entry, wandb_run=None):
    """One entry at the end of log.jsonl (and, with wandb_log=True, the same numbers to W&B)."""
    if wandb_run is not None:
        wandb_run.log({k: v for k, v in entry.items() if k != "step" and isinstance(v, (int, float))}, step=entry["step"])
    try:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as e:
        raise InputError(f"{path}: cannot append to the log ({e.strerror or e})") from None
