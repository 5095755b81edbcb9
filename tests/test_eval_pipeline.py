"""`run_eval` + `run_report` end to end on a tiny random model and small slices of the real data."""

from __future__ import annotations

import importlib
import json

import pytest

from chatrlhf.config import Config
from chatrlhf.lm.modeling import write_meta
from chatrlhf.world.generate import run_world
from tests.conftest import SHARED_DATA, shared_data


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir):
    from chatrlhf.evaluate.run import run_eval
    from chatrlhf.lm.training import MetricsLogger

    shared_data("truthfulqa")
    out = tmp_path_factory.mktemp("run")
    cfg = Config.model_validate({"run": {"out_dir": str(out), "tensorboard": False},
                                 "eval": {"shared_data": str(SHARED_DATA), "real_data_limit": 4, "rtp_samples": 2,
                                          "max_new_tokens": 8, "bootstrap": 200,
                                          "judge": str(tiny_model_dir),  # any seq-cls-loadable dir works as an RM
                                          "sections": ["real_prompts", "truthfulqa", "crows_pairs", "rtp"]}})
    log = MetricsLogger(out / "ppo", tensorboard=False)  # a training curve for the report to plot
    for step in range(5):
        log.log(step, {"loss": 1.0 / (step + 1), "reward_mean": 0.1 * step, "kl": 0.05 * step})
    run_world(cfg)  # the evaluation reads the run's world; it never generates one
    summary = run_eval(cfg, [f"sft={tiny_model_dir}", f"ppo={tiny_model_dir}"])
    return cfg, out, summary


def test_eval_writes_every_section_per_model(evaluated):
    cfg, out, summary = evaluated
    assert summary["baseline"] == "sft" and summary["order"] == ["sft", "ppo"]
    m = summary["models"]["ppo"]
    for key in ("truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_gen_truthful", "crows_pairs_stereotype_pct",
                "rtp_plain_expected_max_toxicity", "rtp_respectful_toxicity_probability", "real_prompts_n"):
        assert key in m, key
    assert 0 <= m["truthfulqa_mc2"] <= 1 and 0 <= m["rtp_plain_expected_max_toxicity"] <= 1
    assert m["truthfulqa_mc_n"] == 4 and m["rtp_n_prompts"] == 4
    per_model = json.loads((out / "eval" / "ppo.json").read_text())
    assert len(per_model["items"]["rtp_plain_max_toxicity"]) == 4
    assert json.loads((out / "eval" / "meta.json").read_text())["complete"] is True


def test_identical_models_are_not_significantly_different(evaluated):
    _, _, summary = evaluated
    assert summary["comparisons"]["ppo"]["real_rm_win_rate"]["estimate"] == 0.5  # same responses, same RM: ties
    assert "real_self_instruct_rm_score" in summary["models"]["ppo"] and "real_oasst_rm_score" in summary["models"]["ppo"]
    diff = summary["comparisons"]["ppo"]["diff_truthfulqa_mc2"]
    assert diff["estimate"] == pytest.approx(0.0, abs=1e-9) and not diff["significant"]
    iv = summary["intervals"]["ppo"]["truthfulqa_mc2"]
    assert iv["low"] <= iv["estimate"] <= iv["high"] and iv["estimate"] == pytest.approx(summary["models"]["ppo"]["truthfulqa_mc2"])


def test_report_is_self_contained_with_plots_tables_and_verdict(evaluated):
    from chatrlhf.evaluate.report import run_report
    from chatrlhf.stages.ppo import plot_reward_vs_gold

    cfg, out, _ = evaluated
    plot_reward_vs_gold([{"rm_score": 0.1 * i, "gold": 0.5, "kl": 0.2 * i} for i in range(5)],
                        out / "ppo" / "reward_vs_gold.png")
    page = run_report(cfg).read_text()
    assert page.count("data:image/png;base64,") >= 3  # model comparison, ppo training curves, reward vs gold
    # the real benchmarks measure nothing in a world-only model: shown, marked, no verdict
    assert "PPO vs SFT:" in page and "out of domain for this model" in page and "truthfulness" not in page
    assert "<td>truthfulqa_mc2</td>" in page and "Means with bootstrap 95% intervals" in page
    md = (out / "report" / "report.md").read_text()
    assert "## Every metric, every model" in md and "(plots/curves_ppo.png)" in md
    assert "(plots/reward_vs_gold_ppo.png)" in md and (out / "report" / "plots" / "reward_vs_gold_ppo.png").is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["eval"]["models"]["sft"]["truthfulqa_mc_n"] == 4
    assert metrics["stages"]["ppo"]["figures"]["final_kl"] == pytest.approx(0.2)
    assert metrics["verdicts"][0].startswith("PPO vs SFT:")
    assert json.loads((out / "report" / "meta.json").read_text())["complete"] is True  # the pipeline skips it next time


def test_missing_shared_data_skips_with_a_note(tmp_path, tiny_model_dir):
    from chatrlhf.evaluate.run import run_eval

    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path)},
                                 "eval": {"shared_data": str(tmp_path / "nowhere"), "sections": ["truthfulqa", "crows_pairs"]}})
    summary = run_eval(cfg, [f"sft={tiny_model_dir}"])
    assert summary["models"]["sft"] == {}
    assert any("truthfulqa absent" in n for n in summary["notes"])


def test_real_prompts_without_a_reward_model_say_so(tmp_path, tiny_model_dir):
    from chatrlhf.evaluate.run import Context

    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path)}, "eval": {"sections": ["real_prompts"]}})
    ctx = Context(cfg)
    assert ctx.judge is None and ctx.reward_model is None
    assert any("no reward model" in n for n in ctx.notes)


def test_world_helpfulness_likert_flags_and_win_rate(tmp_path, tiny_model_dir):
    importlib.import_module("chatrlhf.world")
    from chatrlhf.evaluate.run import run_eval

    cfg = Config.model_validate({
        "run": {"out_dir": str(tmp_path)},
        "world": {"corpus_docs": 50, "n_sft_prompts": 10, "n_rm_prompts": 10, "n_ppo_prompts": 10, "n_eval_prompts": 12},
        "eval": {"sections": ["world"], "max_new_tokens": 6, "bootstrap": 100, "judge": str(tiny_model_dir)}})
    run_world(cfg)  # the evaluation reads the run's world; it never generates one
    summary = run_eval(cfg, [f"sft={tiny_model_dir}", f"ppo={tiny_model_dir}"])
    m = summary["models"]["ppo"]
    assert 1 <= m["world_greedy_likert"] <= 7 and 1 <= m["world_sample_likert"] <= 7
    assert 0 <= m["world_greedy_flag_hallucination"] <= 1 and "world_greedy_flag_fails_instruction" in m
    win = summary["comparisons"]["ppo"]["world_win_rate"]
    assert win["low"] <= win["estimate"] <= win["high"]
    sampled = summary["comparisons"]["ppo"]["world_sample_win_rate"]  # T=1 answers, compared the same way
    assert sampled["low"] <= sampled["estimate"] <= sampled["high"]
    assert "world_greedy_rm_score" in m and "diff_world_greedy_rm_score" in summary["comparisons"]["ppo"]
    # same weights, same greedy answers: every comparison is between identical responses
    assert summary["comparisons"]["ppo"]["diff_world_greedy_likert"]["estimate"] == pytest.approx(0, abs=1.0)
    control = summary["controls"]["baseline_greedy_vs_sample"]  # SFT greedy vs SFT at T=1
    assert control["low"] <= control["estimate"] <= control["high"]


def test_sharpening_control_compares_the_baselines_greedy_and_sampled_answers(tmp_path, tiny_model_dir):
    importlib.import_module("chatrlhf.world")
    from chatrlhf.evaluate.report import verdicts
    from chatrlhf.evaluate.run import run_eval

    world = {"corpus_docs": 50, "n_sft_prompts": 10, "n_rm_prompts": 10, "n_ppo_prompts": 10, "n_eval_prompts": 12}
    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path)}, "world": world,
                                 "eval": {"sections": ["world"], "max_new_tokens": 6, "bootstrap": 100,
                                          "temperature": 0.0, "judge": str(tiny_model_dir)}})
    run_world(cfg)  # the evaluation reads the run's world; it never generates one
    summary = run_eval(cfg, [f"sft={tiny_model_dir}", f"ppo={tiny_model_dir}"])
    # "sampled" at temperature 0 is greedy: the control compares identical answers, all ties
    control = summary["controls"]["baseline_greedy_vs_sample"]
    assert control["estimate"] == control["low"] == control["high"] == 0.5
    assert summary["comparisons"]["ppo"]["world_sample_vs_greedy_baseline_win_rate"]["estimate"] == 0.5
    assert verdicts(summary)[-1].startswith("Control: SFT greedy vs SFT sampled 0.50")



def test_report_before_any_eval_still_renders_curves(tmp_path):
    from chatrlhf.evaluate.report import run_report
    from chatrlhf.lm.training import MetricsLogger

    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path)}})
    log = MetricsLogger(tmp_path / "sft", tensorboard=False)
    log.log(0, {"loss": 2.0})
    log.log(10, {"loss": 1.0, "val_loss": 1.5})
    (tmp_path / "rounds").mkdir()
    write_meta(tmp_path / "rounds", {"budget": "round 3 would not fit in iterate.budget_minutes=13", "complete": True})
    page = run_report(cfg).read_text()
    assert "no comparison available" in page and page.count("data:image/png;base64,") == 1
    assert "note: rounds: round 3 would not fit" in page  # why the run stopped at two rounds
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["stages"]["sft"]["figures"]["final_val_loss"] == 1.5 and metrics["eval"] == {}


def test_overoptimisation_warning_only_when_proxy_up_and_labelers_significantly_down():
    from chatrlhf.evaluate.report import overoptimisation

    up = {"estimate": 0.5, "low": 0.2, "high": 0.8, "significant": True}
    down = {"estimate": -1.0, "low": -1.2, "high": -0.8, "significant": True}
    flat = {"estimate": -0.1, "low": -0.3, "high": 0.1, "significant": False}
    assert "over-optimisation" in overoptimisation({"diff_world_greedy_rm_score": up, "diff_world_greedy_likert": down})
    assert overoptimisation({"diff_world_greedy_rm_score": up, "diff_world_greedy_likert": flat}) is None
    assert overoptimisation({"diff_world_greedy_rm_score": {**down, "estimate": -0.2}, "diff_world_greedy_likert": down}) is None
    assert overoptimisation({}) is None


def _world_good_and_bad_answers(n_eval_prompts: int):
    """A small world's eval context, its reference answers (a refusal where it has none) and gibberish."""
    from types import SimpleNamespace

    from chatrlhf.config import WorldConfig
    from chatrlhf.world import World

    world = World.generate(WorldConfig(corpus_docs=50, n_sft_prompts=10, n_rm_prompts=10, n_ppo_prompts=10,
                                       n_eval_prompts=n_eval_prompts))
    prompts = world.prompts("eval")
    good = [p["reference"].get("ideal") or "I am sorry, I cannot help with that." for p in prompts]
    bad = ["blah blah"] * len(prompts)
    ctx = SimpleNamespace(world=world, prompts=prompts, clusters=[p["cluster"] for p in prompts],
                          cfg=Config.model_validate({"eval": {"bootstrap": 200}}))
    return ctx, good, bad


def test_sampled_answers_are_also_compared_with_the_baselines_greedy_answers():
    from chatrlhf.evaluate.run import compare

    ctx, good, bad = _world_good_and_bad_answers(40)
    results = {"sft": {"items": {"world_greedy_responses": good, "world_sample_responses": bad}},
               "ppo": {"items": {"world_greedy_responses": good, "world_sample_responses": good}}}
    comp = compare(ctx, results, "sft")["ppo"]
    assert comp["world_sample_win_rate"]["estimate"] > 0.8  # good answers against the rambling samples
    assert comp["world_sample_vs_greedy_baseline_win_rate"]["estimate"] == 0.5  # the same answers: all ties


def test_rubric_parts_are_compared_with_the_baseline_part_by_part():
    """Correct, refusing answers against gibberish: each substantive part of the rubric gets its own
    paired difference and significance, in the summary and in the report's verdict."""
    from chatrlhf.evaluate.report import rubric_parts
    from chatrlhf.evaluate.run import compare
    from chatrlhf.evaluate.world_eval import score

    ctx, good, bad = _world_good_and_bad_answers(120)
    prompts = ctx.prompts

    def result(responses):
        _, items, _ = score(ctx.world, prompts, {"greedy": responses, "sample": responses}, 0)
        return {"items": {f"world_{k}": v for k, v in items.items()}}

    n_facts = sum(p.get("task") == "fact" for p in prompts)
    assert n_facts >= 20 and len(result(good)["items"]["world_sample_fact_correct"]) == n_facts
    comp = compare(ctx, {"sft": result(bad), "ppo": result(good)}, "sft")["ppo"]
    facts, refusals = comp["diff_world_sample_fact_correct"], comp["diff_world_sample_refused_harmful"]
    assert facts["estimate"] > 0.5 and facts["significant"] and facts["improved"]
    assert refusals["estimate"] > 0.5 and refusals["significant"] and refusals["better"] == "higher"
    assert comp["diff_world_greedy_fact_correct"]["significant"]
    assert "correct facts (fact prompts) +" in rubric_parts(comp) and "], better" in rubric_parts(comp)
    # the other way round every part is worse; against itself nothing moves
    assert "], worse" in rubric_parts(compare(ctx, {"sft": result(good), "ppo": result(bad)}, "sft")["ppo"])
    same = compare(ctx, {"sft": result(good), "ppo": result(good)}, "sft")["ppo"]
    assert not same["diff_world_sample_fact_correct"]["significant"] and "], better" not in rubric_parts(same)
    assert "no significant change" in rubric_parts(same)
