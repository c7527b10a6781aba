"""load_config: defaults < file < --key=value, unknown keys, types. Run: python -m pytest tests/test_config.py"""

import pytest

from model import InputError
from train_teacher import DEFAULTS, check_config, load_config


def write(tmp_path, text):
    path = tmp_path / "cfg.py"
    path.write_text(text)
    return str(path)


def test_precedence_defaults_file_cli(tmp_path):
    path = write(tmp_path, "lr = 1e-3\nseed = 7\n# arithmetic is allowed\ndim = 2 * 64\n")
    cfg = load_config(DEFAULTS, [path, "--seed=9", "--out_dir=out/x"])
    assert cfg.lr == 1e-3 and cfg.seed == 9 and cfg.dim == 128 and cfg.out_dir == "out/x"
    assert cfg.weight_decay == DEFAULTS["weight_decay"]
    assert DEFAULTS["seed"] == 1337, "loading must not mutate the defaults"


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path, "learning_rate = 1e-3\n")
    with pytest.raises(InputError, match=r"cfg.py: unknown config key 'learning_rate'"):
        load_config(DEFAULTS, [path])


def test_unknown_cli_key():
    with pytest.raises(InputError, match="--lrr: unknown config key"):
        load_config(DEFAULTS, ["--lrr=1"])


def test_wrong_type_is_rejected(tmp_path):
    with pytest.raises(InputError, match="n_layers='four'"):
        load_config(DEFAULTS, [write(tmp_path, "n_layers = 'four'\n")])
    with pytest.raises(InputError, match="seed=1.5"):
        load_config(DEFAULTS, ["--seed=1.5"])


def test_int_to_float_and_bools():
    cfg = load_config(DEFAULTS, ["--lr=1", "--resume=true", "--tie_embeddings=True", "--compile=False"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.resume is True and cfg.tie_embeddings is True and cfg.compile is False
    with pytest.raises(InputError):
        load_config(DEFAULTS, ["--resume=1"])


def test_imports_in_a_config_file_are_ignored(tmp_path):
    cfg = load_config(DEFAULTS, [write(tmp_path, "import math\nlr = math.sqrt(4e-6)\n")])
    assert cfg.lr == pytest.approx(2e-3)


def test_missing_config_file():
    with pytest.raises(InputError, match="nope.py: config file not found"):
        load_config(DEFAULTS, ["nope.py"])


def test_check_config_catches_warmup_and_seq_len():
    with pytest.raises(InputError, match="max_iters=10 is not larger than warmup_iters=600"):
        check_config(load_config(DEFAULTS, ["--max_iters=10"]))
    with pytest.raises(InputError, match="seq_len=512 is longer than the model's max_seq_len=256"):
        check_config(load_config(DEFAULTS, ["--seq_len=512"]))
