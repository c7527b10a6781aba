"""
Export a checkpoint to the Hugging Face Llama format, or a GPT-2 (gpt2.py) to the Hugging Face GPT-2 format
(and import either back), so that a model trained here runs in the official BabyLM evaluation pipeline,
which loads models with transformers' AutoModelForCausalLM and AutoTokenizer.

    python export_hf.py --ckpt out/tiny_student/ckpt.pt --out hf/tiny_student
    python export_hf.py --from_hf hf/tiny_student --out out/imported      # back: out/imported/ckpt.pt
    python export_hf.py --ckpt out/tiny_gpt2_teacher/ckpt.pt --out hf/tiny_gpt2   # a GPT2LMHeadModel
    python export_hf.py --ckpt out/student --all_checkpoints --out hf/student   # a BabyLM submission: every revision
    python export_hf.py --ckpt out/student --all_checkpoints --out hf/student --push user/babyllama   # and upload
    python export_hf.py --ckpt out/student --all_checkpoints --out hf/student \
        --hub_cache hf/home/hub --repo_id user/babyllama      # and a local Hub cache: evaluate every revision offline

The export writes, with torch and the standard library only (transformers is not needed to export):
    config.json              LlamaForCausalLM: sizes, GQA heads, rope_theta, rms_norm_eps, tied or not, BOS/EOS/PAD ids;
                             or GPT2LMHeadModel: sizes, n_positions, layer_norm_epsilon, gelu_new, dropout, tied head
    model.safetensors        the weights (fp32), in the safetensors layout (a JSON header, then raw tensors)
    tokenizer.json           a byte-level BPE equivalent to the project's tiktoken tokenizer: the same vocabulary
                             (token bytes in GPT-2's byte-to-unicode alphabet), merges rebuilt from the ranks,
                             the same pre-tokenisation regex, and the special tokens
    tokenizer_config.json    tokenizer_class PreTrainedTokenizerFast, which transformers 4.4x and 5.x both load
    special_tokens_map.json
Rotary embeddings: model.py uses the half-split ("rotate_half") pairing, which is Hugging Face Llama's own,
so q/k weights are copied as they are (no permutation; an interleaved-RoPE model would need one).
GPT-2: Hugging Face keeps OpenAI's Conv1D layers, whose weight is (in, out), the transpose of nn.Linear's
(out, in): the four matrices of each block are transposed on the way out and back (the pitfall: square
c_proj matrices load without complaint either way, and give wrong logits).
The tokenizer's post-processor prepends <|endoftext|> when special tokens are requested (tokenizer(text)),
and adds nothing with add_special_tokens=False, so: the 2024 BLiMP harness (BOS as context, no special
tokens on the sentence) and the 2025 pipeline (the tokenizer's own special tokens) both see the boundary
token the model was trained with. Pairs become <|endoftext|> A <|endoftext|> B.

A BabyLM submission (--all_checkpoints; README: Submitting to BabyLM) is one Hub repository whose branches
(revisions) hold the intermediate checkpoints, chck_1M, chck_2M, ..., chck_100M, and whose main holds the final
model; the pipeline loads each with from_pretrained(repo, revision="chck_1M"). --ckpt names a run: its milestone
folders chck_<words>/ckpt.pt (train.py's checkpoints_at) become OUT/chck_<words>/, and its ckpt.pt (the best
validation checkpoint; or the checkpoint file --ckpt names, e.g. out/student/last.pt) becomes OUT/main/. Every
milestone the run's log.jsonl says it reached (its words seen past a count of its checkpoints_at) must be there,
and each must be this run's (its recipe, tokenizer and words per step those of the run's last.pt), or the export
is refused in one line before any work. The upload commands are printed, for the `hf` command of huggingface_hub
1.x and 2.x (`hf auth login`, then `hf upload REPO OUT/chck_1M . --revision chck_1M`, which creates a missing
branch; `huggingface-cli` is gone there); --push=REPO_ID runs them with huggingface_hub (optional: pip install
huggingface_hub), each milestone on its own branch (create_branch, then upload_folder(..., revision=...)), main last.

A local Hub cache (--hub_cache=DIR --repo_id=ORG/NAME): for a local folder, from_pretrained(folder, revision=...)
ignores the revision and loads the folder, so the revisions cannot be told apart there. The cache layout of
huggingface_hub (DIR/models--ORG--NAME/refs/<revision> holding a commit id, snapshots/<commit>/<file> linking to
blobs/<sha256>) is what from_pretrained("ORG/NAME", revision="chck_1M") reads offline (HF_HUB_OFFLINE=1, with
cache_dir=DIR, HF_HUB_CACHE=DIR, or HF_HOME=H for DIR = H/hub): the official pipeline then evaluates every revision
before anything is uploaded, with its own --model_path_or_name ORG/NAME --revision_name chck_1M. The commit ids are
the sha1 of each snapshot's file names and sha256s (stand-ins: no git commit exists), and DIR/models--ORG--NAME is
replaced whole, as --out is.

Import (--from_hf): a Llama or GPT-2 folder (config.json + model.safetensors, sharded safetensors or
pytorch_model.bin) with a byte-level BPE tokenizer.json becomes a project checkpoint plus a tokenizer
folder (meta.json, tokenizer.tiktoken) that eval_blimp.py reads. Token ids are kept, so merged tokens
must have increasing ids in merge order (true of tokenizers trained with Hugging Face's BPE trainer).
Normalisers (e.g. NFKC) and add_prefix_space are not reproduced by tiktoken: the import says so.

--out is replaced whole (built beside it, then swapped in), so it is checked before any work: it may not hold
the input (--out out/t1 with --ckpt out/t1/ckpt.pt would delete the run); export never writes into a run, so it may
not be, hold or lie inside a folder with a run's files (ckpt.pt, last.pt, log.jsonl, a chck_* milestone) that no
import wrote (--out out/t1/chck_2k would delete that milestone), --overwrite=True or not; and a folder that holds
anything but the files of an earlier export or import is refused unless --overwrite=True.

An import (--from_hf) whose config.json ties the head to the embeddings (tie_word_embeddings) and whose weights
also hold a separate lm_head.weight is refused unless the two are equal: which of the two heads a loader uses
depends on the loader (transformers 4.51.3, the 2025 pipeline's pin, ties them and drops the stored head; 5.23 keeps
the stored head: measured on such a folder), and the logits differ by as much as the two heads do.
"""

import hashlib
import json
import os
import re
import shutil
import struct
import sys

import torch
from tqdm import tqdm

from checkpoint import (atomic_write, check_writable_dir, file_sha256, load_model_and_tokenizer, model_checkpoint, read_log,
                        save_checkpoint)
from config import InputError, load_config, run_main
from data import tokenizer_sha256
from gpt2 import GPT2, GPT2Config
from model import Llama, ModelConfig
from prepare_data import PAT_STR, replace_folder, write_ranks  # writing a tokenizer: the one script besides prepare_data.py that does
from run_dir import PATH_KEYS, RESUMABLE_KEYS
from babylm import BABYLM_MILESTONES, milestone_label, parse_words, run_milestones

# -----------------------------------------------------------------------------------------------
# Weight names: project <-> Hugging Face Llama


def hf_names(n_layers):
    """[(project name, HF name)] for every tensor (the output head last)."""
    names = [("tok_embeddings.weight", "model.embed_tokens.weight")]
    for i in range(n_layers):
        p, h = f"layers.{i}.", f"model.layers.{i}."
        names += [(p + "attention.wq.weight", h + "self_attn.q_proj.weight"), (p + "attention.wk.weight", h + "self_attn.k_proj.weight"),
                  (p + "attention.wv.weight", h + "self_attn.v_proj.weight"), (p + "attention.wo.weight", h + "self_attn.o_proj.weight"),
                  (p + "feed_forward.w1.weight", h + "mlp.gate_proj.weight"), (p + "feed_forward.w3.weight", h + "mlp.up_proj.weight"),
                  (p + "feed_forward.w2.weight", h + "mlp.down_proj.weight"),
                  (p + "attention_norm.weight", h + "input_layernorm.weight"), (p + "ffn_norm.weight", h + "post_attention_layernorm.weight")]
    return names + [("norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")]


def gpt2_hf_names(n_layers):
    """[(project name, HF name, transposed)] for every GPT-2 tensor: `transposed` for the Conv1D weights (see
    the top of the file). The head is tied to transformer.wte and not stored, as in Hugging Face's own files."""
    names = [("tok_embeddings.weight", "transformer.wte.weight", False), ("pos_embeddings.weight", "transformer.wpe.weight", False)]
    for i in range(n_layers):
        p, h = f"layers.{i}.", f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            names += [(p + norm + ".weight", h + norm + ".weight", False), (p + norm + ".bias", h + norm + ".bias", False)]
        for linear in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            names += [(p + linear + ".weight", h + linear + ".weight", True), (p + linear + ".bias", h + linear + ".bias", False)]
    return names + [("norm.weight", "transformer.ln_f.weight", False), ("norm.bias", "transformer.ln_f.bias", False)]


# -----------------------------------------------------------------------------------------------
# safetensors, by hand: 8-byte little-endian header length, a JSON header, then the raw tensor bytes

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(path, tensors, progress=True):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned

    def write(f):
        f.write(struct.pack("<Q", len(head)) + head)
        with tqdm(total=offset, desc=os.path.basename(path), unit="B", unit_scale=True, disable=not progress, mininterval=1) as bar:
            for t in tensors.values():  # one tensor's bytes at a time: no second copy of the whole model
                t = t.detach().contiguous().cpu()
                if t.numel():
                    f.write(t.view(torch.uint8).numpy().tobytes())
                bar.update(t.numel() * t.element_size())
    atomic_write(path, write)


def read_safetensors(path):
    """{name: tensor} of a .safetensors file; a missing, truncated or foreign file is one line."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: not found")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            data = f.read()
        back = {v: k for k, v in DTYPES.items()}
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if end > len(data):
                raise ValueError(f"tensor {name} ends at byte {end:,} of {len(data):,}")
            raw = bytearray(data[start:end])
            dtype = back[info["dtype"]]
            out[name] = torch.frombuffer(raw, dtype=dtype).reshape(info["shape"]) if raw else torch.zeros(info["shape"], dtype=dtype)
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:100]}); download it again") from None
    return out


def read_json(path):
    """A JSON file of a Hugging Face folder, or one line saying why not."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not JSON ({e})") from None


def read_hf_weights(folder):
    single, index, binary = (os.path.join(folder, n) for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    if os.path.isfile(single):
        return read_safetensors(single)
    if os.path.isfile(index):
        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
        except (KeyError, AttributeError, TypeError):
            raise InputError(f"{index}: no weight_map of shard files") from None
        return {k: v for shard in shards for k, v in read_safetensors(os.path.join(folder, shard)).items()}
    if os.path.isfile(binary):
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise InputError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


# -----------------------------------------------------------------------------------------------
# Tokenizer: tiktoken ranks <-> a Hugging Face byte-level BPE


def byte_to_unicode():
    """GPT-2's reversible map from the 256 bytes to printable characters (byte-level BPE vocabularies are
    written in it): printable Latin-1 bytes map to themselves, the others to 256, 257, ..."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def merges_from_ranks(ranks):
    """The BPE merges that reproduce tiktoken's encoding: every way of writing a token as two tokens,
    ordered by the token's rank (tiktoken merges the adjacent pair whose concatenation has the lowest
    rank), ties by the ranks of the two parts."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += sorted(splits, key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
    return merges


def tokenizer_json(ranks, info):
    u = byte_to_unicode()
    text = lambda b: "".join(u[x] for x in b)
    bos = info["special_tokens"]["<|endoftext|>"]
    specials = sorted(info["special_tokens"].items(), key=lambda kv: kv[1])
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True} for t, i in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": info["pat_str"]}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [bos], "tokens": ["<|endoftext|>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,  # a whole pre-token in the vocab is one token, as in tiktoken
                  "vocab": {text(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])},
                  "merges": [[text(a), text(b)] for a, b in merges_from_ranks(ranks)]},
    }


# -----------------------------------------------------------------------------------------------


def llama_to_hf(model, info):
    """(tensors, config.json) of a Llama as a transformers LlamaForCausalLM."""
    cfg, state = model.config, model.state_dict()
    tensors = {hf: state[ours] for ours, hf in hf_names(cfg.n_layers) if not (cfg.tie_embeddings and ours == "output.weight")}
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_hidden_dim(), "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32",
        "bos_token_id": info["bos_id"], "eos_token_id": info["eos_id"], "pad_token_id": info["pad_id"], "use_cache": True,
    }
    return tensors, config


def gpt2_to_hf(model, info):
    """(tensors, config.json) of a GPT-2 as a transformers GPT2LMHeadModel (the Conv1D weights transposed)."""
    cfg, state = model.config, model.state_dict()
    tensors = {hf: state[ours].t() if transposed else state[ours] for ours, hf, transposed in gpt2_hf_names(cfg.n_layers)}
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len,
        "n_embd": cfg.dim, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "torch_dtype": "float32",
        "bos_token_id": info["bos_id"], "eos_token_id": info["eos_id"], "pad_token_id": info["pad_id"], "use_cache": True,
    }
    return tensors, config


def export(ckpt_path, out, data_dir=None):
    tqdm.write(f"loading {ckpt_path}")
    model, ckpt, enc, info = load_model_and_tokenizer(ckpt_path, data_dir)
    tqdm.write(f"writing {model.num_params():,} parameters (fp32) and the tokenizer")
    tensors, config = (gpt2_to_hf if isinstance(model, GPT2) else llama_to_hf)(model, info)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), tensors)
    dump = lambda name, obj: atomic_write(os.path.join(out, name), lambda f: json.dump(obj, f, indent=1, ensure_ascii=False), mode="w")
    dump("config.json", config)
    ranks = enc._mergeable_ranks  # the BPE ranks of the tokenizer just loaded (and checked against its hash)
    tqdm.write(f"writing tokenizer.json ({len(ranks):,} tokens, merges rebuilt from the ranks)")
    dump("tokenizer.json", tokenizer_json(ranks, info))
    specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "mask_token": "<|mask|>"}
    dump("tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.max_seq_len,
                                   "clean_up_tokenization_spaces": False, **specials})
    dump("special_tokens_map.json", specials)
    return out


def llama_from_hf(hf, cfg_path, folder):
    """The Llama of a transformers LlamaForCausalLM folder (its config.json read as hf). Settings model.py does not
    have (another activation, biases, RoPE scaling) are refused, not approximated: the logits would differ."""
    rope = hf.get("rope_scaling") or {k: v for k, v in (hf.get("rope_parameters") or {}).items() if k != "rope_theta"}
    expected = {"hidden_act": (hf.get("hidden_act", "silu") in ("silu", "swish"), "'silu'"),
                "attention_bias": (not hf.get("attention_bias", False), "false"), "mlp_bias": (not hf.get("mlp_bias", False), "false"),
                "rope_scaling": (rope.get("rope_type", rope.get("type", "default")) == "default", "none (plain RoPE)")}
    for key, (ok, allowed) in expected.items():
        if not ok:
            raise InputError(f"{cfg_path}: {key}={hf.get(key, rope)!r}; model.py reproduces only {allowed}, so the import is refused")
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    try:
        cfg = ModelConfig(vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
                          n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"], hidden_dim=hf["intermediate_size"],
                          norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta), max_seq_len=hf.get("max_position_embeddings", 2048),
                          tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    except KeyError as e:
        raise InputError(f"{cfg_path}: no {e.args[0]} (a LlamaForCausalLM config has it)") from None
    except (ValueError, TypeError) as e:
        raise InputError(f"{cfg_path}: {e}") from None
    if hf.get("head_dim", cfg.head_dim) != cfg.head_dim:
        raise InputError(f"{cfg_path}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    tqdm.write(f"reading the weights in {folder}")
    weights = read_hf_weights(folder)
    state = {}
    for ours, name in hf_names(cfg.n_layers):
        if ours == "output.weight" and cfg.tie_embeddings:
            continue
        if name not in weights:
            raise InputError(f"{folder}: tensor {name} is missing")
        state[ours] = weights[name].float()
    if cfg.tie_embeddings:
        check_tied_head(weights.get("lm_head.weight"), state["tok_embeddings.weight"], "model.embed_tokens.weight", cfg_path, folder)
        state["output.weight"] = state["tok_embeddings.weight"]
    model = Llama(cfg)
    load_weights(model, state, folder)
    return model


def gpt2_from_hf(hf, cfg_path, folder):
    """The GPT-2 of a transformers GPT2LMHeadModel folder (its config.json read as hf). Settings gpt2.py does
    not have (another activation, MLP width or attention scaling, an untied head) are refused, not approximated."""
    expected = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "n_inner": (None, 4 * hf["n_embd"]), "scale_attn_weights": (True,),
                "scale_attn_by_inverse_layer_idx": (False,), "add_cross_attention": (False,), "tie_word_embeddings": (True,)}
    for key, allowed in expected.items():
        if hf.get(key, allowed[0]) not in allowed:
            raise InputError(f"{cfg_path}: {key}={hf[key]!r}; gpt2.py reproduces only {' or '.join(map(repr, allowed))}")
    if len({hf.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}) > 1:
        print(f"note: {cfg_path}: the three dropouts differ; gpt2.py uses resid_pdrop={hf.get('resid_pdrop', 0.1)} for all (training only)")
    try:
        cfg = GPT2Config(vocab_size=hf["vocab_size"], dim=hf["n_embd"], n_layers=hf["n_layer"], n_heads=hf["n_head"], max_seq_len=hf["n_positions"],
                         norm_eps=hf.get("layer_norm_epsilon", 1e-5), dropout=hf.get("resid_pdrop", 0.1))
    except ValueError as e:
        raise InputError(f"{cfg_path}: {e}") from None
    tqdm.write(f"reading the weights in {folder}")
    weights = read_hf_weights(folder)
    # OpenAI's original files name the tensors without the "transformer." prefix (wte.weight, h.0.attn.c_attn.weight, ...)
    weights = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in weights.items()}
    state = {}
    for ours, name, transposed in gpt2_hf_names(cfg.n_layers):
        if name not in weights:
            raise InputError(f"{folder}: tensor {name} is missing")
        state[ours] = weights[name].float().t().contiguous() if transposed else weights[name].float()
    check_tied_head(weights.get("lm_head.weight"), state["tok_embeddings.weight"], "transformer.wte.weight", cfg_path, folder)
    state["output.weight"] = state["tok_embeddings.weight"]
    model = GPT2(cfg)
    load_weights(model, state, folder)
    return model


def check_tied_head(head, embeddings, name, cfg_path, folder):
    """A tied model (tie_word_embeddings) has one matrix for the embeddings and the head. A folder that also stores a
    separate lm_head.weight is tied only if the two are equal; otherwise which head a loader uses is the loader's
    choice (transformers 4.51.3 ties, 5.23 keeps the stored head), and the logits differ by as much as the heads do:
    refused, not guessed."""
    if head is None or (head.shape == embeddings.shape and torch.equal(head.float(), embeddings)):
        return
    gap = f"max |difference| {(head.float() - embeddings).abs().max().item():.3g}" if head.shape == embeddings.shape else f"shape {list(head.shape)}"
    raise InputError(f"{cfg_path}: tie_word_embeddings is true but {folder} also holds an lm_head.weight that differs from {name} "
                     f"({gap}): set tie_word_embeddings to false to import the separate head, or remove lm_head.weight to tie them")


def load_weights(model, state, folder):
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # a tensor of another shape than config.json says
        raise InputError(f"{folder}: the weights do not match config.json's sizes ({str(e).splitlines()[-1].strip()[:120]})") from None


def import_hf(folder, out):
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise InputError(f"{cfg_path}: not found")
    hf = read_json(cfg_path)
    if not isinstance(hf, dict) or hf.get("model_type") not in ("llama", "gpt2"):
        raise InputError(f"{cfg_path}: model_type {hf.get('model_type') if isinstance(hf, dict) else hf!r}, expected 'llama' or 'gpt2'")
    try:
        model = (gpt2_from_hf if hf["model_type"] == "gpt2" else llama_from_hf)(hf, cfg_path, folder)
    except KeyError as e:
        raise InputError(f"{cfg_path}: no {e.args[0]} (a {hf['model_type']} config has it)") from None

    tok_path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(tok_path):
        raise InputError(f"{tok_path}: not found (only byte-level BPE tokenizers can be imported)")
    tok = read_json(tok_path)
    if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict) or tok["model"].get("type") != "BPE" \
            or not isinstance(tok["model"].get("vocab"), dict) or "ByteLevel" not in json.dumps(tok.get("pre_tokenizer")):
        raise InputError(f"{tok_path}: not a byte-level BPE tokenizer")
    inv = {c: b for b, c in byte_to_unicode().items()}
    special = {t["content"]: t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    ranks = {}
    for text, i in tok["model"]["vocab"].items():
        if text in special:
            continue
        try:
            ranks[bytes(inv[c] for c in text)] = i
        except KeyError:
            raise InputError(f"{tok_path}: token {text!r} is not in the byte-level alphabet") from None
    pat = None
    for p in (tok.get("pre_tokenizer") or {}).get("pretokenizers", [tok.get("pre_tokenizer") or {}]):
        if p.get("type") == "Split":
            pat = p["pattern"].get("Regex")
    notes = []
    if tok.get("normalizer"):
        notes.append(f"its normalizer ({tok['normalizer'].get('type')}) is not applied")
    if '"add_prefix_space": true' in json.dumps(tok.get("pre_tokenizer")):
        notes.append("its add_prefix_space is not applied")
    n_tokens = max([*ranks.values(), *special.values()]) + 1
    if n_tokens != model.config.vocab_size:  # a padded embedding, or a tokenizer the model cannot read: not one model here
        raise InputError(f"{cfg_path}: vocab_size {model.config.vocab_size} but {tok_path} has {n_tokens} tokens; "
                         "this project needs the two equal, so the import is refused")
    bos = hf.get("bos_token_id")
    eos = hf.get("eos_token_id", bos)
    pad = hf.get("pad_token_id", eos)
    os.makedirs(out, exist_ok=True)
    rank_file = os.path.join(out, "tokenizer.tiktoken")
    atomic_write(rank_file, lambda f: write_ranks(ranks, f))
    info = {"name": os.path.basename(os.path.normpath(folder)), "file": "tokenizer.tiktoken", "vocab_size": model.config.vocab_size,
            "sha256": tokenizer_sha256(rank_file, pat or PAT_STR, special),
            "pat_str": pat or PAT_STR, "special_tokens": special, "bos_id": bos if bos is not None else eos, "eos_id": eos,
            "pad_id": pad if pad is not None else eos, "mask_id": special.get("<|mask|>", special.get("<mask>"))}
    atomic_write(os.path.join(out, "meta.json"), lambda f: json.dump({"tokenizer": info, "imported_from": folder}, f, indent=1), mode="w")
    save_checkpoint(os.path.join(out, "ckpt.pt"), model_checkpoint(model, info, config={"data_dir": ""}, step=0))  # the tokenizer is beside it
    for note in notes:
        print(f"note: the imported tokenizer differs from {tok_path}: {note}")
    return os.path.join(out, "ckpt.pt")


# -----------------------------------------------------------------------------------------------
# A BabyLM submission: every milestone of a run as a Hub revision


def checkpoint_record(path):
    """A checkpoint's dict, its tensors memory-mapped, not read (the checks of a run read only its plain values)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, pickle garbage: one line, as checkpoint.read_checkpoint says it
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})") from None


def planned_milestones(checkpoints_at):
    """{label: words} of a run's checkpoints_at (an official list, 'babylm', expands to its counts)."""
    counts = [n for e in checkpoints_at for n in (BABYLM_MILESTONES[e] if e in BABYLM_MILESTONES else [parse_words(e)]) if n]
    return {milestone_label(n): n for n in sorted(counts)}


def differences(config, reference, keys=None):
    """'key value (the run: other)' for the recipe keys of `config` that differ from the run's: the keys a resumed
    run may not change (run_dir.RESUMABLE_KEYS may; paths, PATH_KEYS, may move, their contents are compared apart)."""
    keys = keys if keys is not None else [k for k in config if k not in RESUMABLE_KEYS | PATH_KEYS]
    return [f"{k}={config.get(k)!r} (the run: {reference.get(k)!r})" for k in keys if config.get(k) != reference.get(k)]


def not_this_runs(label, ck, planned, run_ckpt):
    """Why the milestone checkpoint `ck` (a dict) in folder `label` is not one of the run whose last.pt is `run_ckpt`,
    or None. A milestone records the recipe, tokenizer, step and words seen (train.save_milestones), not the inputs'
    hashes, so those are compared: the recipe, the tokenizer, and words seen against the run's words per step r, which
    last.pt gives to within a word (W = floor(S r) at its step S, so floor(s r) lies in (s W / S - 1, s (W + 1) / S))."""
    if label not in planned:
        return f"{label} is not a milestone of the run's checkpoints_at={','.join(map(str, run_ckpt['config'].get('checkpoints_at') or [])) or '(none)'}"
    diff = differences(ck.get("config") or {}, run_ckpt["config"])
    if diff:
        return "written with " + "; ".join(diff[:3])
    if (ck.get("tokenizer") or {}).get("sha256") != run_ckpt["tokenizer"].get("sha256"):
        return "written with another tokenizer"
    s, w, S, W, n = ck.get("step", 0), ck.get("words_seen", 0), run_ckpt.get("step", 0), run_ckpt.get("words_seen", 0), planned[label]
    if S and not (s * W - S < w * S < s * (W + 1)):
        return f"{w:,} words seen at step {s}, where the run sees {W / S:,.1f} words a step"
    if w < n or (S and (s - 1) * W >= n * S):
        return f"written at step {s} ({w:,} words seen), not the first step that reaches {n:,} words"
    return None


def run_revisions(path):
    """[(revision, checkpoint)] of a run: its milestones chck_<words>/ckpt.pt in the order of words seen, then
    main, the final model: the run's ckpt.pt, or the checkpoint file `path` names. Refused in one line, before any
    work: a milestone the run's log.jsonl says it reached that is missing, a milestone that is not this run's, and a
    main that is not (its recipe and inputs, the sha256 of train.bin, val.bin and the teachers, against last.pt's)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: not found (--all_checkpoints expects a run folder, or a checkpoint in one)")
    run, final = (path, os.path.join(path, "ckpt.pt")) if os.path.isdir(path) else (os.path.dirname(os.path.abspath(path)), path)
    if not os.path.isfile(final):
        raise InputError(f"{final}: checkpoint not found (the final model, main)")
    last, log_path = os.path.join(run, "last.pt"), os.path.join(run, "log.jsonl")
    run_ckpt = checkpoint_record(last if os.path.isfile(last) else final)
    if not isinstance(run_ckpt.get("config"), dict) or "tokenizer" not in run_ckpt:
        raise InputError(f"{last if os.path.isfile(last) else final}: not a checkpoint of a training run (no config)")
    planned = planned_milestones(run_ckpt["config"].get("checkpoints_at") or [])
    found = dict(run_milestones(run))
    log = read_log(log_path)
    reached = max((e.get("words_seen", 0) for e in log), default=0)
    if not found and not any(n <= reached for n in planned.values()):
        raise InputError(f"{run}: no milestone checkpoints chck_<words>/ckpt.pt (train with --checkpoints_at=babylm, or e.g. 1M,2M)")
    if not log:
        raise InputError(f"{log_path}: not found or empty; --all_checkpoints reads from the run's log which milestones it reached")
    for label, n in planned.items():
        if n <= reached and label not in found:
            raise InputError(f"{os.path.join(run, label, 'ckpt.pt')}: missing; {log_path} records {reached:,} words seen, past this milestone "
                             f"of the run's checkpoints_at ({n:,} words): restore it, or export without it by moving the run's milestones away")
    for label, ckpt_path in found.items():
        why = not_this_runs(label, checkpoint_record(ckpt_path), planned, run_ckpt)
        if why:
            raise InputError(f"{ckpt_path}: not a milestone of this run ({why}); move it away")
    main_ckpt = checkpoint_record(final)
    inputs, run_inputs = main_ckpt.get("inputs") or {}, run_ckpt.get("inputs") or {}
    diff = differences(main_ckpt.get("config") or {}, run_ckpt["config"]) + differences(inputs, run_inputs, sorted(set(inputs) & set(run_inputs)))
    if diff and os.path.abspath(final) != os.path.abspath(last):
        raise InputError(f"{final}: not a checkpoint of the run in {run} (" + "; ".join(diff[:3]) + ")")
    return sorted(found.items(), key=lambda kv: planned[kv[0]]) + [("main", final)]


def upload_commands(folders, repo="REPO_ID"):
    """The commands that upload each exported folder as its revision, with the `hf` command of huggingface_hub 1.x
    and 2.x (huggingface-cli is gone there). hf upload creates a missing branch (from main); main goes last, so a
    branch never starts from a final model uploaded before it."""
    return [f"hf upload {repo} {folder} ." + (f" --revision {rev}" if rev != "main" else "") for rev, folder in folders]


def hub_module():
    """huggingface_hub, imported only for --push (optional, not a requirement)."""
    try:
        import huggingface_hub
    except ImportError:
        raise InputError("--push needs the huggingface_hub package: pip install huggingface_hub (or upload with the printed commands)") from None
    return huggingface_hub


def push(hub, repo, folders):
    """Upload each folder as its revision of the Hub model repository `repo`: create the repository and each
    milestone's branch if missing, then upload_folder(..., revision=branch); main last."""
    api = hub.HfApi()
    api.create_repo(repo, exist_ok=True)
    for rev, folder in folders:
        if rev != "main":
            api.create_branch(repo, branch=rev, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=folder, revision=rev, commit_message=f"{rev}: exported by babydistill export_hf.py")
        print(f"uploaded {folder} to {repo} (revision {rev})")


# -----------------------------------------------------------------------------------------------
# A local Hugging Face Hub cache of the revisions (the layout of huggingface_hub's file_download.py)

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")  # huggingface_hub's validate_repo_id, with the namespace
CACHE_MARKER = "babydistill_export.json"  # in models--ORG--NAME/: what export_hf.py wrote (the Hub's own files ignore it)


def hub_repo_folder(cache, repo_id):
    return os.path.join(cache, "models--" + repo_id.replace("/", "--"))


def write_hub_cache(cache, repo_id, folders):
    """models--ORG--NAME in the cache folder: per revision, refs/<rev> holds a commit id and snapshots/<commit>/
    holds the folder's files as relative links to blobs/<sha256> (a file shared by revisions is stored once).
    Built beside it, then swapped in: an interrupted export leaves the old repository or the new one."""
    repo = hub_repo_folder(cache, repo_id)
    partial = repo + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    commits = {}
    try:
        for rev, folder in folders:
            files = {name: file_sha256(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}
            commit = hashlib.sha1("".join(f"{name} {sha}\n" for name, sha in files.items()).encode()).hexdigest()
            for name, sha in files.items():
                blob, link = os.path.join(partial, "blobs", sha), os.path.join(partial, "snapshots", commit, name)
                if not os.path.exists(blob):
                    os.makedirs(os.path.dirname(blob), exist_ok=True)
                    shutil.copyfile(os.path.join(folder, name), blob)
                if not os.path.lexists(link):
                    os.makedirs(os.path.dirname(link), exist_ok=True)
                    os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
            atomic_write(os.path.join(partial, "refs", rev), lambda f: f.write(commit), mode="w")  # no newline: the Hub's own refs
            commits[rev] = commit
        atomic_write(os.path.join(partial, CACHE_MARKER), lambda f: json.dump({"repo_id": repo_id, "revisions": commits}, f, indent=1), mode="w")
        replace_folder(partial, repo)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return repo, commits


# -----------------------------------------------------------------------------------------------
# Where an export may write

EXPORT_KEYS = {
    "export or import": {
        "ckpt": ("", "project checkpoint to export (with --all_checkpoints: a run folder, or a checkpoint in one)"),
        "from_hf": ("", "Hugging Face model folder to import"),
        "out": ("", "output folder (written whole: built beside it, then swapped in)"),
        "data_dir": ("", "prepared data folder with the tokenizer; empty = the one the checkpoint records"),
        "overwrite": (False, "replace --out even if it holds files that no export or import wrote"),
    },
    "a BabyLM submission": {
        "all_checkpoints": (False, "export the run's chck_* milestones and its final model, one folder per Hub revision: "
                                   "OUT/chck_1M, ..., OUT/main"),
        "push": ("", "a Hub model repository (user/name): upload every exported folder as its revision (needs huggingface_hub)"),
        "hub_cache": ("", "also write the revisions as a local Hugging Face Hub cache in this folder (DIR/models--ORG--NAME), "
                          "which from_pretrained(ORG/NAME, revision=...) reads offline; needs --repo_id"),
        "repo_id": ("", "the Hub repository name ORG/NAME of --hub_cache (and of the printed upload commands)"),
    },
}

# What an export (the first five) or an import (the last three) writes: a folder holding only these may be replaced.
OUTPUT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "ckpt.pt", "meta.json", "tokenizer.tiktoken"}


def run_files(folder):
    """The files of a training run directly in `folder`: ckpt.pt, last.pt, log.jsonl and milestones chck_*/ckpt.pt;
    the ckpt.pt of an import (its meta.json records imported_from) is export_hf.py's own, not a run's."""
    try:
        names = set(os.listdir(folder))
    except OSError:  # not a folder, or one we may not read
        return []
    found = [name for name in ("last.pt", "log.jsonl") if name in names]
    if "ckpt.pt" in names and not imported(folder):
        found.insert(0, "ckpt.pt")
    return found + sorted(f"{n}/ckpt.pt" for n in names if n.startswith("chck_") and os.path.isfile(os.path.join(folder, n, "ckpt.pt")))


def imported(folder):
    try:
        return "imported_from" in json.load(open(os.path.join(folder, "meta.json")))
    except (OSError, ValueError, TypeError):
        return False


def check_not_in_run(path, what):
    """Export never writes into a run: `path` (replaced whole) may not be, lie inside or hold a folder with a run's files."""
    real = os.path.realpath(path)
    folder = real
    while True:  # the folder itself and every folder above it
        if run_files(folder):
            where = "is" if folder == real else f"lies inside {folder}, which is"
            raise InputError(f"{what}={path} {where} a run's folder (it holds {', '.join(run_files(folder)[:3])}): export never writes "
                             "into a run; choose a folder outside it (e.g. hf/NAME)")
        if os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    for root, dirs, _ in os.walk(real) if os.path.isdir(real) else ():  # and every folder below it, which replacing it would delete
        for d in dirs:
            if run_files(os.path.join(root, d)):
                raise InputError(f"{what}={path} holds a run's folder {os.path.join(root, d)} (with {', '.join(run_files(os.path.join(root, d))[:3])}): "
                                 "replacing it would delete that run; choose another folder")


def check_out(out, source, overwrite):
    """Refuse, before any work, an --out whose replacement would delete the input or files of something else."""
    out_real, source_real = os.path.realpath(out), os.path.realpath(source)
    if source_real == out_real or source_real.startswith(out_real + os.sep):
        raise InputError(f"--out={out} holds the input {source}: replacing it would delete the input; choose another --out")
    check_not_in_run(out, "--out")
    if os.path.isdir(out) and not overwrite:  # an export, an import, or the revision folders of --all_checkpoints
        others = sorted(name for name in os.listdir(out) if name not in OUTPUT_FILES
                        and not (os.path.isdir(os.path.join(out, name)) and (name == "main" or name.startswith("chck_"))))
        if others:
            shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
            raise InputError(f"--out={out} holds {shown}, not an earlier export: choose a new or empty folder "
                             "(or --overwrite=True to replace it whole)")


def check_hub_cache(args):
    """--hub_cache and --repo_id, before any work: a valid name, a writable folder, no run and no --out inside or around
    the repository folder, and a models--ORG--NAME that export_hf.py wrote (a download of that name is not replaced
    without --overwrite=True)."""
    if not args.repo_id:
        raise InputError("--hub_cache needs --repo_id=ORG/NAME, the name from_pretrained will be given")
    if not REPO_ID.fullmatch(args.repo_id) or "--" in args.repo_id or ".." in args.repo_id or len(args.repo_id) > 96:
        raise InputError(f"--repo_id={args.repo_id}: expected ORG/NAME (letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters)")
    check_writable_dir(args.hub_cache, "--hub_cache")
    repo = hub_repo_folder(args.hub_cache, args.repo_id)
    check_not_in_run(repo, "--hub_cache")
    a, b = os.path.realpath(repo), os.path.realpath(args.out)
    if a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep):
        raise InputError(f"--hub_cache={args.hub_cache}: its {os.path.basename(repo)} and --out={args.out} overlap; choose folders apart")
    if os.path.isdir(repo) and not os.path.isfile(os.path.join(repo, CACHE_MARKER)) and not args.overwrite:
        raise InputError(f"--hub_cache={args.hub_cache}: {repo} holds a repository that export_hf.py did not write (a download?): "
                         "choose another --repo_id (or --overwrite=True to replace it)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = load_config(EXPORT_KEYS, argv or ["--help"], __doc__)
    if bool(args.ckpt) == bool(args.from_hf):
        raise InputError("give exactly one of --ckpt (export) and --from_hf (import)")
    if args.from_hf and (args.all_checkpoints or args.push or args.hub_cache):
        raise InputError("--all_checkpoints, --push and --hub_cache export a run of this project (--ckpt), not an import (--from_hf)")
    check_writable_dir(args.out, "--out")  # empty, a file, under a file or read-only: before any work
    check_out(args.out, args.ckpt or args.from_hf, args.overwrite)
    if args.hub_cache:
        check_hub_cache(args)
    hub = hub_module() if args.push else None  # a missing package: one line now, not after the export
    revisions = run_revisions(args.ckpt) if args.all_checkpoints else [("main", args.ckpt)]
    out = os.path.normpath(args.out)
    partial = out + ".partial"  # an interrupted export never leaves a mix of an old and a new model
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if args.from_hf:
            import_hf(args.from_hf, partial)
        for rev, path in revisions if args.ckpt else ():
            export(path, os.path.join(partial, rev) if args.all_checkpoints else partial, args.data_dir or None)
        replace_folder(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"wrote {out}" + (f": {', '.join(rev for rev, _ in revisions)}" if args.all_checkpoints else ""))
    if args.ckpt:
        folders = [(rev, os.path.join(out, rev) if args.all_checkpoints else out) for rev, _ in revisions]
        if args.hub_cache:
            repo, _ = write_hub_cache(args.hub_cache, args.repo_id, folders)
            print(f"wrote the Hub cache {repo} (revisions {', '.join(rev for rev, _ in folders)}); offline, e.g. "
                  f"HF_HUB_CACHE={args.hub_cache} HF_HUB_OFFLINE=1 and from_pretrained({args.repo_id!r}, revision={folders[0][0]!r})")
        if args.push:
            push(hub, args.push, folders)
        else:
            print("upload to the Hugging Face Hub (pip install huggingface_hub; hf auth login), each folder as its "
                  "revision: --push=REPO_ID does it, or\n  " + "\n  ".join(upload_commands(folders, args.repo_id or "REPO_ID")))
    return out


if __name__ == "__main__":
    run_main(main)
