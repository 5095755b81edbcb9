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


def test_a_rounds_comparisons_are_written_by_one_process(tmp_path, monkeypatch):
    """Every rank samples and labels the same comparisons; rank 0 alone writes the file (two ranks
    writing one temp file raced: one's rename left the other without its file)."""
    import chatrlhf.lm.distributed as dist
    import chatrlhf.lm.engine as engine
    import chatrlhf.stages.sampling as sampling
    from chatrlhf.stages.iterate import collect_comparisons

    cfg = load_config(None, [f"run.out_dir={tmp_path}"])
    monkeypatch.setattr(engine, "load_engine", lambda *a, **k: None)
    monkeypatch.setattr(sampling, "sample_responses", lambda eng, msgs, k, cfg: [["a", "b"] for _ in msgs])
    monkeypatch.setattr(sampling, "label_with_world", lambda world, comps, cfg, rng: None)
    prompts = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"q {i}"}]} for i in range(4)]
    for main, name in ((False, "rank1.jsonl"), (True, "rank0.jsonl")):
        monkeypatch.setattr(dist, "is_main", lambda main=main: main)
        assert collect_comparisons(cfg, None, tmp_path, prompts, tmp_path / name, 2) == tmp_path / name
    assert not (tmp_path / "rank1.jsonl").exists() and (tmp_path / "rank0.jsonl").is_file()
    assert len((tmp_path / "rank0.jsonl").read_text().splitlines()) == 4
