"""What a newcomer reads first: every script answers --help (and no arguments) with its usage and every key,
from any folder; the README's tables of keys are the ones in the code; the repository is self-contained.
Run: python -m pytest tests/test_docs.py"""

import importlib
import os
import subprocess
import sys

import pytest

from config import flat_defaults, readme_keys, update_readme

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SCRIPTS = {"train_teacher": "TEACHER_KEYS", "distill": "DISTILL_KEYS", "prepare_data": "PREPARE_KEYS",
           "eval_blimp": "BLIMP_KEYS", "eval_superglue": "SUPERGLUE_KEYS", "export_hf": "EXPORT_KEYS"}


def keys_of(script):
    return flat_defaults(getattr(importlib.import_module(script), SCRIPTS[script]))


def test_readme_tables_of_keys_match_the_code():
    assert update_readme(README, check=True), "README.md's tables of keys differ from the code: run python config.py --readme"
    section = readme_keys()
    for script in SCRIPTS:
        for key in keys_of(script):
            assert f"| `{key}` |" in section, (script, key)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_from_another_folder_lists_every_key(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, f"{script}.py"), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"python {script}.py" in result.stdout  # the usage lines of the docstring
    for key in keys_of(script):
        assert f"--{key} " in result.stdout, key
    assert not os.listdir(tmp_path)  # --help writes nothing


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_arguments_prints_the_usage(script, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(script).main([])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"python {script}.py" in out and all(f"--{key} " in out for key in keys_of(script))


def test_nothing_in_the_repository_points_outside_it():
    """Docstrings and configs cite papers and official repositories, not notes that only exist beside the repo."""
    names = ["shared/" + "reference", "babyllama" + ".md", "eval" + ".md", "style" + ".md"]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for path in files:
        if path.endswith((".png", ".pt")) or not os.path.isfile(os.path.join(ROOT, path)):
            continue
        text = open(os.path.join(ROOT, path), encoding="utf-8", errors="replace").read()
        for name in names:
            assert name not in text, f"{path} mentions {name}"
