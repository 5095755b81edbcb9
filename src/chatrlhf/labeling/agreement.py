"""Inter-labeler agreement, the way InstructGPT reports it (Ouyang et al. 2022, sec. 3.4: 72.6% among
training labelers): for rankings, the share of response pairs that two labelers order the same way
(pairs either of them tied are left out); for 1-7 scores, the share of items on which two labelers
are within one point. Pooled over every pair of labelers that answered the same item.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any


def ranking_pairs(a: list[int], b: list[int]) -> tuple[int, int]:
    """(agreeing pairs, compared pairs) between two rankings of the same K responses."""
    agree = total = 0
    for i, j in combinations(range(len(a)), 2):
        if a[i] == a[j] or b[i] == b[j]:
            continue
        total += 1
        agree += (a[i] < a[j]) == (b[i] < b[j])
    return agree, total


def likert_pairs(a: int, b: int) -> tuple[int, int]:
    return int(abs(a - b) <= 1), 1


def agreement(kind: str, answers: dict[Any, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """answers: item -> labeler -> stored answer. Returns project-level and per-pair agreement."""
    per_pair: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # agree, total, items
    for by_labeler in answers.values():
        for la, lb in combinations(sorted(by_labeler), 2):
            a, b = by_labeler[la], by_labeler[lb]
            if kind == "rank":
                agree, total = ranking_pairs(a["ranks"], b["ranks"])
            elif kind == "likert":
                agree, total = likert_pairs(a["score"], b["score"])
            else:
                continue  # free-text demonstrations have no agreement measure here
            acc = per_pair[(la, lb)]
            acc[0] += agree
            acc[1] += total
            acc[2] += 1
    pairs = [{"labelers": [la, lb], "items": n, "compared": t, "agreement": (g / t if t else None)}
             for (la, lb), (g, t, n) in sorted(per_pair.items())]
    agree = sum(p[0] for p in per_pair.values())
    total = sum(p[1] for p in per_pair.values())
    measure = {"rank": "share of response pairs ordered the same way",
               "likert": "share of items scored within one point"}.get(kind, "not defined for this kind")
    return {"kind": kind, "measure": measure, "agreement": (agree / total if total else None),
            "compared": total, "items_with_overlap": sum(1 for v in answers.values() if len(v) > 1),
            "pairs": pairs}
