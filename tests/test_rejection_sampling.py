"""Rejection-sampling fine-tuning before PPO: the selection keeps each prompt's best sample under
PPO's reward, and the fine-tuning makes the kept answers likelier."""

from __future__ import annotations

import torch

from chatrlhf.config import PPOConfig, RejectionSamplingConfig
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
from chatrlhf.rl.rejection_sampling import best_of_n, fine_tune
from tests.conftest import ppo_cfg

PROMPTS = [{"messages": [{"role": "user", "content": c}]} for c in
           ["Hello!", "What is two plus two?", "Who is Zorbel Quint?", "List three fruits.", "Where is Varnok?"]]


def cfg(n: int = 4, **kw) -> PPOConfig:
    base = dict(max_new_tokens=8, missing_eos_penalty=0.0, sft_loglik_coef=0.0,
                rejection_sampling=RejectionSamplingConfig(n=n, epochs=3, learning_rate=3e-3, batch_size=4,
                                                           warmup_steps=0, sample_batch=8))
    return ppo_cfg(**{**base, **kw})


class RecordingReward:
    """Share of response tokens whose id is a multiple of 5; remembers every text it scored."""

    def __init__(self, tok):
        self.tok, self.seen, self.by_prompt = tok, [], {}

    def score(self, text: str) -> float:
        ids = self.tok(text, add_special_tokens=False)["input_ids"] or [1]
        return sum(i % 5 == 0 for i in ids) / len(ids)

    def __call__(self, prompts, texts):
        self.seen += list(texts)
        for p, t in zip(prompts, texts):
            self.by_prompt.setdefault(p["messages"][0]["content"], []).append(t)
        return torch.tensor([self.score(t) for t in texts])


def test_best_of_n_keeps_each_prompts_highest_reward_sample(tiny_model_dir):
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    reward = RecordingReward(tok)
    picked, stats = best_of_n(model, model, tok, PROMPTS, reward, cfg(n=4), seed=3)
    assert len(reward.seen) == round(stats["distinct_responses"] * 4 * len(PROMPTS)) > len(PROMPTS)
    for prompt, p in zip(PROMPTS, picked):  # the kept answer scores highest among its prompt's samples
        group = reward.by_prompt[prompt["messages"][0]["content"]]
        assert len(set(group)) == len(group) <= 4  # each distinct sample scored once
        assert p in group and reward.score(p) == max(reward.score(t) for t in group)
    assert any(len(g) > 1 for g in reward.by_prompt.values())  # the samples differ, so the choice matters
    assert stats["rm_score_best"] >= stats["rm_score_mean"]


def test_copies_of_a_sample_are_scored_once_and_change_nothing(tiny_model_dir, monkeypatch):
    """A sharpened policy repeats itself: best-of-n scores each prompt's distinct responses once and
    gives the copies the same numbers, so the pick and every statistic equal scoring all rows."""
    import chatrlhf.rl.rejection_sampling as rs

    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    c = cfg(n=6, temperature=0.05, sft_loglik_coef=1.0)  # low temperature: copies; sft_loglik: the reference pass runs
    reward = RecordingReward(tok)
    picked, stats = best_of_n(model, model, tok, PROMPTS, reward, c, seed=5, gold_fn=lambda p, t: len(t) / 10)
    assert 0 < stats["distinct_responses"] < 1 and len(reward.seen) < 6 * len(PROMPTS)
    assert len(reward.seen) == round(stats["distinct_responses"] * 6 * len(PROMPTS))
    every_row = lambda ro, n: (list(range(len(ro.texts))), torch.arange(len(ro.texts)))  # noqa: E731
    monkeypatch.setattr(rs, "distinct_responses", every_row)
    all_picked, all_stats = best_of_n(model, model, tok, PROMPTS, RecordingReward(tok), c, seed=5,
                                      gold_fn=lambda p, t: len(t) / 10)
    assert picked == all_picked
    for k, v in all_stats.items():
        if k != "distinct_responses":
            assert abs(stats[k] - v) < 1e-5, k


def test_min_check_drops_answers_that_fail_their_check_and_keeps_unchecked_prompts(tiny_model_dir):
    """Rejection-sampling fine-tuning on verified answers only: a prompt whose best sample fails its
    rule-based check is left out of fine-tuning; prompts without a check are always kept."""
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    impossible = {"type": "mentions", "all": ["zzqxv"]}  # no sample of 8 tokens writes this word
    also_failing = {"type": "repeat", "word": "zzqxv", "n": 1}
    prompts = [{**PROMPTS[0]}, {**PROMPTS[1], "ground_truth": impossible}, {**PROMPTS[2], "ground_truth": also_failing}]
    flat = lambda ps, texts: torch.zeros(len(texts))  # noqa: E731
    kept_all, s_all = best_of_n(model, model, tok, prompts, flat, cfg(n=2), seed=1)
    assert all(a is not None for a in kept_all) and s_all["kept"] == 3
    c = cfg(n=2)
    c.rejection_sampling.min_check = 0.5
    kept, stats = best_of_n(model, model, tok, prompts, flat, c, seed=1)
    assert kept[0] == kept_all[0]  # no check: kept as before
    assert kept[1] is None and kept[2] is None and stats["kept"] == 1
    assert stats["verified_best"] == 0.0


def test_min_check_that_drops_every_answer_fails_clearly_before_fine_tuning(tiny_model_dir):
    import pytest

    from chatrlhf.rl.rejection_sampling import run_rejection_sampling

    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    prompts = [{**p, "ground_truth": {"type": "mentions", "all": ["zzqxv"]}} for p in PROMPTS]
    c = cfg(n=2)
    c.rejection_sampling.min_check = 1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="min_check=1.0"):
        run_rejection_sampling(model, model, tok, prompts, lambda ps, ts: torch.zeros(len(ts)), c, seed=0,
                               max_len=128, same_as_reference=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was trained


def test_likelihood_term_selects_by_the_reference_and_the_shortcut_agrees(tiny_model_dir):
    """With a constant RM only the SFT log-likelihood decides. When the policy is the reference,
    the rollout's own log-probs stand in for the reference pass: same choice, same statistics."""
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    flat = lambda prompts, texts: torch.zeros(len(texts))  # noqa: E731
    c = cfg(n=4, sft_loglik_coef=1.0)
    full, s_full = best_of_n(model, model, tok, PROMPTS, flat, c, seed=5)
    short, s_short = best_of_n(model, model, tok, PROMPTS, flat, c, seed=5, same_as_reference=True)
    assert full == short
    assert abs(s_full["sft_loglik_best"] - s_short["sft_loglik_best"]) < 1e-4
    assert s_full["reward_best"] > s_full["reward_mean"]  # the likeliest sample beats the average one


def test_fine_tune_makes_the_kept_answers_likelier(tiny_model_dir):
    from chatrlhf.lm.chat_data import Batches, build_examples, sft_loss

    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    answers = ["The capital of Varnok is Selmouth."] * len(PROMPTS)
    convs = [p["messages"] + [{"role": "assistant", "content": a}] for p, a in zip(PROMPTS, answers)]
    examples, _ = build_examples(tok, convs, 128, "test")
    batch = Batches(examples, len(examples), 128, False, 0, tok.pad_token_id)
    data = batch.tensors(batch.epoch(0)[0])
    with torch.no_grad():
        before = sft_loss(model, data).item()
    stats = fine_tune(model, tok, PROMPTS, answers, cfg(), seed=0, max_len=128)
    with torch.no_grad():
        after = sft_loss(model, data).item()
    assert stats["steps"] == 6  # 3 epochs of 2 batches of 4 (5 conversations)
    assert after < before - 0.5, (before, after)


def test_ppo_start_is_saved_as_a_stage_and_reused_on_rerun(tiny_model_dir, tmp_path):
    from chatrlhf.config import load_config
    from chatrlhf.lm.modeling import read_meta
    from chatrlhf.stages.ppo import _best_of_n_start

    c = load_config(None, ["ppo.rollout.max_new_tokens=8", "ppo.rejection_sampling.n=2", "ppo.rejection_sampling.epochs=1",
                           "ppo.reward.sft_loglik_coef=0", "sft.max_len=128"])
    tok = load_tokenizer(tiny_model_dir)
    reward = RecordingReward(tok)
    policy, ref = _best_of_n_start(c, load_causal_lm(tiny_model_dir), load_causal_lm(tiny_model_dir), tok, PROMPTS,
                                   reward, lambda p, t: 0.0, tmp_path / "best_of_n", tiny_model_dir, True)
    meta = read_meta(tmp_path / "best_of_n")
    assert meta["complete"] and meta["prompts_sampled"] == len(PROMPTS) and meta["n"] == 2
    start = load_causal_lm(tiny_model_dir).state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in policy.state_dict().items())  # it was fine-tuned

    def must_not_sample(prompts, texts):
        raise AssertionError("a complete best_of_n stage is reused, not sampled again")

    again, _ = _best_of_n_start(c, load_causal_lm(tiny_model_dir), load_causal_lm(tiny_model_dir), tok, PROMPTS,
                                must_not_sample, lambda p, t: 0.0, tmp_path / "best_of_n", tiny_model_dir, True)
    for (k, a), b in zip(policy.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_lora_policy_is_distilled_merged_and_gets_a_separate_reference(tiny_model_dir, tmp_path):
    """A LoRA policy's reference is itself with adapters off; after best-of-n fine-tuning that is no
    longer the SFT model, so PPO gets the SFT model as a separate reference and fresh adapters."""
    from chatrlhf.config import load_config
    from chatrlhf.lm.lora import is_lora, wrap_lora
    from chatrlhf.stages.ppo import _best_of_n_start

    c = load_config(None, ["ppo.rollout.max_new_tokens=8", "ppo.rejection_sampling.n=2", "ppo.rejection_sampling.epochs=1",
                           "ppo.rejection_sampling.learning_rate=0.01", "ppo.reward.sft_loglik_coef=1", "sft.max_len=128",
                           "ppo.lora.enabled=true", "ppo.lora.r=4", "ppo.lora.target_modules=[q_proj,v_proj]"])
    tok = load_tokenizer(tiny_model_dir)
    policy = wrap_lora(load_causal_lm(tiny_model_dir), c.ppo.lora)
    policy, ref = _best_of_n_start(c, policy, None, tok, PROMPTS, RecordingReward(tok), lambda p, t: 0.0,
                                   tmp_path / "best_of_n", tiny_model_dir, True)
    assert is_lora(policy) and ref is not None and not is_lora(ref)
    sft, saved = load_causal_lm(tiny_model_dir).state_dict(), load_causal_lm(tmp_path / "best_of_n").state_dict()
    assert all(torch.equal(v, sft[k]) for k, v in ref.state_dict().items())  # the reference is SFT itself
    assert any(not torch.equal(v, sft[k]) for k, v in saved.items())  # adapters were merged into the start
