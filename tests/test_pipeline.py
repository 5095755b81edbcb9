"""`chatrlhf run` resumes stage by stage; iterate picks fresh prompts per round."""

from __future__ import annotations

import json
from pathlib import Path

from chatrlhf import pipeline
from chatrlhf.config import load_config
from chatrlhf.lm.modeling import write_meta


def _fake_stages(calls: list[str]):
    def runner(name, subdir):
        def run(cfg):
            calls.append(name)
            d = cfg.stage_dir(subdir)
            d.mkdir(parents=True, exist_ok=True)
            write_meta(d, {"stage": name, "complete": True} | ({"rounds": cfg.iterate.rounds} if name == "rounds" else {}))

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
    pipeline.run_all(load_config(None, [f"run.out_dir={tmp_path}", "rm.ensemble=2"]))
    assert calls == ["rm"]  # a finished RM of one member is not an ensemble of two: the RM stage adds the member
    calls.clear()
    pipeline.run_all(cfg, force=True)
    assert len(calls) == 9
    assert json.loads((tmp_path / "pipeline.json").read_text())["stages"].keys() >= {"world", "report"}


def _rounds_of(tmp_path: Path, monkeypatch, round_seconds: float = 100.0, **iterate) -> tuple:
    """A run whose round 1 is done and whose later rounds each take `round_seconds` (faked)."""
    from chatrlhf.stages import iterate as it

    cfg = load_config(None, [f"run.out_dir={tmp_path}"] + [f"iterate.{k}={v}" for k, v in iterate.items()])
    for d in (cfg.stage_dir("rm"), cfg.stage_dir("ppo")):
        d.mkdir(parents=True, exist_ok=True)
        write_meta(d, {"complete": True})
    ran: list[int] = []

    def fake_round(cfg, world, r):
        _, ppo = it.round_paths(cfg, r)
        if (ppo / "meta.json").is_file():  # like run_round: a finished round is not run again
            return ppo
        ran.append(r)
        ppo.mkdir(parents=True, exist_ok=True)
        write_meta(ppo, {"complete": True})
        (it.round_dir(cfg, r) / "seconds.json").write_text(json.dumps({"seconds": round_seconds}))
        return ppo

    monkeypatch.setattr(it, "run_round", fake_round)
    monkeypatch.setattr("chatrlhf.world.loader.load_world", lambda cfg: object())
    return cfg, ran, it


def test_rounds_beyond_iterate_rounds_run_only_while_the_time_budget_allows(tmp_path, monkeypatch):
    # 300 s before the rounds, 100 s a round, 540 s budget: round 3 (300 + 100 + 100 = 500) fits,
    # round 4 (300 + 200 + 100 = 600) does not
    cfg, ran, it = _rounds_of(tmp_path, monkeypatch, rounds=2, max_rounds=4, budget_minutes=9)
    newest = it.run_iterate(cfg, elapsed_s=300.0)
    assert ran == [2, 3] and newest == it.round_paths(cfg, 3)[1]
    meta = json.loads((tmp_path / "rounds" / "meta.json").read_text())
    assert meta["complete"] and meta["rounds"] == 3 and "600 s of 540" in meta["budget"]
    assert [r["round"] for r in json.loads((tmp_path / "rounds" / "summary.json").read_text())] == [1, 2, 3]


def test_iterate_alone_runs_exactly_its_rounds_and_a_begun_extra_round_is_finished(tmp_path, monkeypatch):
    cfg, ran, it = _rounds_of(tmp_path, monkeypatch, rounds=2, max_rounds=3, budget_minutes=1)
    it.run_iterate(cfg)  # `chatrlhf iterate`: no budget, no extra rounds
    assert ran == [2]
    it.round_dir(cfg, 3).mkdir()  # an interrupted run had begun round 3: finish it whatever the budget says
    it.run_iterate(cfg, elapsed_s=10_000.0)
    assert ran == [2, 3]


def test_an_unaffordable_extra_round_is_skipped_and_the_rounds_stage_still_completes(tmp_path, monkeypatch):
    calls: list[str] = []
    stages = _fake_stages(calls)
    cfg, ran, it = _rounds_of(tmp_path, monkeypatch, round_seconds=400.0, rounds=2, max_rounds=3, budget_minutes=13)
    real_rounds = dict((n, r) for n, _, r in pipeline.STAGES)["rounds"]
    monkeypatch.setattr(pipeline, "STAGES", [(n, s, real_rounds if n == "rounds" else r) for n, s, r in stages])
    (tmp_path / "pipeline.json").write_text(json.dumps({"stages": {"pretrain": 150.0, "ppo": 200.0}}))
    pipeline.run_all(cfg)  # 350 s + round 2 (400 s) + a forecast 400 s > 780 s: no round 3
    assert ran == [2] and calls[-2:] == ["eval", "report"]
    assert "would not fit" in json.loads((tmp_path / "rounds" / "meta.json").read_text())["budget"]
    pipeline.run_all(cfg)
    assert ran == [2]  # complete: nothing reruns
    pipeline.run_all(cfg.model_copy(update={"iterate": cfg.iterate.model_copy(update={"rounds": 3})}))
    assert ran == [2, 3]  # asking for three rounds on a finished two-round run adds the third


class _World:
    def prompts(self, split):
        return [{"id": f"{split}-{i}"} for i in range(100)]


def test_fresh_prompts_differ_per_round_and_skip_the_guard_set(tmp_path):
    from chatrlhf.stages.ppo import fresh_prompts

    cfg = load_config(None, ["iterate.prompts_per_round=30", "ppo.guard.prompts=20"])
    r2, r3 = ({p["id"] for p in fresh_prompts(_World(), cfg, r)} for r in (2, 3))
    assert len(r2) == 30 and not (r2 & r3)
    guard = {f"ppo-{i}" for i in range(80, 100)}  # PPO keeps the last guard_prompts as its held-out set
    assert not ((r2 | r3) & guard)


def test_tiny_pipeline_end_to_end(tmp_path):  # about 25 s: every stage, both rounds, best-of-n, an RM ensemble
    from chatrlhf.lm.modeling import read_meta

    cfg = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", [f"run.out_dir={tmp_path}", "rm.ensemble=2"])
    pipeline.run_all(cfg)
    # round 2 continues each ensemble member from its own round-1 self
    assert read_meta(tmp_path / "rounds/round_2/rm")["ensemble"] == ["ensemble/1"]
    assert read_meta(tmp_path / "rounds/round_2/rm/ensemble/1")["init_from"] == str(tmp_path / "rm/ensemble/1")
    assert read_meta(tmp_path / "rounds/round_2/rm")["init_from"] == str(tmp_path / "rm")
    for stage in ("world", "tokenizer", "pretrain", "sft", "rm", "ppo/best_of_n", "ppo", "rounds/round_2/ppo/best_of_n",
                  "rounds/round_2/ppo", "eval", "report"):
        assert read_meta(tmp_path / stage).get("complete"), stage
    summary = json.loads((tmp_path / "rounds" / "summary.json").read_text())
    assert [r["round"] for r in summary] == [1, 2] and summary[1]["kl"] is not None
    assert all(r["best_of_n_gold_best"] is not None for r in summary)  # each round started from best-of-n
    assert read_meta(tmp_path / "ppo")["best_of_n_start"] == str(tmp_path / "ppo" / "best_of_n")
