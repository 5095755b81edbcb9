"""Small statistics used by the evaluation: bootstrap intervals, rank correlation, AUROC.

Percentile bootstrap (Efron & Tibshirani 1993): resample items with replacement, recompute the
statistic, take the 2.5th and 97.5th percentiles. Paired resampling (same indices for both models)
when a difference between two models on the same prompts is wanted.

Cluster bootstrap (Davison & Hinkley 1997, sec. 3.8): when items come in clusters that share
content (the embedded world's eval prompts ask about ~10 entities and 8 harmful requests in many
phrasings; each prompt's `cluster`), items of one cluster are not independent, and resampling
items understates the uncertainty. `cluster_bootstrap_ci` resamples whole clusters instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

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


def _cluster_index(values: Sequence[float], clusters: Sequence) -> tuple[np.ndarray, list[np.ndarray]]:
    x = np.asarray(values, dtype=float)
    if len(clusters) != len(x):
        raise ValueError(f"cluster_bootstrap_ci needs one cluster per value, got {len(clusters)} for {len(x)}")
    groups: dict = {}
    for i, c in enumerate(clusters):
        if not np.isnan(x[i]):
            groups.setdefault(c, []).append(i)
    return x, [np.asarray(v) for _, v in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def cluster_bootstrap_ci(values: Sequence[float], clusters: Sequence, n: int = 1000, seed: int = 0,
                         alpha: float = 0.05, stat: Callable[[np.ndarray], float] = np.mean
                         ) -> tuple[float, float, float]:
    """(estimate, low, high) of `stat` over `values`, resampling whole clusters with replacement
    (as many as there are; `clusters[i]` names value i's cluster). The estimate is over all items;
    with one cluster (or n <= 0) the interval is the estimate itself, as for one item."""
    x, groups = _cluster_index(values, clusters)
    if not groups:
        return (math.nan, math.nan, math.nan)
    est = float(stat(np.concatenate([x[g] for g in groups])))
    if len(groups) == 1 or n <= 0:
        return (est, est, est)
    idx = np.random.default_rng(seed).integers(0, len(groups), size=(n, len(groups)))
    if stat is np.mean:  # sums and counts per cluster: no concatenation per draw
        sums = np.array([x[g].sum() for g in groups])
        counts = np.array([len(g) for g in groups])
        boots = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    else:
        boots = np.array([stat(np.concatenate([x[groups[j]] for j in row])) for row in idx])
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (est, float(lo), float(hi))


def paired_cluster_diff_ci(a: Sequence[float], b: Sequence[float], clusters: Sequence, n: int = 1000, seed: int = 0,
                           alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high) resampling whole clusters, the same for both (a[i], b[i] paired)."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"paired_cluster_diff_ci needs equal lengths, got {a_.shape} and {b_.shape}")
    return cluster_bootstrap_ci(a_ - b_, clusters, n=n, seed=seed, alpha=alpha)


def cluster_bootstrap_ratio_diff(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float],
                                 den_b: Sequence[float], clusters: Sequence, n: int = 1000, seed: int = 0,
                                 alpha: float = 0.05) -> tuple[float, float, float]:
    """(sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b), low, high): two pooled rates measured on the same
    items (say, labelers' agreement and a model's accuracy on the same comparisons), resampling whole
    clusters for both at once."""
    parts = [np.asarray(v, dtype=float) for v in (num_a, den_a, num_b, den_b)]
    if any(len(p) != len(clusters) for p in parts):
        raise ValueError("cluster_bootstrap_ratio_diff needs one cluster per item")
    keys = {c: i for i, c in enumerate(sorted({str(c) for c in clusters}))}
    which = np.array([keys[str(c)] for c in clusters], dtype=int)
    sums = np.stack([np.bincount(which, weights=p, minlength=len(keys)) for p in parts])  # (4, clusters)

    def gap(s: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return s[0] / s[1] - s[2] / s[3]

    est = float(gap(sums.sum(axis=1)))
    if len(keys) < 2 or n <= 0:
        return (est, est, est)
    idx = np.random.default_rng(seed).integers(0, len(keys), size=(n, len(keys)))
    boots = gap(sums[:, idx].sum(axis=2))
    lo, hi = np.nanpercentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (est, float(lo), float(hi))


def ci_text(w: dict[str, Any], fmt: str = ".3f") -> str:
    """An {estimate, low, high} interval as "est [low, high]"."""
    return f"{w['estimate']:{fmt}} [{w['low']:{fmt}}, {w['high']:{fmt}}]"


def change_verdict(ci: tuple[float, float, float], up: str = "better", down: str = "worse") -> str:
    """How a difference's interval reads: `up` or `down` only when it excludes 0, else
    "no significant change" (never "better" or "worse" on an interval that covers 0)."""
    est, lo, hi = ci
    if any(math.isnan(v) for v in (est, lo, hi)):
        return "not measured"
    return up if lo > 0 else down if hi < 0 else "no significant change"


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
