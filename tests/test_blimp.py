"""eval_blimp.py: score_batch against models with known log-probs (float64), batched == one-by-one on real pairs, ties, aggregation,
both field-name formats, errors. Run: python -m pytest tests/test_blimp.py"""

import json
import math
from types import SimpleNamespace

import pytest
import tiktoken
import torch
import torch.nn as nn

from conftest import check_close, fp32_tol, shared_path
from eval_blimp import evaluate_set, limit_tasks, main, pair_results, read_tasks, score_batch, score_one, score_sentences, summarize
from config import InputError
from model import Llama, ModelConfig
from checkpoint import load_model_and_tokenizer
from data import load_tokenizer

# A byte-level tokenizer (one token per character) with the project's three special tokens.
ENC = tiktoken.Encoding("bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                        special_tokens={"<|endoftext|>": 256, "<|pad|>": 257, "<|mask|>": 258})
INFO = {"bos_id": 256, "eos_id": 256, "pad_id": 257, "vocab_size": 259}


class BigramModel(nn.Module):
    """logits(next | previous) = table[previous]: sentence log-probs are computable by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.config = SimpleNamespace(max_seq_len=64)  # what the scorer reads of a Llama's config

    def forward(self, idx):
        return self.table[idx]


def bigram_table(seed=0):
    torch.manual_seed(seed)
    return torch.randn(259, 259) * 2


def scores_tol(model_logits_max, n_tokens, V=259):
    """fp32 tolerance of a sentence's score: per token a log-softmax over V (V + 4 roundings on the magnitude
    |logit| + log V), summed over n_tokens tokens (n_tokens more roundings)."""
    return fp32_tol(n_tokens * (model_logits_max + math.log(V)), V + n_tokens + 8)


@pytest.mark.core
def test_sentence_scores_of_a_known_model_pick_the_expected_sentence():
    table = bigram_table()
    model = BigramModel(table)
    logp = torch.log_softmax(table.double(), -1)
    by_hand = lambda s: sum(logp[a, b].item() for a, b in zip([256] + list(b" " + s.encode())[:-1], b" " + s.encode()))
    good, bad = "the cat", "cat the"
    scores = score_sentences(model, ENC, INFO, [good, bad], "2024", "cpu", progress=False)
    for s in (good, bad):
        check_close(scores[s], by_hand(s), scores_tol(table.abs().max().item(), 8), f"score_sentences: score of {s!r}", "the sum of its tokens' log p under the bigram model")
    tasks = {"t": [{"good": good, "bad": bad, "field": "", "term": ""}]}
    per_task, _, _ = pair_results(tasks, scores)
    expected = 100.0 if by_hand(good) >= by_hand(bad) else 0.0
    assert per_task["t"]["acc"] == expected, f"pair_results: accuracy {per_task['t']['acc']}, expected {expected} (the good sentence scores at least the bad one)"


@pytest.mark.core
def test_score_one_of_a_made_up_model_is_the_sum_of_its_token_log_probs():
    """score_one, the unbatched reference of the tests (not an exercise)."""
    table = bigram_table(1)
    logp = torch.log_softmax(table, -1)
    ids = [32, 116, 104, 101]  # " the": each token conditioned on the one before it, the first on the context 256
    expected = logp[256, 32] + logp[32, 116] + logp[116, 104] + logp[104, 101]
    assert score_one(BigramModel(table), 256, ids, "cpu") == pytest.approx(expected.item(), abs=1e-5)
    assert score_one(BigramModel(table), 97, ids[:1], "cpu") == pytest.approx(logp[97, 32].item(), abs=1e-6), "one token: log p(token | context)"


class PositionModel(nn.Module):
    """logits at position t = A[token t] + B[t] + C[token 0]: causal, and it depends on the absolute position and on
    the first token (the context), so a left-padded batch, a lost context token or a shifted read-out scores otherwise."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A, self.B, self.C = (torch.randn(n, 259, generator=g) * 2 for n in (259, 64, 259))
        self.config = SimpleNamespace(max_seq_len=64)

    def forward(self, idx):
        return self.A[idx] + self.B[: idx.shape[1]] + self.C[idx[:, :1]]

    def reference_score(self, ctx, ids):
        """log p(ids[i] | ctx, ids[:i]) summed over i, in float64."""
        x = [ctx] + ids[:-1]
        logits = self.A.double()[x] + self.B.double()[: len(x)] + self.C.double()[ctx]
        return torch.log_softmax(logits, -1)[torch.arange(len(ids)), ids].sum().item()


ITEMS = [(256, [32, 116, 104, 101]), (97, [5]), (256, [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]), (3, [7, 7, 7]), (256, [257, 1, 2])]  # token 257 is the pad id


@pytest.mark.core
def test_score_batch_of_a_made_up_model_is_the_sum_of_its_token_log_probs():
    """One right-padded batch of sentences of 1 to 12 tokens, each with its context token, against each sentence
    scored by hand; sentence 5 contains the pad id itself (the mask must come from the lengths, not the token)."""
    model = PositionModel()
    got = score_batch(model, ITEMS, 257, "cpu")
    assert len(got) == len(ITEMS), f"score_batch: returned {len(got)} scores for {len(ITEMS)} sentences"
    expected = torch.tensor([model.reference_score(ctx, ids) for ctx, ids in ITEMS], dtype=torch.float64)
    logit_max = sum(t.abs().max().item() for t in (model.A, model.B, model.C))
    tol = torch.tensor([scores_tol(logit_max, len(ids)) for _, ids in ITEMS])
    check_close(torch.tensor([float(g) for g in got]), expected, tol, "score_batch: scores[i]",
                "sum over its tokens of log p(token | context token, earlier tokens): inputs [ctx] + ids[:-1], right-padded, read out at ids")


@pytest.mark.core
def test_score_batch_of_a_random_llama_equals_each_sentence_scored_alone():
    """A float64 Llama (so that padding changes nothing beyond float64 rounding): the batched, right-padded scores against
    each sentence run alone, in float64. Under the causal mask a real token never attends to the pads after it."""
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=64)).double().eval()
    with torch.no_grad():
        model.output.weight.mul_(30)  # confident predictions that depend on the context
    sentences = ["the cat sat.", "a dog", "the cat sat on the mat.", "x", "Who did she see?"]
    items = [(256, ENC.encode_ordinary(" " + s)) for s in sentences]
    got = score_batch(model, items, 257, "cpu")
    assert len(got) == len(items), f"score_batch: returned {len(got)} scores for {len(items)} sentences"
    expected, tol = [], []
    with torch.no_grad():
        for ctx, ids in items:
            logits = model(torch.tensor([[ctx] + ids[:-1]]))[0]
            expected.append(torch.log_softmax(logits, -1)[torch.arange(len(ids)), ids].sum().item())
            tol.append(scores_tol(logits.abs().max().item(), len(ids)))
    check_close(torch.tensor([float(g) for g in got]), torch.tensor(expected), torch.tensor(tol), "score_batch: scores[i]",
                f"of {sentences}: each sentence's log-probabilities summed, as when it runs alone")


@pytest.mark.core
def test_sentence_scores_protocol_2025_drops_the_leading_space():
    model = BigramModel(bigram_table())
    s24 = score_sentences(model, ENC, INFO, ["ab"], "2024", "cpu", progress=False)["ab"]
    s25 = score_sentences(model, ENC, INFO, ["ab"], "2025", "cpu", progress=False)["ab"]
    logp = torch.log_softmax(bigram_table().double(), -1)
    tol = scores_tol(bigram_table().abs().max().item(), 3)
    check_close(s25, logp[256, 97].item() + logp[97, 98].item(), tol, "score_sentences: protocol 2025 score of 'ab'", "no leading space: tokens a, b")
    check_close(s24, logp[256, 32].item() + logp[32, 97].item() + logp[97, 98].item(), tol, "score_sentences: protocol 2024 score of 'ab'", "tokens ' ', a, b")


@pytest.mark.core
def test_ties_count_as_correct_but_not_strict():
    model = BigramModel(torch.zeros(259, 259))  # uniform: equal-length sentences tie
    tasks = {"t": [{"good": "abc", "bad": "xyz", "field": "", "term": ""}, {"good": "ab", "bad": "xyz", "field": "", "term": ""}]}
    r = evaluate_set(model, ENC, INFO, tasks, "2024", "cpu", progress=False)
    assert r["tasks"]["t"] == {"n": 2, "acc": 100.0, "strict_acc": 50.0, "ties": 1, "correct": "11"}


@pytest.mark.core
def test_aggregation_unweighted_paradigm_mean_vs_pooled_phenomena():
    scores = {"g": 0.0, "b": -1.0, "w": -2.0}  # "g" beats "b"; "w" loses
    pair = lambda good, bad, term: {"good": good, "bad": bad, "field": "syntax", "term": term}
    tasks = {"A": [pair("g", "b", "x"), pair("w", "b", "x")], "B": [pair("g", "b", "x")] * 4}
    per_task, per_term, per_field = pair_results(tasks, scores)
    assert per_task["A"]["acc"] == 50.0 and per_task["B"]["acc"] == 100.0
    assert per_task["A"]["correct"] == "10" and per_task["B"]["correct"] == "1111", "per pair, in file order (for paired bootstraps)"
    assert summarize(per_task, per_term, "2024") == 75.0  # mean over paradigms
    assert summarize(per_task, per_term, "2023") == pytest.approx(500 / 6)  # pairs pooled within the phenomenon
    assert per_field == {"syntax": pytest.approx(500 / 6)}


def test_both_field_name_formats(tmp_path):
    babylm = {"sentence_good": "a b", "sentence_bad": "b a", "field": "f", "linguistics_term": "t", "UID": "par", "pair_id": 7}
    original = {"sentence_good": "a b", "sentence_bad": "b a", "field": "f", "linguistics_term": "t", "UID": "orig", "pairID": "3"}
    (tmp_path / "par.jsonl").write_text(json.dumps(babylm) + "\n")
    (tmp_path / "orig.jsonl").write_text(json.dumps(original) + "\n\n")
    (tmp_path / "supp.jsonl").write_text(json.dumps({"sentence_good": "x\ny", "sentence_bad": "y\nx"}) + "\n")
    tasks = read_tasks(str(tmp_path))
    assert set(tasks) == {"par", "orig", "supp"}
    assert tasks["par"][0]["pair_id"] == 7 and tasks["orig"][0]["pair_id"] == "3" and tasks["supp"][0]["good"] == "x\ny"


def test_missing_folder_and_malformed_line(tmp_path):
    with pytest.raises(InputError, match="nope: BLiMP folder not found"):
        read_tasks(str(tmp_path / "nope"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"sentence_good": "a", "sentence_bad": "b"}) + "\n{oops\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: expected a JSON object"):
        read_tasks(str(tmp_path))


@pytest.mark.parametrize("key", ["UID", "field", "linguistics_term"])
def test_a_task_name_or_group_that_is_not_text_is_one_line(tmp_path, key):
    """A dict as UID, field or linguistics_term was a TypeError (unhashable), for the last two after all the scoring."""
    pair = {"sentence_good": "a b", "sentence_bad": "b a", "field": "f", "linguistics_term": "t", "UID": "par", key: {"a": 1}}
    (tmp_path / "par.jsonl").write_text(json.dumps(pair) + "\n")
    with pytest.raises(InputError, match=rf"par\.jsonl:1: {key} is dict, expected text"):
        read_tasks(str(tmp_path))


def test_a_folder_named_like_a_task_file_is_not_read(tmp_path):
    (tmp_path / "x.jsonl").mkdir()  # was an IsADirectoryError
    (tmp_path / "par.jsonl").write_text(json.dumps({"sentence_good": "a b", "sentence_bad": "b a", "UID": "par"}) + "\n")
    assert set(read_tasks(str(tmp_path))) == {"par"}


def test_batched_equals_one_by_one_on_real_pairs(prepared):
    folder = shared_path("blimp_filtered")
    enc, info = load_tokenizer(prepared)
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=info["vocab_size"], dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64)).eval()
    tasks = read_tasks(folder)
    sentences = [s for name in sorted(tasks)[:6] for p in tasks[name][:15] for s in (p["good"], p["bad"])]
    supp = read_tasks(shared_path("blimp_supplement"))
    sentences += [s for name in supp for p in supp[name][:5] for s in (p["good"], p["bad"])]  # newlines inside
    batched = score_sentences(model, enc, info, sentences, "2024", "cpu", batch_tokens=2048, progress=False)
    for s in list(batched)[::3]:
        ctx, ids = info["bos_id"], enc.encode_ordinary(" " + s)
        assert batched[s] == pytest.approx(score_one(model, ctx, ids, "cpu"), abs=1e-4), s


def test_command_line_on_a_checkpoint(random_ckpt, tmp_path):
    ckpt = random_ckpt
    data = tmp_path / "blimp"
    data.mkdir()
    rows = [{"sentence_good": f"the cat {i}", "sentence_bad": f"cat the {i}", "UID": u, "field": "syntax", "linguistics_term": "order"}
            for u in ("p1", "p2") for i in range(3)]
    (data / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "r.json")
    results = main(["--ckpt", ckpt, "--data", str(data), "--out", out, "--limit", "2"])
    saved = json.load(open(out))
    assert saved["blimp"]["pairs"] == 4 and set(saved["blimp"]["tasks"]) == {"p1", "p2"}
    assert saved["blimp"]["score"] == results["blimp"]["score"]
    model, _, enc, info = load_model_and_tokenizer(ckpt)  # the same numbers, computed without the command line
    expected = evaluate_set(model.eval(), enc, info, limit_tasks(read_tasks(str(data)), 2), "2025", "cpu", progress=False)  # the default protocol
    assert results["blimp"]["tasks"] == expected["tasks"] and results["blimp"]["score"] == expected["score"]


def test_the_default_protocol_is_the_official_2025_one_and_the_output_names_it(random_ckpt, tmp_path, capsys):
    """The official pipeline of 2025 (and of the 2026 Strict tracks) scores a sentence without a leading space: that
    is the default, so a participant who gives no --protocol gets the numbers the pipeline reproduces; 2024 on
    request. The JSON and the last printed line name the protocol."""
    data = tmp_path / "blimp"
    data.mkdir()
    pairs = [{"sentence_good": s, "sentence_bad": " ".join(reversed(s.split())), "UID": "p"} for s in ("the cat sees a dog.", "we find the ball.")]
    (data / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    default = main(["--ckpt", random_ckpt, "--data", str(data), "--device=cpu"])
    shown = capsys.readouterr().out
    assert default["protocol"] == "2025" and json.load(open(tmp_path / "blimp_2025.json"))["protocol"] == "2025"
    assert "\nprotocol 2025 | BLiMP " in shown
    explicit = main(["--ckpt", random_ckpt, "--data", str(data), "--protocol", "2025", "--device=cpu"])
    old = main(["--ckpt", random_ckpt, "--data", str(data), "--protocol=2024", "--device=cpu"])
    assert "\nprotocol 2024 | BLiMP " in capsys.readouterr().out and old["protocol"] == "2024"
    assert default["blimp"] == {**explicit["blimp"], "seconds": default["blimp"]["seconds"]}


def test_pipeline_pairs_counts_the_pairs_where_the_official_predictions_differ(random_ckpt, tmp_path, capsys):
    """experiments/pipeline_pairs.py: the pipeline's predictions.json (per task, in file order, the sentence it scored
    higher) against eval_blimp.py's per-pair correctness; equal predictions differ nowhere, one flipped pair is counted."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
    import pipeline_pairs

    data = tmp_path / "blimp"
    data.mkdir()
    sentences = ["the cat sees a dog.", "we find the ball.", "a little bird draws the moon.", "she loves her friend today."]
    for task in ("p1", "p2"):
        (data / f"{task}.jsonl").write_text("".join(json.dumps({"sentence_good": s, "sentence_bad": " ".join(reversed(s.split())), "UID": task}) + "\n"
                                                    for s in sentences))
    ours = main(["--ckpt", random_ckpt, "--data", str(data), "--out", str(tmp_path / "b.json"), "--device=cpu"])
    tasks = read_tasks(str(data))
    official = {task: {"predictions": [{"id": f"{task}_{i}", "pred": p["good"] if flag == "1" else p["bad"]}
                                       for i, (p, flag) in enumerate(zip(pairs, ours["blimp"]["tasks"][task]["correct"]))]}
                for task, pairs in tasks.items()}
    (tmp_path / "predictions.json").write_text(json.dumps(official))
    argv = ["--predictions", str(tmp_path / "predictions.json"), "--data", str(data), "--eval_blimp", str(tmp_path / "b.json")]
    theirs, mine, differ = pipeline_pairs.main(argv)
    assert theirs == mine == ours["blimp"]["score"] and differ == []
    assert capsys.readouterr().out.strip().endswith("blimp: pipeline %.2f | eval_blimp.py (2025 protocol) %.2f | 2 tasks, 8 pairs, 0 differ" % (mine, mine))
    flipped = official["p2"]["predictions"][3]
    flipped["pred"] = tasks["p2"][3]["bad"] if flipped["pred"] == tasks["p2"][3]["good"] else tasks["p2"][3]["good"]
    (tmp_path / "predictions.json").write_text(json.dumps(official))
    theirs, mine, differ = pipeline_pairs.main(argv)
    assert differ == [("p2", 3)] and abs(theirs - mine) == 100 / 4 / 2
    official["p1"]["predictions"].pop()
    (tmp_path / "predictions.json").write_text(json.dumps(official))
    with pytest.raises(InputError, match=r"predictions\.json: task p1 has 3 predictions, the data has 4 pairs"):
        pipeline_pairs.main(argv)


def test_out_that_holds_a_checkpoint_is_refused_and_kept(tmp_path):
    """eval_blimp.py and eval_superglue.py --out run/last.pt replaced the checkpoint by the scores (exit 0). An
    existing file that is not a results file (JSON) is refused in one line and left as it was; a results file of
    an earlier evaluation is replaced as before."""
    from checkpoint import check_writable
    ckpt = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(InputError, match="exists and is not a results file"):
        check_writable(str(ckpt))
    assert ckpt.read_bytes() == before
    (tmp_path / "blimp.json").write_text('{"blimp": {"score": 50.0}}')
    check_writable(str(tmp_path / "blimp.json"))  # an earlier result: may be replaced
