"""`chatrlhf run` resumes stage by stage; iterate picks fresh prompts per round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatrlhf import pipeline
from chatrlhf.config import load_config
from chatrlhf.modeling import write_meta


def _fake_stages(calls: list[str]):
    def runner(name, subdir):
        def run(cfg):
            calls.append(name)
            d = pipeline.done_marker(cfg, name, subdir)
            d.mkdir(parents=True, exist_ok=True)
            write_meta(d, {"stage": name, "complete": True})

        return run

    return [(n, s, runner(n, s)) for n, s, _ in pipeline.STAGES]


def test_run_all_skips_complete_stages_and_resumes_at_the_first_unfinished(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(pipeline, "STAGES", _fake_stages(calls))
    cfg = load_config(None, [f"run.out_dir={tmp_path}"])
    pipeline.run_all(cfg)
    assert calls == ["world", "tokenizer", "pretrain", "sft", "rm", "ppo", "rounds", "eval", "report"]
    calls.clear()
    pipeline.run_all(cfg)
    assert calls == []  # everything complete: nothing reruns
    (tmp_path / "rm" / "meta.json").write_text(json.dumps({"complete": False}))  # a crash mid-RM
    (tmp_path / "report" / "meta.json").unlink()
    pipeline.run_all(cfg)
    assert calls == ["rm", "report"]
    calls.clear()
    pipeline.run_all(cfg, force=True)
    assert len(calls) == 9
    assert json.loads((tmp_path / "pipeline.json").read_text())["stages"].keys() >= {"world", "report"}


def test_rounds_stage_is_done_only_when_the_last_round_is(tmp_path):
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "iterate.rounds=3"])
    assert pipeline.done_marker(cfg, "rounds", "rounds") == tmp_path / "rounds" / "round_3" / "ppo"


class _World:
    def prompts(self, split):
        return [{"id": f"{split}-{i}"} for i in range(100)]


def test_fresh_prompts_differ_per_round_and_skip_the_guard_set(tmp_path):
    from chatrlhf.iterate import fresh_prompts

    cfg = load_config(None, ["iterate.prompts_per_round=30", "ppo.guard_prompts=20"])
    r2, r3 = ({p["id"] for p in fresh_prompts(_World(), cfg, r)} for r in (2, 3))
    assert len(r2) == 30 and not (r2 & r3)
    guard = {f"ppo-{i}" for i in range(80, 100)}  # PPO keeps the last guard_prompts as its held-out set
    assert not ((r2 | r3) & guard)


def test_tiny_pipeline_end_to_end(tmp_path):  # about 25 s: every stage, both rounds, best-of-n included
    from chatrlhf.modeling import read_meta

    cfg = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", [f"run.out_dir={tmp_path}"])
    pipeline.run_all(cfg)
    for stage in ("world", "tokenizer", "pretrain", "sft", "rm", "ppo/best_of_n", "ppo", "rounds/round_2/ppo/best_of_n",
                  "rounds/round_2/ppo", "eval", "report"):
        assert read_meta(tmp_path / stage).get("complete"), stage
    summary = json.loads((tmp_path / "rounds" / "summary.json").read_text())
    assert [r["round"] for r in summary] == [1, 2] and summary[1]["kl"] is not None
    assert all(r["best_of_n_gold_best"] is not None for r in summary)  # each round started from best-of-n
    assert read_meta(tmp_path / "ppo")["best_of_n_start"] == str(tmp_path / "ppo" / "best_of_n")
