"""PPO loss functions against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from chatrlhf.rl.kl_controller import AdaptiveKLController, FixedKLController
from chatrlhf.rl.losses import (
    compiled_logprobs_and_entropy,
    discounted_returns,
    entropy_from_logprobs,
    gae_advantages,
    kl_penalized_rewards,
    leave_one_out_baseline,
    logprobs_and_entropy,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    sft_loglik_rewards,
)


def test_gae_matches_hand_computed_example():
    # row 0: 3 tokens; row 1: 2 tokens then padding whose garbage must be ignored
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 99.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [1.0, 1.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: d2 = 1 - .4 = .6; d1 = .9*.4 - .2 = .16; A1 = .16 + .45*.6 = .43; d0 = .9*.2 - .5 = -.32;
    #        A0 = -.32 + .45*.43 = -.1265
    # row 1: d1 = 2 - 1 = 1 (terminal); d0 = .9*1 - 1 = -.1; A0 = -.1 + .45*1 = .35
    expected = torch.tensor([[-0.1265, 0.43, 0.6], [0.35, 1.0, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)


def test_gae_with_lambda_one_gamma_one_is_return_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    values = torch.tensor([[0.3, 0.1, -0.4, 0.2]])
    adv, _ = gae_advantages(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    mc = rewards.flip(1).cumsum(1).flip(1)  # Monte-Carlo return-to-go
    assert torch.allclose(adv, mc - values, atol=1e-6)


def test_leave_one_out_baseline_centres_each_prompt_group():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 13.0])  # two prompts, three samples each
    out = leave_one_out_baseline(scores, 3)
    # 1 - (2+3)/2 = -1.5; 2 - (1+3)/2 = 0; 3 - (1+2)/2 = 1.5; 10 - 11.5; 10 - 11.5; 13 - 10
    assert torch.allclose(out, torch.tensor([-1.5, 0.0, 1.5, -1.5, -1.5, 3.0]))
    assert torch.allclose(leave_one_out_baseline(scores + 100.0, 3), out)  # a prompt's level carries no signal


def test_discounted_returns_stop_at_the_response_end():
    rewards = torch.tensor([[0.1, -0.2, 1.0], [0.5, 2.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    ret = discounted_returns(rewards, mask, gamma=0.5)
    # row 0: G2 = 1; G1 = -.2 + .5 = .3; G0 = .1 + .15 = .25. row 1: G1 = 2; G0 = .5 + 1 = 1.5
    assert torch.allclose(ret, torch.tensor([[0.25, 0.3, 1.0], [1.5, 2.0, 0.0]]))
    adv, _ = gae_advantages(rewards, torch.zeros_like(rewards), mask, gamma=0.5, lam=1.0)
    assert torch.allclose(ret, adv)  # GAE with V = 0 and lambda = 1 is the same return


def test_kl_penalty_sign_and_placement():
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0, -0.5], [-2.0, -1.0, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    # kl_t = logpi - logpi_ref = [1, 0, -0.5]: more likely than SFT -> negative reward, on every token;
    # the RM score lands on the last *response* token only (index 2 for row 0, 1 for row 1)
    assert torch.allclose(kl, torch.tensor([[1.0, 0.0, -0.5], [1.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.1, 0.0, 0.05 + 2.0], [-0.1, -1.0, 0.0]]))


def test_k3_kl_penalty_is_never_a_bonus_and_averages_to_the_kl():
    """ppo.reward.kl_estimator=k3: every token pays a penalty of at least 0 (k1 pays a bonus where the
    policy is less likely than SFT), the score still lands on the last token, and on tokens drawn
    from the policy both estimators average to the true KL(pi || pi_SFT)."""
    scores = torch.tensor([2.0])
    logprobs, ref = torch.tensor([[-1.0, -1.0, -1.0]]), torch.tensor([[-2.0, -1.0, -0.5]])
    mask = torch.ones(1, 3)
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref, mask, kl_coef=0.1, estimator="k3")
    d = ref - logprobs
    assert torch.allclose(kl, torch.exp(d) - d - 1) and (kl >= 0).all()
    assert torch.allclose(rewards, -0.1 * kl + torch.tensor([[0.0, 0.0, 2.0]]))
    k1_rewards, _ = kl_penalized_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    assert k1_rewards[0, 2] > rewards[0, 2]  # the less likely token: k1 pays 0.05, k3 charges 0.0149

    g = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(50, generator=g), 0)
    pi_ref = torch.softmax(torch.randn(50, generator=g), 0)
    true_kl = (pi * (pi.log() - pi_ref.log())).sum()
    y = torch.multinomial(pi, 200_000, replacement=True, generator=g)[None]
    lp, rp = pi.log()[y], pi_ref.log()[y]
    for est in ("k1", "k3"):
        _, kl = kl_penalized_rewards(torch.zeros(1), lp, rp, torch.ones_like(lp), 0.1, estimator=est)
        assert kl.mean().item() == pytest.approx(true_kl.item(), rel=0.02)


def test_sft_loglik_reward_is_the_mean_log_likelihood_paid_per_token():
    ref = torch.tensor([[-0.1, -0.2, -0.3], [-0.1, -4.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = sft_loglik_rewards(ref, mask, coef=2.0)
    # row 0: 2 * [-0.1, -0.2, -0.3] / 3; row 1: two tokens, the padded third pays nothing
    assert torch.allclose(r, torch.tensor([[-0.2 / 3, -0.4 / 3, -0.2], [-0.1, -4.0, 0.0]]))
    assert torch.allclose(r.sum(1), 2.0 * torch.tensor([-0.2, -2.05]))  # coef * mean log pi_SFT(y)
    assert r[1, 1] < r[1, 0]  # the token the SFT model finds unlikely (a wrong fact) pays the most


def test_policy_loss_clips_ratio_and_stops_gradient():
    old = torch.zeros(1, 3)
    # ratios 1.5 (A>0, clipped), 0.5 (A<0, clipped), 1.1 (inside the range)
    lp = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, stats = ppo_policy_loss(lp, old, adv, torch.ones(1, 3), cliprange=0.2)
    # per token: -1.2, +0.8, -1.1 -> mean -0.5
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1) / 3, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    loss.backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] == 0  # clipped tokens give no gradient
    assert lp.grad[0, 2] == pytest.approx(-1.1 / 3, abs=1e-6)  # d(-A rho)/d logp = -A rho / n


def test_value_loss_is_clipped_around_old_values():
    values = torch.tensor([[1.0, 0.1]], requires_grad=True)
    old = torch.zeros(1, 2)
    returns = torch.tensor([[1.0, 0.1]])
    loss, stats = ppo_value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 0 moved 1.0 from old: clipped to 0.2, so loss uses (0.2 - 1)^2; token 1 inside: 0
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.0) / 2)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    assert values.grad[0, 0] == 0


def test_whiten_and_entropy():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, m)
    assert w[0, :3].mean().abs() < 1e-6 and w[0, 3] == 0
    assert (w[0, :3] ** 2).mean() == pytest.approx(1.0, abs=1e-4)
    uniform = entropy_from_logprobs(torch.zeros(5).log_softmax(-1))
    assert uniform.item() == pytest.approx(torch.log(torch.tensor(5.0)).item())
    logits = torch.randn(3, 4, 50) * 4
    p = logits.softmax(-1)  # H = logsumexp(z) - sum softmax(z) z
    torch.testing.assert_close(entropy_from_logprobs(logits.log_softmax(-1)), torch.logsumexp(logits, -1) - (p * logits).sum(-1))


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 32)
    assert fixed.value == 0.1
    ada = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ada.update(12.0, 10)  # error clipped to +0.2 -> beta * (1 + 0.2 * 10 / 100)
    assert ada.value == pytest.approx(0.1 * 1.02)
    ada.update(0.0, 10)  # too little KL: beta goes down
    assert ada.value < 0.1 * 1.02


@pytest.mark.slow
def test_compiled_logprobs_and_entropy_match_the_eager_ones_and_their_gradients():
    logits = torch.randn(3, 5, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (3, 5))
    grads = []
    for fn in (logprobs_and_entropy, compiled_logprobs_and_entropy()):
        lp, ent = fn(logits, tokens)
        assert not ent.requires_grad  # the entropy is a statistic, not a loss term
        (g,) = torch.autograd.grad((lp * torch.arange(15.0).view(3, 5)).sum(), logits)
        grads.append((lp.detach(), ent, g))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grads[0][0], logits.log_softmax(-1).gather(2, tokens[..., None])[..., 0])
    torch.testing.assert_close(grads[0][1], entropy_from_logprobs(logits.log_softmax(-1)))

