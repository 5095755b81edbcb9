"""The RM's validation prompts ask nothing its training prompts ask (whole content clusters)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from chatrlhf.config import WorldConfig
from chatrlhf.lm.rankings import assign_splits
from chatrlhf.world import World
from chatrlhf.world.tasks import content_keys


@pytest.fixture(scope="module")
def rm_prompts() -> list[dict]:
    return World.generate(WorldConfig()).prompts("rm")


def test_rm_validation_split_is_by_content(rm_prompts):
    splits = assign_splits(rm_prompts, 0.1, random.Random(0))
    val = [p for p, s in zip(rm_prompts, splits) if s == "val"]
    train = [p for p, s in zip(rm_prompts, splits) if s == "train"]
    assert 0.06 * len(rm_prompts) <= len(val) <= 0.14 * len(rm_prompts)
    assert not {p["cluster"] for p in val} & {p["cluster"] for p in train}
    # what a validation prompt asks (its cluster; an opening greeting is context) is never trained on
    train_keys = set().union(*(content_keys(p) for p in train))
    assert not {p["cluster"] for p in val} & train_keys
    # every task family is represented on both sides, facts included (whole entities held out)
    assert set(Counter(p["task"] for p in val)) == set(Counter(p["task"] for p in train))
    assert assign_splits(rm_prompts, 0.1, random.Random(0)) == splits  # deterministic for a seed


def test_assign_splits_without_clusters_and_edge_cases():
    plain = [{"id": f"p{i}", "messages": []} for i in range(10)]
    s = assign_splits(plain, 0.2, random.Random(1))
    assert s.count("val") == 2
    assert assign_splits(plain, 0.0, random.Random(1)) == ["train"] * 10
    one_cluster = [{"id": f"p{i}", "cluster": "entity:X"} for i in range(4)]
    s = assign_splits(one_cluster, 0.25, random.Random(1))  # one cluster: split by prompt
    assert s.count("val") == 1
    tiny = [{"id": "a", "cluster": "list:x"}, {"id": "b", "cluster": "list:y"}]
    assert sorted(assign_splits(tiny, 0.9, random.Random(0))) == ["train", "val"]
