"""eval_superglue.py: metrics against hand-computed values, task formatters on real examples, last-token
pooling, a tiny model (a Llama, and a GPT-2 with its dropout) learning a fixture task beyond the majority class,
early stopping and the restored best epoch, errors. Run: python -m pytest tests/test_superglue.py"""

import json
import os

import pytest
import torch

from checkpoint import model_checkpoint, save_checkpoint
from conftest import shared_path
from eval_superglue import (Classifier, accuracy, binary_f1, encode_pair, load_task, main, mcc, pad_batch, task_names)
from config import InputError
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig
from data import load_tokenizer


def test_metrics_against_hand_computed_values():
    gold, pred = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    assert accuracy(pred, gold) == pytest.approx(400 / 6)
    assert binary_f1(pred, gold) == pytest.approx(100 * 2 * 2 / (2 * 2 + 1 + 1))  # tp 2, fp 1, fn 1
    assert mcc(pred, gold) == pytest.approx(100 * (2 * 2 - 1 * 1) / 9)  # (tp tn - fp fn) / sqrt(3*3*3*3)
    assert mcc([1, 1, 1], [1, 0, 1]) == 0.0  # a constant prediction has no correlation
    assert binary_f1([0, 0], [1, 0]) == 0.0 and binary_f1([1, 1], [1, 1]) == 100.0
    assert binary_f1([1] * 10, [1] * 7 + [0] * 3) == pytest.approx(100 * 2 * 0.7 / 1.7)  # the majority-label F1, 2p/(1+p)
    assert mcc([0, 1], [1, 0]) == pytest.approx(-100.0)


def test_formatters_on_real_examples():
    glue = shared_path("glue_filtered")
    data, _ = load_task(glue, "wsc")
    a, b, y = data["train"][0]
    assert a == 'Does "He" refer to "Mark" in this passage?' and b.startswith("Mark told Pete") and y == 0
    assert load_task(glue, "multirc")[0] is None  # no train file: skipped, not crashed on
    mnli, _ = load_task(glue, "mnli")
    assert mnli["classes"] == 3 and len(mnli["train"]) == 10000 and "mnli-mm" in mnli["extra_valid"]
    sg = shared_path("superglue")
    cb, _ = load_task(sg, "cb")
    assert cb["train"][0][2] in (0, 1, 2) and cb["classes"] == 3
    copa, _ = load_task(sg, "copa")
    (pa, ca), (pb, cb_), y = copa["valid"][0]
    assert pa == pb and pa.endswith(("What was the effect?", "What was the cause?"))
    assert copa["choice"] and y in (0, 1)
    wic, _ = load_task(sg, "wic")
    assert len(wic["train"]) == 5428 and len(wic["valid"]) == 638
    assert set(task_names(sg)) == {"cb", "copa", "rte", "wsc", "boolq", "wic"}


def test_truncation_longest_first(prepared):
    enc, info = load_tokenizer(prepared)
    ids = encode_pair(enc, info, "a " * 200, "b c", 20)
    assert len(ids) == 20 and ids[0] == info["bos_id"] and ids.count(info["bos_id"]) == 2
    assert enc.decode(ids[ids.index(info["bos_id"], 1) + 1 :]) == " b c", "the short segment is kept whole"


def test_last_token_pooling_equals_the_unpadded_sequence_alone():
    torch.manual_seed(0)
    clf = Classifier(Llama(ModelConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32)), 3).eval()
    seqs = [[1, 5, 7, 9, 11], [1, 4], [1, 8, 8]]
    x, last = pad_batch(seqs, pad_id=49, device="cpu")
    batched = clf(x, last)
    for i, s in enumerate(seqs):
        alone = clf(torch.tensor([s]), torch.tensor([len(s) - 1]))
        torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)


def write_fixture(folder, n_train=200, n_valid=60):
    """A learnable sst2-like task: label 1 iff the sentence mentions 'good'; 70% of training labels are 0."""
    import random
    rng = random.Random(0)
    os.makedirs(folder, exist_ok=True)
    def rows(n):
        out = []
        for i in range(n):
            label = int(rng.random() < 0.3)
            word = rng.choice(["good", "great good"]) if label else rng.choice(["bad", "dull", "awful"])
            out.append({"sentence": f"the film was {word} and the cat sat", "label": label, "idx": i})
        return out
    for split, n in (("train", n_train), ("valid", n_valid)):
        with open(os.path.join(folder, f"sst2.{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows(n))
    return str(folder)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_model_beats_the_majority_class_and_restores_the_best_epoch(random_ckpt, prepared, tmp_path, arch):
    data = write_fixture(tmp_path / "glue")
    ckpt = random_ckpt
    if arch == "gpt2":  # any checkpoint is fine-tuned the same way; a GPT-2's dropout acts while it is
        _, info = load_tokenizer(prepared)
        torch.manual_seed(0)
        ckpt = str(tmp_path / "gpt2.pt")
        save_checkpoint(ckpt, model_checkpoint(GPT2(GPT2Config(vocab_size=info["vocab_size"], dim=32, n_layers=2, n_heads=4)), info,
                                               config={"data_dir": prepared}))
    out = main(["--ckpt", ckpt, "--task", "sst2", "--data", data, "--lr", "3e-3", "--batch_size", "16",
                "--epochs", "6", "--patience", "2", "--out", str(tmp_path / "r.json")])
    r = out["tasks"]["sst2"]
    assert r["metric"] > r["majority_baseline"] + 10, r
    assert r["metric"] == next(h["metric"] for h in r["history"] if h["epoch"] == r["best_epoch"]), "the best epoch is reported, not the last"
    assert r["epochs_run"] <= r["best_epoch"] + 2, "stops after `patience` epochs without gain"
    assert json.load(open(tmp_path / "r.json"))["tasks"]["sst2"]["metric"] == r["metric"]


def test_unknown_task_and_missing_files(random_ckpt, tmp_path):
    data = write_fixture(tmp_path / "glue")
    with pytest.raises(InputError, match="--task='stsb': unknown"):
        main(["--ckpt", random_ckpt, "--task", "stsb", "--data", data])
    with pytest.raises(InputError, match="cola: no training file"):
        main(["--ckpt", random_ckpt, "--task", "cola", "--data", data])
    with pytest.raises(InputError, match="nope: data folder not found"):
        main(["--ckpt", random_ckpt, "--task", "rte", "--data", str(tmp_path / "nope")])


def test_max_len_is_capped_at_the_models_max_seq_len(prepared, tmp_path, capsys):
    """The 2025 protocol's 512 tokens on a model whose RoPE tables cover 24: inputs are cut to 24, with a note
    (uncapped, the first long input would stop fine-tuning with a traceback)."""
    from checkpoint import model_checkpoint, save_checkpoint
    _, info = load_tokenizer(prepared)
    torch.manual_seed(0)
    ckpt = str(tmp_path / "short.pt")
    model = Llama(ModelConfig(vocab_size=info["vocab_size"], dim=32, n_layers=1, n_heads=4, hidden_dim=64, max_seq_len=24))
    save_checkpoint(ckpt, model_checkpoint(model, info, config={"data_dir": prepared}))
    data = tmp_path / "glue"
    data.mkdir()
    for split in ("train", "valid"):
        rows = [{"sentence": "the film was good and the cat sat on the mat " * 8, "label": i % 2} for i in range(6)]
        (data / f"sst2.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = main(["--ckpt", ckpt, "--task", "sst2", "--data", str(data), "--max_len=512", "--epochs=1", "--out", str(tmp_path / "r.json")])
    assert out["tasks"]["sst2"]["hparams"]["max_len"] == 24
    assert "note: sst2: max_len=512 is capped at the model's max_seq_len=24" in capsys.readouterr().out


def test_the_2025_config_states_the_pipelines_settings():
    """configs/superglue_babylm2025.py against evaluation-pipeline-2025's eval_finetuning.sh and finetune/run.py."""
    from config import load_config
    from conftest import ROOT
    from eval_superglue import SUPERGLUE_KEYS
    cfg = load_config(SUPERGLUE_KEYS, [os.path.join(ROOT, "configs", "superglue_babylm2025.py")])
    assert sorted(cfg.task.split(",")) == sorted(["boolq", "multirc", "rte", "wsc", "mrpc", "qqp", "mnli"])
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.seed, cfg.max_len, cfg.weight_decay) == (3e-5, 32, 10, 42, 512, 0.01)
    assert cfg.patience >= cfg.epochs and cfg.task_overrides["wsc"]["epochs"] == 30 and cfg.task_overrides["wsc"]["patience"] >= 30, "no early stopping"
    assert cfg.task_overrides["boolq"]["batch_size"] == cfg.task_overrides["multirc"]["batch_size"] == 16
    assert cfg.selection == "metric" and cfg.subsample_2025


def test_a_task_list_skips_missing_files_drops_mnli_mm_prefers_the_subsample_and_selects_on_the_metric(random_ckpt, tmp_path, capsys):
    rte = lambda i, label: {"sentence1": f"the cat number {i} sees the ball.", "sentence2": "a cat sees a ball.", "label": label}
    nli = lambda i: {"premise": f"the dog {i} runs.", "hypothesis": "a dog runs.", "label": i % 3}
    files = {"rte.train.jsonl": [rte(i, i % 2) for i in range(12)], "rte.valid.jsonl": [rte(i, int(i < 2)) for i in range(7)],
             "mnli.train.jsonl": [nli(i) for i in range(3)], "mnli.train.2025subsample.jsonl": [nli(i) for i in range(5)],
             "mnli.valid.jsonl": [nli(i) for i in range(4)], "mnli-mm.valid.jsonl": [nli(i) for i in range(4)], "boolq.valid.jsonl": []}
    data = tmp_path / "glue"
    data.mkdir()
    for name, rows in files.items():
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_task(str(data), "mnli")[0]["train"]) == 3 and len(load_task(str(data), "mnli", subsample_2025=True)[0]["train"]) == 5
    args = ["--ckpt", random_ckpt, "--task", "boolq,rte,mnli", "--data", str(data), "--epochs=3", "--patience=3", "--batch_size=4", "--lr=3e-3"]
    out = main([*args, "--subsample_2025=True", "--selection=metric", "--out", str(tmp_path / "a.json")])
    assert "note: boolq: no training file" in capsys.readouterr().out
    assert set(out["tasks"]) == {"rte", "mnli"} and out["tasks"]["mnli"]["n_train"] == 5, "no mnli-mm: the list does not name it"
    assert all(h["selection"] == h["metric"] for h in out["tasks"]["rte"]["history"]), "the best epoch by the task's metric (accuracy)"
    f1 = main([*args, "--out", str(tmp_path / "b.json")])["tasks"]["rte"]["history"]  # 2024: binary F1 picks the epoch
    assert any(h["selection"] != h["metric"] for h in f1)


@pytest.mark.parametrize("task", ["rte ", "xyz"])
def test_overrides_for_an_unknown_task_are_one_line(tmp_path, task):
    """`--task_overrides={'rte ': {'epochs': 5}}` ran one epoch, exit 0: the misspelt task's settings unused."""
    with pytest.raises(InputError, match=rf"task_overrides\[{task!r}\]: unknown task; expected one of .*rte"):
        main(["--ckpt", str(tmp_path / "x.pt"), "--task", "rte", "--data", str(tmp_path), f"--task_overrides={{{task!r}: {{'epochs': 5}}}}"])
