"""config.load_config: defaults < file < --key=value, unknown keys (with a suggestion), types, bounds, lists,
config-file errors as FILE:LINE, --help listing every key. Run: python -m pytest tests/test_config.py"""

import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from config import InputError, flat_defaults, load_config
from distill import DISTILL_KEYS
from train import check_train_config, plan_run
from train_teacher import TEACHER_KEYS

DEFAULTS = flat_defaults(TEACHER_KEYS)


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_precedence_defaults_file_cli(tmp_path):
    path = write(tmp_path, "lr = 1e-3\nseed = 7\n# arithmetic is allowed\ndim = 2 * 64\n")
    cfg = load_config(TEACHER_KEYS, [path, "--seed=9", "--out_dir=out/x", "--data_dir", "data/y"])
    assert cfg.lr == 1e-3 and cfg.seed == 9 and cfg.dim == 128 and cfg.out_dir == "out/x" and cfg.data_dir == "data/y"
    assert cfg.weight_decay == DEFAULTS["weight_decay"]
    assert TEACHER_KEYS["optimisation"]["seed"][0] == 1337, "loading must not mutate the defaults"


def test_unknown_key_names_file_and_key_and_suggests_the_nearest(tmp_path):
    with pytest.raises(InputError, match=r"cfg.py: unknown key 'learning_rat' \(did you mean 'learning_rate'|cfg.py: unknown key 'learning_rat'"):
        load_config(TEACHER_KEYS, [write(tmp_path, "learning_rat = 1e-3\n")])
    with pytest.raises(InputError, match=r"--max_iter: unknown key 'max_iter' \(did you mean 'max_iters'\?\)"):
        load_config(TEACHER_KEYS, ["--max_iter=1"])
    with pytest.raises(InputError, match=r"--zzzz: unknown key 'zzzz'; --help lists every key"):
        load_config(TEACHER_KEYS, ["--zzzz=1"])


def test_wrong_type_is_rejected(tmp_path):
    with pytest.raises(InputError, match="n_layers='four'"):
        load_config(TEACHER_KEYS, [write(tmp_path, "n_layers = 'four'\n")])
    with pytest.raises(InputError, match="seed=1.5"):
        load_config(TEACHER_KEYS, ["--seed=1.5"])


@pytest.mark.parametrize("arg, message", [
    ("--lr=-1", r"--lr: lr=-1.0: expected a number >0"),
    ("--lr=0", r"expected a number >0"),
    ("--min_lr=-0.01", r"min_lr=-0.01: expected a number >=0"),
    ("--weight_decay=-1", r"weight_decay=-1.0: expected a number >=0"),
    ("--eval_windows=0", r"eval_windows=0: expected a number >0"),
    ("--eval_windows=-3", r"eval_windows=-3"),
    ("--n_heads=0", r"n_heads=0"),
    ("--n_kv_heads=-2", r"n_kv_heads=-2"),
    ("--beta2=1.5", r"beta2=1.5: expected a number 0 to 1"),
    ("--lr=nan", r"lr='nan' has type str"),
    ("--nonfinite=ignore", r"nonfinite='ignore': expected one of 'stop', 'skip'"),
    ("--dtype=fp16", r"dtype='fp16': expected one of"),
])
def test_bounds_and_choices(arg, message):
    with pytest.raises(InputError, match=message):
        load_config(TEACHER_KEYS, [arg])


def test_accepted_values_pass():
    cfg = load_config(TEACHER_KEYS, ["--lr=1e-9", "--min_lr=0", "--beta1=0", "--compile=auto", "--dtype=bfloat16", "--nonfinite=skip"])
    assert cfg.min_lr == 0.0 and cfg.beta1 == 0.0 and cfg.compile == "auto" and cfg.dtype == "bfloat16"


def test_int_to_float_and_bools():
    cfg = load_config(TEACHER_KEYS, ["--lr=1", "--resume=true", "--tie_embeddings=True", "--compile=False"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.resume is True and cfg.tie_embeddings is True and cfg.compile is False
    with pytest.raises(InputError):
        load_config(TEACHER_KEYS, ["--resume=1"])
    bare = load_config(TEACHER_KEYS, ["--resume", "--lr", "2e-3", "--tie_embeddings"])  # a True/False key alone: True
    assert bare.resume is True and bare.lr == 2e-3 and bare.tie_embeddings is True
    assert load_config(TEACHER_KEYS, ["--resume", "False"]).resume is False


def test_one_value_of_a_list_key_is_a_list_of_one():
    assert load_config(TEACHER_KEYS, ["--checkpoints_at=5000"]).checkpoints_at == [5000]
    assert load_config(TEACHER_KEYS, ["--checkpoints_at=1M,2M"]).checkpoints_at == ["1M", "2M"]
    assert load_config(DISTILL_KEYS, ["--teacher_weights=2"]).teacher_weights == [2]


def test_lists_take_python_or_comma_form():
    a = load_config(DISTILL_KEYS, ["--teachers=a.pt,b.pt", "--teacher_weights=1,2"])
    b = load_config(DISTILL_KEYS, ["--teachers=['a.pt', 'b.pt']", "--teacher_weights=[1, 2]"])
    assert a.teachers == b.teachers == ["a.pt", "b.pt"] and a.teacher_weights == b.teacher_weights == [1, 2]
    assert load_config(DISTILL_KEYS, ["--teachers=out/t1/ckpt.pt"]).teachers == ["out/t1/ckpt.pt"]


def test_a_list_of_text_keeps_each_piece_as_typed_and_a_list_holds_scalars_only():
    """A list whose default holds text (paths, names) takes each piece as typed (1e3 is a file name, not 1000.0), as a
    text key does; no list key takes a dict or a nested list (--checkpoints_at={'a': 1} was a TypeError in training)."""
    assert load_config(DISTILL_KEYS, ["--teachers=1e3,b.pt"]).teachers == ["1e3", "b.pt"]
    assert load_config(DISTILL_KEYS, ["--teachers=['x.pt', 'y.pt']"]).teachers == ["x.pt", "y.pt"]  # the literal form still reads
    with pytest.raises(InputError, match=r"--teachers: teachers=\[1, 2\]: expected a list of text"):
        load_config(DISTILL_KEYS, ["--teachers=[1, 2]"])
    for arg in ("--checkpoints_at={'a': 1}", "--checkpoints_at=[[1], 2]", "--checkpoints_at=None"):
        with pytest.raises(InputError, match=r"checkpoints_at=.*: expected a list of numbers or text"):
            load_config(TEACHER_KEYS, [arg])


def test_a_model_too_large_for_the_machine_is_refused_before_it_is_built():
    """A shape whose weights and AdamW state cannot fit this machine's memory is one line, not a hang in the model's
    constructor (n_layers=10**30) or an overflow inside torch (dim=10**30); a model that fits is not refused."""
    from config import memory_bytes
    for arg in ("--dim=1000000000000000000000000000000", "--n_layers=1000000000000000000000000000000", "--hidden_dim=10000000000000",
                "--max_seq_len=1000000000000000000000000000000", "--multiple_of=1000000000000000000000000000000"):
        with pytest.raises(InputError, match=r"parameters needs .* GB for weights, gradients and AdamW state; this machine has"):
            check_train_config(load_config(TEACHER_KEYS, [arg, "--out_dir=/tmp/unused_fits"]))
    params = memory_bytes("cpu") / 16 / 1.5  # about two thirds of what fits
    n_layers = int(params / (4 * 512**2 + 3 * 512 * 1536))
    check_train_config(load_config(TEACHER_KEYS, ["--dim=512", "--hidden_dim=1536", f"--n_layers={n_layers}", "--vocab_size=16000",
                                                  "--out_dir=/tmp/unused_fits"]))


def test_imports_in_a_config_file_are_ignored(tmp_path):
    cfg = load_config(TEACHER_KEYS, [write(tmp_path, "import math\nlr = math.sqrt(4e-6)\n")])
    assert cfg.lr == pytest.approx(2e-3)


@pytest.mark.parametrize("text, message", [
    ("lr = 1e-3\nseed = (\n", r"cfg.py:2: "),
    ("lr = 1e-3\n\nseed = undefined_name\n", r"cfg.py:3: NameError: name 'undefined_name' is not defined"),
    ("x = 1\nlr = 1 / 0\n", r"cfg.py:2: ZeroDivisionError"),
    (b"lr = 1e-3\n# caf\xe9\n", r"cfg.py:2: not UTF-8 text"),
])
def test_config_file_errors_name_the_line(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        load_config(TEACHER_KEYS, [write(tmp_path, text)])


def test_missing_config_file_and_stray_arguments():
    with pytest.raises(InputError, match="nope.py: config file not found"):
        load_config(TEACHER_KEYS, ["nope.py"])
    with pytest.raises(InputError, match="argument 'extra': expected --key=value"):
        load_config(TEACHER_KEYS, ["--lr=1e-3", "extra"])
    with pytest.raises(InputError, match="--lr: expected a value"):
        load_config(TEACHER_KEYS, ["--lr"])


def test_help_lists_every_key_with_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_config(DISTILL_KEYS, ["-h"], doc="Title\n\n    python distill.py configs/x.py\n\nMore text.")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "python distill.py configs/x.py" in text and "More text" not in text
    for group in DISTILL_KEYS.values():
        for key, spec in group.items():
            line = next(l for l in text.splitlines() if l.strip().startswith(f"--{key} "))
            assert repr(spec[0]) in line and spec[1] in line, line


def test_check_train_config_catches_cross_key_mistakes():
    with pytest.raises(InputError, match="seq_len=512 is longer than the model's max_seq_len=256"):
        check_train_config(load_config(TEACHER_KEYS, ["--seq_len=512"]))
    with pytest.raises(InputError, match="dim=100 is not divisible by n_heads=8"):
        check_train_config(load_config(TEACHER_KEYS, ["--dim=100"]))
    with pytest.raises(InputError, match="min_lr=0.01 is larger than lr=0.001"):
        check_train_config(load_config(TEACHER_KEYS, ["--lr=1e-3", "--min_lr=1e-2"]))


def test_plan_run_checks_the_shape_of_a_run():
    cfg = lambda *a: load_config(TEACHER_KEYS, ["--batch_size=8", "--micro_batch_size=4", "--warmup_iters=2", *a])
    plan = plan_run(cfg("--epochs=2"), world=1, n_windows=20)  # 2 steps an epoch (4 windows left over)
    assert (plan.max_iters, plan.grad_accum, plan.sampler.steps_per_epoch) == (4, 2, 2)
    assert plan_run(cfg("--epochs=2"), world=2, n_windows=20).grad_accum == 1
    assert plan_run(cfg(), world=1, n_windows=20, epochs=3.0).max_iters == 6, "an objective's own epochs win"
    with pytest.raises(InputError, match="max_iters=2 is not larger than warmup_iters=2"):
        plan_run(cfg("--max_iters=2"), world=1, n_windows=20)
    with pytest.raises(InputError, match=r"the run's 2 steps \(epochs=1\) is not larger than warmup_iters=2"):
        plan_run(cfg("--epochs=1"), world=1, n_windows=20)
    with pytest.raises(InputError, match="batch_size=8 is not a multiple of micro_batch_size=3"):
        plan_run(cfg("--micro_batch_size=3"), world=1, n_windows=20)
    with pytest.raises(InputError, match=r"batch_size=8 is not a multiple of micro_batch_size\*world_size=12"):
        plan_run(cfg(), world=3, n_windows=20)
    with pytest.raises(InputError, match="batch_size=8 is more than the 7 training windows"):
        plan_run(cfg(), world=1, n_windows=7)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_the_work_is_done_changes_nothing(tmp_path, signum):
    """A Ctrl-C or SIGTERM that arrives as a script ends (its main has returned) must neither print a traceback nor
    kill it: before config.ignore_late_signals, Python's shutdown put the default handlers back and a finished run
    died of SIGTERM (status -15); in the instant before that, the handler raised Terminated outside main."""
    script = tmp_path / "late.py"
    script.write_text(f"import os, signal, sys, time\nsys.path.insert(0, {ROOT!r})\nfrom config import run_main\n"
                      f"def main():\n    print('done')\nrun_main(main)\nos.kill(os.getpid(), {int(signum)})\ntime.sleep(0.2)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "done\n", ""), (proc.returncode, proc.stderr[-500:])
