"""Cluster bootstrap, change verdicts, and the TruthfulQA judge on non-answers (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chatrlhf.evaluate.stats import (
    bootstrap_ci,
    change_verdict,
    cluster_bootstrap_ci,
    paired_cluster_diff_ci,
    paired_diff_ci,
)


def harmful_like(seed: int, n_clusters: int = 24, n_items: int = 81, p: float = 0.5) -> tuple[list[float], list[int]]:
    """81 prompts over 24 requests: whether a model refuses depends mostly on the request."""
    rng = np.random.default_rng(seed)
    clusters = [i % n_clusters for i in range(n_items)]
    refuses = rng.random(n_clusters) < p
    values = [float(refuses[c] if rng.random() < 0.9 else not refuses[c]) for c in clusters]
    return values, clusters


def test_cluster_bootstrap_is_wider_than_item_bootstrap_when_items_share_content():
    values, clusters = harmful_like(0)
    est, lo, hi = cluster_bootstrap_ci(values, clusters, n=2000, seed=1)
    iest, ilo, ihi = bootstrap_ci(values, n=2000, seed=1)
    assert est == pytest.approx(np.mean(values)) == pytest.approx(iest)
    assert lo < est < hi and (hi - lo) > ihi - ilo
    ratios = []
    for s in range(20):  # 24 requests carry less information than 81 prompts: ~1.5x wider on average
        v, c = harmful_like(s)
        _, lo, hi = cluster_bootstrap_ci(v, c, n=1000, seed=s)
        _, ilo, ihi = bootstrap_ci(v, n=1000, seed=s)
        ratios.append((hi - lo) / (ihi - ilo))
    assert np.mean(ratios) > 1.3, np.mean(ratios)


def test_cluster_bootstrap_covers_the_truth_where_the_item_bootstrap_does_not():
    """Over many worlds whose requests are drawn with p = 0.5, the cluster interval holds 0.5
    about 95% of the time; the item interval, too narrow, much less often."""
    cover_c = cover_i = 0
    reps = 300
    for s in range(reps):
        values, clusters = harmful_like(100 + s)
        _, lo, hi = cluster_bootstrap_ci(values, clusters, n=400, seed=s)
        _, ilo, ihi = bootstrap_ci(values, n=400, seed=s)
        cover_c += lo <= 0.5 <= hi
        cover_i += ilo <= 0.5 <= ihi
    assert cover_c / reps >= 0.88
    assert cover_i / reps < cover_c / reps - 0.1


def test_singleton_clusters_match_the_item_bootstrap_and_edge_cases():
    rng = np.random.default_rng(3)
    x = rng.normal(size=200).tolist()
    _, lo, hi = cluster_bootstrap_ci(x, list(range(200)), n=2000, seed=0)
    _, ilo, ihi = bootstrap_ci(x, n=2000, seed=0)
    assert (hi - lo) == pytest.approx(ihi - ilo, rel=0.15)
    assert cluster_bootstrap_ci([1.0, 0.0, 1.0], ["a", "a", "a"]) == pytest.approx((2 / 3,) * 3)  # one cluster
    assert all(math.isnan(v) for v in cluster_bootstrap_ci([], []))
    est, _, _ = cluster_bootstrap_ci([1.0, float("nan"), 0.0], ["a", "b", "c"])
    assert est == 0.5  # NaN items are dropped
    med = cluster_bootstrap_ci([1, 2, 3, 10], ["a", "a", "b", "b"], stat=np.median, n=200)
    assert med[0] == 2.5 and med[1] <= med[2]
    with pytest.raises(ValueError, match="one cluster per value"):
        cluster_bootstrap_ci([1.0, 2.0], ["a"])
    assert cluster_bootstrap_ci(*harmful_like(5), seed=7) == cluster_bootstrap_ci(*harmful_like(5), seed=7)


def test_paired_cluster_difference_and_verdicts():
    values, clusters = harmful_like(1)
    better = [min(1.0, v + 0.5) for v in values]
    d = paired_cluster_diff_ci(better, values, clusters, seed=0)
    assert d[0] > 0 and d[1] > 0 and change_verdict(d) == "better"
    assert change_verdict(paired_cluster_diff_ci(values, better, clusters)) == "worse"
    noise = paired_diff_ci(values, values[::-1])
    assert change_verdict((0.02, -0.03, 0.07)) == "no significant change"
    assert change_verdict(noise) in ("better", "worse", "no significant change")
    assert change_verdict((0.1, 0.05, 0.2), up="safer", down="less safe") == "safer"
    assert change_verdict((math.nan, math.nan, math.nan)) == "not measured"
    with pytest.raises(ValueError, match="equal lengths"):
        paired_cluster_diff_ci([1.0], [1.0, 2.0], ["a"])


def test_truthfulqa_judge_never_calls_a_non_answer_truthful(monkeypatch):
    """With a stand-in embedding where an empty answer sits closest to a correct reference, the
    judge still calls every non-answer untruthful and uninformative."""
    import chatrlhf.evaluate.toxicity as tox
    from chatrlhf.evaluate.truthfulness import is_non_answer, judge

    def fake_embed(texts):
        out = []
        for t in texts:
            v = np.array([1.0, 0.0]) if ("true" in t or not t.strip() or "comment" in t) else np.array([0.0, 1.0])
            out.append(v)
        return np.stack(out)

    monkeypatch.setattr(tox, "embed", fake_embed)
    refs = (["it is true"], ["it is false"], "it is true")
    answers = ["", "  ", "?!", "I have no comment.", "No comment", "I don't know", "I'm not sure.", "it is true", "it is false"]
    v = judge([refs] * len(answers), answers)
    for a, x in zip(answers[:7], v[:7]):
        assert is_non_answer(a) and x["non_answer"] and not x["truthful"] and not x["informative"], a
    assert v[7]["truthful"] and not v[8]["truthful"]
    assert not is_non_answer("Nobody knows for sure.") and not is_non_answer("0")
