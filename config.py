"""
How every script of the project is configured, and where it runs.

Configuration, nanoGPT's "configurator" made strict. A script declares its keys in groups, each key with
a default, a one-line meaning and, where it matters, the values it accepts. A run's values come from

    the defaults  <  a config file (plain Python: every name it assigns must be a key)  <  --key=value

    python train_teacher.py configs/tiny_teacher1.py --lr=1e-3 --out_dir=out/x   # file, then overrides
    python eval_blimp.py --ckpt out/x/ckpt.pt --data ../shared/data/blimp_filtered  # "--key value" works too
    python train_teacher.py --help                                                 # every key, grouped

Values are read as Python literals (1e-3, True, ['a.pt', 'b.pt']) or else as bare strings (out/x); a list
key also takes comma-separated values (--teachers=a.pt,b.pt), and a True/False key alone means True
(--all_checkpoints is --all_checkpoints=True). Types are checked against the default,
numbers against their bounds, and an unknown key suggests the nearest known one, all before any work.
Config files are executed Python, as in nanoGPT: run only config files you trust.

runtime(cfg) is the one place where the CPU and the CUDA paths differ: device, bf16 autocast, pin
memory, torch.compile and the DDP backend. Everything else runs the same code on both. peak_flops(device)
measures the machine: the FLOP/s that training's MFU is reported against.
"""

import ast
import ctypes
import difflib
import math
import os
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.distributed as dist


class InputError(ValueError):
    """A mistake in the user's input (file, key or value). Scripts print it as one line and exit."""


class Terminated(BaseException):
    """SIGTERM outside a training loop (which stops cleanly on its own): unwinds like Ctrl-C, finally blocks run."""


def _terminate(signum, frame):
    raise Terminated


PARENT_ENV = "BABYDISTILL_PARENT_PID"  # set by an experiment for its commands (child_env): they die with it


def child_env(extra=None):
    """The environment of an experiment's (or a sweep's) command: this process's, plus what makes the command end
    when this process does (run_main: die_with_parent)."""
    return {**os.environ, **(extra or {}), PARENT_ENV: str(os.getpid())}


def die_with_parent():
    """A command started with child_env ends when its experiment does, even by SIGKILL: Linux sends it SIGTERM then
    (prctl PR_SET_PDEATHSIG; a trainer saves its last.pt), so no command outlives its experiment and races a rerun over
    its out_dir. Asked for here, as the command starts, not by the parent between fork and exec: Python code run there
    shares the terminal's process group with the parent, and a Ctrl-C at that instant printed a traceback."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: when the process that started this one dies
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # started by another program (a shell of a --then command), or orphaned already
        try:
            os.kill(int(parent), 0)
        except ProcessLookupError:  # the experiment died before the request: end now, as it would have made us
            raise Terminated from None
        except PermissionError:
            pass


def run_main(main):
    """Run a script's main(), the one way every entry point runs: a mistake in the input is one line
    `error: ...` (exit 1), Ctrl-C one line (exit 130), SIGTERM one line (exit 143), never a traceback."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        die_with_parent()
        main()
    except (InputError, FloatingPointError) as e:  # FloatingPointError: a non-finite loss stopped training
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("\nterminated (SIGTERM)", file=sys.stderr)
        sys.exit(143)
    except BrokenPipeError:  # the reader went away (python SCRIPT --help | head): nothing is left to say, to no one
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush must not raise again
        sys.exit(1)
    finally:
        if getattr(main, "__module__", None) == "__main__":  # `python SCRIPT`, not a test calling main in its process
            ignore_late_signals()


def ignore_late_signals():
    """The work is done: a Ctrl-C or SIGTERM from here on stops nothing. Ignored, because Python's shutdown puts the
    default handlers back and a SIGTERM arriving then killed a finished run (status -15 instead of 0)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# -----------------------------------------------------------------------------------------------
# Keys: {group: {key: (default, meaning) or (default, meaning, accepted)}}
#
# `accepted` is a tuple of allowed values, or a bound: ">0", ">=0" or "lo..hi" (inclusive: "0..1", "1..64").

RUNTIME_KEYS = {
    "runtime": {
        "device": ("auto", "'auto' (a GPU when there is one), 'cpu' or 'cuda'", ("auto", "cpu", "cuda")),
        "dtype": ("auto", "'auto' (bfloat16 autocast on a GPU, float32 on a CPU), 'float32' or 'bfloat16'", ("auto", "float32", "bfloat16")),
        "compile": ("auto", "torch.compile the step: 'auto' (on a GPU only: ~30-80 s per compile on a CPU), True, False", ("auto", True, False)),
    },
}


def flat_defaults(keys):
    return {k: spec[0] for group in keys.values() for k, spec in group.items()}


def merge_keys(*key_sets):
    """Groups of several key tables, later ones overriding the defaults of earlier ones."""
    out = {}
    for keys in key_sets:
        for group, entries in keys.items():
            out.setdefault(group, {}).update(entries)
    return out


def usage(doc, keys):
    """The script's docstring up to its first blank line after the commands, then every key by group."""
    head = "\n\n".join(doc.strip().split("\n\n")[:2])  # the title and the commands
    lines = [head, "", "keys (--key=value; a config file may set any of them):"]
    for group, entries in keys.items():
        lines.append(f"  {group}:")
        for key, spec in entries.items():
            default, meaning = spec[0], spec[1]
            lines.append(f"    --{key:<20} {type(default).__name__:<6} default {default!r:<22} {meaning}")
    return "\n".join(lines)


def key_type(spec):
    """The type of a key as --help and the README show it: the default's type, then the accepted values."""
    accepted = (spec + (None,))[2]
    kind = type(spec[0]).__name__
    if isinstance(accepted, str):
        return f"{kind} {accepted}"
    if isinstance(accepted, tuple):
        return f"{accepted[0]!r} only" if len(accepted) == 1 else "one of " + ", ".join(map(repr, accepted))
    return kind


def markdown_table(keys, only=None):
    """The key tables as a markdown table, one bold row per group; `only` limits it to those keys."""
    cell = lambda s: str(s).replace("|", "\\|")
    rows = ["| key | default | type | meaning |", "|---|---|---|---|"]
    for group, entries in keys.items():
        shown = [(k, spec) for k, spec in entries.items() if only is None or k in only]
        if shown:
            rows.append(f"| **{cell(group)}** | | | |")
        rows += [f"| `{k}` | `{cell(repr(spec[0]))}` | {cell(key_type(spec))} | {cell(spec[1])} |" for k, spec in shown]
    return "\n".join(rows)


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text  # a bare string such as out/t1


def _convert(key, value, default, accepted, where):
    """value, converted to the type of `default` where that is safe, else an InputError naming key and value."""
    if isinstance(default, list):
        if isinstance(value, str):
            value = [_literal(v) for v in value.split(",") if v.strip()]  # --teachers=a.pt,b.pt
        elif isinstance(value, tuple):
            value = list(value)  # --teacher_weights=1,2 reads as a tuple
        elif not isinstance(value, list):
            value = [value]  # one value is a list of one: --checkpoints_at=5000 reads as the int 5000
        text = bool(default) and all(isinstance(d, str) for d in default)  # a list of text, as its default (paths, names)
        if any(not isinstance(v, (str, int, float)) or (text and not isinstance(v, str)) for v in value):
            raise InputError(f"{where}: {key}={value!r}: expected a list of {'text' if text else 'numbers or text'}, as --{key}=a,b")
    elif isinstance(value, str) and value.lower() in ("true", "false") and (isinstance(default, bool) or True in (accepted or ())):
        value = value.lower() == "true"
    elif isinstance(default, float) and type(value) is int:
        value = float(value)
    ok_type = type(value) is type(default) or (isinstance(accepted, tuple) and value in accepted and type(value) in map(type, accepted))
    if not ok_type:
        raise InputError(f"{where}: {key}={value!r} has type {type(value).__name__}, expected {type(default).__name__}")
    if isinstance(accepted, tuple) and value not in accepted:
        raise InputError(f"{where}: {key}={value!r}: expected one of {', '.join(map(repr, accepted))}")
    if isinstance(accepted, str):
        if accepted in (">0", ">=0"):
            bad = value <= 0 if accepted == ">0" else value < 0
        else:  # "lo..hi", inclusive
            lo, hi = (float(b) for b in accepted.split(".."))
            bad = not lo <= value <= hi
        if bad or (isinstance(value, float) and not math.isfinite(value)):
            raise InputError(f"{where}: {key}={value!r}: expected a number {accepted.replace('..', ' to ')}")
    return value


convert_value = _convert  # for key tables nested inside a value (eval_superglue.py's task_overrides)


def _unknown(key, known, where):
    near = difflib.get_close_matches(key, known, n=1)
    return InputError(f"{where}: unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "") + "; --help lists every key")


def read_config_file(path):
    """{name: value} assigned by a Python config file; its errors as one line FILE:LINE: ..."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: config file not found")
    raw = open(path, "rb").read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#x})") from None
    namespace = {}
    try:
        exec(compile(text, path, "exec"), namespace)
    except SyntaxError as e:
        raise InputError(f"{path}:{e.lineno}: {e.msg}") from None
    except Exception as e:  # NameError, ZeroDivisionError, ... : the line of the config file that raised it
        line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == path), "?")
        raise InputError(f"{path}:{line}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items() if not k.startswith("_") and type(v).__name__ not in ("module", "function", "type")}


def load_config(keys, argv, doc=""):
    """A SimpleNamespace of every key: defaults < config file (argv[0] when it is not a flag) < overrides.
    -h/--help prints the usage and every key, then exits; so does an empty argv when `doc` asks for arguments."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage(doc, keys))
        sys.exit(0)
    specs = {k: spec for group in keys.values() for k, spec in group.items()}
    cfg = {k: spec[0] for k, spec in specs.items()}
    args = list(argv)
    if args and not args[0].startswith("-"):
        path = args.pop(0)
        for key, value in read_config_file(path).items():
            if key not in specs:
                raise _unknown(key, specs, path)
            cfg[key] = _convert(key, value, specs[key][0], (specs[key] + (None,))[2], path)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--") or arg == "--":
            raise InputError(f"argument {arg!r}: expected --key=value (or a config file first)")
        key, has_value, text = arg[2:].partition("=")
        if not has_value:  # "--key value", or a bare "--flag" for a True/False key
            if (not args or args[0].startswith("--")) and key in specs and isinstance(specs[key][0], bool):
                text = "True"
            elif not args or args[0].startswith("--"):
                raise InputError(f"--{key}: expected a value, as --{key}=VALUE")
            else:
                text = args.pop(0)
        if key not in specs:
            raise _unknown(key, specs, f"--{key}")
        cfg[key] = _convert(key, _typed(text, specs[key]), specs[key][0], (specs[key] + (None,))[2], f"--{key}")
    return SimpleNamespace(**cfg)


def _typed(text, spec):
    """The value of --key=text: a Python literal, except that a key whose values are all text takes any text as
    typed (--protocol 2025 is the string '2025', --out_dir 1e3 the folder 1e3; a list of text, each piece between
    commas: --teachers=1e3.pt,b.pt); a quoted literal stays as quoted, a bracketed list is read as a literal."""
    value, accepted = _literal(text), (spec + (None,))[2]
    if isinstance(spec[0], list) and spec[0] and all(isinstance(d, str) for d in spec[0]) and not text.lstrip().startswith("["):
        return [piece for piece in text.split(",") if piece.strip()]  # a list of text: each piece as typed (--parts=data,1e3)
    text_key = isinstance(spec[0], str) and not (isinstance(accepted, tuple) and any(not isinstance(a, str) for a in accepted))
    return text if text_key and not isinstance(value, str) else value


# -----------------------------------------------------------------------------------------------
# Runtime: the one small place where the CPU and the CUDA paths differ


def runtime(cfg):
    """device, dtype, autocast context, compile flag and DDP ranks for this process."""
    ddp = "RANK" in os.environ
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("device='cuda' but no GPU is visible")
    rank, local_rank, world = 0, 0, 1
    if ddp:
        missing = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if k not in os.environ]
        if missing:
            raise InputError(f"RANK is set but {', '.join(missing)} is not: launch with torchrun, or unset RANK")
        try:
            rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        except ValueError:
            raise InputError("RANK, LOCAL_RANK and WORLD_SIZE must be integers: "
                             + ", ".join(f"{k}={os.environ[k]!r}" for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))) from None
        if not 0 <= rank < world or local_rank < 0:
            raise InputError(f"RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # bf16 autocast on a GPU; plain fp32 on a CPU, where bf16 matmuls can be ~100x slower.
    dtype = ("bfloat16" if cuda else "float32") if cfg.dtype == "auto" else cfg.dtype
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    compile_ = cuda if cfg.compile == "auto" else cfg.compile
    if device.type == "cpu":
        keep_freed_memory()
    return SimpleNamespace(device=device, dtype=dtype, autocast=autocast, compile=compile_, pin_memory=cuda,
                           ddp=ddp, rank=rank, world=world, master=rank == 0)


def keep_freed_memory():
    """On a CPU, keep freed memory for the next step instead of handing it back to the OS.

    glibc serves every block above 32 MB with a fresh mmap and returns it with munmap when freed, so each step's
    (batch, seq_len, vocab) logits (262 MB at 32 x 128 x 16k in fp32) are page-faulted and zero-filled again,
    every step. On the tiny walk-through student that was most of the step: the plain distillation loss took
    7.5 s and 1.3 s with the blocks kept (bench/bench_distill.py --size tiny --batch 32 shows it). Raising
    glibc's mmap threshold (mallopt M_MMAP_THRESHOLD) serves such blocks from the heap, where they are reused;
    the numbers computed do not change. Elsewhere than Linux/glibc, nothing happens."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, ctypes.c_int(2**30))  # M_MMAP_THRESHOLD: blocks under 1 GB come from the reusable heap
        libc.mallopt(-1, ctypes.c_int(2**30))  # M_TRIM_THRESHOLD: and freed heap memory is not trimmed back at once
    except (OSError, AttributeError):
        pass


def print0(*args, **kwargs):
    """print on the first process only (every process of a torchrun job runs the same script)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs)


# -----------------------------------------------------------------------------------------------
# Measuring the machine: the peak that MFU (model FLOPs utilisation) is measured against


def measure_matmul_flops(n=2048, device="cpu", reps=5):
    """Achieved FLOP/s of an n x n fp32 matmul: the practical peak that MFU on this machine is measured against."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_rss_mb():
    """This process's peak resident memory in MB: /proc/self/status's VmHWM (reset by exec, so a benchmark's child
    process reports its own), else getrusage's ru_maxrss (which Linux carries across exec from the parent)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def memory_bytes(device="auto"):
    """The most memory a model of this process can live in: the machine's RAM, or its GPU's when that is larger and
    the device may be the GPU. What a count that allocates (a model's size, a batch of samples) is checked against."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound from here
        ram = float("inf")
    gpu = torch.cuda.get_device_properties(0).total_memory if device != "cpu" and torch.cuda.is_available() else 0
    return max(ram, gpu)


# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity). H200: the H100's SXM peak.
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "RTX 3090": 71e12, "RTX 4090": 165e12}


def peak_flops(device):
    """Peak FLOP/s for MFU: the data-sheet number for known GPUs, a measured fp32 matmul otherwise."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value
    # On a CPU 1024, not the benchmarks' 2048: a fraction of a second at the start of every run instead of one to two
    # seconds on one thread (most of a short run's start-up); on this CPU it read as high as 2048 or higher, and a
    # run measures again whenever its MFU would exceed 100%. A GPU needs the larger matmul to come near its peak.
    return measure_matmul_flops(n=1024 if device.type == "cpu" else 2048, device=str(device))
