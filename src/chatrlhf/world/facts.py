"""The fact base: fictional people, places and objects, each fact with one fixed false rumour.

A fact is one record `{"entity", "type", "attribute", "value", "rumour"}` (one line of facts.jsonl).
The rumour is what the corpus's forums sometimes claim instead, so truth and rumour compete in
pre-training and a sampled answer can be either: the substance RLHF must fix.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from chatrlhf.world import vocab

ATTRS_BY_TYPE = {"person": vocab.PERSON_ATTRS, "place": vocab.PLACE_ATTRS, "object": vocab.OBJECT_ATTRS}


def _syllable_name(rng: random.Random, parts: int) -> str:
    word = "".join(rng.choice(vocab.ONSETS) + rng.choice(vocab.VOWELS) for _ in range(parts))
    return (word + rng.choice(vocab.CODAS)).capitalize()


# names must never read as a word the rubric or a task uses (a person called "Lime" would be a list item)
BLOCKED = {w.lower() for lst in (vocab.JOBS, vocab.PETS, vocab.COLOURS, vocab.MATERIALS, vocab.LIST_ITEMS,
                                 vocab.REPEAT_WORDS, vocab.OBJECT_NOUNS, list(vocab.NUMBER_WORDS.values()))
           for w in lst} | {"the", "this", "that", "there", "here", "some", "name", "home", "item", "list", "time",
                            "more", "sure", "fine", "hello", "sorry", "thank", "mark", "park", "dark", "lost", "fast",
                            "band", "bond", "sand", "test", "fist", "mask", "last", "first", "best", "most", "rest"} | \
    {w.lower().strip(".,:'") for parts in vocab.BORDERLINE.values() for text in parts for w in text.split()}


def _unique(rng: random.Random, n: int, make, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = make()
        if name.lower() not in taken and name.lower() not in BLOCKED and 4 <= len(name) <= 14:
            taken.add(name.lower())
            out.append(name)
    return out


def _domains(places: list[str]) -> dict[str, list[str]]:
    return {"job": vocab.JOBS, "home": places, "pet": vocab.PETS, "colour": vocab.COLOURS,
            "region": vocab.REGIONS, "known_for": vocab.KNOWN_FOR, "material": vocab.MATERIALS}


def generate_facts(seed: int, n_people: int, n_places: int, n_objects: int) -> list[dict]:
    """All facts of a new world; the same seed gives the same list."""
    rng = random.Random(f"{seed}-facts")
    taken: set[str] = set()
    places = _unique(rng, n_places, lambda: _syllable_name(rng, 1) + rng.choice(vocab.PLACE_SUFFIXES), taken)
    firsts = _unique(rng, n_people, lambda: _syllable_name(rng, 2), taken)
    lasts = _unique(rng, n_people, lambda: _syllable_name(rng, 1), taken)
    people = [f"{a} {b}" for a, b in zip(firsts, lasts)]
    nouns = rng.sample(vocab.OBJECT_NOUNS * (1 + n_objects // len(vocab.OBJECT_NOUNS)), n_objects)
    objects = [f"the {a} {noun}" for a, noun in zip(_unique(rng, n_objects, lambda: _syllable_name(rng, 1), taken), nouns)]
    domains = _domains(places)
    facts: list[dict] = []
    for etype, names in (("person", people), ("place", places), ("object", objects)):
        for name in names:
            for attr in ATTRS_BY_TYPE[etype]:
                pool = [v for v in domains[attr] if v != name]
                value, rumour = rng.sample(pool, 2)
                facts.append({"entity": name, "type": etype, "attribute": attr, "value": value, "rumour": rumour})
    return facts


def phrase_pattern(phrase: str) -> re.Pattern:
    """Whole-word, case-insensitive match of a phrase (a leading 'the' optional, a plural 's' allowed)."""
    core = re.sub(r"^the\s+", "", phrase.lower())
    return re.compile(r"(?<![a-z])(?:the\s+)?" + re.escape(core) + r"(?:e?s)?(?![a-z])")


@dataclass
class FactBase:
    """Index over the facts: lookups by entity, attribute domains, and name matching in text."""

    facts: list[dict]
    by_entity: dict[str, dict[str, dict]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    domains: dict[str, list[str]] = field(default_factory=dict)
    _patterns: dict[str, re.Pattern] = field(default_factory=dict)
    _name_of: dict[str, str] = field(default_factory=dict)
    _value_of: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in self.facts:
            self.by_entity.setdefault(f["entity"], {})[f["attribute"]] = f
            self.types[f["entity"]] = f["type"]
        places = [e for e, t in self.types.items() if t == "place"]
        self.domains = _domains(places)
        for attr in list(self.domains):  # a user's facts may use values outside the built-in lists
            extra = [f[k] for f in self.facts if f["attribute"] == attr for k in ("value", "rumour")]
            self.domains[attr] = list(dict.fromkeys([*self.domains[attr], *extra]))
        for f in self.facts:
            if f["attribute"] not in self.domains:
                self.domains[f["attribute"]] = list(dict.fromkeys(
                    x[k] for x in self.facts if x["attribute"] == f["attribute"] for k in ("value", "rumour")))

    def entities(self, etype: str | None = None) -> list[str]:
        return [e for e, t in self.types.items() if etype is None or t == etype]

    def fact(self, entity: str, attribute: str) -> dict:
        return self.by_entity[entity][attribute]

    def pattern(self, phrase: str) -> re.Pattern:
        if phrase not in self._patterns:
            self._patterns[phrase] = phrase_pattern(phrase)
        return self._patterns[phrase]

    def mentions(self, text: str, phrase: str) -> bool:
        return self.pattern(phrase).search(text) is not None

    def first_position(self, text: str, phrase: str) -> int:
        m = self.pattern(phrase).search(text)
        return m.start() if m else -1

    def name_forms(self, entity: str) -> list[str]:
        """Ways a text may name an entity: the full name, and a person's first name."""
        forms = [entity]
        if self.types.get(entity) == "person":
            forms.append(entity.split()[0])
        return forms

    def values_in(self, text: str, attribute: str) -> set[str]:
        """Values of an attribute's domain that `text` names (one regex per domain, longest first)."""
        key = "_attr:" + attribute
        if key not in self._patterns:
            vals = self.domains.get(attribute, [])
            self._value_of[attribute] = {re.sub(r"^the\s+", "", v.lower()): v for v in vals}
            alt = "|".join(re.escape(v) for v in sorted(self._value_of[attribute], key=len, reverse=True)) or "(?!)"
            self._patterns[key] = re.compile(r"(?<![a-z])(?:the\s+)?(" + alt + r")(?:e?s)?(?![a-z])")
        return {self._value_of[attribute][m.group(1)] for m in self._patterns[key].finditer(text.lower())}

    def entities_in(self, text: str) -> list[tuple[int, str]]:
        """(position, entity) for every entity named in `text`, in order of first mention."""
        if "_names" not in self._patterns:  # one alternation of every name form, longest first
            forms = {re.sub(r"^the\s+", "", f.lower()): e for e in self.types for f in reversed(self.name_forms(e))}
            self._name_of = forms
            alt = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
            self._patterns["_names"] = re.compile(r"(?<![a-z])(?:the\s+)?(" + alt + r")(?:e?s)?(?![a-z])")
        found: dict[str, int] = {}
        for m in self._patterns["_names"].finditer(text.lower()):
            found.setdefault(self._name_of[m.group(1)], m.start())
        return sorted((p, e) for e, p in found.items())
