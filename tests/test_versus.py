"""bench/versus.py: two runs of one world, model against model, judged as the headline judges."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import bench_module

from chatrlhf.config import WorldConfig
from chatrlhf.world import World


def _versus():
    return bench_module("versus")


def _run(path: Path, world: World, final_answers: list[str], sft_answers: list[str]) -> Path:
    world.save(path / "world")
    (path / "eval").mkdir(parents=True)
    for name, answers in (("sft", sft_answers), ("round_2", final_answers)):
        items = {"world_matched_responses": answers, "world_greedy_responses": answers}
        (path / "eval" / f"{name}.json").write_text(json.dumps({"items": items}))
    summary = {"headline": {"final": "round_2", "matched": {"estimate": 0.5}},
               "models": {m: {"world_greedy_likert": 4.0, "world_greedy_fact_correct": 0.5} for m in ("sft", "round_2")}}
    (path / "eval" / "summary.json").write_text(json.dumps(summary))
    return path


def test_versus_prefers_the_run_whose_final_answers_are_better(tmp_path):
    world = World.generate(WorldConfig(n_people=8, n_places=5, n_objects=4, corpus_docs=100, n_sft_prompts=40,
                                       n_rm_prompts=20, n_ppo_prompts=20, n_eval_prompts=40, agreement_comparisons=50))
    prompts = world.prompts("eval")
    rng = random.Random(0)
    ideal = [world.labelers()[0].write(p, rng, world.facts) for p in prompts]
    poor = ["ok."] * len(prompts)
    good = _run(tmp_path / "good", world, ideal, poor)
    bad = _run(tmp_path / "bad", world, poor, poor)
    versus = _versus()
    rows = {r["model"]: r["win_rate"] for r in versus.compare(good, bad, judgements=4, n_boot=200)["rows"]}
    assert rows["SFT"]["estimate"] == 0.5  # the same SFT answers: ties
    assert rows["final"]["estimate"] > 0.8 and rows["final"]["low"] > 0.5
    flipped = {r["model"]: r["win_rate"] for r in versus.compare(bad, good, judgements=4, n_boot=200)["rows"]}
    assert flipped["final"]["estimate"] < 0.2
    other = World.generate(WorldConfig(seed=7, n_people=8, n_places=5, n_objects=4, corpus_docs=100, n_sft_prompts=40,
                                       n_rm_prompts=20, n_ppo_prompts=20, n_eval_prompts=40, agreement_comparisons=50))
    elsewhere = _run(tmp_path / "other", other, poor, poor)
    with pytest.raises(SystemExit, match="different eval prompts"):
        versus.compare(good, elsewhere)
