"""The GPU path, run on a CPU: bf16 autocast (teachers cast to bf16, as runtime() decides on CUDA) and
torch.compile, through the same code as the fp32 CPU path. Whatever differs between CPU and CUDA is decided
by config.runtime(); these tests check that the bf16 and compiled paths run (no dtype error) and give finite
numbers close to fp32. bf16 matmuls are slow on most CPUs, so the sizes are tiny.
bench/gpu_check.py runs the same tests on a GPU: BABYDISTILL_TEST_DEVICE=cuda puts every run and model there.
Run: python -m pytest tests/test_bf16.py   (the compiled test is marked slow)"""

import math
import os

import pytest
import torch

from checkpoint import load_checkpoint, read_log
from conftest import student_argv, tiny_argv
from distill import main as distill_main
from eval_blimp import evaluate_set, score_sentences
from data import load_tokenizer
from train_teacher import main as teacher_main

DEVICE = os.environ.get("BABYDISTILL_TEST_DEVICE", "cpu")
STEPS = dict(max_iters=6, eval_interval=3, warmup_iters=1, log_interval=1, device=DEVICE)


def train_logs(out):
    return [e for e in read_log(os.path.join(out, "log.jsonl")) if "loss" in e]


def close_to_fp32(bf16, fp32, keys, rel):
    assert [e["step"] for e in bf16] == [e["step"] for e in fp32]
    for a, b in zip(bf16, fp32):
        for k in keys:
            assert math.isfinite(a[k]) and a[k] == pytest.approx(b[k], rel=rel), (k, a, b)


def test_teacher_training_under_bf16_autocast(prepared, tmp_path):
    fp32, bf16 = str(tmp_path / "fp32"), str(tmp_path / "bf16")
    teacher_main(tiny_argv(prepared, fp32, **STEPS))
    teacher_main(tiny_argv(prepared, bf16, dtype="bfloat16", **STEPS))
    close_to_fp32(train_logs(bf16), train_logs(fp32), ["loss"], rel=0.02)
    assert train_logs(bf16) != train_logs(fp32), "bf16 autocast was really on"


def test_distillation_with_bf16_teachers(prepared, tiny_teachers, tmp_path):
    fp32, bf16 = str(tmp_path / "fp32"), str(tmp_path / "bf16")
    distill_main(student_argv(prepared, fp32, tiny_teachers, **STEPS))
    distill_main(student_argv(prepared, bf16, tiny_teachers, dtype="bfloat16", **STEPS))
    close_to_fp32(train_logs(bf16), train_logs(fp32), ["loss", "ce", "kl_term"], rel=0.03)
    vals = [e for e in read_log(os.path.join(bf16, "log.jsonl")) if "val_loss" in e]
    assert all(math.isfinite(v) for e in vals for k, v in e.items() if k.endswith("val_loss"))


def test_blimp_scoring_under_bf16_autocast(prepared, tiny_teachers):
    device = torch.device(DEVICE)
    model = load_checkpoint(tiny_teachers[1], device)[0].eval()
    enc, info = load_tokenizer(prepared)
    tasks = {"t": [{"good": f"the cat sees the ball{s}.", "bad": f"the cat see ball the{s}.", "field": "", "term": "", "pair_id": i}
                   for i, s in enumerate(["", " today", " again", " at night"])]}
    sentences = [s for pairs in tasks.values() for p in pairs for s in (p["good"], p["bad"])]
    fp32 = score_sentences(model, enc, info, sentences, "2024", device, progress=False)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = score_sentences(model, enc, info, sentences, "2024", device, progress=False)
        result = evaluate_set(model, enc, info, tasks, "2024", device, progress=False)  # the whole path runs
    assert result["pairs"] == 4 and sorted(bf16) == sorted(fp32)
    for s in fp32:  # sums of ~10 log-probs: bf16 matmuls move them by about a percent, not more
        assert math.isfinite(bf16[s]) and bf16[s] == pytest.approx(fp32[s], rel=0.02), (s, bf16[s], fp32[s])
    assert bf16 != fp32, "bf16 autocast was really on"


@pytest.mark.slow
def test_compiled_teacher_and_distillation_steps_under_bf16(prepared, tiny_teachers, tmp_path):
    """The CUDA defaults (compile + bf16 autocast + bf16 teachers) on a CPU: one compile per objective."""
    eager, compiled = str(tmp_path / "eager"), str(tmp_path / "compiled")
    distill_main(student_argv(prepared, eager, tiny_teachers, dtype="bfloat16", **STEPS))
    distill_main(student_argv(prepared, compiled, tiny_teachers, dtype="bfloat16", compile=True, **STEPS))
    close_to_fp32(train_logs(compiled), train_logs(eager), ["loss", "ce", "kl_term"], rel=0.03)
    teacher = str(tmp_path / "teacher")
    teacher_main(tiny_argv(prepared, teacher, dtype="bfloat16", compile=True, **STEPS))
    assert all(math.isfinite(e["loss"]) for e in train_logs(teacher)) and len(train_logs(teacher)) == 6
