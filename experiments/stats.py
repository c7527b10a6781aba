"""
Confidence intervals for "is model A better than model B?" on the same evaluation items (numpy only).

    from experiments.stats import blimp_diff_ci, ce_diff_ci, seeds_diff_ci, verdict
    ci = blimp_diff_ci(correct_student, correct_baseline, paradigms)   # per-pair 0/1 arrays, same pairs
    print(verdict(ci, "student - baseline BLiMP accuracy (points)"))
    ci = ce_diff_ci(ce_student, ce_baseline)                           # per-window test CE, same windows
    ci = seeds_diff_ci(val_ce_student_seeds, val_ce_baseline_seeds)    # one number per seed and model

(a) and (b) are paired bootstraps (Efron & Tibshirani 1993, ch. 13; the percentile interval): both models
were scored on the same items, so the items are resampled together and the variation that the two models
share cancels, which makes the interval much narrower than two separate intervals. For BLiMP the headline
is the unweighted mean over paradigms of the per-paradigm accuracy (BabyLM 2024 protocol), so the pairs
are resampled within each paradigm (a stratified bootstrap): every resample keeps each paradigm's size and
the same definition of the score.
(c) across seeds is a Student t interval of the mean difference, not a bootstrap: with 2 to 5 seeds a
bootstrap has only a handful of distinct resamples and its percentile interval is far too narrow.

What the evaluation scripts would have to write for (a) and (b): eval_blimp.py, per task, the 0/1
correctness of every pair in file order (e.g. "correct": [1, 0, ...] beside "acc", or one JSON line per
pair with its UID, pair_id and both sentence scores); the test-CE evaluation, the mean CE of every window
(over the same fixed window indices for every model) instead of only the overall mean.
"""

import math
from collections import namedtuple

import numpy as np

CI = namedtuple("CI", "diff lo hi level method")


def _percentile_ci(point, boots, level, method):
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return CI(float(point), float(lo), float(hi), level, method)


def blimp_diff_ci(correct_a, correct_b, paradigms=None, n_boot=10_000, level=0.95, seed=0):
    """Paired bootstrap CI of accuracy(A) - accuracy(B) in percentage points, on the same pairs.

    correct_a, correct_b: 0/1 arrays of the same shape, (pairs,) or (seeds, pairs): pair i of A and of B is
    the same minimal pair; with seeds, row s of A and of B are models of seed s and the difference is the
    mean over seeds. A pair is resampled as one item with all its seeds: the seeds share the test items, so
    pooling them must not count a pair as S independent pairs (that would shrink the interval by sqrt(S)).
    paradigms: optional labels, one per pair; then the score is the unweighted mean over paradigms of the
    per-paradigm accuracy and pairs are resampled within each paradigm.

    Summed over S seeds, a pair's difference is an integer in [-S, S], so a resample of a paradigm's n pairs
    is fully described by how many of each value it draws: a multinomial(n, observed shares) draw. That is
    the same distribution as resampling the pairs one by one, in O(n_boot) memory per paradigm."""
    a, b = np.atleast_2d(np.asarray(correct_a, dtype=np.int64)), np.atleast_2d(np.asarray(correct_b, dtype=np.int64))
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"correct_a and correct_b must be non-empty arrays of the same shape, (pairs,) or (seeds, pairs) ({a.shape} vs {b.shape})")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("correctness arrays must hold only 0 and 1")
    n_seeds, n_pairs = a.shape
    labels = np.zeros(n_pairs, dtype=np.int64) if paradigms is None else np.unique(np.asarray(paradigms), return_inverse=True)[1].ravel()
    if len(labels) != n_pairs:
        raise ValueError(f"paradigms has {len(labels)} labels for {n_pairs} pairs")
    rng = np.random.default_rng(seed)
    d = (a - b).sum(axis=0)  # (pairs,): integers in [-S, S]
    groups = np.unique(labels)
    point, boots = 0.0, np.zeros(n_boot)
    for g in groups:  # tens of paradigms: a short loop; each is vectorised over the resamples
        dg = d[labels == g]
        n = len(dg)
        values, counts = np.unique(dg, return_counts=True)
        draws = rng.multinomial(n, counts / n, size=n_boot)  # (n_boot, distinct values)
        boots += draws @ values / (n * n_seeds)
        point += dg.mean() / n_seeds
    scale = 100.0 / len(groups)  # unweighted mean over paradigms, in points
    return _percentile_ci(point * scale, boots * scale, level, "paired bootstrap, pairs resampled within each paradigm")


def ce_diff_ci(ce_a, ce_b, n_boot=10_000, level=0.95, seed=0, chunk=1000):
    """Paired bootstrap CI of mean(ce_a) - mean(ce_b) over the same windows (resampling windows).
    ce_a, ce_b: (windows,) or (seeds, windows); with seeds a window is resampled with all its seeds (they
    share the test windows) and the difference is the mean over seeds.
    (Equal-size windows: the mean of per-window CE is the per-token CE.)"""
    a, b = np.atleast_2d(np.asarray(ce_a, dtype=np.float64)), np.atleast_2d(np.asarray(ce_b, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"ce_a and ce_b must be non-empty arrays of the same shape, (windows,) or (seeds, windows) ({a.shape} vs {b.shape})")
    rng = np.random.default_rng(seed)
    d = (a - b).mean(axis=0)  # (windows,)
    boots = np.empty(n_boot)
    for start in range(0, n_boot, chunk):  # chunks bound the memory: chunk x n indices at a time
        m = min(chunk, n_boot - start)
        boots[start : start + m] = d[rng.integers(0, len(d), size=(m, len(d)))].mean(axis=1)
    return _percentile_ci(d.mean(), boots, level, "paired bootstrap over windows")


def t_quantile(q, df):
    """The q-quantile (q > 0.5) of Student's t with df degrees of freedom, by integrating its density in
    theta = arctan(t) (a bounded integrand for every df >= 1) and interpolating the cumulative sum."""
    theta = np.linspace(0.0, math.pi / 2, 5001)[:-1]  # 1e-5 accurate for df >= 1, q <= 0.999
    t = np.tan(theta)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    dens = np.exp(logc - (df + 1) / 2 * np.log1p(t * t / df)) / np.cos(theta) ** 2  # pdf(t) dt/dtheta
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(theta))])
    return float(np.tan(np.interp(q, cdf, theta)))


def seeds_diff_ci(values_a, values_b, paired=False, level=0.95):
    """t interval of mean(A) - mean(B) over seeds. paired=True when seed i of A and of B share something
    (the same data order, the same teachers): then it is the one-sample t interval of the differences;
    otherwise Welch's interval (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    q = (1 + level) / 2
    if paired:
        if a.shape != b.shape or len(a) < 2:
            raise ValueError("paired seeds: two arrays of the same length, at least 2 seeds")
        d = a - b
        half = t_quantile(q, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        return CI(float(d.mean()), float(d.mean() - half), float(d.mean() + half), level, f"paired t interval, {len(d)} seeds")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("at least 2 seeds per model for an interval across seeds")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = a.mean() - b.mean()
    if va + vb == 0:
        return CI(float(diff), float(diff), float(diff), level, "Welch t interval (no spread)")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(q, df) * math.sqrt(va + vb)
    return CI(float(diff), float(diff - half), float(diff + half), level, f"Welch t interval, {len(a)} and {len(b)} seeds")


def excludes_zero(ci):
    return ci.lo > 0 or ci.hi < 0


def verdict(ci, what="A - B"):
    """One sentence: the difference, its interval, and whether the interval excludes zero."""
    sign = "A is higher" if ci.lo > 0 else "B is higher" if ci.hi < 0 else "no difference is shown"
    return (f"{what} = {ci.diff:+.4g}, {100 * ci.level:.0f}% CI [{ci.lo:+.4g}, {ci.hi:+.4g}] ({ci.method}): "
            + (f"the interval excludes zero ({sign})." if excludes_zero(ci) else f"the interval includes zero ({sign})."))
