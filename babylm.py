"""
The rules of the BabyLM challenge, as a run follows them: words seen, the intermediate checkpoints (milestones), and
the budget of a track (2025 call, arXiv 2502.10645; 2026 call, arXiv 2602.20092; github.com/babylm/evaluation-pipeline-2025,
"Submission Requirements"; docs/babylm.md says more).

    python train_teacher.py configs/tiny_teacher1.py --checkpoints_at=100k,1M          # milestones at these words seen
    python distill.py configs/student.py --track=strict-small --checkpoints_at=babylm   # a submission: the official ones

train.py calls plan_milestones and check_track when it plans a run (plan_run) and words_seen at every logged step;
export_hf.py and experiments/curves.py read a run's milestones back (run_milestones).
"""

import math
import os
import re
from fractions import Fraction

from config import InputError

# BabyLM counts progress in words seen: whitespace-separated words, repetitions included. A step trains on
# batch_size x seq_len tokens, so words_seen(step) = step x batch_size x seq_len x words / tokens of
# train.bin (the corpus's own ratio, boundary tokens included), rounded down: exact fractions, so the step
# at which a milestone is reached is arithmetic, not a float comparison that a rounding could move.

TRACKS = {"strict-small": 10_000_000, "strict": 100_000_000}  # words of training data a track allows
MAX_EPOCHS = 10  # 2025 and 2026: at most 10 epochs (strict-small: at most 100M words seen; strict: 1B)
BABYLM_MILESTONES = {  # the revisions the pipeline's fast evaluation reads (collate_preds.py's *_FAST_REVISIONS)
    "babylm": [n * 10**6 for n in (*range(1, 10), *range(10, 101, 10))],  # strict-small: 1M..9M, 10M..100M (19)
    "babylm_strict": [n * 10**6 for n in (*range(1, 10), *range(10, 100, 10), *range(100, 1001, 100))],  # strict: to 1000M (28)
}
UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def words_seen(plan, step):
    return math.floor(step * plan.words_per_step)


def parse_words(entry):
    """A word count from 5000, '500k', '1M', '2.5M' or '1B' (k, M, B: thousand, million, billion); None if it is not one."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmb]?)", str(entry).strip().lower())
    words = Fraction(m[1]) * UNITS[m[2]] if m else Fraction(0)
    return int(words) if words > 0 and words.denominator == 1 else None


def milestone_label(words):
    """The folder and Hub revision of a milestone: chck_1M, chck_500k, chck_1000M (as the pipeline names them)."""
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if words % size == 0:
            return f"chck_{words // size}{unit}"
    return f"chck_{words}"


def run_milestones(out_dir):
    """[(label, checkpoint path)] of the milestones a run has written, in the order of words seen (what
    export_hf.py --all_checkpoints and experiments/curves.py read)."""
    folders = [name for name in os.listdir(out_dir) if name.startswith("chck_") and parse_words(name[len("chck_"):])]
    for name in folders:  # a milestone that lost its checkpoint was silently left out of the curves
        if not os.path.isfile(os.path.join(out_dir, name, "ckpt.pt")):
            raise InputError(f"{os.path.join(out_dir, name)}: a milestone folder without its ckpt.pt; restore it, or move the folder away")
    return [(name, os.path.join(out_dir, name, "ckpt.pt")) for _, name in sorted((parse_words(n[len("chck_"):]), n) for n in folders)]


def plan_milestones(cfg, plan):
    """{step: [label, ...]}: the first step at which words_seen reaches each milestone of checkpoints_at. A count
    beyond the run's planned end is refused (a milestone that would never be written); the official lists keep
    the milestones the run reaches, as the organisers ask ("up until the one you trained"). An official list of
    which the run reaches none is refused under a track (a submission without its checkpoints), else noted
    (print_header: unreached_list)."""
    end, official, asked = words_seen(plan, plan.max_iters), set(), set()
    for entry in cfg.checkpoints_at:
        if entry in BABYLM_MILESTONES:
            if cfg.track != "none" and (short := unreached_list(entry, end)):
                raise InputError(f"checkpoints_at={entry} with track={cfg.track}: {short}, so a submission would have no "
                                 "intermediate checkpoint; train longer (max_iters or epochs)")
            official.update(n for n in BABYLM_MILESTONES[entry] if n <= end)
        elif (n := parse_words(entry)) is None:
            raise InputError(f"checkpoints_at: {entry!r} is not a word count; expected counts such as 500k,1M,2.5M (k, M, B), "
                             f"or {' or '.join(map(repr, BABYLM_MILESTONES))}")
        elif n > end:
            raise InputError(f"checkpoints_at: {entry} lies beyond the run's planned length ({plan.max_iters} steps, "
                             f"{end:,} words seen): raise max_iters or epochs, or drop it")
        else:
            asked.add(n)
    milestones = {}
    for n in sorted(official | asked):
        milestones.setdefault(math.ceil(n / plan.words_per_step), []).append(milestone_label(n))
    return milestones


def unreached_list(entry, end):
    """What to say when a run planned for `end` words seen reaches none of the official list `entry`; None if it reaches one."""
    first = BABYLM_MILESTONES[entry][0]
    if first <= end:
        return None
    return f"the run is planned for {end:,} words seen, short of the first milestone {milestone_label(first)} ({first:,} words)"


def check_track(cfg, plan, words):
    """The challenge's two rules, before any work: the training data within the track's words, at most 10 epochs.
    An epoch is the run's own (steps / steps per epoch): the conservative count, since the windows of an epoch
    leave a remainder of train.bin unseen. Data that trained ancillary models counts too: the tokenizer and the
    teachers learn from this same train.bin, so they add no words (the README says more)."""
    if cfg.track == "none":
        return
    if words > TRACKS[cfg.track]:
        raise InputError(f"track={cfg.track}: {os.path.join(cfg.data_dir, 'train.bin')} holds {words:,} words of training data; "
                         f"the {cfg.track} track allows at most {TRACKS[cfg.track]:,} (BabyLM rules, arXiv 2502.10645)")
    epochs = plan.max_iters / plan.sampler.steps_per_epoch
    if epochs > MAX_EPOCHS:
        raise InputError(f"track={cfg.track}: the run is planned for {epochs:g} epochs ({plan.max_iters} steps, "
                         f"{plan.sampler.steps_per_epoch} per epoch); BabyLM allows at most {MAX_EPOCHS} epochs "
                         f"(at most {MAX_EPOCHS * TRACKS[cfg.track] // 10**6}M words seen in {cfg.track}; arXiv 2502.10645)")
