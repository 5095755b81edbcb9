"""Evaluation: statistics, log-likelihood scoring, TruthfulQA/CrowS-Pairs logic, model resolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chatrlhf.config import Config
from chatrlhf.evaluate import models as em
from chatrlhf.evaluate.stats import auroc, bootstrap_ci, paired_diff_ci, significant
from chatrlhf.evaluate.toxicity import _decode_bytes_literal, gehman_metrics
from tests.conftest import shared_data

# --- statistics -------------------------------------------------------------------------------


def test_bootstrap_ci_brackets_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 20)
    big = rng.normal(1.0, 1.0, 2000)
    est, lo, hi = bootstrap_ci(small, n=500)
    assert lo < est < hi and est == pytest.approx(small.mean())
    _, lo2, hi2 = bootstrap_ci(big, n=500)
    assert (hi2 - lo2) < (hi - lo) / 3  # ~ 1/sqrt(n): 10x the width ratio is sqrt(100)


def test_paired_diff_detects_a_real_shift_and_not_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 200)
    assert significant(paired_diff_ci(base + 0.3 + rng.normal(0, 0.1, 200), base))
    assert not significant(paired_diff_ci(base + rng.normal(0, 0.1, 200), base))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_diff_ci([1, 2], [1])


def test_auroc_and_gehman_by_hand():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([0, 1, 0, 1], [0.1, 0.2, 0.8, 0.9]) == 0.75  # 3 of 4 (pos, neg) pairs ordered
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    # prompt 1 max 0.6 (toxic), prompt 2 max 0.3 -> EMT 0.45, probability 0.5
    g = gehman_metrics(np.array([[0.1, 0.6], [0.3, 0.2]]))
    assert g["expected_max_toxicity"] == pytest.approx(0.45)
    assert g["toxicity_probability"] == pytest.approx(0.5)
    assert g["mean_toxicity"] == pytest.approx(0.3)


def test_toxigen_bytes_literal_decoded():
    assert _decode_bytes_literal("b'caf\\xc3\\xa9 time'") == "café time"
    assert _decode_bytes_literal('b"it\'s"') == "it's"
    assert _decode_bytes_literal("plain") == "plain"


# --- models and log-likelihood ------------------------------------------------------------------


@pytest.fixture(scope="module")
def handle(tiny_model_dir):
    return em.load_handle("sft", str(tiny_model_dir))


def test_continuation_logprobs_match_unbatched_forward(handle):
    ctx, cont = em.encode_text(handle, "Hello! How can"), em.encode_text(handle, " I help you today?")
    short = (em.encode_text(handle, "Hi"), em.encode_text(handle, " four"))
    got = em.continuation_logprobs(handle, [(ctx, cont), short], batch_size=2)  # padded batch
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(handle.model(ids).logits[0, :-1].float(), -1)
    want = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    assert got[0] == pytest.approx(want, abs=1e-4)
    assert got[1] == pytest.approx(em.continuation_logprobs(handle, [short])[0], abs=1e-4)


def test_prompt_formats_base_plain_chat_template(handle, tiny_model_dir):
    msgs = [{"role": "user", "content": "Where is Selmouth?"}]
    assert em.prompt_text(handle, msgs).startswith("<|bos|><|user|>Where is Selmouth?<|end|><|assistant|>")
    base = em.load_handle("base", str(tiny_model_dir))
    assert not base.chat and em.prompt_text(base, msgs) == "User: Where is Selmouth?\nAssistant:"


def test_generate_greedy_is_deterministic_and_cut_at_turn_end(handle):
    a = em.generate(handle, ["User: hi\nAssistant:"] * 2, max_new_tokens=8, temperature=0.0)
    assert a[0] == a[1] and isinstance(a[0], str)
    assert em._cut(" four\nUser: more", chat=False) == "four"


def test_resolve_models_stage_names_and_paths(tmp_path, tiny_model_dir):
    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path)}})
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "config.json").write_text("{}")
    assert em.resolve_models(cfg, []) == [("base", str(tmp_path / "pretrain"))]
    assert em.resolve_models(cfg, [f"mine={tiny_model_dir}"]) == [("mine", str(tiny_model_dir))]
    assert em.stage_path(cfg, "round_3") == tmp_path / "rounds" / "round_3" / "ppo"
    with pytest.raises(FileNotFoundError, match="--model ppo: no such stage output"):
        em.resolve_models(cfg, ["ppo"])


# --- TruthfulQA and CrowS-Pairs ------------------------------------------------------------------


def test_mc1_mc2_from_option_loglikelihoods(handle, monkeypatch):
    from chatrlhf.evaluate import truthfulness as tq

    item = tq.TQAItem("q?", "a", ["a"], ["b"], "cat", mc1={"a": 1, "b": 0, "c": 0}, mc2={"a": 1, "d": 1, "b": 0})
    # mc1 options a,b,c then mc2 options a,d,b: a wins MC1; MC2 = (e^-1 + e^-2) / (e^-1 + e^-2 + e^-1)
    monkeypatch.setattr(tq, "continuation_logprobs", lambda h, pairs: [-1.0, -3.0, -2.0, -1.0, -2.0, -1.0])
    m, items = tq.mc_scores(handle, [item])
    assert m["truthfulqa_mc1"] == 1.0
    want = (math.exp(-1) + math.exp(-2)) / (2 * math.exp(-1) + math.exp(-2))
    assert m["truthfulqa_mc2"] == pytest.approx(want)
    assert items["truthfulqa_mc2"] == [pytest.approx(want)]


def test_truthfulqa_loads_and_mc_runs_on_real_slice(handle):
    from chatrlhf.evaluate import truthfulness as tq

    items = tq.load_truthfulqa(shared_data("truthfulqa"), limit=3)
    assert len(items) == 3 and all(it.mc1 and it.correct and it.incorrect for it in items)
    m, _ = tq.mc_scores(handle, items)
    assert 0.0 <= m["truthfulqa_mc2"] <= 1.0 and m["truthfulqa_mc_n"] == 3


def test_crows_pairs_counts_direction_per_bias_type(handle, monkeypatch):
    from chatrlhf.evaluate import bias

    rows = bias.load_crows_pairs(shared_data("crows_pairs/crows_pairs_anonymized.csv"), limit=4)
    assert len(rows) == 4
    fake = [{"sent_more": "x", "sent_less": "y", "bias_type": t, "stereo_antistereo": "stereo"}
            for t in ("age", "age", "gender")]
    # pair 1 prefers more (-1 > -2), pair 2 prefers less, pair 3 prefers more
    monkeypatch.setattr(bias, "continuation_logprobs", lambda h, pairs: [-1.0, -2.0, -3.0, -1.0, -0.5, -0.7])
    m = bias.crows_pairs_scores(handle, fake)
    assert m["crows_pairs_stereotype_pct"] == pytest.approx(200 / 3)
    assert m["crows_pairs_age_pct"] == 50.0 and m["crows_pairs_gender_pct"] == 100.0


def test_rtp_inputs_and_real_prompt_loading(handle, tiny_model_dir):
    from chatrlhf.evaluate.real_prompts import RESPECTFUL, load_real_prompts, rtp_inputs

    base = em.load_handle("base", str(tiny_model_dir))
    assert rtp_inputs(base, "So I told him", respectful=False) == "So I told him"  # a base LM just continues
    assert rtp_inputs(base, "So I told him", respectful=True) == f"{RESPECTFUL} So I told him"
    assert rtp_inputs(handle, "So I told him", respectful=True).endswith(f"<|user|>{RESPECTFUL} So I told him<|end|><|assistant|>")
    prompts = load_real_prompts(shared_data("self_instruct").parent, limit=2)
    assert [p["source"] for p in prompts] == ["self_instruct", "self_instruct", "oasst", "oasst"]
    assert all(p["prompt"].strip() for p in prompts)


def test_base_answer_is_cut_at_the_document_separator(tiny_model_dir):
    from chatrlhf.lm.tokenizer import document_eos

    base = em.load_handle("base", str(tiny_model_dir))
    ids = em.encode_text(base, "I do not know.") + [document_eos(base.tokenizer)] + em.encode_text(base, "Thread: next doc")
    assert em._text(base, ids, "I do not know.Thread: next doc") == "I do not know."
    sft = em.load_handle("sft", str(tiny_model_dir))
    assert em._text(sft, ids, "kept as the engine gave it") == "kept as the engine gave it"


def test_judging_each_pair_many_times_estimates_the_same_win_rate_with_less_noise():
    """compare_to_baseline with judgements=20 rotates the pair over the held-out labelers: identical
    answers tie, a clearly better answer always wins, and on close calls (concise vs detailed ideal
    answers, which the labeler groups disagree on) the win rate is the same as one judgement per
    pair gives on average, with a much smaller spread from the labelers' noise."""
    import random
    import statistics

    from chatrlhf.config import WorldConfig
    from chatrlhf.evaluate.world_eval import compare_to_baseline
    from chatrlhf.world import World
    from chatrlhf.world.writing import ideal

    world = World.generate(WorldConfig(n_people=8, n_places=5, n_objects=4, corpus_docs=100, n_sft_prompts=20,
                                       n_rm_prompts=20, n_ppo_prompts=20, n_eval_prompts=120))
    prompts = world.prompts("eval")
    rng = random.Random(0)
    concise = [ideal(p, rng, "concise", world.facts) for p in prompts]
    detailed = [ideal(p, rng, "detailed", world.facts) for p in prompts]
    assert set(compare_to_baseline(world, prompts, concise, concise, 0, judgements=20)) == {0.5}
    assert set(compare_to_baseline(world, prompts, concise, [""] * len(prompts), 0, judgements=20)) == {1.0}

    def means(judgements: int) -> list[float]:
        return [statistics.mean(compare_to_baseline(world, prompts, concise, detailed, s, judgements)) for s in range(12)]

    one, many = means(1), means(20)
    assert abs(statistics.mean(one) - statistics.mean(many)) < 0.05
    assert statistics.stdev(many) < 0.5 * statistics.stdev(one)
