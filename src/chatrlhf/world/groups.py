"""Whose preferences: choosing labeler groups, and naming a group to a conditioned model.

A group-conditioned reward model and policy see the group in a system message (the chat template
carries it, so any HF model can use it); which group a prompt speaks for is drawn by the group
weights, deterministically from the prompt's id, so reruns and rounds agree."""

from __future__ import annotations

import hashlib
from typing import Any

from chatrlhf.world.labelers import GROUP_INSTRUCTIONS


def group_message(group: str) -> dict[str, str]:
    """The system message that names `group`'s reader."""
    if group not in GROUP_INSTRUCTIONS:
        raise KeyError(f"no instruction for labeler group {group!r}; groups: {', '.join(GROUP_INSTRUCTIONS)}")
    return {"role": "system", "content": GROUP_INSTRUCTIONS[group]}


def group_weights(world, labeler_groups: dict[str, float] | None) -> dict[str, float]:
    """Normalised weights of the chosen training groups (None: every training group equally)."""
    weights = dict(labeler_groups) if labeler_groups else {g: 1.0 for g in world.labeler_groups()}
    have = set(world.labeler_groups())
    unknown = [g for g in weights if g not in have]
    if unknown:
        raise KeyError(f"rm.labeler_groups names {', '.join(unknown)}; this world's groups are {', '.join(sorted(have))}")
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError("rm.labeler_groups needs a positive weight")
    return {g: w / total for g, w in weights.items() if w > 0}


def draw_group(weights: dict[str, float], key: str, seed: int = 0) -> str:
    """A group for `key` (a prompt id), in proportion to the weights and the same on every call."""
    u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16 ** 12
    acc = 0.0
    for g, w in sorted(weights.items()):
        acc += w
        if u < acc:
            return g
    return sorted(weights)[-1]


def for_group(prompt: dict[str, Any], group: str) -> dict[str, Any]:
    """The prompt as asked for `group`: its system message first (replacing any other), `group` set."""
    msgs = [m for m in prompt["messages"] if m["role"] != "system"]
    return {**prompt, "messages": [group_message(group), *msgs], "group": group}


def condition(prompts: list[dict[str, Any]], weights: dict[str, float], seed: int = 0) -> list[dict[str, Any]]:
    """Each prompt asked for a group drawn by `weights` (a conditioned policy's training prompts)."""
    return [for_group(p, draw_group(weights, str(p.get("id", i)), seed)) for i, p in enumerate(prompts)]
