"""
Stage 2: pretrain a Llama (a teacher, or a same-size baseline) on the prepared BabyLM tokens.

    python train_teacher.py configs/tiny_teacher1.py                     # CPU, tiny, a few minutes
    python train_teacher.py configs/tiny_gpt2_teacher.py                 # a GPT-2 (gpt2.py): BabyLlama's other teacher
    python train_teacher.py configs/teacher1.py                          # one GPU: BabyLlama-2 345M teacher
    torchrun --nproc_per_node=8 train_teacher.py configs/teacher1.py     # 8 GPUs, same global batch
    python train_teacher.py configs/teacher1.py --lr=5e-4 --out_dir=out/t1b  # --key=value overrides
    python train_teacher.py configs/teacher1.py --resume=True            # continue from out_dir/last.pt
    python train_teacher.py configs/tiny_antlm.py                        # AntLM: CLM and MLM epochs alternate
    python train_teacher.py configs/teacher1.py --track=strict-small     # refused if it breaks BabyLM's rules
    python train_teacher.py --help                                       # every key, its default and meaning

A teacher is the plain causal language model trained by train.py's loop (train.CausalLM: next-token
cross-entropy); arch="gpt2" makes it BabyLlama's GPT-2 (gpt2.py) instead of the Llama. This file adds the
one other objective a teacher may have, AntLM's alternation of causal-LM and masked-LM epochs (Yu et al.,
arXiv 2412.03275), set by objective="clm:4,mlm:16,clm:4".

AntLM trains one model alternately with the causal-LM objective (causal attention) and a masked-LM objective
(bidirectional attention), whole epochs at a time; for BabyLlama the reported schedule is 4 epochs CLM,
16 epochs MLM, 4 epochs CLM, about +1 point of BabyLM macro-average over the baseline at equal epochs.
MLM here: 15% of the input positions (never position 0) are selected; of those 80% become <|mask|>, 10% a
random token, 10% stay (BERT, arXiv 1810.04805); attention is bidirectional and the loss covers selected
positions only. The read-out is shifted, as in GPT-BERT's masked next-token prediction (Charpentier &
Samuel, arXiv 2410.24159): the output at position t predicts the original token at t+1, so the output head
keeps one meaning, "the next token", in both phases. (The AntLM paper's own read-out is not public.)
Evaluation (validation CE, BLiMP) is always causal.
"""

import os
import sys

import torch

from checkpoint import build_model, config_from_dict
from config import InputError, load_config, merge_keys, run_main, runtime
from data import load_tokenizer, split_words
from run_dir import run_inputs, start_run, take_out_dir
from train import TRAIN_KEYS, CausalLM, Windows, check_train_config, finish, micro_batch_seed, model_config, plan_run, train

TEACHER_KEYS = merge_keys(TRAIN_KEYS, {
    "objective": {
        "objective": ("clm", "'clm', 'mlm', or an AntLM schedule of epochs per phase, e.g. 'clm:4,mlm:16,clm:4'"),
        "mlm_probability": (0.15, "share of positions selected in MLM phases (BERT: 15%, then 80/10/10)", "0..1"),
    },
})


def parse_objective(text):
    """[(phase, epochs or None)]: "clm" -> [("clm", None)]; "clm:4,mlm:16" -> [("clm", 4.0), ("mlm", 16.0)]."""
    if text in ("clm", "mlm"):
        return [(text, None)]
    schedule = []
    for part in text.split(","):
        name, _, epochs = part.strip().partition(":")
        try:
            value = float(epochs)
        except ValueError:
            value = -1.0
        if name not in ("clm", "mlm") or not value > 0:
            raise InputError(f"objective={text!r}: expected 'clm', 'mlm' or phases like 'clm:4,mlm:16,clm:4' (bad part {part.strip()!r})")
        schedule.append((name, value))
    return schedule


def schedule_epochs(schedule):
    """The run length an AntLM schedule sets (the sum of its phases' epochs), or None for 'clm' / 'mlm' alone."""
    return sum(epochs for _, epochs in schedule) if schedule[0][1] is not None else None


def mask_tokens(x, y, probability, mask_id, n_regular, generator):
    """MLM inputs and targets from a window (x, y = x shifted by one), with the shifted read-out above."""
    select = torch.rand(x.shape, generator=generator) < probability
    select[:, 0] = False  # position 0 is never predicted by an earlier output
    action = torch.rand(x.shape, generator=generator)
    random_tokens = torch.randint(0, n_regular, x.shape, generator=generator)
    x = x.clone()
    x[select & (action < 0.8)] = mask_id
    swap = select & (action >= 0.8) & (action < 0.9)
    x[swap] = random_tokens[swap]
    targets = torch.full_like(y, -1)
    targets[:, :-1] = torch.where(select[:, 1:], y[:, :-1], -1)  # output t predicts the original token t+1
    return x, targets


class AntLM(CausalLM):
    """Which phase a step trains, and its batches. Everything is a function of the step (and micro-step and
    rank), so a resumed run continues in the right phase, with the same masks."""

    def __init__(self, model, cfg, steps_per_epoch, tok_info):
        super().__init__(model, cfg)
        self.schedule = parse_objective(cfg.objective)
        self.epochs = schedule_epochs(self.schedule)  # the schedule sets the run's length
        self.steps_per_epoch, self.probability, self.seed = steps_per_epoch, cfg.mlm_probability, cfg.seed
        if "mask_id" not in tok_info:
            raise InputError("the tokenizer has no <|mask|> token: re-run prepare_data.py")
        self.mask_id, self.n_regular = tok_info["mask_id"], tok_info["bos_id"]  # ranks 0..bos_id-1 are BPE tokens

    def phase(self, step):
        boundary = 0.0
        for name, epochs in self.schedule:
            if epochs is None:  # a single objective ("mlm") has no end
                return name
            boundary += epochs
            if step < round(boundary * self.steps_per_epoch):
                return name
        return self.schedule[-1][0]

    def inputs(self, b):
        """(inputs, targets, causal): the causal flag has two values, so a compiled loss has two graphs at most."""
        if self.phase(b.step) == "clm":
            return b.x, b.y, True
        g = torch.Generator().manual_seed(micro_batch_seed(self.seed, b.step, b.micro, b.rank))
        xm, ym = mask_tokens(b.x.cpu(), b.y.cpu(), self.probability, self.mask_id, self.n_regular, g)
        return xm.to(b.x.device), ym.to(b.y.device), False

    def log_fields(self, step):
        return {"phase": self.phase(step)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(TEACHER_KEYS, argv or ["--help"], __doc__)
    check_train_config(cfg)
    epochs = schedule_epochs(parse_objective(cfg.objective))
    rt = runtime(cfg)
    _, tok_info = load_tokenizer(cfg.data_dir)
    train_w = Windows(os.path.join(cfg.data_dir, "train.bin"), cfg.seq_len, tok_info["vocab_size"])
    plan_run(cfg, rt.world, train_w.n, epochs, split_words(cfg.data_dir))  # the batch, the run's length, milestones, BabyLM's rules: before any work
    inputs = run_inputs(cfg.data_dir)
    start = take_out_dir(cfg, rt, start_run(cfg, tok_info, rt, inputs))
    torch.manual_seed(cfg.seed)
    model = build_model(config_from_dict(start["model_config"]) if start else model_config(cfg, tok_info)).to(rt.device)
    if start:
        model.load_state_dict(start["model"])
    if cfg.objective == "clm":
        objective = CausalLM(model, cfg)
    else:
        objective = AntLM(model, cfg, train_w.n // cfg.batch_size, tok_info)
    summary = train(cfg, rt, model, objective, train_w, tok_info, start=start, inputs=inputs)
    finish(summary, "", cfg.out_dir)
    if rt.ddp:
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    run_main(main)
