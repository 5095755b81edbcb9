"""Iterated RLHF: what the reward model is trained on in a later round."""

from __future__ import annotations

from chatrlhf.config import load_config
from chatrlhf.layout import round_dir
from chatrlhf.lm.rankings import write_comparisons
from chatrlhf.stages.iterate import round_rm_data


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
