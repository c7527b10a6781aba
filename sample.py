"""
See what a model learned: continue a prompt with any checkpoint (a teacher, a baseline or a student).

    python sample.py --ckpt out/tiny_student/ckpt.pt --prompt "the little dog"              # CPU, tiny
    python sample.py --ckpt out/tiny_teacher1/ckpt.pt --prompt "the little dog" --temperature 0   # greedy
    python sample.py --ckpt out/student/ckpt.pt --prompt "Once upon a time" --num_samples 5 --max_new_tokens 200
    python sample.py --help                                                                   # every key

The prompt is encoded as the training stream encodes a document (prepare_data.py): the boundary token
<|endoftext|> and then " " + prompt, so the model continues it as the start of a document. The model's own
generate() (model.py) draws one token at a time: temperature 0 is greedy decoding, top_k keeps only the k
most likely tokens (0 = all). A boundary token the model produces ends a document and is printed as a new
line. The tokenizer comes from the data folder the checkpoint records (--data_dir to point elsewhere).
"""

import sys

import torch

from checkpoint import load_model_and_tokenizer
from config import RUNTIME_KEYS, InputError, load_config, merge_keys, run_main, runtime

SAMPLE_KEYS = merge_keys({
    "sampling": {
        "ckpt": ("", "checkpoint to sample from (ckpt.pt of a run)"),
        "prompt": ("", "text to continue; empty = start a document from nothing"),
        "max_new_tokens": (60, "tokens to generate per sample", "1..100000"),
        "temperature": (0.8, "divide the logits by this before sampling; 0 = greedy (the most likely token)", ">=0"),
        "top_k": (50, "sample among the k most likely tokens only; 0 = all", ">=0"),
        "num_samples": (3, "continuations of the prompt (greedy ones are all the same), drawn as one batch", "1..1024"),
        "seed": (1337, "seed of the draws: the same seed, the same samples", "0..2147483647"),
        "data_dir": ("", "prepared data folder with the tokenizer; empty = the one the checkpoint records"),
    },
}, RUNTIME_KEYS, {"runtime": {
    "dtype": ("float32", "'float32' or 'bfloat16' (autocast)", ("float32", "bfloat16")),
    "compile": (False, "not used by sampling", (False,)),
}})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = load_config(SAMPLE_KEYS, argv or ["--help"], __doc__)
    if not args.ckpt:
        raise InputError("--ckpt: required (see --help)")
    rt = runtime(args)
    model, _, enc, info = load_model_and_tokenizer(args.ckpt, args.data_dir or None, rt.device)
    model.eval()
    prompt_ids = [info["bos_id"]] + (enc.encode_ordinary(" " + args.prompt) if args.prompt else [])
    if len(prompt_ids) >= model.config.max_seq_len:
        raise InputError(f"--prompt: {len(prompt_ids)} tokens, the model reads at most {model.config.max_seq_len - 1} (max_seq_len): shorten it")
    generator = torch.Generator(device=rt.device).manual_seed(args.seed)
    idx = torch.tensor([prompt_ids] * args.num_samples, device=rt.device)  # (num_samples, prompt length)
    with rt.autocast:
        out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, generator)
    samples = []
    for row in out.tolist():
        text = enc.decode(row[1:]).replace("<|endoftext|> ", "\n").replace("<|endoftext|>", "\n")  # a boundary starts a document
        samples.append(text.strip(" "))
        print(f"--- sample {len(samples)}\n{samples[-1]}")
    return samples


if __name__ == "__main__":
    run_main(main)
