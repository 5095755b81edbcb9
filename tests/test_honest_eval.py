"""A run's result does not depend on machine speed; what the report leads with (decoding-matched
headline, stage attribution, judge verdicts); real data gets a verdict only where it can mean
something; every verdict reads its interval through change_verdict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_pretrain import fresh_run, tiny_cfg, tokenized_run  # noqa: F401  (the fixture)

from chatrlhf.config import Config, load_config
from chatrlhf.layout import budget_plan, time_limits_fired
from chatrlhf.lm.modeling import read_meta, write_meta

ROOT = Path(__file__).parents[1]


# --- budgets in steps and rounds -----------------------------------------------------------------


def test_default_budget_is_in_steps_and_rounds_whatever_the_thread_count():
    plans = [budget_plan(load_config(ROOT / "configs" / "default.yaml", [f"run.threads={t}"])) for t in (1, 2)]
    assert plans[0] == plans[1]
    assert plans[0]["speed_dependent"] == []  # no wall-clock limit on by default
    assert plans[0]["rounds"] == plans[0]["rounds_max"] == 2
    assert plans[0]["pretrain_steps"] == 3000 and plans[0]["ppo_iterations_max"] == 120
    timed = budget_plan(load_config(None, ["pretrain.max_minutes=2", "ppo.max_minutes=3", "iterate.max_rounds=3"]))
    assert timed["speed_dependent"] == ["pretrain.max_minutes", "ppo.max_minutes", "iterate.max_rounds/budget_minutes"]


def test_pretraining_runs_the_same_steps_with_one_and_two_threads(tokenized_run, tmp_path):  # noqa: F811
    from chatrlhf.stages import pretrain

    metas = []
    for threads in (1, 2):
        cfg = tiny_cfg(fresh_run(tokenized_run, tmp_path / f"t{threads}"), f"run.threads={threads}")
        metas.append(read_meta(pretrain.run_pretrain(cfg)))
    assert [m["steps"] for m in metas] == [12, 12] and [m["threads"] for m in metas] == [1, 2]
    assert not any(m["time_limited"] for m in metas)


def test_rounds_are_the_same_on_a_slow_and_a_fast_machine(tmp_path, monkeypatch):
    from test_pipeline import _rounds_of

    counts = []
    for i, (before, per_round) in enumerate(((30.0, 10.0), (5000.0, 2000.0))):  # fast, and far over 15 minutes
        cfg, ran, it = _rounds_of(tmp_path / str(i), monkeypatch, round_seconds=per_round)
        it.run_iterate(cfg, elapsed_s=before)
        counts.append((ran, read_meta(cfg.stage_dir("rounds"))["rounds"]))
        assert read_meta(cfg.stage_dir("rounds"))["budget"] is None  # no time-budget decision was made
    assert counts[0] == counts[1] == ([2], 2)


def test_a_fired_wall_clock_limit_is_named(tmp_path):
    cfg = load_config(None, [f"run.out_dir={tmp_path}"])
    assert time_limits_fired(cfg) == []
    for stage in ("pretrain", "ppo"):
        cfg.stage_dir(stage).mkdir(parents=True)
    write_meta(cfg.stage_dir("pretrain"), {"steps": 1700, "max_steps": 3000, "max_minutes": 2.2, "time_limited": True})
    write_meta(cfg.stage_dir("ppo"), {"stop_reason": "max_minutes", "iterations": 44})
    fired = time_limits_fired(cfg)
    assert "step 1700 of 3000" in fired[0] and "round 1's PPO at iteration 44" in fired[1]


# --- verdicts --------------------------------------------------------------------------------------


def test_win_rate_and_difference_verdicts_say_no_significant_change_when_the_interval_covers_it():
    from chatrlhf.evaluate.headline import diff_verdict, win_verdict

    assert win_verdict({"estimate": 0.56, "low": 0.49, "high": 0.62}, "ppo", "sft") == "no significant change"
    assert win_verdict({"estimate": 0.58, "low": 0.52, "high": 0.64}, "ppo", "sft") == "ppo preferred"
    assert win_verdict({"estimate": 0.40, "low": 0.33, "high": 0.47}, "ppo", "sft") == "sft preferred"
    assert diff_verdict({"estimate": -0.02, "low": -0.05, "high": 0.01}) == "no significant change"
    assert diff_verdict({"estimate": -0.04, "low": -0.07, "high": -0.01}, sign=-1) == "better"


def test_report_verdict_lines_never_call_a_covered_difference_better():
    from chatrlhf.evaluate.report import verdicts

    summary = {"baseline": "sft", "models": {"sft": {"world_greedy_likert": 5.0}, "ppo": {"world_greedy_likert": 5.1}},
               "comparisons": {"ppo": {"diff_world_greedy_likert": {"estimate": 0.1, "low": -0.05, "high": 0.25},
                                       "world_win_rate": {"estimate": 0.55, "low": 0.48, "high": 0.61}}}}
    line = verdicts(summary)[0]
    assert "helpfulness +0.100" in line and "no significant change" in line and "better" not in line


# --- stage attribution ---------------------------------------------------------------------------------


def test_attribution_pairs_each_stage_with_its_predecessor():
    from chatrlhf.evaluate.headline import attribution_pairs

    names = ["base", "sft", "best_of_n", "ppo", "round_2_best_of_n", "round_2", "round_3"]
    got = [(a, b) for a, b, _ in attribution_pairs(names)]
    assert got == [("base", "sft"), ("sft", "best_of_n"), ("best_of_n", "ppo"), ("ppo", "round_2_best_of_n"),
                   ("round_2_best_of_n", "round_2"), ("ppo", "round_2"), ("round_2", "round_3")]
    # without a best-of-n start, PPO is measured against SFT
    assert [(a, b) for a, b, _ in attribution_pairs(["sft", "ppo"])] == [("sft", "ppo")]


# --- real data -----------------------------------------------------------------------------------------------


def test_real_data_is_out_of_domain_for_a_world_model_and_needs_enough_items_otherwise():
    from chatrlhf.evaluate.headline import OUT_OF_DOMAIN, real_data_status
    from chatrlhf.evaluate.report import verdicts

    models = {"sft": {"truthfulqa_mc_n": 25.0, "truthfulqa_mc2": 0.50, "rtp_n_prompts": 150.0,
                      "rtp_plain_expected_max_toxicity": 0.3},
              "ppo": {"truthfulqa_mc_n": 25.0, "truthfulqa_mc2": 0.60, "rtp_n_prompts": 150.0,
                      "rtp_plain_expected_max_toxicity": 0.2}}
    world_model = Config()  # model.name_or_path unset: pre-trained on the embedded world alone
    status = real_data_status(world_model, models)
    assert all(OUT_OF_DOMAIN in s["status"] and not s["verdict"] for s in status.values())
    diff = {"estimate": 0.1, "low": 0.05, "high": 0.15}
    summary = {"baseline": "sft", "models": models, "real_data": status,
               "comparisons": {"ppo": {"diff_truthfulqa_mc2": diff, "diff_rtp_plain_max_toxicity": diff}}}
    assert "truthful" not in verdicts(summary)[0] and "toxicity" not in verdicts(summary)[0]
    users = Config.model_validate({"model": {"name_or_path": "some/llm"}})
    status = real_data_status(users, models)
    assert not status["truthfulqa"]["verdict"] and "fewer than eval.min_real_items=100" in status["truthfulqa"]["status"]
    assert status["rtp"]["verdict"] and status["rtp"]["status"] == "measured"
    summary["real_data"] = status
    assert "truthfulness" not in verdicts(summary)[0] and "toxicity" in verdicts(summary)[0]


# --- the tiny run end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_run_reports_the_matched_headline_and_stage_attribution_first(tmp_path, capsys):
    from chatrlhf import pipeline

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"run.out_dir={tmp_path}", "run.threads=1"])
    pipeline.run_all(cfg)
    capsys.readouterr()
    from chatrlhf.evaluate.report import run_report

    run_report(cfg)  # the console leads with the headline, then how far it could go
    printed = " ".join(capsys.readouterr().err.split())
    assert printed.startswith("HEADLINE: round_2 vs sft, each at its own best decoding (") and "How far it could go" in printed
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    h = summary["headline"]
    assert h["final"] == "round_2" and h["baseline"] == "sft"
    for key in ("matched", "greedy", "t1_vs_t1", "control"):
        assert h[key]["low"] <= h[key]["estimate"] <= h[key]["high"] and h[key]["verdict"]
    assert h["final_decoding"]["temperature"] in cfg.eval.decoding_temperatures
    assert h["examples"] and {"prompt", "final", "baseline"} <= set(h["examples"][0])
    # headroom: the final policy's per-prompt wins are the headline's own, beside a labeler's ideal answers
    assert h["headroom"]["vs_baseline"]["final"] == pytest.approx(h["matched"]["estimate"])
    assert 0.5 <= h["headroom"]["bound_without_context"] <= 1 and h["headroom"]["per_task"]
    steps = [(r["from"], r["to"]) for r in summary["attribution"]]
    assert steps[:3] == [("base", "sft"), ("sft", "best_of_n"), ("best_of_n", "ppo")]
    assert ("round_2_best_of_n", "round_2") in steps and ("ppo", "round_2") in steps
    assert all("verdict" in r and "gold_diff" in r for r in summary["attribution"])
    md = (tmp_path / "report" / "report.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0].startswith("## Headline") and sections[2].startswith("## Stage attribution")
    assert "How far it could go: a training labeler's ideal answers win" in md
    assert "Wall-clock limits that fired (the result then depends on the machine's speed): none." in md
    # the RM's row leads with its held-out accuracy beside the labelers' agreement and the noise-free rubric's
    figs = json.loads((tmp_path / "report" / "metrics.json").read_text())["stages"]["rm"]["figures"]
    assert list(figs)[:4] == ["acc_held_out_labelers", "held_out_labeler_agreement", "gold_acc_held_out_labelers",
                              "gold_spearman"] and "acc_held_out_labelers=" in md
    assert re.fullmatch(r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", figs["ceiling_gap"])  # the gap to the ceiling, its interval
    pj = json.loads((tmp_path / "pipeline.json").read_text())
    assert pj["budget"]["rounds"] == 2 and pj["time_limits_fired"] == []


def test_world_series_are_resampled_by_content_cluster_and_real_items_alone():
    from types import SimpleNamespace

    from chatrlhf.evaluate.run import series_clusters

    ctx = SimpleNamespace(prompts=[{"id": str(i)} for i in range(6)], clusters=["a", "a", "b", "b", "c", "c"])
    items = {"world_series_index": {"world_greedy_fact_correct": [1, 2, 5]}}
    assert series_clusters(ctx, items, "world_greedy_likert", 6) == ["a", "a", "b", "b", "c", "c"]
    assert series_clusters(ctx, items, "world_greedy_fact_correct", 3) == ["a", "b", "c"]  # a subset: its prompts' clusters
    assert series_clusters(ctx, items, "truthfulqa_mc2", 4) == [0, 1, 2, 3]  # each real item its own cluster


def test_headroom_splits_the_ideal_answers_margin_by_task_and_bounds_a_policy_that_cannot_read_the_prompt():
    from chatrlhf.config import WorldConfig
    from chatrlhf.evaluate.headline import CONTEXT_TASKS, headroom, headroom_note, ideal_answers
    from chatrlhf.world import World

    world = World.generate(WorldConfig(n_people=8, n_places=5, n_objects=4, corpus_docs=50, n_sft_prompts=60,
                                       n_rm_prompts=40, n_ppo_prompts=80, n_eval_prompts=120))
    prompts = world.prompts("eval")
    base = ["I do not know. Do you?"] * len(prompts)
    ideal = ideal_answers(world, prompts, seed=0)
    # the final policy: ideal answers where the prompt's words are not needed, the baseline's where they are
    final = [b if p["task"] in CONTEXT_TASKS else a for p, a, b in zip(prompts, ideal, base)]
    from chatrlhf.evaluate.world_eval import compare_to_baseline

    h = headroom(world, prompts, compare_to_baseline(world, prompts, final, base, 0, 4), base, seed=0, judgements=4)
    assert h["vs_baseline"]["ideal"] > 0.7 and set(h["per_task"]) == {p["task"] for p in prompts}
    assert h["context_share"]["ideal"] > 0.05 and h["context_share"]["final"] == 0.0  # ties count half
    for t in CONTEXT_TASKS:
        assert h["per_task"][t]["final"] == 0.5
    # the bound is what this policy wins: the ideal answer everywhere it need not read the prompt
    assert h["vs_baseline"]["final"] == pytest.approx(h["bound_without_context"], abs=0.03)
    assert h["bound_without_context"] < h["vs_baseline"]["ideal"]
    note = headroom_note({"baseline": "sft", "headline": {"headroom": h}})
    assert note.startswith("How far it could go") and f"{h['bound_without_context']:.3f}" in note
