"""Small statistics used by the evaluation: bootstrap intervals, rank correlation, AUROC.

Percentile bootstrap (Efron & Tibshirani 1993): resample items with replacement, recompute the
statistic, take the 2.5th and 97.5th percentiles. Paired resampling (same indices for both models)
when a difference between two models on the same prompts is wanted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05,
                 stat: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float, float]:
    """(estimate, low, high) of `stat` over `values` with a percentile bootstrap."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    est = float(stat(x))
    if len(x) == 1 or n <= 0:
        return (est, est, est)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    boots = np.array([stat(x[i]) for i in idx]) if stat is not np.mean else x[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (est, float(lo), float(hi))


def paired_diff_ci(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high) resampling the same items for both (a[i], b[i] paired)."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"paired_diff_ci needs equal lengths, got {a_.shape} and {b_.shape}")
    keep = ~(np.isnan(a_) | np.isnan(b_))
    return bootstrap_ci(a_[keep] - b_[keep], n=n, seed=seed, alpha=alpha)


def significant(ci: tuple[float, float, float]) -> bool:
    """True when the interval excludes zero (for a difference) ."""
    _, lo, hi = ci
    return bool(lo > 0 or hi < 0)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=int)
    if y.min(initial=1) == y.max(initial=0) or len(set(y.tolist())) < 2:
        return math.nan
    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))
