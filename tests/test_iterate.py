"""Iterated RLHF: what the reward model is trained on in a later round."""

from __future__ import annotations

from chatrlhf.config import load_config
from chatrlhf.layout import round_dir
from chatrlhf.stages.iterate import round_rm_data
from chatrlhf.lm.rankings import write_comparisons


def comparisons(tag: str, n: int) -> list[dict]:
    return [{"id": f"{tag}-{i}", "prompt_id": f"{tag}-p{i}", "messages": [{"role": "user", "content": f"q {tag} {i}"}],
             "responses": ["a", "b"], "rankings": [{"labeler": "L01", "ranks": [1, 2]}]} for i in range(n)]


def test_continue_mode_trains_on_fresh_comparisons_plus_as_many_replayed(tmp_path):
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "iterate.rm_mode=continue"])
    write_comparisons(comparisons("r1", 10), cfg.stage_dir("rm") / "comparisons.jsonl")
    write_comparisons(comparisons("r2", 3), round_dir(cfg, 2) / "comparisons.jsonl")
    data = round_rm_data(cfg, 2)
    ids = [c["id"] for c in data]
    assert ids[:3] == ["r2-0", "r2-1", "r2-2"]  # every fresh comparison ...
    old = ids[3:]
    assert len(old) == 3 and len(set(old)) == 3 and all(i.startswith("r1-") for i in old)  # ... and as many replayed
    assert [c["id"] for c in round_rm_data(cfg, 2)] == ids  # the replay sample is seeded

    retrain = load_config(None, [f"run.out_dir={tmp_path}", "iterate.rm_mode=retrain"])  # a new RM from SFT on everything
    assert len(round_rm_data(retrain, 2)) == 13


def test_distinct_draws_ranks_the_first_k_distinct_answers_and_drops_prompts_with_one(tmp_path, monkeypatch):
    """A sharpened policy repeats itself: with iterate.distinct_draws=2 a round draws 2K samples per
    prompt and ranks the first K distinct ones; a prompt whose samples are all one answer is left out."""
    import chatrlhf.lm.engine as engine
    import chatrlhf.stages.sampling as sampling
    from chatrlhf.stages.iterate import collect_comparisons
    from chatrlhf.lm.rankings import load_comparisons

    drawn = {"q0": ["a", "a", "b", "a", "c", "d", "e", "b"], "q1": ["x"] * 8, "q2": ["u", "v", "u", "u", "u", "u", "u", "u"]}
    asked = []

    def fake_sample(_engine, message_lists, k, load_cfg):
        asked.append(k)
        return [drawn[m[0]["content"]][:k] for m in message_lists]

    monkeypatch.setattr(engine, "load_engine", lambda *a, **kw: None)
    monkeypatch.setattr(sampling, "sample_responses", fake_sample)
    monkeypatch.setattr(sampling, "label_with_world", lambda world, cs, cfg, rng: [
        c["rankings"].append({"labeler": "L01", "ranks": list(range(1, len(c["responses"]) + 1))}) for c in cs])
    prompts = [{"id": q, "messages": [{"role": "user", "content": q}]} for q in drawn]

    cfg = load_config(None, [f"run.out_dir={tmp_path}", "rm.k=4", "iterate.distinct_draws=2"])
    out = collect_comparisons(cfg, None, tmp_path, prompts, tmp_path / "d2.jsonl", 2)
    got = {c["prompt_id"]: c["responses"] for c in load_comparisons(out)}
    assert asked == [8] and got == {"q0": ["a", "b", "c", "d"], "q2": ["u", "v"]}

    plain = load_config(None, [f"run.out_dir={tmp_path}", "rm.k=4"])  # default: K samples as drawn, copies kept
    out = collect_comparisons(plain, None, tmp_path, prompts, tmp_path / "d1.jsonl", 2)
    assert asked[-1] == 4 and [c["responses"] for c in load_comparisons(out)][1] == ["x"] * 4
