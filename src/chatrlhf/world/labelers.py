"""Simulated labelers: who writes the demonstrations, who ranks samples, and how much they agree.

A labeler's utility for a response is (InstructGPT's labelers judged by the same criteria, each
with their own taste and attention):

    utility = gold.total + style_weight * style_term(response) + N(0, noise^2)

"concise" labelers prefer short answers, "detailed" ones one extra helpful sentence. Held-out
labelers (`held_out: true`) write no demonstrations and rank nothing for training: eval asks
them, as InstructGPT measured generalisation to held-out labelers.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any, Callable

from chatrlhf.lm.verifiers import words
from chatrlhf.world.gold import Gold, length_spec
from chatrlhf.world.writing import FLAWS_BY_TASK, comply, flawed, ideal, rude

GROUPS = ("concise", "detailed")


def make_labeler_specs(seed: int, n: int, n_held_out: int, noise: float) -> list[dict]:
    """Labeler records for labelers.jsonl; groups alternate, held-out ones come from both groups."""
    rng = random.Random(f"{seed}-labelers")
    specs = [{"id": f"L{i + 1:02d}", "group": GROUPS[i % 2], "noise": round(noise / 10 * rng.uniform(0.6, 1.4), 4),
              "style_weight": round(rng.uniform(0.04, 0.12), 4), "variant": rng.randrange(3), "held_out": False}
             for i in range(n)]
    # held-out: alternate from the end so both groups are represented
    for k in range(min(n_held_out, n)):
        specs[n - 1 - k]["held_out"] = True
    return specs


def as_random(rng: Any, fallback: random.Random) -> random.Random:
    """Accept a random.Random, an int seed, a numpy Generator or None."""
    if rng is None:
        return fallback
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, int):
        return random.Random(rng)
    if hasattr(rng, "integers"):  # numpy.random.Generator
        return random.Random(int(rng.integers(0, 2**62)))
    raise TypeError(f"rng must be random.Random, int, numpy Generator or None, got {type(rng).__name__}")


class SimulatedLabeler:
    """One simulated labeler; `gold` is the world's rubric (prompt, response) -> Gold."""

    def __init__(self, spec: dict, gold: Callable[[dict, str], Gold]):
        self.spec = spec
        self.id: str = spec["id"]
        self.group: str = spec["group"]
        self.noise: float = float(spec["noise"])
        self.style_weight: float = float(spec["style_weight"])
        self.held_out: bool = bool(spec["held_out"])
        self._gold = gold
        self._rng = random.Random(f"labeler-{self.id}")

    def __repr__(self) -> str:
        return f"SimulatedLabeler({self.id}, {self.group}, noise={self.noise}, held_out={self.held_out})"

    def style_term(self, prompt: dict, response: str) -> float:
        """In [-1, 1]. s = length relative to the task's target; concise dislikes s > 0, detailed
        likes up to twice the target (one extra sentence) and dislikes rambling beyond."""
        _, target, _ = length_spec(prompt.get("task", "open"), prompt.get("reference") or {})
        s = (len(words(response)) - target) / max(1, target)
        if self.group == "concise":
            return -min(1.0, max(0.0, s))
        return max(-1.0, min(s, 1.0) if s <= 1 else 1.0 - 2.0 * (s - 1.0))

    def utilities(self, prompt: dict, responses: Sequence[str], rng: Any = None) -> list[float]:
        """One noisy utility per response; identical texts get identical utilities (and tie)."""
        r = as_random(rng, self._rng)
        noise: dict[str, float] = {}
        out = []
        for text in responses:
            if text not in noise:
                noise[text] = r.gauss(0.0, self.noise)
            out.append(self._gold(prompt, text).total + self.style_weight * self.style_term(prompt, text) + noise[text])
        return out

    def rank(self, prompt: dict, responses: Sequence[str], rng: Any = None) -> list[int]:
        """Rank per response, 1 = best; equal utilities share a rank (competition ranking)."""
        u = self.utilities(prompt, responses, rng)
        return [1 + sum(v > x for v in u) for x in u]

    def likert(self, prompt: dict, response: str, rng: Any = None) -> tuple[int, dict[str, bool]]:
        """InstructGPT's 1-7 overall score plus its metadata flags."""
        u = self.utilities(prompt, [response], rng)[0]
        return int(round(1 + 6 * min(1.0, max(0.0, u)))), dict(self._gold(prompt, response).flags)

    def compare(self, prompt: dict, a: str, b: str, rng: Any = None) -> float:
        """1.0 when a is preferred, 0.0 when b is, 0.5 for a tie."""
        ua, ub = self.utilities(prompt, [a, b], rng)
        return 1.0 if ua > ub else 0.0 if ub > ua else 0.5


# --- demonstrations ---------------------------------------------------------------------------


def write_demonstrations(prompts: list[dict], labelers: list[SimulatedLabeler], seed: int, quality: float,
                         facts) -> list[dict]:
    """One demonstration per SFT prompt by a training labeler: ideal with probability `quality`
    (in the labeler's style), otherwise one of the task's flaws."""
    rng = random.Random(f"{seed}-demos")
    train = [lab for lab in labelers if not lab.held_out]
    if not train:
        raise ValueError("world.n_held_out_labelers leaves no labeler to write demonstrations")
    demos = []
    for i, p in enumerate(prompts):
        lab = rng.choice(train)
        if rng.random() < quality:
            variant = lab.spec.get("variant") if rng.random() < 0.7 else None
            text, kind = ideal(p, rng, lab.group, facts, variant=variant), "ideal"
        else:
            flaw = rng.choice(FLAWS_BY_TASK.get(p["task"], ["padded"]))
            text, kind = flawed(p, flaw, rng), f"flawed:{flaw}"
        messages = [*p["messages"], {"role": "assistant", "content": text}]
        demos.append({"id": f"demo-{i:05d}", "prompt_id": p["id"], "task": p["task"], "labeler": lab.id,
                      "quality": kind, "messages": messages})
    return demos


# --- agreement ----------------------------------------------------------------------------------


def candidate_responses(prompt: dict, rng: random.Random, facts) -> list[str]:
    """Responses of varied quality for one prompt: ideal in both styles, every flaw, corpus-like."""
    out = [ideal(prompt, rng, "concise", facts), ideal(prompt, rng, "detailed", facts)]
    out += [flawed(prompt, f, rng) for f in FLAWS_BY_TASK.get(prompt["task"], [])]
    out.append(rude(prompt, rng))
    if prompt["task"] == "harmful":
        out.append(comply(prompt, rng))
    return list(dict.fromkeys(out))


def agreement(prompts: list[dict], labelers: list[SimulatedLabeler], facts, seed: int, n: int,
              gold: Callable[[dict, str], Gold]) -> dict:
    """Pairwise agreement on `n` fixed comparisons: overall, per labeler pair, train/held-out groups,
    and each labeler's agreement with the gold rubric."""
    rng = random.Random(f"{seed}-agreement")
    comps = []
    for _ in range(n):
        p = rng.choice(prompts)
        a, b = rng.sample(candidate_responses(p, rng, facts), 2)
        comps.append((p, a, b))
    choices = {lab.id: [lab.compare(p, a, b, random.Random(f"{seed}-{lab.id}-{i}")) for i, (p, a, b) in enumerate(comps)]
               for lab in labelers}
    gold_choice = [1.0 if gold(p, a).total > gold(p, b).total else 0.0 if gold(p, b).total > gold(p, a).total else 0.5
                   for p, a, b in comps]

    def agree(x: list[float], y: list[float]) -> float:
        return sum(u == v for u, v in zip(x, y)) / max(1, len(x))

    pairs = {f"{a.id}-{b.id}": agree(choices[a.id], choices[b.id]) for a, b in itertools.combinations(labelers, 2)}
    group = {"train": [], "held_out": [], "train_vs_held_out": []}
    for a, b in itertools.combinations(labelers, 2):
        key = "held_out" if a.held_out and b.held_out else "train" if not (a.held_out or b.held_out) else "train_vs_held_out"
        group[key].append(pairs[f"{a.id}-{b.id}"])
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"n_comparisons": n, "overall": mean(list(pairs.values())),
            **{k: mean(v) for k, v in group.items()},
            "with_gold": {lab.id: round(agree(choices[lab.id], gold_choice), 4) for lab in labelers},
            "pairs": {k: round(v, 4) for k, v in pairs.items()}}
