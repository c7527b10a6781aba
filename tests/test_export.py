"""export_hf.py: the exported model's logits equal the project's, tokenizer ids equal on real text
(newlines, non-ASCII, special tokens), export -> import returns identical tensors, GQA and tied configs;
a GPT-2 (gpt2.py) exports to transformers' GPT2LMHeadModel with equal logits, imports back, and scores
BLiMP pairs there pair for pair as eval_blimp.py does on the checkpoint.
Needs transformers (a test dependency); the whole file skips with a reason without it. If the variable
HF_OLD_PYTHON names a Python with an older transformers (CI: 4.45, what the 2024 BabyLM pipeline used),
the export is also loaded there. Run: python -m pytest tests/test_export.py"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import shared_path
import eval_blimp
from export_hf import export, hf_names, import_hf, read_safetensors, write_safetensors
from checkpoint import load_checkpoint, model_checkpoint, read_checkpoint, save_checkpoint
from config import InputError
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig
from data import load_tokenizer
from prepare_data import prepare

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")


@pytest.fixture(scope="module")
def real_tokenizer(tmp_path_factory):
    """A 2,000-token BPE trained here on real BabyLM text (non-ASCII quotes included)."""
    src = shared_path("babylm_2023_partial", "babylm_10M")
    base = tmp_path_factory.mktemp("realtok")
    for split, suffix, n in (("train_10M", "train", 6000), ("dev", "dev", 300)):
        os.makedirs(base / "src" / split)
        for name in ("children_stories", "cbt", "switchboard"):
            lines = open(os.path.join(src, f"{name}.train"), encoding="utf-8").read().splitlines()[:n]
            (base / "src" / split / f"{name}.{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(str(base / "src"), str(base / "data"), vocab_size=2000, progress=False)
    return str(base / "data")


def make_ckpt(tmp_path, data_dir, **kw):
    _, info = load_tokenizer(data_dir)
    torch.manual_seed(0)
    cfg = dict(vocab_size=info["vocab_size"], dim=48, n_layers=2, n_heads=6, n_kv_heads=2, hidden_dim=96, rope_theta=500.0, norm_eps=1e-5)
    model = Llama(ModelConfig(**{**cfg, **kw}))
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model_checkpoint(model, info, config={"data_dir": data_dir}))
    return path, model.eval()


def make_gpt2_ckpt(tmp_path, data_dir, **kw):
    """A random GPT-2 saved as a checkpoint: non-zero biases and LayerNorm parameters, so that each is checked, and
    weights 10 x the initial ones, so that activations are of order 1, where the tanh GELU and the exact one differ."""
    _, info = load_tokenizer(data_dir)
    torch.manual_seed(0)
    model = GPT2(GPT2Config(**{**dict(vocab_size=info["vocab_size"], dim=48, n_layers=2, n_heads=6, norm_eps=1e-5), **kw}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("norm."):
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.mul_(10)
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model_checkpoint(model, info, config={"data_dir": data_dir}))
    return path, model.eval()


def real_lines():
    read = lambda name: open(shared_path("babylm_2023_partial", "babylm_10M", name), encoding="utf-8").read().splitlines()
    lines = read("cbt.train")[10000:12000] + read("children_stories.train")[:1000]  # curly quotes and other non-ASCII
    supplement = shared_path("blimp_supplement")
    for fn in sorted(os.listdir(supplement)):
        lines += [json.loads(l)["sentence_good"] for l in open(os.path.join(supplement, fn), encoding="utf-8")][:300]
    return lines + ["tab\there, ünïcødé ✓ and emoji 🙂", "two  spaces\n\nand newlines ", "a <|endoftext|> inside <|pad|> text"]


@pytest.mark.parametrize("variant", [dict(), dict(tie_embeddings=True), dict(n_kv_heads=6)])
def test_exported_logits_equal_the_project_model(real_tokenizer, tmp_path, variant):
    ckpt, model = make_ckpt(tmp_path, real_tokenizer, **variant)
    out = export(ckpt, str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    enc, _ = load_tokenizer(real_tokenizer)
    ids = torch.tensor([enc.encode_ordinary(" ".join(real_lines()[:40]))[:200]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)
    assert hf.config.tie_word_embeddings == variant.get("tie_embeddings", False)


def test_tokenizer_ids_equal_on_real_lines(real_tokenizer, tmp_path):
    ckpt, _ = make_ckpt(tmp_path, real_tokenizer)
    tok = transformers.AutoTokenizer.from_pretrained(export(ckpt, str(tmp_path / "hf")))
    enc, info = load_tokenizer(real_tokenizer)
    lines = real_lines()
    assert len(lines) > 3000 and any("\n" in l for l in lines) and any(ord(c) > 127 for l in lines for c in l)
    bad = [l for l in lines if tok(l, add_special_tokens=False).input_ids != enc.encode(l, allowed_special="all")]
    assert not bad, f"{len(bad)} lines differ, e.g. {bad[:3]}"
    assert tok("a cat").input_ids == [info["bos_id"]] + enc.encode_ordinary("a cat"), "BOS is prepended with special tokens"
    assert tok.decode(enc.encode_ordinary(lines[0])) == lines[0]
    assert tok.pad_token_id == info["pad_id"] and tok.bos_token_id == info["bos_id"] == tok.eos_token_id


def test_export_import_round_trip(real_tokenizer, tmp_path):
    ckpt, model = make_ckpt(tmp_path, real_tokenizer)
    hf_dir = export(ckpt, str(tmp_path / "hf"))
    assert set(read_safetensors(os.path.join(hf_dir, "model.safetensors"))) == set(transformers.AutoModelForCausalLM.from_pretrained(hf_dir).state_dict())
    back, ck = load_checkpoint(import_hf(hf_dir, str(tmp_path / "back")))
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    enc, _ = load_tokenizer(real_tokenizer)
    enc2, _ = load_tokenizer(str(tmp_path / "back"))
    for line in real_lines()[:500]:
        assert enc2.encode(line, allowed_special="all") == enc.encode(line, allowed_special="all")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_import_of_a_tied_config_with_its_own_head_ties_equal_heads_and_refuses_different_ones(real_tokenizer, tmp_path, arch):
    """tie_word_embeddings true and a separate lm_head.weight in the file: the same matrix twice is a tied model (imported,
    its logits the model's); a different one is refused in one line, never one head picked in silence (the report: logits
    up to 1.47 off what transformers loads)."""
    ckpt, model = make_ckpt(tmp_path, real_tokenizer, tie_embeddings=True) if arch == "llama" else make_gpt2_ckpt(tmp_path, real_tokenizer)
    hf_dir = export(ckpt, str(tmp_path / "hf"))
    path, embeddings = os.path.join(hf_dir, "model.safetensors"), "model.embed_tokens.weight" if arch == "llama" else "transformer.wte.weight"
    tensors = read_safetensors(path)
    assert json.load(open(os.path.join(hf_dir, "config.json")))["tie_word_embeddings"] is True and "lm_head.weight" not in tensors
    write_safetensors(path, {**tensors, "lm_head.weight": tensors[embeddings].clone()}, progress=False)
    back, _ = load_checkpoint(import_hf(hf_dir, str(tmp_path / "same")))
    ids = torch.tensor([[5, 40, 99, 7, 250]])
    with torch.no_grad():
        assert torch.equal(back.eval()(ids), model(ids))
    torch.manual_seed(1)
    write_safetensors(path, {**tensors, "lm_head.weight": tensors[embeddings] + 0.1 * torch.randn_like(tensors[embeddings])}, progress=False)
    with pytest.raises(InputError, match=rf"config\.json: tie_word_embeddings is true but .*hf also holds an lm_head\.weight that differs from "
                                         rf"{embeddings} \(max \|difference\| 0\.\d+\): set tie_word_embeddings to false to import the separate head"):
        import_hf(hf_dir, str(tmp_path / "different"))


def test_hub_cache_revisions_load_offline_in_transformers_with_their_own_weights(milestone_runs, tmp_path):
    """export_hf.py --hub_cache DIR --repo_id ORG/NAME: from_pretrained("ORG/NAME", revision=...) reads each revision from
    the local Hub cache offline, as the official pipeline is run (HF_HOME, HF_HUB_OFFLINE=1; and cache_dir=DIR): the
    weights of chck_500, chck_1k and main are their own checkpoints', and two revisions differ where their checkpoints do.
    (A local folder would not do: from_pretrained(folder, revision=...) ignores the revision.)"""
    from export_hf import main as export_main

    hub = pytest.importorskip("huggingface_hub")
    run, home = milestone_runs[0], tmp_path / "home"
    export_main(["--ckpt", run, "--all_checkpoints=True", "--out", str(tmp_path / "hf"), "--hub_cache", str(home / "hub"), "--repo_id", "babydistill/tiny"])
    script = ("import sys, torch, transformers as t\nout = {}\nfor rev in sys.argv[2:]:\n"  # the pipeline's own call (its get_model)
              "    m = t.AutoModelForCausalLM.from_pretrained('babydistill/tiny', trust_remote_code=True, revision=rev)\n"
              "    tok = t.AutoTokenizer.from_pretrained('babydistill/tiny', revision=rev)\n"
              "    out[rev] = {'state': m.state_dict(), 'ids': tok('the cat').input_ids}\ntorch.save(out, sys.argv[1])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")}
    revisions = {"chck_500": "chck_500/ckpt.pt", "chck_1k": "chck_1k/ckpt.pt", "main": "ckpt.pt"}
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "loaded.pt"), *revisions], capture_output=True, text=True, timeout=600,
                       env={**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    ckpts = {rev: read_checkpoint(os.path.join(run, path))["model"] for rev, path in revisions.items()}
    for rev, ck in ckpts.items():
        assert all(torch.equal(loaded[rev]["state"][hf], ck[ours]) for ours, hf in hf_names(2)), rev
        assert loaded[rev]["ids"][:1] == [317], rev  # the boundary token first, as the 2025 pipeline tokenizes
    for a, b in (("chck_500", "chck_1k"), ("chck_1k", "main")):
        differ = {hf for ours, hf in hf_names(2) if not torch.equal(ckpts[a][ours], ckpts[b][ours])}
        assert differ and differ == {hf for _, hf in hf_names(2) if not torch.equal(loaded[a]["state"][hf], loaded[b]["state"][hf])}, (a, b)
    m = transformers.AutoModelForCausalLM.from_pretrained("babydistill/tiny", revision="chck_500", cache_dir=str(home / "hub"), local_files_only=True)
    assert torch.equal(m.state_dict()["lm_head.weight"], ckpts["chck_500"]["output.weight"])
    (repo,) = hub.scan_cache_dir(str(home / "hub")).repos  # huggingface_hub's own reading of the layout
    assert repo.repo_id == "babydistill/tiny" and sorted(ref for rev in repo.revisions for ref in rev.refs) == ["chck_1k", "chck_500", "main"]


def test_gpt2_exports_as_a_gpt2_lm_head_model_with_equal_logits(real_tokenizer, tmp_path):
    ckpt, model = make_gpt2_ckpt(tmp_path, real_tokenizer, max_seq_len=256)
    out = export(ckpt, str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.model_type == "gpt2"
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr(), "the head is tied, as in the project's GPT-2"
    enc, _ = load_tokenizer(real_tokenizer)
    ids = torch.tensor([enc.encode_ordinary(" ".join(real_lines()[:40]))[:200]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)
    assert set(read_safetensors(os.path.join(out, "model.safetensors"))) == set(hf.state_dict()) - {"lm_head.weight"}


def test_gpt2_export_import_round_trip(real_tokenizer, tmp_path):
    ckpt, model = make_gpt2_ckpt(tmp_path, real_tokenizer, dropout=0.2)
    back, ck = load_checkpoint(import_hf(export(ckpt, str(tmp_path / "hf")), str(tmp_path / "back")))
    assert isinstance(back, GPT2) and back.config == model.config and ck["model_config"]["arch"] == "gpt2"
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.output.weight is back.tok_embeddings.weight


def test_gpt2_import_reads_openai_tensor_names(real_tokenizer, tmp_path):
    """OpenAI's GPT-2 files (and some others) name the tensors without the "transformer." prefix."""
    ckpt, model = make_gpt2_ckpt(tmp_path, real_tokenizer)
    hf_dir = export(ckpt, str(tmp_path / "hf"))
    path = os.path.join(hf_dir, "model.safetensors")
    write_safetensors(path, {k.removeprefix("transformer."): v for k, v in read_safetensors(path).items()}, progress=False)
    back, _ = load_checkpoint(import_hf(hf_dir, str(tmp_path / "back")))
    a, b = model.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gpt2_import_refuses_what_gpt2_py_does_not_reproduce(real_tokenizer, tmp_path):
    ckpt, _ = make_gpt2_ckpt(tmp_path, real_tokenizer)
    hf_dir = export(ckpt, str(tmp_path / "hf"))
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    for key, value in (("activation_function", "relu"), ("n_inner", 100), ("scale_attn_by_inverse_layer_idx", True)):
        json.dump({**config, key: value}, open(os.path.join(hf_dir, "config.json"), "w"))
        with pytest.raises(InputError, match=f"config.json: {key}={value!r}; gpt2.py reproduces only"):
            import_hf(hf_dir, str(tmp_path / "back"))


def test_gpt2_export_scores_blimp_in_transformers_pair_for_pair_as_eval_blimp(real_tokenizer, tmp_path):
    """eval_blimp.py on the checkpoint, and the exported folder in transformers scored by hand the 2024 way (the
    tokenizer's BOS, then " " + sentence; the sum of the sentence's token log-probabilities): the same pairs right."""
    blimp = shared_path("blimp_filtered")
    folder = tmp_path / "blimp"
    folder.mkdir()
    for name in ("anaphor_gender_agreement", "determiner_noun_agreement_1", "regular_plural_subject_verb_agreement_1"):
        lines = open(os.path.join(blimp, name + ".jsonl"), encoding="utf-8").read().splitlines()[:12]
        (folder / (name + ".jsonl")).write_text("\n".join(lines) + "\n", encoding="utf-8")
    ckpt, model = make_gpt2_ckpt(tmp_path, real_tokenizer)
    with torch.no_grad():
        model.tok_embeddings.weight.mul_(20)  # sharper logits: pairs far from ties, so a flip would show
    save_checkpoint(ckpt, model_checkpoint(model, load_tokenizer(real_tokenizer)[1], config={"data_dir": real_tokenizer}))
    ours = eval_blimp.main([f"--ckpt={ckpt}", f"--data={folder}", f"--out={tmp_path / 'blimp.json'}", "--device=cpu", "--protocol=2024"])["blimp"]["tasks"]

    hf_dir = export(ckpt, str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)

    def score(sentence):
        ids = torch.tensor([tok(" " + sentence).input_ids])  # the post-processor prepends <|endoftext|>
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
        return logp.gather(1, ids[0, 1:, None]).sum().item()

    tasks = eval_blimp.read_tasks(str(folder))
    for task, pairs in tasks.items():
        margins = [score(p["good"]) - score(p["bad"]) for p in pairs]
        assert min(abs(m) for m in margins) > 1e-3, "a near-tie would make the comparison meaningless"
        assert ours[task]["correct"] == "".join("1" if m >= 0 else "0" for m in margins), task
    assert len({c for t in ours.values() for c in t["correct"]}) == 2, "both right and wrong pairs occur: the check can fail"


@pytest.mark.parametrize("make", [make_ckpt, make_gpt2_ckpt], ids=["llama", "gpt2"])
def test_older_transformers_loads_the_export(real_tokenizer, tmp_path, make):
    python = os.environ.get("HF_OLD_PYTHON")
    if not python:
        pytest.skip("HF_OLD_PYTHON is not set (CI sets it to a venv with transformers 4.45)")
    ckpt, model = make(tmp_path, real_tokenizer)
    hf_dir = export(ckpt, str(tmp_path / "hf"))
    enc, _ = load_tokenizer(real_tokenizer)
    text = " ".join(real_lines()[:20])
    ids = enc.encode_ordinary(text)[:100]
    script = ("import json, sys, torch, transformers as t\n"
              f"m = t.AutoModelForCausalLM.from_pretrained({hf_dir!r}).eval(); k = t.AutoTokenizer.from_pretrained({hf_dir!r})\n"
              f"ids = k({text!r}, add_special_tokens=False).input_ids[:100]\n"
              "with torch.no_grad(): out = m(torch.tensor([ids])).logits[0, -1].tolist()\n"
              "print(json.dumps({'version': t.__version__, 'ids': ids, 'last': out}))")
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["ids"] == ids, f"transformers {got['version']} tokenizes differently"
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0, -1]
    torch.testing.assert_close(torch.tensor(got["last"]), expected, atol=1e-4, rtol=1e-4)


def test_every_exported_revision_loads_in_transformers(milestone_runs, tmp_path):
    """export_hf.py --all_checkpoints: each folder (chck_500, chck_1k, main) is a model transformers loads, with the
    milestone's own weights (its logits), and the tokenizer; what the BabyLM pipeline does per revision."""
    from export_hf import main as export_main

    run, hf = milestone_runs[0], str(tmp_path / "hf")
    export_main(["--ckpt", run, "--all_checkpoints=True", "--out", hf])
    ids = torch.tensor([[317, 5, 40, 99, 7, 250, 12]])
    for rev, ckpt in (("chck_500", "chck_500/ckpt.pt"), ("chck_1k", "chck_1k/ckpt.pt"), ("main", "ckpt.pt")):
        model, _ = load_checkpoint(os.path.join(run, ckpt))
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(hf, rev)).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf_model(ids).logits, model.eval()(ids), atol=1e-4, rtol=1e-4)
        assert transformers.AutoTokenizer.from_pretrained(os.path.join(hf, rev))("the cat").input_ids[0] == 317, rev
