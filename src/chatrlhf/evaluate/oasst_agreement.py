"""Do two kinds of OpenAssistant labels agree, per language?

An OpenAssistant message tree ranks sibling replies (`rank`, 0 = best: the merge of the rankers'
orderings) and carries the thumbs other users gave each reply (`emojis`: "+1", "-1"). Published
trees name no ranker, so agreement between rankers cannot be measured from them; whether the
ranking and the thumbs of the same replies point the same way can, and per language (`lang` on each
message), which is where labeling pools differ. A pair counts when its two replies have different
ranks and different net thumbs (+1 minus -1); pairs with equal net thumbs are reported as ties.

    chatrlhf score oasst-agreement ../shared/data/openassistant_oasst_sample/en_100_tree.jsonl
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chatrlhf.evaluate.stats import cluster_bootstrap_ci


def read_trees(path: str | Path) -> list[dict[str, Any]]:
    """OpenAssistant trees, one JSON object per line ({message_tree_id, prompt: node}); .gz is read as gzip."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def net_thumbs(node: dict[str, Any]) -> int:
    emojis = node.get("emojis") or {}
    return int(emojis.get("+1", 0)) - int(emojis.get("-1", 0))


def ranked_pairs(node: dict[str, Any]) -> Iterator[tuple[str, float | None]]:
    """(language, 1.0 agree / 0.0 disagree / None thumbs tie) for every pair of differently ranked
    sibling replies below `node`, the whole subtree walked."""
    ranked = [r for r in node.get("replies", []) if r.get("rank") is not None and not r.get("deleted")]
    for a, b in itertools.combinations(ranked, 2):
        if a["rank"] == b["rank"]:
            continue
        ta, tb = net_thumbs(a), net_thumbs(b)
        lang = a.get("lang") or node.get("lang") or "unknown"
        yield lang, None if ta == tb else float((ta > tb) == (a["rank"] < b["rank"]))
    for r in node.get("replies", []):
        yield from ranked_pairs(r)


def language_agreement(trees: list[dict[str, Any]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """language -> pairs, thumb ties, trees, and the share of untied pairs where the better-ranked
    reply has more net thumbs, with a 95% bootstrap interval resampling whole trees."""
    values: dict[str, list[float]] = defaultdict(list)
    clusters: dict[str, list[str]] = defaultdict(list)
    ties: dict[str, int] = defaultdict(int)
    for i, tree in enumerate(trees):
        for lang, agree in ranked_pairs(tree["prompt"]):
            if agree is None:
                ties[lang] += 1
                continue
            values[lang].append(agree)
            clusters[lang].append(str(tree.get("message_tree_id", i)))
    out = {}
    for lang in sorted(set(values) | set(ties)):
        est, low, high = cluster_bootstrap_ci(values[lang], clusters[lang], seed=seed)
        out[lang] = {"pairs": len(values[lang]) + ties[lang], "thumb_ties": ties[lang],
                     "trees": len(set(clusters[lang])), "agreement": est, "low": low, "high": high}
    return out
