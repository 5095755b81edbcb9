"""`World`: the embedded world in memory, generated from a WorldConfig or loaded from its directory.

    w = World.load("runs/default/world")     # or World.generate(cfg.world)
    w.prompts("eval"); w.demonstrations(); w.corpus("train"); w.judges()
    w.labelers(held_out=False, groups=["brief"]); w.labeler_mix({"brief": 2, "cautious": 1})
    g = w.gold(prompt, response)             # Gold(total, parts, flags)

Everything is seeded from `world.seed` through named `random.Random` streams (never the global
RNG), so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from functools import cached_property
from pathlib import Path
from typing import Any

from chatrlhf.config import WorldConfig
from chatrlhf.lm.data import iter_jsonl
from chatrlhf.lm.verifiers import words
from chatrlhf.world.corpus import write_corpus
from chatrlhf.world.facts import FactBase, generate_facts
from chatrlhf.world.gold import Gold, GoldRubric, substantive_metrics
from chatrlhf.world.labelers import (
    JUDGE_GROUP,
    SimulatedLabeler,
    agreement,
    candidate_responses,
    group_mix,
    make_labeler_specs,
    write_demonstrations,
)
from chatrlhf.world.tasks import build_splits, content_cluster, ground_truth
from chatrlhf.world.writing import TONE_WORDS

SPLITS = ("sft", "rm", "ppo", "eval")
VIEWS = ("guard",)  # the ppo split's tail of prompts flagged "guard" (their own content)
FILES = {"facts": "facts.jsonl", "corpus_train": "corpus_train.jsonl", "corpus_val": "corpus_val.jsonl",
         **{f"prompts_{s}": f"prompts_{s}.jsonl" for s in SPLITS},
         "demonstrations": "demonstrations.jsonl", "labelers": "labelers.jsonl"}


def dump_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a jsonl file; a bad line fails with the file, line number and missing field."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `chatrlhf world` (or put your own file there, see README.md)")
    rows = []
    for i, row in iter_jsonl(path):
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{path}:{i}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


class World:
    """Facts, prompt splits, demonstrations, corpus and labelers of one world, plus its gold judge."""

    def __init__(self, facts: list[dict], splits: dict[str, list[dict]], demos: list[dict],
                 corpus: dict[str, list[str]], labeler_specs: list[dict], info: dict[str, Any] | None = None):
        self.facts = FactBase(facts)
        self._splits = splits
        self._demos = demos
        self._corpus = corpus
        self._specs = labeler_specs
        self.info = info or {}
        self._gold_cache: dict[tuple[str, str], Gold] = {}
        self._ref_keys: dict[int, tuple[dict, str]] = {}  # id(prompt) -> (prompt, its reference as json)
        self._labelers = [SimulatedLabeler(s, self.gold) for s in labeler_specs]

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def generate(cls, cfg: WorldConfig) -> "World":
        fact_rows = generate_facts(cfg.seed, cfg.n_people, cfg.n_places, cfg.n_objects)
        fb = FactBase(fact_rows)
        sizes = {"sft": cfg.n_sft_prompts, "rm": cfg.n_rm_prompts, "ppo": cfg.n_ppo_prompts, "eval": cfg.n_eval_prompts,
                 "guard": min(cfg.n_guard_prompts, cfg.n_ppo_prompts // 4)}  # the PPO stage's guard: min(ppo.guard.prompts, n // 4)
        splits = build_splits(fb, cfg.seed, sizes, cfg.multi_turn_rate, cfg.task_mix)
        specs = make_labeler_specs(cfg.seed, cfg.n_labelers, cfg.n_held_out_labelers, cfg.labeler_noise, cfg.n_judges,
                                   rubric_caution=cfg.rubric_caution, length_taste=cfg.length_taste,
                                   hedge_taste=cfg.hedge_taste)
        eval_texts = {m["content"] for p in splits["eval"] for m in p["messages"] if m["role"] == "user"}
        train, val, stats = write_corpus(fb, cfg.seed, cfg.corpus_docs, cfg.rumour_rate, eval_texts, cfg.corpus_mix,
                                         greeting_extra=cfg.length_taste == "sentence")
        world = cls(fact_rows, splits, [], {"train": train, "val": val}, specs, {"corpus": stats, "seed": cfg.seed})
        world._demos = write_demonstrations(splits["sft"], world._labelers, cfg.seed, cfg.demo_quality, fb)
        return world

    @classmethod
    def load(cls, world_dir: str | Path) -> "World":
        d = Path(world_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"world directory {d} not found; run `chatrlhf world` first")
        facts = read_jsonl(d / FILES["facts"], ("entity", "type", "attribute", "value", "rumour"))
        splits = {s: read_jsonl(d / FILES[f"prompts_{s}"], ("id", "task", "messages", "reference")) for s in SPLITS}
        for p in (p for rows in splits.values() for p in rows if "ground_truth" not in p):
            try:  # worlds written before prompts carried their checkable answer
                if (gt := ground_truth(p["task"], p["reference"])) is not None:
                    p["ground_truth"] = gt
            except KeyError:  # a user's reference without those fields: no check
                pass
        for p in (p for rows in splits.values() for p in rows if "cluster" not in p):
            p["cluster"] = content_cluster(p)
        demos = read_jsonl(d / FILES["demonstrations"], ("id", "prompt_id", "messages"))
        corpus = {s: [r["text"] for r in read_jsonl(d / FILES[f"corpus_{s}"], ("text",))] for s in ("train", "val")}
        specs = read_jsonl(d / FILES["labelers"], ("id", "group", "noise", "style_weight", "held_out"))
        meta_path = d / "meta.json"
        info = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        written = info.get("config")
        if written is not None and "length_taste" not in written:  # written before world.length_taste
            for s in specs:
                if isinstance(s.get("prefs"), dict):
                    s["prefs"].setdefault("length_taste", "ratio")
        return cls(facts, splits, demos, corpus, specs, info)

    def save(self, world_dir: str | Path) -> Path:
        d = Path(world_dir)
        d.mkdir(parents=True, exist_ok=True)
        dump_jsonl(d / FILES["facts"], self.facts.facts)
        for s in SPLITS:
            dump_jsonl(d / FILES[f"prompts_{s}"], self._splits[s])
        dump_jsonl(d / FILES["demonstrations"], self._demos)
        for s in ("train", "val"):
            dump_jsonl(d / FILES[f"corpus_{s}"], [{"text": t} for t in self._corpus[s]])
        dump_jsonl(d / FILES["labelers"], self._specs)
        return d

    @cached_property
    def rubric(self) -> GoldRubric:
        """The gold judge, built on first use: `generate` adds the demonstrations after __init__,
        and the lexicon must see them."""
        return GoldRubric(self.facts, self._lexicon())

    def _lexicon(self) -> frozenset[str]:
        """Every word this world's texts use: corpus, prompts, demonstrations, what the writers
        would answer to each prompt (good, flawed, rude) and the words a register adds. Anything
        else a model writes is gibberish."""
        rng = random.Random("lexicon")
        texts = [TONE_WORDS, *self._corpus.get("train", []), *self._corpus.get("val", [])]
        texts += [m["content"] for d in self._demos for m in d["messages"]]
        for prompts in self._splits.values():
            for p in prompts:
                texts += [m["content"] for m in p["messages"]]
                if p.get("task") and p.get("reference"):
                    texts += candidate_responses(p, rng, self.facts, tones=False)
        return frozenset(w for t in texts for w in words(t))

    # --- the API other stages use ----------------------------------------------------------------

    def prompts(self, split: str) -> list[dict]:
        """A prompt split (sft, rm, ppo, eval), or "guard": the ppo split's tail flagged `guard`,
        whose content no other split asks (PPO's over-optimisation guard compares on it)."""
        if split == "guard":
            return [p for p in self._splits.get("ppo", []) if p.get("guard")]
        if split not in self._splits:
            raise KeyError(f"unknown prompt split {split!r}; choose one of {', '.join(SPLITS + VIEWS)}")
        return self._splits[split]

    def demonstrations(self) -> list[dict]:
        return self._demos

    def corpus(self, split: str = "train") -> list[str]:
        if split not in self._corpus:
            raise KeyError(f"unknown corpus split {split!r}; choose 'train' or 'val'")
        return self._corpus[split]

    def labelers(self, held_out: bool | None = None, groups: str | list[str] | None = None) -> list[SimulatedLabeler]:
        """Labelers, optionally only the held-out (never trained on: judges and each group's
        held-out members) or training ones, and only those of the given group(s)."""
        gs = [groups] if isinstance(groups, str) else groups
        return [lab for lab in self._labelers if (held_out is None or lab.held_out == held_out)
                and (gs is None or lab.group in gs)]

    def judges(self) -> list[SimulatedLabeler]:
        """The judge group evaluation asks: held out, with preferences of its own (labelers.py).
        A world without one (written before it existed) falls back to all held-out labelers."""
        return [lab for lab in self._labelers if lab.group == JUDGE_GROUP] or self.labelers(held_out=True)

    def labeler_groups(self) -> list[str]:
        """The training groups, in labeler order."""
        return list(dict.fromkeys(lab.group for lab in self._labelers if lab.group != JUDGE_GROUP))

    def labeler_mix(self, groups: None | str | list[str] | dict[str, float] = None) -> list[tuple[SimulatedLabeler, float]]:
        """Training labelers of the chosen groups with sampling weights summing to 1 (labelers.group_mix):
        None pools all; a name or list weighs groups equally; a dict gives each group's weight."""
        return group_mix(self._labelers, groups)

    def labeler(self, labeler_id: str) -> SimulatedLabeler:
        for lab in self._labelers:
            if lab.id == labeler_id:
                return lab
        raise KeyError(f"no labeler {labeler_id!r}; have {', '.join(lab.id for lab in self._labelers)}")

    def agreement(self, n: int = 600, seed: int | None = None) -> dict:
        """Labeler agreement on n fixed comparisons of candidate answers to RM prompts
        (labelers.agreement: pools, the group matrix, agreement with gold)."""
        prompts = next((self.prompts(s) for s in ("rm", "sft", "ppo", "eval") if self.prompts(s)), [])
        seed = self.info.get("seed", 0) if seed is None else seed
        return agreement(prompts, self._labelers, self.facts, seed, n, self.gold)

    def gold(self, prompt: dict, response: str) -> Gold:
        """The gold rubric (cached per prompt reference and response text)."""
        held = self._ref_keys.get(id(prompt))
        if held is None or held[0] is not prompt:  # the prompt is held, so its id is not reused meanwhile
            if len(self._ref_keys) > 50_000:
                self._ref_keys.clear()
            held = self._ref_keys[id(prompt)] = (prompt, json.dumps([prompt.get("task"), prompt.get("reference")],
                                                                    sort_keys=True))
        key = (held[1], response)
        g = self._gold_cache.get(key)
        if g is None:
            if len(self._gold_cache) > 200_000:
                self._gold_cache.clear()
            g = self._gold_cache[key] = self.rubric(prompt, response)
        return g

    def substantive(self, prompts: list[dict], responses: list[str]) -> dict[str, float | None]:
        """Fact correctness, hallucination rate, refusal rate on harmful prompts, ... (gold.substantive_metrics)."""
        return substantive_metrics(prompts, [self.gold(p, r) for p, r in zip(prompts, responses)])
