"""Loss functions, each formula once, named after its paper; pure functions unit-tested by hand.

Sections: reward model (ranking loss) and PPO (KL-penalised rewards, GAE, clipped surrogate,
clipped value loss, entropy). Tensors are (B, T) over response tokens with a 0/1 `mask` unless
noted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

# --- reward model (Ouyang et al. 2022, eq. 1; Bradley-Terry) ---------------------------------


def ranking_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, weight: torch.Tensor, n_groups: int | None = None
) -> torch.Tensor:
    """InstructGPT eq. 1: loss = -1/C(K,2) * sum_pairs log sigmoid(r(x, y_w) - r(x, y_l)), averaged over
    rankings. chosen, rejected, weight: (P,) per pair; `weight` carries the 1/C(K,2) of the pair's
    ranking, so dividing by the number of rankings in the batch (`n_groups`, default sum(weight))
    gives every ranking the same total weight whatever its K."""
    per_pair = -F.logsigmoid(chosen - rejected)  # log sigmoid keeps large margins finite
    denom = float(n_groups) if n_groups else weight.sum().clamp(min=1e-8)
    return (weight * per_pair).sum() / denom


# --- PPO (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022) ----------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  mean_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_mean) -> torch.Tensor:
    """(x - mean) / std over the masked entries; shift_mean=False keeps the mean (for rewards). `mean_fn`
    takes both moments (a mean over every process's rows when the batch is shared out)."""
    mean = mean_fn(x, mask)
    var = mean_fn((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_SFT) on sampled tokens (Schulman 2020): k1 = log pi - log pi_SFT
    (unbiased, negative on some tokens), or k3 (k3_kl: unbiased, never negative, lower variance)."""
    if estimator == "k3":
        return k3_kl(logprobs, ref_logprobs) * mask
    return (logprobs - ref_logprobs) * mask


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT eq. 2 as per-token rewards: r_t = -kl_coef * (log pi(y_t) - log pi_SFT(y_t)) on every
    response token (k1; or the k3 estimate of that KL), plus the RM score r(x, y) on the last one.
    scores: (B,). Returns (rewards, kl)."""
    kl = kl_estimate(logprobs, ref_logprobs, mask, estimator)
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)  # index of the last response token (EOS or cut-off)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def sft_loglik_rewards(ref_logprobs: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """coef * log pi_SFT(y_t) / |y| on every response token: the SFT model's mean log-likelihood of
    the response, paid where each token is chosen. With the KL term this makes the optimum
    pi ~ pi_SFT^(1 + coef/(|y| kl_coef)) exp(r / kl_coef): an anchor on a sharpened SFT model, which
    puts the SFT model's knowledge (it ranks a true fact above a false one 99% of the time) into
    the reward where the RM cannot read it."""
    return coef * ref_logprobs * mask / mask.sum(1, keepdim=True).clamp(min=1)


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16):
    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = sum_l (gamma lam)^l delta_{t+l}.  Returns (advantages, returns).
    Tokens after the response end (mask 0) are terminal: V = 0 and r = 0 there."""
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae * (mask[:, t + 1] if t + 1 < T else 0.0)
        adv[:, t] = last_gae
    adv = adv * mask
    return adv, (adv + values) * mask


def leave_one_out_baseline(scores: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): each score minus the mean score of the other k-1
    samples of its prompt. scores: (B,) laid out as B/k consecutive groups of k samples per prompt."""
    g = scores.view(-1, k)
    return (g - (g.sum(1, keepdim=True) - g) / (k - 1)).reshape(-1)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_l gamma^l r_{t+l} over the response (the advantage when there is no value model):
    GAE with V = 0 and lambda = 1, so the backward recursion lives in one place."""
    return gae_advantages(rewards, torch.zeros_like(rewards), mask, gamma, lam=1.0)[0]


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (PPO eq. 7): -E[min(rho A, clip(rho, 1-eps, 1+eps) A)], rho = pi/pi_old."""
    ratio = torch.exp(logprobs - old_logprobs)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(loss1, loss2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((loss2 > loss1).float(), mask),
            "approx_kl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines / TRL): 0.5 * max((V - R)^2, (V_clip - R)^2),
    V_clip = V_old + clip(V - V_old, -eps_v, eps_v), so the critic cannot jump far in one batch."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss1, loss2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((loss2 > loss1).float(), mask)}
    return loss, stats


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = -sum p log p from log-softmax output; (..., V) -> (...)."""
    return -(logp.exp() * logp).sum(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(y_t) of the given tokens: logits (B, T, V), tokens (B, T) -> (B, T)."""
    return gather_logprobs(F.log_softmax(logits.float(), dim=-1), tokens)


def gather_logprobs(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The given tokens' entries of a log-softmax (B, T, V) -> (B, T), for callers that keep the
    log-softmax for something else (PPO's entropy)."""
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y_t), (B, T); the policy's entropy at each position, (B, T), without gradient) from
    logits (B, T, V): the update's one pass over the vocabulary."""
    logp = F.log_softmax(logits, dim=-1)
    return gather_logprobs(logp, tokens), entropy_from_logprobs(logp.detach())


@functools.cache
def compiled_logprobs_and_entropy() -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """logprobs_and_entropy through torch.compile: inductor fuses the log-softmax, the gather and the
    entropy into passes over the vocabulary, forward and backward (dynamic shapes: compiled once)."""
    return torch.compile(logprobs_and_entropy, dynamic=True)


# --- critic-free estimators (Ahmadian et al. 2024; Shao et al. 2024) --------------------------


def group_normalized_advantages(scores: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al. 2024, eq. 3 with outcome supervision): (r - mean) / std over the k samples of
    each prompt, std unbiased as in the paper's reference code. A group whose samples all score the
    same gets 0 (nothing to prefer). scores: (B,) as B/k consecutive groups of k."""
    g = scores.view(-1, k)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)).reshape(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate k3 = pi_ref/pi - log(pi_ref/pi) - 1 (Schulman 2020), used
    by GRPO as a loss term: unbiased, and never negative, unlike k1 = log pi - log pi_ref."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0


# --- direct preference optimisation (Rafailov et al. 2023) -----------------------------------


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    beta: float, weight: torch.Tensor | None = None, n_groups: int | None = None, loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO eq. 7: -log sigmoid(beta * h), h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)),
    on summed response log-probs per pair, (P,) each. `weight` and `n_groups` weigh pairs as
    `ranking_loss` does (1/C(K,2) per ranking, every ranking the same total), so a K-way ranking
    counts in DPO as it counts in the RM; without them every pair weighs the same.
    `loss_type` (TRL's names): "sigmoid" is DPO, with `label_smoothing` eps the conservative DPO of
    Mitchell (2023), -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), for labels flipped with
    probability eps; "ipo" is IPO (Azar et al. 2023, eq. 17), (h - 1 / (2 beta))^2, which regresses h to
    a fixed margin instead of pushing it without bound (on summed log-probs, as the paper writes it;
    TRL averages them per token for IPO); "hinge" is SLiC (Zhao et al. 2023), max(0, 1 - beta h).
    Stats: the implicit rewards beta * (log pi - log pi_ref) of chosen and rejected, their margin and
    how often the chosen one is higher (TRL's rewards/* names)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        per_pair = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        per_pair = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        per_pair = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"dpo loss_type {loss_type!r}: one of sigmoid, ipo, hinge")
    if weight is None:
        loss = per_pair.mean()
    else:
        denom = float(n_groups) if n_groups else weight.sum().clamp(min=1e-8)
        loss = (weight * per_pair).sum() / denom
    with torch.no_grad():
        stats = {"rewards/chosen": chosen_reward.mean(), "rewards/rejected": rejected_reward.mean(),
                 "rewards/margins": (chosen_reward - rejected_reward).mean(),
                 "rewards/accuracies": (chosen_reward > rejected_reward).float().mean()}
    return loss, stats
