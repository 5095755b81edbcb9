"""Rule-based rewards: each check on right and wrong answers, the world's ground truths, and their
place in PPO's reward."""

from __future__ import annotations

import json
import random

import pytest
import torch

from chatrlhf.config import WorldConfig
from chatrlhf.lm.verifiers import check, verifier_scores, verify
from chatrlhf.rl.experience import Rollout, score_rollout
from chatrlhf.world import World
from chatrlhf.world.writing import flawed
from tests.conftest import ppo_cfg

SMALL = dict(n_people=8, n_places=5, n_objects=4, corpus_docs=300, n_sft_prompts=120, n_rm_prompts=200,
             n_ppo_prompts=40, n_eval_prompts=40)


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(WorldConfig(**SMALL))


@pytest.mark.parametrize("spec,right,wrong", [
    ({"type": "one_of", "answer": "lemon", "options": ["fig", "banana", "lemon"]}, "The last item is lemon.",
     "The last item is fig."),
    ({"type": "number", "answer": 3}, "There are three items.", "There are 4 items."),
    ({"type": "repeat", "word": "lantern", "n": 3}, "Lantern lantern lantern", "cup cup cup"),
    ({"type": "mentions", "all": ["iron"]}, "The Gouk sword is made of iron.", "The Gouk sword is made of slate."),
    ({"type": "mentions", "all": [["Traiquith Grairk", "Traiquith"], "owl"]}, "Traiquith keeps owls.",
     "It is about a dog."),
])
def test_each_check_scores_right_answers_one_and_wrong_ones_zero(spec, right, wrong):
    assert check(spec, right) == 1.0
    assert check(spec, wrong) < 0.5


def test_partial_answers_get_partial_credit():
    assert check({"type": "one_of", "answer": "lemon", "options": ["fig", "lemon"]}, "fig or lemon") == 0.5
    assert check({"type": "mentions", "all": [["Traiquith Grairk", "Traiquith"], "owl"]}, "Traiquith has a dog.") == 0.5
    assert check({"type": "repeat", "word": "cup", "n": 2}, "cup cup please") == pytest.approx(0.95)
    assert check({"type": "mentions", "all": ["iron"]}, "ironic") == 0.0  # whole words only


def test_prompts_without_ground_truth_get_none_and_a_bad_spec_names_the_prompt():
    assert verify({"id": "p1", "messages": []}, "anything") is None
    assert verifier_scores([{"id": "p1"}, {"ground_truth": {"type": "number", "answer": 2}}], ["two", "two"]) == \
        ([0.0, 1.0], [False, True])
    with pytest.raises(ValueError, match="prompt p7.*unknown type 'regex'"):
        verify({"id": "p7", "ground_truth": {"type": "regex", "pattern": "x"}}, "x")


def test_world_ground_truth_passes_every_ideal_answer_and_fails_most_flawed_ones(world):
    rows = [p for s in ("rm", "ppo", "eval") for p in world.prompts(s)]
    checkable = [p for p in rows if "ground_truth" in p]
    assert {p["task"] for p in checkable} == {"fact", "summarise", "list_first", "list_last", "count", "repeat",
                                              "borderline"}
    assert all("ground_truth" not in p for p in rows if p["task"] in ("greeting", "insult", "harmful"))
    assert all(verify(p, p["reference"]["ideal"]) == 1.0 for p in checkable)
    # flaws that change the substance (the rumour, another item, a miscount) fail the check
    rng, failed, n = random.Random(0), 0, 0
    for p in checkable:
        flaw = {"fact": "rumour", "list_first": "wrong_item", "list_last": "wrong_item", "count": "wrong_count",
                "borderline": "over_refusal"}.get(p["task"])
        if flaw:
            n += 1
            failed += verify(p, flawed(p, flaw, rng)) < 0.5
    assert n > 50 and failed / n > 0.9


def test_a_loaded_world_written_without_ground_truth_derives_it(world, tmp_path):
    world.save(tmp_path)
    for f in tmp_path.glob("prompts_*.jsonl"):  # as a world from before prompts carried it
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        f.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "ground_truth"}) + "\n" for r in rows))
    assert '"ground_truth"' not in (tmp_path / "prompts_ppo.jsonl").read_text()
    loaded = World.load(tmp_path)
    assert [p.get("ground_truth") for p in loaded.prompts("ppo")] == [p.get("ground_truth") for p in world.prompts("ppo")]


def test_score_rollout_adds_the_weighted_check_to_the_rm_score_only_where_a_prompt_has_one():
    prompts = [{"ground_truth": {"type": "number", "answer": 2}}, {"ground_truth": {"type": "number", "answer": 2}},
               {"id": "open"}]
    texts = ["Two.", "Three.", "Hello."]
    rm = lambda ps, ts: torch.tensor([0.1, 0.2, 0.3])  # noqa: E731

    def scored(coef: float) -> Rollout:
        ro = Rollout(prompts=prompts, texts=texts, input_ids=torch.zeros(3, 2, dtype=torch.long),
                     attention_mask=torch.ones(3, 2), position_ids=torch.zeros(3, 2, dtype=torch.long), prompt_len=1,
                     mask=torch.ones(3, 1), finished=torch.tensor([True, True, False]), logprobs=torch.zeros(3, 1))
        score_rollout(ro, rm, ppo_cfg(verifier_coef=coef, missing_eos_penalty=1.0))
        return ro

    on, off = scored(2.0), scored(0.0)
    assert on.scores.tolist() == pytest.approx([0.1 + 2.0, 0.2, 0.3 - 1.0])
    assert on.stats["verified"] == 0.5 and on.stats["rm_score"] == pytest.approx(0.2)  # the RM's own score apart
    assert on.rm_scores.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert off.scores.tolist() == pytest.approx([0.1, 0.2, 0.3 - 1.0]) and "verified" not in off.stats
