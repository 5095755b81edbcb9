"""`chatrlhf sample`: K responses per prompt from a policy as a valid comparison file, ranked by
training labelers, held-out prompts also by held-out labelers; conversations give alternatives."""

from __future__ import annotations

import json

import pytest

import chatrlhf.world.loader as world_loader
from chatrlhf.config import Config
from chatrlhf.lm.rankings import load_comparisons
from chatrlhf.stages.sampling import run_sample


class LengthLabeler:
    """Prefers shorter responses (a deterministic stand-in for world.SimulatedLabeler)."""

    def __init__(self, id: str):
        self.id = id

    def rank(self, prompt, responses, rng=None):
        n = [len(r) for r in responses]
        return [1 + sum(o < x for o in n) for x in n]


class FakeWorld:
    def prompts(self, split):
        assert split == "rm"
        return [{"id": f"rm-{i:05d}", "task": "fact", "messages": [{"role": "user", "content": f"Where is place {i}?"}],
                 "reference": {"answer": f"place {i}"}} for i in range(10)]

    def labelers(self, held_out=None):
        return [LengthLabeler("H1"), LengthLabeler("H2")] if held_out else [LengthLabeler("L1"), LengthLabeler("L2")]


def cfg_for(tmp, **rm):
    rm = {"k": 4, "max_new_tokens": 6, "val_fraction": 0.2, "labelers_per_prompt": 1, "val_labelers": 2, **rm}
    return Config.model_validate({"run": {"out_dir": str(tmp), "tensorboard": False}, "rm": rm})


def test_world_prompts_give_k_ranked_samples_and_held_out_labelers_on_val(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(world_loader, "load_world", lambda cfg: FakeWorld())
    out = run_sample(cfg_for(tmp_path), policy=tiny_model_dir)
    assert out == tmp_path / "rm" / "comparisons.jsonl"
    comps = load_comparisons(out)  # the file passes its own validation
    assert len(comps) == 10 and all(len(c["responses"]) == 4 for c in comps)
    assert comps[0]["reference"] == {"answer": "place 0"} and comps[0]["policy"] == tiny_model_dir.name
    val = [c for c in comps if c["split"] == "val"]
    train = [c for c in comps if c["split"] == "train"]
    assert len(val) == 2
    assert all({r["labeler"] for r in c["rankings"]} <= {"L1", "L2"} and len(c["rankings"]) == 1 for c in train)
    assert all({"H1", "H2"} <= {r["labeler"] for r in c["rankings"]} and len(c["rankings"]) == 3 for c in val)
    c = comps[0]
    lengths = [len(r) for r in c["responses"]]
    assert c["rankings"][0]["ranks"] == [1 + sum(o < x for o in lengths) for x in lengths]


def test_samples_are_reproducible_and_differ_across_k(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(world_loader, "load_world", lambda cfg: FakeWorld())
    a = run_sample(cfg_for(tmp_path, n_prompts=3), policy=tiny_model_dir, out=tmp_path / "a.jsonl", label=False)
    b = run_sample(cfg_for(tmp_path, n_prompts=3), policy=tiny_model_dir, out=tmp_path / "b.jsonl", label=False)
    ra = [json.loads(l)["responses"] for l in a.read_text().splitlines()]
    assert ra == [json.loads(l)["responses"] for l in b.read_text().splitlines()]
    assert len(ra) == 3 and any(len(set(r)) > 1 for r in ra)  # temperature 1: the K samples are not copies
    assert all(json.loads(l)["rankings"] == [] for l in a.read_text().splitlines())  # label=False: a task file


def test_conversations_give_alternatives_for_a_model_written_turn(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(world_loader, "load_world", lambda cfg: None)
    convs = tmp_path / "chats.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
             {"role": "user", "content": "Where is Varnok?"}, {"role": "assistant", "content": "Selmouth is its capital."}]
    convs.write_text("\n".join(json.dumps({"messages": turns}) for _ in range(4)) + "\n")
    out = run_sample(cfg_for(tmp_path, k=3), policy=tiny_model_dir, conversations=convs, out=tmp_path / "c.jsonl")
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 4
    for r in rows:
        assert len(r["responses"]) == 3 and r["messages"][-1]["role"] == "user"
        original = turns[len(r["messages"])]["content"]
        assert r["responses"][r["original_index"]] == original
        assert r["rankings"] == []  # no gold for free conversations: left for the labeling app


def test_k_below_two_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="rm.k = 1"):
        run_sample(cfg_for(tmp_path, k=1), policy=tiny_model_dir)


def test_written_answers_join_the_samples_on_training_prompts_only(tiny_model_dir, tmp_path, monkeypatch):
    """rm.written_answers: a training labeler's own answer joins the K samples on that share of the
    training prompts (K + 1 answers, all ranked), never on held-out prompts; the samples themselves
    are what they were without it."""
    from chatrlhf.config import WorldConfig
    from chatrlhf.world import World

    world = World.generate(WorldConfig(n_people=8, n_places=5, n_objects=4, corpus_docs=50, n_sft_prompts=10,
                                       n_rm_prompts=24, n_ppo_prompts=10, n_eval_prompts=10, agreement_comparisons=10))
    monkeypatch.setattr(world_loader, "load_world", lambda cfg: world)
    plain = load_comparisons(run_sample(cfg_for(tmp_path), policy=tiny_model_dir, out=tmp_path / "plain.jsonl"))
    comps = load_comparisons(run_sample(cfg_for(tmp_path, written_answers=1.0), policy=tiny_model_dir,
                                        out=tmp_path / "written.jsonl"))
    by_id = {lab.id: lab for lab in world.labelers()}
    train = [c for c in comps if c["split"] == "train"]
    assert train and all(len(c["responses"]) == 5 and len(c["rankings"][0]["ranks"]) == 5 for c in train)
    assert all(not by_id[c["writer"]].held_out for c in train)
    assert all(len(c["responses"]) == 4 and "writer" not in c for c in comps if c["split"] == "val")
    for c, p in zip(comps, plain):
        at = c.get("written_index")
        samples = c["responses"] if at is None else c["responses"][:at] + c["responses"][at + 1:]
        assert samples == p["responses"]
    half = load_comparisons(run_sample(cfg_for(tmp_path, written_answers=0.5), policy=tiny_model_dir,
                                       out=tmp_path / "half.jsonl"))
    assert 0 < sum("writer" in c for c in half) < len(train)
    both = load_comparisons(run_sample(cfg_for(tmp_path, written_answers=1.0, refusal_answers=1.0), policy=tiny_model_dir,
                                       out=tmp_path / "both.jsonl"))
    for c, w in zip(both, comps):
        at = c.get("refusal_index")
        if c["split"] == "val" or c["task"] == "harmful":  # held-out prompts and harmful requests as they were
            assert at is None and c["responses"] == w["responses"]
            continue
        assert at is not None and "cannot help" in c["responses"][at] and len(c["rankings"][0]["ranks"]) == 6
        assert c["responses"][:at] + c["responses"][at + 1:] == w["responses"]
        assert c["responses"][c["written_index"]] == w["responses"][w["written_index"]]
