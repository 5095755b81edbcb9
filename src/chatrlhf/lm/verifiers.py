"""Rule-based rewards for prompts whose answer can be checked (RL with verifiable rewards).

Human comparisons teach the RM what people prefer; a tiny RM learns slowly whether "lemon" really
is the last item of the list in the prompt. Where a prompt comes with a checkable answer, a rule
says so exactly, as in Tulu 3's RLVR (Lambert et al. 2024) and DeepSeek-R1's rule-based rewards.
PPO's reward then is the RM score plus `ppo.reward.verifier_coef` times the check's score in [0, 1], on
prompts that carry a `ground_truth`; other prompts get the RM score alone.

A prompt row's `ground_truth` is one of:

    {"type": "one_of", "answer": "lemon", "options": ["fig", "banana", "lemon"]}
        the answer is named; naming k of the options (the answer among them) scores 1/k
    {"type": "number", "answer": 3}          the first number written (digits or one..twenty)
    {"type": "repeat", "word": "lantern", "n": 3}
        the word n times; 1 - |count - n| / n, less 0.05 per other word (at most 4)
    {"type": "mentions", "all": ["iron", ["Traiquith Grairk", "Traiquith"]]}
        the fraction of entries named; an entry that is a list is satisfied by any of its forms

Matching is case-insensitive on whole words, with an optional leading "the" and plural "s"/"es".
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

NUMBER_WORDS = {w: n for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
TYPES = ("one_of", "number", "repeat", "mentions")


@lru_cache(maxsize=8192)
def _pattern(phrase: str) -> re.Pattern:
    core = re.escape(re.sub(r"^the\s+", "", phrase.lower().strip()))
    return re.compile(r"(?<![a-z0-9])(?:the\s+)?" + core + r"(?:e?s)?(?![a-z0-9])")


def mentions(text: str, phrase: str) -> bool:
    return _pattern(phrase).search(text.lower()) is not None


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def first_number(text: str, number_words: dict[str, int] = NUMBER_WORDS) -> int | None:
    """The first number the text writes, in digits or as one of `number_words`."""
    for w in words(text):
        if w.isdigit():
            return int(w)
        if w in number_words:
            return number_words[w]
    return None


def check(spec: dict[str, Any], response: str) -> float:
    """The response's score in [0, 1] under one ground-truth spec."""
    kind = spec.get("type")
    if kind == "one_of":
        named = [o for o in spec.get("options") or [spec["answer"]] if mentions(response, o)]
        return 1.0 / len(named) if mentions(response, spec["answer"]) else 0.0
    if kind == "number":
        return float(first_number(response) == int(spec["answer"]))
    if kind == "repeat":
        ws, n = words(response), int(spec["n"])
        k = sum(w == spec["word"].lower() for w in ws)
        return max(0.0, 1.0 - abs(k - n) / n) * (1.0 - 0.05 * min(4, len(ws) - k))
    if kind == "mentions":
        entries = spec["all"]
        hit = sum(any(mentions(response, f) for f in ([e] if isinstance(e, str) else e)) for e in entries)
        return hit / len(entries) if entries else 0.0
    raise ValueError(f"ground_truth: unknown type {kind!r}; expected one of {', '.join(TYPES)}")


def verify(prompt: dict[str, Any], response: str) -> float | None:
    """Score of `response` under the prompt's `ground_truth`; None when the prompt has none."""
    spec = prompt.get("ground_truth")
    if not spec:
        return None
    try:
        return check(spec, response)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"prompt {prompt.get('id', '?')}: bad ground_truth {spec!r}: {e}") from e


def verifier_scores(prompts: list[dict[str, Any]], responses: list[str]) -> tuple[list[float], list[bool]]:
    """Per response: its check score (0 where the prompt has no ground truth) and whether it had one."""
    scores = [verify(p, r) for p, r in zip(prompts, responses)]
    return [s or 0.0 for s in scores], [s is not None for s in scores]


def checked_mean(checks: list[float], has: list[bool]) -> float | None:
    """Mean check score over the responses whose prompt has a ground truth (None when none has)."""
    scored = [c for c, h in zip(checks, has) if h]
    return sum(scored) / len(scored) if scored else None
