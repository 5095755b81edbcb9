"""The PPO trainer on the tiny fixture model with a toy reward: learning, resume, guards, LoRA."""

from __future__ import annotations

import pytest
import torch

from chatrlhf.config import Config, LoraConfig, PPOConfig
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
from chatrlhf.lm.training import make_accelerator
from chatrlhf.rl.critic import ValueHead, ValueModel, load_critic
from chatrlhf.rl.experience import evaluate_rollout, response_forward, response_values, rollout, score_rollout
from chatrlhf.rl.guard import LabelerGuard
from chatrlhf.rl.ppo import PPOInstabilityError, PPOTrainer, compute_advantages, ppo_update
from tests.conftest import ppo_cfg

PROMPTS = [{"messages": [{"role": "user", "content": c}]} for c in
           ["Hello!", "What is two plus two?", "Who is Zorbel Quint?", "List three fruits.",
            "Where is Varnok?", "Thank you.", "Reverse: plum, pear.", "Tell me about teal."]]


def toy_cfg(**kw) -> PPOConfig:
    base = dict(total_iterations=4, rollout_batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=8,
                learning_rate=3e-3, kl_coef=0.0, vf_coef=0.1, missing_eos_penalty=0.0, save_every=2,
                early_stop="none", max_kl=1e9, sft_loglik_coef=0.0,  # the toy reward alone
                value_head_lr_scale=1.0)  # the toy learning rate is already large
    return ppo_cfg(**{**base, **kw})


def fifth_token_reward(tok):
    """Toy reward: share of response tokens whose id is a multiple of 5 (about 0.2 for a random model)."""

    def fn(prompts, texts):
        out = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"] or [1]
            out.append(sum(i % 5 == 0 for i in ids) / len(ids))
        return torch.tensor(out)

    return fn


def make_trainer(tiny_model_dir, out_dir, cfg, lora=False, guard=None, seed=0):
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model_dir)
    policy = load_causal_lm(tiny_model_dir)
    ref = load_causal_lm(tiny_model_dir)
    if lora:
        from chatrlhf.lm.lora import wrap_lora

        policy, ref = wrap_lora(policy, LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"])), None
    acc = make_accelerator(seed, device="cpu")
    critic = load_critic(tiny_model_dir, cfg.critic.model, policy) if cfg.advantage.estimator == "gae" else None
    return PPOTrainer(cfg, policy, ref, critic, tok, fifth_token_reward(tok), PROMPTS, out_dir, acc, seed=seed,
                      guard=guard)


def test_rollout_stops_at_eos_and_masks_response(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    eos = tok.eos_token_id
    with torch.no_grad():  # make EOS likely so some rows finish early
        model.lm_head.weight[eos] *= 0  # tied: also the input embedding, harmless here
        model.model.norm.weight.data.fill_(1.0)
    ro = rollout(model, tok, PROMPTS, toy_cfg(max_new_tokens=12), seed=1)
    resp = ro.input_ids[:, ro.prompt_len:]
    for i in range(len(PROMPTS)):
        n = int(ro.mask[i].sum())
        assert ro.attention_mask[i, ro.prompt_len:].sum() == n
        if ro.finished[i]:
            assert resp[i, n - 1] == eos  # EOS is the last masked token
        else:
            assert n == 12 and eos not in resp[i, :n].tolist()


def _save_rm(tiny_model_dir, path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    rm.config.pad_token_id = load_tokenizer(tiny_model_dir).pad_token_id
    rm.save_pretrained(path)
    return rm


def test_value_model_is_initialised_from_reward_model(tiny_model_dir, tmp_path):
    rm = _save_rm(tiny_model_dir, tmp_path / "rm")
    value = ValueModel.from_pretrained(tmp_path / "rm")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    attn = torch.ones_like(ids)
    with torch.no_grad():
        v = value(ids, attn)  # (1, 5): one value per token
        r = rm(input_ids=ids, attention_mask=attn).logits.squeeze(-1)
    assert v.shape == (1, 5)
    assert torch.allclose(v[:, -1], r, atol=1e-5)  # V at the last token == the RM's score
    assert torch.equal(value.model.score.weight, rm.score.weight)


def test_shared_value_head_starts_as_the_rms_head_on_the_policys_own_states(tiny_model_dir, tmp_path):
    rm = _save_rm(tiny_model_dir, tmp_path / "rm")
    policy = load_causal_lm(tiny_model_dir)
    H = policy.config.hidden_size
    head = ValueHead.from_reward_model(tmp_path / "rm", H)
    assert torch.equal(head.head.weight, rm.score.weight)
    ids, P = torch.tensor([[5, 6, 7, 8, 9, 10, 11]]), 4
    attn, pos = torch.ones_like(ids), torch.arange(7)[None]
    with torch.no_grad():
        logits, hidden = response_forward(policy, ids, attn, pos, P, 1.0, hidden=True)
        v = response_values(head, ids, attn, pos, P, hidden=hidden)
        states = policy.model(input_ids=ids, attention_mask=attn).last_hidden_state
    assert logits.shape[:2] == hidden.shape[:2] == v.shape == (1, 3)  # one per response token
    assert torch.allclose(v, rm.score(states[:, P - 1:-1]).squeeze(-1), atol=1e-5)  # read before each response token
    head.save_pretrained(tmp_path / "value")
    assert torch.equal(ValueHead.from_saved(tmp_path / "value").head.weight, head.head.weight)
    with pytest.raises(ValueError, match="ppo.critic.model=separate"):
        ValueHead.from_reward_model(tmp_path / "rm", H + 8)
    with pytest.raises(TypeError, match="ppo.critic.model=shared needs a ValueHead"):
        PPOTrainer(toy_cfg(critic="shared"), policy, None, ValueModel.from_pretrained(tmp_path / "rm"),
                   load_tokenizer(tiny_model_dir), fifth_token_reward(None), PROMPTS, tmp_path / "x",
                   make_accelerator(0, device="cpu"))


def test_shared_value_loss_trains_the_head_not_the_policy(tiny_model_dir, tmp_path):
    """With zero advantages the policy loss has no gradient: whatever moves the policy is the value loss."""
    trains_policy = False
    cfg = toy_cfg(critic="shared", vf_coef=1.0)
    t = make_trainer(tiny_model_dir, tmp_path, cfg)
    ro = rollout(t.policy, t.tokenizer, PROMPTS, cfg, seed=1, keep_hidden=True)
    score_rollout(ro, t.reward_fn, cfg)
    evaluate_rollout(ro, t.policy, t.ref_policy, t.value_model, cfg, cfg.update.mini_batch_size)
    compute_advantages(ro, 0.0, cfg)
    ro.advantages = torch.zeros_like(ro.advantages)
    before = {k: v.clone() for k, v in t.policy.state_dict().items()}
    head_before = t.value_model.head.weight.detach().clone()
    stats = ppo_update(ro, t.policy, t.value_model, t.optimizer, t.accelerator, cfg, seed=0)
    assert stats["vf_loss"] > 0 and not torch.equal(t.value_model.head.weight, head_before)
    moved = [k for k, v in t.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert bool(moved) == trains_policy, moved


def values_and_grads(value_model, ro) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """V(s_t) on a rollout's rows and the gradients of their squares' sum over the real tokens."""
    value_model.zero_grad()
    v = value_model(ro.input_ids, ro.attention_mask, ro.position_ids)
    (v * ro.attention_mask.bool()).square().sum().backward()
    return v.detach(), [p.grad.clone() for p in value_model.parameters()]


def test_separate_value_model_on_real_tokens_only_matches_the_transformers_forward(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    """The unpadded value model (projections and MLP on the real tokens) gives the transformers forward's
    values and gradients, and a separate-critic PPO step the same weights, to float rounding."""
    import chatrlhf.rl.critic as critic_mod

    cfg = toy_cfg(critic="separate", learning_rate=1e-3)
    t = make_trainer(tiny_model_dir, tmp_path / "a", cfg)
    ro = rollout(t.policy, t.tokenizer, PROMPTS, cfg, seed=1)
    assert (ro.attention_mask == 0).any(dim=1).float().mean() > 0.5  # most rows padded: the case that matters
    real = ro.attention_mask.bool()
    assert critic_mod.why_not_unpadded(t.value_model.model) is None  # the tiny Llama takes the unpadded path
    fast, fast_grads = values_and_grads(t.value_model, ro)
    monkeypatch.setattr(critic_mod, "why_not_unpadded", lambda model: "forced: transformers forward")
    slow, slow_grads = values_and_grads(t.value_model, ro)
    assert torch.allclose(fast[real], slow[real], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(fast_grads, slow_grads, strict=True))

    def step_weights(out_dir):
        tr = make_trainer(tiny_model_dir, out_dir, cfg)
        tr.step()
        return {**tr.policy.state_dict(), **{f"value.{k}": v for k, v in tr.value_model.state_dict().items()}}

    slow_w = step_weights(tmp_path / "slow")
    monkeypatch.undo()
    fast_w = step_weights(tmp_path / "fast")
    start = make_trainer(tiny_model_dir, tmp_path / "start", cfg).value_model.state_dict()
    assert any(not torch.equal(fast_w[f"value.{k}"], w) for k, w in start.items())  # the step trained the critic
    assert all(torch.allclose(fast_w[k], slow_w[k], atol=1e-6) for k in slow_w), \
        max((fast_w[k] - slow_w[k]).abs().max().item() for k in slow_w)


@pytest.mark.slow
def test_compiled_layer_stacks_give_the_eager_values_gradients_and_step(tiny_model_dir, tmp_path, monkeypatch):
    """ppo.update.compile runs the policy's, reference's and value model's layer stacks compiled: the same
    values, gradients and PPO step as the eager stacks, to float rounding; without a C++ compiler they
    stay eager."""
    import chatrlhf.lm.unpadded as unpadded

    compiled = make_trainer(tiny_model_dir, tmp_path / "c", toy_cfg(critic="separate", learning_rate=1e-3,
                                                                     **{"update.compile": True}))
    trunks = [compiled.policy.model, compiled.ref_policy.model, compiled.value_model.model.model]
    assert all(getattr(m, "unpadded_compiled", False) for m in trunks)
    calls, real_compiled = [], unpadded._compiled_layers
    monkeypatch.setattr(unpadded, "_compiled_layers", lambda: calls.append(1) or real_compiled())
    ro = rollout(compiled.policy, compiled.tokenizer, PROMPTS, compiled.cfg, seed=1)
    real = ro.attention_mask.bool()
    fast, fast_grads = values_and_grads(compiled.value_model, ro)
    assert len(calls) == 1  # the compiled stack ran
    trunks[2].unpadded_compiled = False
    slow, slow_grads = values_and_grads(compiled.value_model, ro)
    assert len(calls) == 1  # ... and now the eager one
    assert torch.allclose(fast[real], slow[real], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(fast_grads, slow_grads, strict=True))
    monkeypatch.undo()
    trunks[2].unpadded_compiled = True
    compiled.value_model.zero_grad(set_to_none=True)  # the step starts from no gradients
    eager = make_trainer(tiny_model_dir, tmp_path / "e", toy_cfg(critic="separate", learning_rate=1e-3))
    assert not getattr(eager.policy.model, "unpadded_compiled", False)
    compiled.step(), eager.step()
    a, b = compiled.policy.state_dict(), eager.policy.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    moved = make_trainer(tiny_model_dir, tmp_path / "s", toy_cfg(critic="separate")).policy.state_dict()
    assert any(not torch.equal(a[k], moved[k]) for k in a)  # the step moved the weights it compares

    monkeypatch.setattr(unpadded.shutil, "which", lambda name: None)
    policy = load_causal_lm(tiny_model_dir)
    assert not unpadded.compile_unpadded(policy) and not getattr(policy.model, "unpadded_compiled", False)


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_short_ppo_run_raises_mean_reward(tiny_model_dir, tmp_path, critic):
    trainer = make_trainer(tiny_model_dir, tmp_path, toy_cfg(total_iterations=12, learning_rate=1e-2, ppo_epochs=4,
                                                             critic=critic))
    hist = trainer.train(resume=False)
    first = sum(h["reward"] for h in hist[:3]) / 3
    last = sum(h["reward"] for h in hist[-3:]) / 3
    assert last > first + 0.1, [round(h["reward"], 3) for h in hist]
    for key in ("rm_score", "kl", "entropy", "clipfrac", "vf_loss", "approx_kl", "response_len", "kl_coef"):
        assert key in hist[-1]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 12


def test_rloo_groups_samples_per_prompt_and_raises_reward_without_a_value_model(tiny_model_dir, tmp_path):
    cfg = toy_cfg(total_iterations=12, learning_rate=1e-2, ppo_epochs=4, samples_per_prompt=4,
                  advantage_estimator="rloo")
    trainer = make_trainer(tiny_model_dir, tmp_path, cfg)
    batch = trainer._batch_prompts(0)
    assert len(batch) == 16 and len({id(p) for p in batch}) == 4
    assert all(batch[i] is batch[i - i % 4] for i in range(16))  # four samples of a prompt in a row
    assert trainer.value_model is None  # RLOO builds no value model
    hist = trainer.train(resume=False)
    first = sum(h["reward"] for h in hist[:3]) / 3
    last = sum(h["reward"] for h in hist[-3:]) / 3
    assert last > first + 0.1, [round(h["reward"], 3) for h in hist]
    assert "vf_loss" not in hist[-1]


def test_rloo_config_needs_groups():
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        ppo_cfg(advantage_estimator="rloo")
    with pytest.raises(ValueError, match="multiple of rollout.samples_per_prompt"):
        ppo_cfg(rollout_batch_size=30, samples_per_prompt=4)


def test_resume_continues_where_it_stopped(tiny_model_dir, tmp_path):
    straight = make_trainer(tiny_model_dir, tmp_path / "a", toy_cfg(total_iterations=4))
    straight.train(resume=False)
    half = make_trainer(tiny_model_dir, tmp_path / "b", toy_cfg(total_iterations=2))
    half.train(resume=False)
    resumed = make_trainer(tiny_model_dir, tmp_path / "b", toy_cfg(total_iterations=4))
    hist = resumed.train(resume=True)
    assert resumed.iteration == 4 and len(hist) == 2  # only iterations 3 and 4 were run
    for (k, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    for (k, a), b in zip(straight.value_model.state_dict().items(), resumed.value_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k  # the critic (the default shared head) resumes too


def test_exploding_kl_stops_with_clear_message_and_keeps_checkpoint(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, toy_cfg(total_iterations=2, save_every=1))
    trainer.train(resume=False)
    trainer.cfg.total_iterations, trainer.cfg.guard.max_kl = 3, -1.0
    # the policy whose KL failed is the one checkpointed at iteration 2: set aside, never resumed
    with pytest.raises(PPOInstabilityError, match="last good checkpoint kept in .*step_000001"):
        trainer.train(resume=False)
    assert trainer.ckpts.latest().name == "step_000001"
    assert (trainer.ckpts.root / "rejected_step_000002" / "REJECTED").is_file()


class _SFTAlwaysWins:
    """Prefers the SFT baseline answer ("ok") whichever side it is shown on."""

    def compare(self, prompt, a, b, rng):
        return 0.0 if b == "ok" else 1.0 if a == "ok" else 0.5


def test_guard_early_stops_and_restores_the_best_policy(tiny_model_dir, tmp_path):
    guard = LabelerGuard(PROMPTS[:4], ["ok"] * 4, [_SFTAlwaysWins()], seed=0)
    cfg = toy_cfg(total_iterations=10, early_stop="held_out_comparisons", eval_every=1, patience=2)
    trainer = make_trainer(tiny_model_dir, tmp_path, cfg, guard=guard)
    start = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train(resume=False)
    assert trainer.stop_reason == "early_stop" and trainer.iteration == 2  # no improvement for 2 evals
    trainer.restore_best()  # nothing beat SFT (iteration 0), so SFT's weights come back
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, start[k]), k


def test_guard_selects_on_the_smoothed_win_rate_not_a_single_noise_peak(tiny_model_dir, tmp_path):
    def best_after(window: int) -> dict:
        cfg = toy_cfg(early_stop="held_out_comparisons", guard_window=window, patience=3)
        (tmp_path / str(window)).mkdir()
        trainer = make_trainer(tiny_model_dir, tmp_path / str(window), cfg,
                               guard=LabelerGuard(PROMPTS[:2], ["ok"] * 2, [], seed=0))
        for it, wr in enumerate([0.5, 0.7, 0.5, 0.55, 0.6, 0.6, 0.62]):  # one lucky 0.7, then a real rise
            trainer.iteration = it
            trainer._update_best(wr)
        return trainer.best

    # the smoothed guard takes the sustained rise at the end; raw selection keeps the lucky iteration 1
    smoothed = best_after(3)
    assert smoothed["iteration"] == 6 and smoothed["win_rate"] == pytest.approx((0.6 + 0.6 + 0.62) / 3)
    assert best_after(1)["iteration"] == 1


class _PolicyAlwaysWins:
    """Prefers whatever is not the SFT baseline answer ("ok"); counts its calls."""

    def __init__(self):
        self.calls = 0

    def compare(self, prompt, a, b, rng):
        self.calls += 1
        return 1.0 if b == "ok" else 0.0 if a == "ok" else 0.5


def test_guard_takes_a_known_start_without_measuring_it(tiny_model_dir, tmp_path):
    """Starting from the reference itself, iteration 0's win rate is 0.5 by definition; a policy the
    labelers prefer afterwards is taken even if a measured start would have come out lucky."""
    likes = _PolicyAlwaysWins()
    guard = LabelerGuard(PROMPTS[:2], ["ok"] * 2, [likes], seed=0)
    cfg = toy_cfg(total_iterations=2, early_stop="held_out_comparisons", eval_every=1, patience=5, guard_window=1)
    trainer = make_trainer(tiny_model_dir, tmp_path, cfg, guard=guard)
    trainer.start_win_rate = 0.5
    trainer.train(resume=False)
    assert likes.calls == 2 * 2  # iterations 1 and 2 were judged, iteration 0 was not
    assert trainer.best["iteration"] == 1 and trainer.best["win_rate"] == 1.0


def test_a_measured_start_is_averaged_over_the_guard_window(tiny_model_dir, tmp_path):
    """A later round starts from a policy whose win rate is unknown: iteration 0 is evaluated
    guard_window times and scored by their mean, like every later (smoothed) iteration, instead of
    by one draw that, when lucky, kept the start policy for the whole round."""
    cfg = toy_cfg(total_iterations=0, early_stop="held_out_comparisons", guard_window=3)
    trainer = make_trainer(tiny_model_dir, tmp_path, cfg, guard=LabelerGuard(PROMPTS[:2], ["ok"] * 2, [], seed=0))
    draws = iter([0.9, 0.5, 0.4])  # repeats 1 and 2 come first, the plain evaluation last
    calls = []
    trainer.evaluate_guard = lambda repeat=0: (calls.append(repeat), next(draws))[1]
    trainer.train(resume=False)
    assert sorted(calls) == [0, 1, 2]
    assert trainer.guard_history == [0.9, 0.5, 0.4]
    assert trainer.best["iteration"] == 0 and trainer.best["win_rate"] == pytest.approx(0.6)


class _CountingLabeler:
    def __init__(self, verdict: float):
        self.verdict, self.calls = verdict, 0

    def compare(self, prompt, a, b, rng):
        self.calls += 1
        return self.verdict if a == "policy" else 1.0 - self.verdict


def test_guard_asks_distinct_labelers_per_prompt_and_averages_them():
    likes, dislikes = _CountingLabeler(1.0), _CountingLabeler(0.0)
    guard = LabelerGuard(PROMPTS[:3], ["ok"] * 3, [likes, dislikes], seed=0, per_prompt=2)
    assert guard.win_rate(["policy"] * 3, iteration=1) == pytest.approx(0.5)  # each pair seen by both
    assert likes.calls == dislikes.calls == 3
    one = LabelerGuard(PROMPTS[:3], ["ok"] * 3, [likes, dislikes], seed=0, per_prompt=1)
    assert one.win_rate(["policy"] * 3, iteration=1) == pytest.approx(2 / 3)  # rotation: likes, dislikes, likes


class _Recorder:
    """A labeler who notes the policy's answer of each pair (the baseline's is "ok") and ties."""

    def __init__(self):
        self.seen = []

    def compare(self, prompt, a, b, rng):
        self.seen.append(b if a == "ok" else a)
        return 0.5


def test_guard_temperature_zero_judges_greedy_answers(tiny_model_dir, tmp_path):
    """ppo.guard.temperature=0: the guard's answers are the policy's greedy ones, the same on a repeat
    draw; by default (the rollout temperature, 1) they are samples that differ between draws."""
    from chatrlhf.lm.engine import Engine, SamplingParams

    for temperature in (0.0, None):
        rec = _Recorder()
        cfg = toy_cfg(total_iterations=0, early_stop="held_out_comparisons", max_new_tokens=16)
        cfg.guard.temperature = temperature
        trainer = make_trainer(tiny_model_dir, tmp_path / str(temperature), cfg,
                               guard=LabelerGuard(PROMPTS[:4], ["ok"] * 4, [rec], seed=0))
        trainer.evaluate_guard(repeat=0)
        trainer.evaluate_guard(repeat=1)
        first, second = rec.seen[:4], rec.seen[4:]
        if temperature == 0.0:
            eng = Engine(trainer.policy, trainer.tokenizer)
            greedy = eng.generate([eng.chat_prompt(p["messages"]) for p in PROMPTS[:4]],
                                  SamplingParams(max_new_tokens=16, temperature=0.0, seed=5))
            assert first == second == [g.text.strip() for g in greedy]
        else:
            assert first != second


def test_guard_asks_each_prompt_its_own_pool():
    """A group-conditioned policy is judged on each guard prompt by the group that prompt asks for."""
    likes, dislikes = _CountingLabeler(1.0), _CountingLabeler(0.0)
    guard = LabelerGuard(PROMPTS[:3], ["ok"] * 3, [[likes], [dislikes], [dislikes]], seed=0, per_prompt=2)
    assert guard.win_rate(["policy"] * 3, iteration=1) == pytest.approx(1 / 3)
    assert (likes.calls, dislikes.calls) == (1, 2)  # a pool of one is asked once, whatever per_prompt says
    with pytest.raises(ValueError, match="2 labeler pools for 3 prompts"):
        LabelerGuard(PROMPTS[:3], ["ok"] * 3, [[likes], [dislikes]], seed=0)


def test_guard_labelers_are_the_groups_the_run_trains_on():
    """The guard's labelers are rm.labeler_groups' training members (everyone's by default), and for a
    conditioned run each prompt's own group: a group's policy is kept by its own group's taste."""
    from chatrlhf.config import WorldConfig
    from chatrlhf.stages.ppo import _guard_labelers
    from chatrlhf.world import World
    from chatrlhf.world.groups import for_group

    world = World.generate(WorldConfig(n_people=8, n_places=5, n_objects=4, corpus_docs=50, n_sft_prompts=10,
                                       n_rm_prompts=10, n_ppo_prompts=10, n_eval_prompts=10, agreement_comparisons=10))
    prompts = world.prompts("ppo")[:3]
    groups = lambda pool: {lab.group for lab in pool}  # noqa: E731
    everyone = _guard_labelers(Config(), world, prompts)
    assert groups(everyone) == {"brief", "thorough", "cautious"} and not any(lab.held_out for lab in everyone)
    brief = _guard_labelers(Config.model_validate({"rm": {"labeler_groups": {"brief": 1.0, "cautious": 0.0}}}), world, prompts)
    assert groups(brief) == {"brief"} and not any(lab.held_out for lab in brief)
    asked = [for_group(p, g) for p, g in zip(prompts, ["cautious", "brief", "thorough"])]
    pools = _guard_labelers(Config.model_validate({"rm": {"conditioned": True}}), world, asked)
    assert [groups(pool) for pool in pools] == [{"cautious"}, {"brief"}, {"thorough"}]
    assert not any(lab.held_out for pool in pools for lab in pool)


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_lora_policy_trains_adapters_only_and_uses_base_as_reference(tiny_model_dir, tmp_path, critic):
    trainer = make_trainer(tiny_model_dir, tmp_path, toy_cfg(total_iterations=2, kl_coef=0.1, critic=critic), lora=True)
    base = {k: v.clone() for k, v in trainer.policy.state_dict().items() if "lora_" not in k}
    hist = trainer.train(resume=False)
    assert hist[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # adapters start at zero: policy == reference
    for k, v in trainer.policy.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, base[k]), k
    assert any(abs(h["kl"]) > 1e-6 for h in hist[1:])


def test_nan_loss_stops_with_clear_message(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, toy_cfg(total_iterations=1, save_every=1))
    trainer.train(resume=False)
    trainer.cfg.total_iterations = 2
    trainer.reward_fn = lambda prompts, texts: torch.full((len(texts),), float("nan"))
    with pytest.raises(PPOInstabilityError, match="nan at iteration 2.*last good checkpoint kept in .*step_000001"):
        trainer.train(resume=False)


def test_summary_reports_the_selected_policys_own_rollout():
    """history[k] holds iteration k+1, sampled from the policy after k updates: when the guard keeps the
    starting policy (iteration 0), meta.json must describe it, not the last, most drifted iteration."""
    from types import SimpleNamespace

    from chatrlhf.config import Config
    from chatrlhf.stages.ppo import _summary

    history = [{"reward": r, "gold": 0.5, "kl": kl} for r, kl in [(0.1, 0.0), (0.3, 0.7), (0.9, 3.2)]]
    trainer = SimpleNamespace(guard=object(), best={"iteration": 0, "win_rate": 0.5}, iteration=3, stop_reason="early_stop",
                              ptx_data=None)
    meta = _summary(Config(), trainer, history, 1.0, 1.0, "p", "r", "s")
    assert (meta["selected_iteration"], meta["kl"], meta["reward"]) == (0, 0.0, 0.1)
    assert meta["final_iteration_kl"] == 3.2
    trainer.best["iteration"] = 1
    assert _summary(Config(), trainer, history, 1.0, 1.0, "p", "r", "s")["kl"] == 0.7
    trainer.iteration, trainer.best["iteration"] = 5, 3  # resumed at 2: history holds iterations 3 to 5
    assert _summary(Config(), trainer, history, 1.0, 1.0, "p", "r", "s")["kl"] == 0.7


def test_watched_scores_are_logged_each_iteration_and_never_paid(tiny_model_dir, tmp_path):
    """`watch` (the stage passes the held-out judges' utility) adds a figure per iteration to the log
    and leaves the update alone: the same weights as without it."""
    cfg = toy_cfg()
    plain = make_trainer(tiny_model_dir, tmp_path / "plain", cfg)
    watched = make_trainer(tiny_model_dir, tmp_path / "watched", cfg)
    watched.watch = {"judges": lambda p, t: float(len(t.split()))}
    a, b = plain.step(), watched.step()
    assert "judges" in b and "judges" not in a and b["judges"] >= 0
    assert all(torch.equal(x, y) for x, y in zip(plain.policy.state_dict().values(), watched.policy.state_dict().values()))


def test_the_stage_watches_the_held_out_judges_on_world_prompts_only():
    from types import SimpleNamespace

    from chatrlhf.config_ppo import PPOConfig
    from chatrlhf.stages.ppo import _watch_fns

    class Judge:
        def __init__(self, u):
            self.u = u

        def expected_utility(self, prompt, text):
            return self.u

    world = SimpleNamespace(judges=lambda: [Judge(0.2), Judge(0.6)])
    assert _watch_fns(world, PPOConfig())["judges"]({}, "x") == pytest.approx(0.4)
    assert _watch_fns(None, PPOConfig()) == {}
    assert _watch_fns(world, PPOConfig(data="my_prompts.jsonl")) == {}  # the judges know only the world's prompts
