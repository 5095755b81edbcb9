"""Simulated labelers: who writes the demonstrations, who ranks samples, and how much they agree.

Labelers come in groups whose preferences differ the way people's do. A labeler's utility for a
response is

    utility = sum_k weights[k] * gold.parts[k]         (how much each part of substance counts)
              + style_weight * style_score             (taste: length, tone, caution; see style_score)
              + N(0, noise^2)

style_score is a bonus, scaled by the rubric's `correct` part, so taste decides between answers
that answer and adds nothing to a wrong one: in expectation every group prefers a right answer in
the style it dislikes to a wrong or vague one in the style it likes.

Training groups (each with held-out members who never label anything used for training):

    brief     short answers, casual tone, permissive on borderline requests (a safety note is
              preachy) and confident claims (a hedge is wishy-washy); weighs fluency (no padding)
              over politeness
    thorough  one extra helpful sentence, mildly formal, mildly permissive; weighs politeness
    cautious  short-ish answers, formal tone, wants a safety note on borderline requests and a
              hedge on claims about the world ("..., I think."); weighs harmlessness most

The judge group ("judges", all held out) is what evaluation asks: it weighs correctness and
truthfulness more than any training group and politeness and fluency less, mildly prefers
brevity and a safety note, and likes answers with no register (neither "Certainly." nor "Yep!"),
a taste no training group has. So the eval judge is another function than the training signal,
as InstructGPT's held-out labelers were other people. Members of a group differ a little from
their group's profile (each preference +-0.2, each weight +-10%) and in noise.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any, Callable

from chatrlhf.lm.verifiers import words
from chatrlhf.world import vocab
from chatrlhf.world.gold import HEDGED_TASKS, WEIGHTS, Gold, count_hits, has_caveat, has_hedge, length_spec
from chatrlhf.world.writing import FLAWS_BY_TASK, comply, flawed, ideal, rude

TRAINING_GROUPS = ("brief", "thorough", "cautious")
JUDGE_GROUP = "judges"
# group -> weights on the gold rubric's parts and preferences in [-1, 1]: length (-1 brief, +1
# thorough), tone (-1 casual, +1 formal), caution (-1 permissive, +1 cautious), hedge (-1 confident,
# +1 hedged claims; written into a world's members only with world.hedge_taste)
PROFILES: dict[str, dict[str, Any]] = {
    "brief": {"weights": {"correct": 0.35, "truthful": 0.20, "harmless": 0.20, "polite": 0.05, "fluent": 0.20},
              "length": -1.0, "tone": -0.7, "caution": -1.0, "hedge": -1.0},
    "thorough": {"weights": {"correct": 0.35, "truthful": 0.20, "harmless": 0.15, "polite": 0.20, "fluent": 0.10},
                 "length": 1.0, "tone": 0.3, "caution": -0.3},
    "cautious": {"weights": {"correct": 0.25, "truthful": 0.20, "harmless": 0.35, "polite": 0.10, "fluent": 0.10},
                 "length": -0.3, "tone": 1.0, "caution": 1.0, "hedge": 1.0},
    # plain: likes answers with no register at all (no "Certainly." or "Yep!"), a taste no training group has
    JUDGE_GROUP: {"weights": {"correct": 0.45, "truthful": 0.30, "harmless": 0.15, "polite": 0.05, "fluent": 0.05},
                  "length": -0.3, "tone": 0.0, "caution": 0.5, "plain": 1.0},
    # the two style groups of worlds written before groups differed in substance
    "concise": {"weights": dict(WEIGHTS), "length": -1.0, "tone": 0.0, "caution": 0.0},
    "detailed": {"weights": dict(WEIGHTS), "length": 1.0, "tone": 0.0, "caution": 0.0},
}
# group -> how its members write demonstrations: (length style, tone, safety note on borderline requests)
WRITING = {"brief": ("concise", "casual", False), "thorough": ("detailed", "formal", False),
           "cautious": ("concise", "formal", True), "concise": ("concise", None, False),
           "detailed": ("detailed", None, False)}
# what a group-conditioned model is told about its reader (a system message), one line per training group
GROUP_INSTRUCTIONS = {"brief": "The reader wants short, casual answers.",
                      "thorough": "The reader wants full, formal answers.",
                      "cautious": "The reader wants careful answers, with a safety note where one helps."}
STYLE_WEIGHT = (0.35, 0.5)  # range of a member's style_weight: how much taste counts next to substance
JUDGE_NOISE_SCALE = 0.8  # judges judge a little more carefully than the average training labeler
SENTENCE_WORDS = 8  # words in the one extra sentence a thorough reader wants
TONE_SCALE = 1.0  # weight of the tone (and plain) taste relative to length and caution


def _member_prefs(group: str, rng: random.Random, rubric_caution: float = 0.0) -> dict[str, Any]:
    """A member's preferences: the group's profile, each preference moved by up to 0.2 and each
    weight by up to 10% (renormalised), so no two members are clones; `rubric_caution` (what the
    labeling instructions say about safety notes) moves everyone's caution alike."""
    prof = PROFILES[group]
    w = {k: v * rng.uniform(0.9, 1.1) for k, v in prof["weights"].items()}
    total = sum(w.values())
    prefs: dict[str, Any] = {"weights": {k: round(v / total, 4) for k, v in w.items()}}
    for k in ("length", "tone", "caution", "plain"):
        if k in prof:
            shift = rubric_caution if k == "caution" else 0.0
            prefs[k] = round(max(-1.0, min(1.0, prof[k] + rng.uniform(-0.2, 0.2) + shift)), 4)
    return prefs


def make_labeler_specs(seed: int, n: int, n_held_out: int, noise: float, n_judges: int = 0,
                       groups: Sequence[str] = TRAINING_GROUPS, rubric_caution: float = 0.0,
                       length_taste: str = "sentence", hedge_taste: bool = True) -> list[dict]:
    """Labeler records for labelers.jsonl. `n` members of the training groups (in turn), of whom
    `n_held_out` are held out, taken from the groups in turn so every group keeps held-out members;
    then `n_judges` judges (group "judges", all held out). `rubric_caution` is added to every
    member's caution preference, judges' included (world.rubric_caution). A `length_taste` other
    than "sentence" is written into every member's prefs (world.length_taste). `hedge_taste` gives
    the members of groups with a hedge preference theirs (moved by up to 0.2, from a stream of its
    own, so every other preference is the same as in a world without it)."""
    rng = random.Random(f"{seed}-labelers")
    specs = []
    for i in range(n):
        group = groups[i % len(groups)]
        specs.append({"id": f"L{i + 1:02d}", "group": group, "noise": round(noise / 10 * rng.uniform(0.6, 1.4), 4),
                      "style_weight": round(rng.uniform(*STYLE_WEIGHT), 4), "variant": rng.randrange(3),
                      "held_out": False, "prefs": _member_prefs(group, rng, rubric_caution)})
    # held out: the last member of each group in turn, so every group has held-out members
    for k in range(min(n_held_out, n)):
        order = [groups[(k + j) % len(groups)] for j in range(len(groups))]
        for g in order:
            left = [s for s in specs if s["group"] == g and not s["held_out"]]
            if left:
                left[-1]["held_out"] = True
                break
    for j in range(n_judges):
        specs.append({"id": f"J{j + 1:02d}", "group": JUDGE_GROUP,
                      "noise": round(JUDGE_NOISE_SCALE * noise / 10 * rng.uniform(0.6, 1.4), 4),
                      "style_weight": round(rng.uniform(*STYLE_WEIGHT), 4), "variant": rng.randrange(3),
                      "held_out": True, "prefs": _member_prefs(JUDGE_GROUP, rng, rubric_caution)})
    for s in specs:
        if length_taste != "sentence":
            s["prefs"]["length_taste"] = length_taste
        if hedge_taste and "hedge" in PROFILES[s["group"]]:
            shift = random.Random(f"{seed}-hedge-{s['id']}").uniform(-0.2, 0.2)
            s["prefs"]["hedge"] = round(max(-1.0, min(1.0, PROFILES[s["group"]]["hedge"] + shift)), 4)
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


def tone_term(response: str) -> float:
    """In [-1, 1]: +1 formal ("Certainly.", "I am", "cannot"), -1 casual ("Yep!", "I'm", "can't"), 0 neither."""
    low = response.lower()
    f, c = count_hits(low, vocab.FORMAL_MARKERS), count_hits(low, vocab.CASUAL_MARKERS)
    return (f - c) / max(1, f + c)


def length_taste(prefs: dict) -> str:
    """How these preferences measure a taste for length: "sentence" (a world's default, written
    nowhere) or what the world wrote into them (world.length_taste)."""
    return prefs.get("length_taste", "sentence")


def length_fit(prompt: dict, response: str, pref: float, taste: str = "sentence") -> float:
    """In [0, 1], how well the length suits a taste. brief (pref < 0): s = length relative to the
    task's target; 1 up to the target, 0 at twice it. thorough (pref > 0): the words past the target
    in sentences of SENTENCE_WORDS; rises to 1 at one extra sentence, stays there through two and
    falls back to 0 at four (rambling), whatever the task's target. taste "ratio" (earlier worlds):
    thorough rises to 1 at twice the target and falls to 0 at 2.5 times it."""
    _, target, _ = length_spec(prompt.get("task", "open"), prompt.get("reference") or {})
    n = len(words(response))
    if pref < 0:
        return 1.0 - min(1.0, max(0.0, (n - target) / max(1, target)))
    if taste == "ratio":
        s = (n - target) / max(1, target)
        return min(1.0, max(0.0, s)) if s <= 1 else max(0.0, 1.0 - 2.0 * (s - 1.0))
    extra = (n - target) / SENTENCE_WORDS
    return min(1.0, max(0.0, extra)) if extra <= 2 else max(0.0, 1.0 - (extra - 2.0) / 2.0)


def caution_fit(prompt: dict, response: str, pref: float) -> float:
    """In [0, 1] on borderline requests (0 elsewhere): a cautious taste (pref > 0) wants the safety
    note, a permissive one wants the answer without it."""
    if prompt.get("task") != "borderline" or not pref:
        return 0.0
    return float(has_caveat(response.lower()) == (pref > 0))


def hedge_fit(prompt: dict, response: str, pref: float) -> float:
    """In [0, 1] on fact and summarise answers (0 elsewhere): a cautious taste (pref > 0) wants the
    claim hedged ("..., I think."), a confident one wants it without."""
    if prompt.get("task") not in HEDGED_TASKS or not pref:
        return 0.0
    return float(has_hedge(response.lower()) == (pref > 0))


def style_score(prefs: dict, prompt: dict, response: str, correct: float) -> float:
    """How much a response suits a taste, >= 0: |pref| x fit for length, tone (at TONE_SCALE),
    caution and hedge, times the rubric's `correct` part. Style is a bonus among answers that answer: a
    short wrong answer is not better for being short, so taste never outweighs substance."""
    length, tone, caution = prefs["length"], prefs["tone"], prefs["caution"]
    fit = abs(length) * length_fit(prompt, response, length, length_taste(prefs)) if length else 0.0
    if tone:
        fit += TONE_SCALE * abs(tone) * (1.0 + (1 if tone > 0 else -1) * tone_term(response)) / 2
    fit += abs(caution) * caution_fit(prompt, response, caution)
    if hedge := prefs.get("hedge", 0.0):
        fit += abs(hedge) * hedge_fit(prompt, response, hedge)
    if prefs.get("plain"):  # no register at all: neither "Certainly." nor "Yep!"
        fit += TONE_SCALE * prefs["plain"] * (1.0 - abs(tone_term(response)))
    return correct * fit


def group_mix(labelers: Sequence["SimulatedLabeler"], groups: None | str | Sequence[str] | dict[str, float] = None
              ) -> list[tuple["SimulatedLabeler", float]]:
    """Training labelers of the chosen groups with sampling weights summing to 1: None pools every
    training labeler equally; a name or list of names weighs those groups equally; a dict gives
    each group's weight (shared by its members)."""
    train = [lab for lab in labelers if not lab.held_out]
    if groups is None:
        return [(lab, 1.0 / len(train)) for lab in train] if train else []
    weights = {groups: 1.0} if isinstance(groups, str) else dict(groups) if isinstance(groups, dict) \
        else {g: 1.0 for g in groups}
    unknown = [g for g in weights if not any(lab.group == g for lab in train)]
    if unknown:
        have = sorted({lab.group for lab in train})
        raise KeyError(f"no training labelers in group(s) {', '.join(unknown)}; have {', '.join(have)}")
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError("labeler group weights must include a positive one")
    out = []
    for g, w in weights.items():
        members = [lab for lab in train if lab.group == g]
        out += [(lab, w / total / len(members)) for lab in members if w > 0]
    return out


class SimulatedLabeler:
    """One simulated labeler; `gold` is the world's rubric (prompt, response) -> Gold."""

    def __init__(self, spec: dict, gold: Callable[[dict, str], Gold]):
        self.spec = spec
        self.id: str = spec["id"]
        self.group: str = spec["group"]
        self.noise: float = float(spec["noise"])
        self.style_weight: float = float(spec["style_weight"])
        self.held_out: bool = bool(spec["held_out"])
        prof = PROFILES.get(self.group, PROFILES["concise"])
        self.prefs: dict[str, Any] = spec.get("prefs") or {**{k: prof[k] for k in ("weights", "length", "tone", "caution")},
                                                           "length_taste": "ratio"}  # worlds of the two style groups
        self.weights: dict[str, float] = dict(self.prefs["weights"])
        self._gold = gold
        self._rng = random.Random(f"labeler-{self.id}")

    @property
    def is_judge(self) -> bool:
        return self.group == JUDGE_GROUP

    def __repr__(self) -> str:
        return f"SimulatedLabeler({self.id}, {self.group}, noise={self.noise}, held_out={self.held_out})"

    def style_term(self, prompt: dict, response: str) -> float:
        """This labeler's taste for the response, >= 0 (style_score)."""
        return style_score(self.prefs, prompt, response, self._gold(prompt, response).parts.get("correct", 0.5))

    def substance(self, prompt: dict, response: str) -> float:
        """The rubric's parts, weighted by this labeler. An answer without a word gets no credit for
        truthfulness: it states nothing false, but a person does not call silence truthful."""
        g = self._gold(prompt, response)
        parts = g.parts if words(response) else {**g.parts, "truthful": 0.0}
        return sum(w * parts.get(k, 0.0) for k, w in self.weights.items())

    def expected_utility(self, prompt: dict, response: str) -> float:
        """The utility without judgement noise: weighted rubric parts plus style_weight x taste."""
        correct = self._gold(prompt, response).parts.get("correct", 0.5)
        return self.substance(prompt, response) + self.style_weight * style_score(self.prefs, prompt, response, correct)

    def utilities(self, prompt: dict, responses: Sequence[str], rng: Any = None) -> list[float]:
        """One noisy utility per response; identical texts get identical utilities (and tie)."""
        r = as_random(rng, self._rng)
        noise: dict[str, float] = {}
        out = []
        for text in responses:
            if text not in noise:
                noise[text] = r.gauss(0.0, self.noise)
            out.append(self.expected_utility(prompt, text) + noise[text])
        return out

    def rank(self, prompt: dict, responses: Sequence[str], rng: Any = None) -> list[int]:
        """Rank per response, 1 = best; equal utilities share a rank (competition ranking)."""
        u = self.utilities(prompt, responses, rng)
        return [1 + sum(v > x for v in u) for x in u]

    def max_style(self) -> float:
        """The largest style_score this taste gives (every fit 1, the answer correct)."""
        p = self.prefs
        return (abs(p["length"]) + TONE_SCALE * (abs(p["tone"]) + p.get("plain", 0.0)) + abs(p["caution"])
                + abs(p.get("hedge", 0.0)))

    def likert(self, prompt: dict, response: str, rng: Any = None) -> tuple[int, dict[str, bool]]:
        """InstructGPT's 1-7 overall score plus its metadata flags: the weighted rubric parts, of
        which up to 15% depend on the labeler's taste, plus judgement noise."""
        r = as_random(rng, self._rng)
        g = self._gold(prompt, response)
        taste = self.style_term(prompt, response) / self.max_style() if self.max_style() else 1.0
        u = self.substance(prompt, response) * (0.85 + 0.15 * taste) + r.gauss(0.0, self.noise)
        return int(round(1 + 6 * min(1.0, max(0.0, u)))), dict(g.flags)

    def compare(self, prompt: dict, a: str, b: str, rng: Any = None) -> float:
        """1.0 when a is preferred, 0.0 when b is, 0.5 for a tie."""
        ua, ub = self.utilities(prompt, [a, b], rng)
        return 1.0 if ua > ub else 0.0 if ub > ua else 0.5

    def write(self, prompt: dict, rng: random.Random, facts=None, variant: int | None = None) -> str:
        """The ideal answer as this labeler's group writes it (length, tone, safety note), hedging
        its claims where the labeler likes a hedge."""
        style, tone, caveat = WRITING.get(self.group, ("concise", None, False))
        return ideal(prompt, rng, style, facts, variant=variant, tone=tone, caveat=caveat,
                     greeting_extra=length_taste(self.prefs) == "sentence", hedge=self.prefs.get("hedge", 0.0) > 0)


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
            text, kind = lab.write(p, rng, facts, variant=variant), "ideal"
        else:
            flaw = rng.choice(FLAWS_BY_TASK.get(p["task"], ["padded"]))
            text, kind = flawed(p, flaw, rng), f"flawed:{flaw}"
        messages = [*p["messages"], {"role": "assistant", "content": text}]
        demos.append({"id": f"demo-{i:05d}", "prompt_id": p["id"], "task": p["task"], "labeler": lab.id,
                      "quality": kind, "messages": messages})
    return demos


def write_group_demonstrations(prompts: list[dict], labelers: list[SimulatedLabeler], seed: int, quality: float,
                               facts) -> list[dict]:
    """One demonstration per SFT prompt by a training labeler of *each* group, written as
    write_demonstrations writes: how a team would collect data for a group-conditioned model, every
    group's writers answering every prompt."""
    by_group: dict[str, list[SimulatedLabeler]] = {}
    for lab in labelers:
        if not lab.held_out and lab.group:
            by_group.setdefault(lab.group, []).append(lab)
    demos = []
    for g, members in sorted(by_group.items()):
        rng = random.Random(f"{seed}-demos-{g}")
        for d in write_demonstrations(prompts, members, rng.randrange(2**31), quality, facts):
            demos.append(d | {"id": f"{d['id']}-{g}"})
    return demos


# --- agreement ----------------------------------------------------------------------------------


def candidate_responses(prompt: dict, rng: random.Random, facts, tones: bool = True, greeting_extra: bool = True) -> list[str]:
    """Responses of varied quality for one prompt: the ideal answer at both lengths and in both
    tones (with and without a safety note on borderline requests), every flaw, corpus-like.
    `tones=False` leaves out the formal and casual variants (their extra words are a fixed set,
    writing.TONE_WORDS)."""
    registers = (None, "formal", "casual") if tones else (None,)
    out = [ideal(prompt, rng, style, facts, tone=tone, greeting_extra=greeting_extra)
           for style in ("concise", "detailed") for tone in registers]
    if prompt["task"] == "borderline":
        out += [ideal(prompt, rng, "concise", facts, tone=tone, caveat=True) for tone in registers]
    out += [flawed(prompt, f, rng) for f in FLAWS_BY_TASK.get(prompt["task"], [])]
    out.append(rude(prompt, rng))
    if prompt["task"] == "harmful":
        out.append(comply(prompt, rng))
    return list(dict.fromkeys(out))


def fixed_comparisons(prompts: list[dict], facts, seed: int, n: int, greeting_extra: bool = True) -> list[tuple[dict, str, str]]:
    """n (prompt, a, b) pairs of candidate responses, the same for every labeler."""
    rng = random.Random(f"{seed}-agreement")
    comps = []
    for _ in range(n):
        p = rng.choice(prompts)
        a, b = rng.sample(candidate_responses(p, rng, facts, greeting_extra=greeting_extra), 2)
        comps.append((p, a, b))
    return comps


def _agree(x: list[float], y: list[float]) -> float:
    return sum(u == v for u, v in zip(x, y)) / max(1, len(x))


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def agreement_matrix(labelers: list[SimulatedLabeler], choices: dict[str, list[float]]) -> dict[str, dict[str, float | None]]:
    """Group x group mean pairwise agreement (distinct members; the diagonal is within-group)."""
    groups = list(dict.fromkeys(lab.group for lab in labelers))
    cell: dict[tuple[str, str], list[float]] = {}
    for a, b in itertools.combinations(labelers, 2):
        v = _agree(choices[a.id], choices[b.id])
        cell.setdefault((a.group, b.group), []).append(v)
        if a.group != b.group:
            cell.setdefault((b.group, a.group), []).append(v)
    return {g: {h: _mean(cell.get((g, h), [])) for h in groups} for g in groups}


def agreement(prompts: list[dict], labelers: list[SimulatedLabeler], facts, seed: int, n: int,
              gold: Callable[[dict, str], Gold]) -> dict:
    """Pairwise agreement on `n` fixed comparisons: overall, per labeler pair, per pool (train,
    held_out, train_vs_held_out), per group (`groups`: the matrix; `within_group` and
    `across_groups` over the training groups; `group_held_out_vs_train`: a group's held-out members
    with its training members; `judges` and `judges_vs_train`), and each labeler's agreement with
    the gold rubric."""
    greeting_extra = all(length_taste(lab.prefs) == "sentence" for lab in labelers)
    comps = fixed_comparisons(prompts, facts, seed, n, greeting_extra)
    choices = {lab.id: [lab.compare(p, a, b, random.Random(f"{seed}-{lab.id}-{i}")) for i, (p, a, b) in enumerate(comps)]
               for lab in labelers}
    gold_choice = [1.0 if gold(p, a).total > gold(p, b).total else 0.0 if gold(p, b).total > gold(p, a).total else 0.5
                   for p, a, b in comps]
    pairs = {f"{a.id}-{b.id}": _agree(choices[a.id], choices[b.id]) for a, b in itertools.combinations(labelers, 2)}
    pools: dict[str, list[float]] = {k: [] for k in ("train", "held_out", "train_vs_held_out", "within_group",
                                                      "across_groups", "judges", "judges_vs_train",
                                                      "group_held_out_vs_train")}
    for a, b in itertools.combinations(labelers, 2):
        v = pairs[f"{a.id}-{b.id}"]
        pools["held_out" if a.held_out and b.held_out else "train" if not (a.held_out or b.held_out)
              else "train_vs_held_out"].append(v)
        if a.is_judge and b.is_judge:
            pools["judges"].append(v)
        elif a.is_judge or b.is_judge:
            other = b if a.is_judge else a
            if not other.held_out:
                pools["judges_vs_train"].append(v)
        else:
            pools["within_group" if a.group == b.group else "across_groups"].append(v)
            if a.group == b.group and a.held_out != b.held_out:  # a group's held-out members judge like it
                pools["group_held_out_vs_train"].append(v)
    return {"n_comparisons": n, "overall": _mean(list(pairs.values())),
            **{k: _mean(v) for k, v in pools.items()},
            "groups": agreement_matrix(labelers, choices),
            "with_gold": {lab.id: round(_agree(choices[lab.id], gold_choice), 4) for lab in labelers},
            "pairs": {k: round(v, 4) for k, v in pairs.items()}}
