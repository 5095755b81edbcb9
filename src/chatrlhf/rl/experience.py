"""Experience for the RL stage: roll out responses, score them, and compute the reference
log-probs and values every update needs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from chatrlhf.config import PPOConfig
from chatrlhf.lm.distributed import gather, share
from chatrlhf.lm.engine import Engine, SamplingParams
from chatrlhf.lm.unpadded import scatter_rows, unpadded_hidden_states, why_not_unpadded
from chatrlhf.lm.verifiers import checked_mean, verifier_scores
from chatrlhf.rl.critic import ValueHead, ValueModel
from chatrlhf.rl.losses import token_logprobs

RewardFn = Callable[[list[dict], list[str]], torch.Tensor]  # (prompts, responses) -> (B,) scores

GoldFn = Callable[[dict, str], float]


@dataclass
class Rollout:
    """One batch of experience. Sequences are [left-padded prompt (P) | right-padded response (R)]."""

    prompts: list[dict]
    texts: list[str]
    input_ids: torch.Tensor  # (B, P+R)
    attention_mask: torch.Tensor  # (B, P+R)
    position_ids: torch.Tensor  # (B, P+R)
    prompt_len: int  # P
    mask: torch.Tensor  # (B, R) 1.0 on response tokens (EOS included)
    finished: torch.Tensor  # (B,) bool: the response ended with EOS
    logprobs: torch.Tensor  # (B, R) under the policy that sampled, from the logits it sampled from
    hidden: torch.Tensor | None = None  # (B, R, H) the policy's last hidden states, for a shared value head
    scores: torch.Tensor | None = None  # (B,) RM score (+ verifier_coef x check) minus missing-EOS penalty
    rm_scores: torch.Tensor | None = None  # (B,) the RM's own score
    ref_logprobs: torch.Tensor | None = None  # (B, R) under the frozen SFT model
    values: torch.Tensor | None = None  # (B, R)
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def select(self, idx: list[int]) -> Rollout:
        """The sampled rows idx (prompts, texts and tensors), before any scoring."""
        t = torch.tensor(idx, device=self.input_ids.device)
        return Rollout(prompts=[self.prompts[i] for i in idx], texts=[self.texts[i] for i in idx],
                       input_ids=self.input_ids[t], attention_mask=self.attention_mask[t],
                       position_ids=self.position_ids[t], prompt_len=self.prompt_len, mask=self.mask[t],
                       finished=self.finished[t.cpu()], logprobs=self.logprobs[t],
                       hidden=None if self.hidden is None else self.hidden[t])


# --- 1. rollout ------------------------------------------------------------------------------
def rollout(model, tokenizer, prompts: list[dict], cfg: PPOConfig, seed: int, max_batch: int | None = None,
            keep_hidden: bool = False, n: int = 1, progress: Callable[[int, int], None] | None = None) -> Rollout:
    """Sample n responses per prompt (default one) with the KV-cache engine (stops at EOS) and lay the batch
    out as [left-padded prompt | right-padded response] for scoring and training. The old log-probs
    are the sampled tokens' log-probs under the logits the engine sampled them from: the same numbers
    a second forward pass would give (to float rounding), without that pass. `max_batch`: rows
    decoded at once (default all of them); more prompts join as rows finish. `keep_hidden`: also keep
    the last hidden state each token was sampled from, where a shared value head reads V(s_t).
    With n > 1 the rows are prompt-major and each prompt is prefilled once."""
    was_training = model.training
    eng = Engine(model, tokenizer, max_batch=max_batch or max(64, len(prompts) * n),  # Engine puts the model in eval mode
                 keep_hidden=keep_hidden)
    eng.progress = progress
    ids = [eng.chat_prompt(p["messages"]) for p in prompts]
    ro = eng.rollout(ids, SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature, seed=seed), n)
    prompts = [p for p in prompts for _ in range(n)]
    model.train(was_training)
    dev, P = eng.device, ro.query_len
    attn = ro.attention_mask.to(dev)
    return Rollout(prompts=prompts, texts=[g.text.strip() for g in ro.generations], input_ids=ro.input_ids.to(dev),
                   attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0), prompt_len=P,
                   mask=ro.response_mask[:, P:].float().to(dev),
                   finished=torch.tensor([g.finished for g in ro.generations]), logprobs=ro.logprobs[:, P:].to(dev),
                   hidden=None if ro.hidden is None else ro.hidden.to(dev))


def rollout_texts(model, tokenizer, prompts: list[dict], cfg: PPOConfig, seed: int) -> list[str]:
    """One response per prompt, every rank sampling its share (row i still samples with seed + i);
    all responses, in prompt order, on every rank. `model` is the plain model, not a DDP wrapper."""
    mine = share(len(prompts))
    texts = rollout(model, tokenizer, prompts[mine], cfg, seed=seed + mine.start).texts if mine.stop > mine.start else []
    return gather(texts)


# --- 2. score --------------------------------------------------------------------------------
def flat_scores(reward_fn: RewardFn, prompts: list[dict], responses: list[str]) -> torch.Tensor:
    """`reward_fn`'s scores as a flat float tensor on the CPU, outside the autograd graph."""
    return reward_fn(prompts, responses).detach().float().cpu().reshape(-1)


def group_normalised(reward_fn: RewardFn, prompts: list[dict], responses: list[str]) -> RewardFn:
    """`reward_fn` with the score of each prompt that asks for a group (its "group") shifted and scaled
    so that group's scores on the reference (prompts, responses), e.g. a conditioned RM's validation
    comparisons, have the pooled mean and spread: no group's reward scale outweighs another's in the
    update of one policy that serves them all. Prompts of other groups, or none, keep their score."""
    ref = flat_scores(reward_fn, prompts, responses)
    groups = [p.get("group") for p in prompts]
    stats = {}
    for g in {g for g in groups if g is not None}:
        own = ref[torch.tensor([x == g for x in groups])]
        if len(own) > 1 and own.std() > 0:
            stats[g] = (own.mean(), own.std())
    mean, std = ref.mean(), ref.std()

    def normalised(ps: list[dict], texts: list[str]) -> torch.Tensor:
        scores = flat_scores(reward_fn, ps, texts)
        shift = torch.tensor([stats[p["group"]][0] if p.get("group") in stats else 0.0 for p in ps])
        scale = torch.tensor([std / stats[p["group"]][1] if p.get("group") in stats else 1.0 for p in ps])
        keep = torch.tensor([p.get("group") not in stats for p in ps])
        return torch.where(keep, scores, (scores - shift) * scale + mean)

    return normalised


def standardised(reward_fn: RewardFn, prompts: list[dict], responses: list[str]) -> RewardFn:
    """`reward_fn` shifted and scaled so that its scores on the reference (prompts, responses), e.g. the
    start policy's samples, have mean 0 and spread 1 (Ziegler et al. 2019): the RM's scale, which its
    training leaves free, no longer sets its weight against the KL and the other terms."""
    ref = flat_scores(reward_fn, prompts, responses)
    mean, std = ref.mean(), ref.std()
    if not len(ref) > 1 or not std > 0:
        raise ValueError(f"reward normalisation needs reference answers with distinct scores ({len(ref)} given)")

    def normalised(ps: list[dict], texts: list[str]) -> torch.Tensor:
        return (flat_scores(reward_fn, ps, texts) - mean) / std

    return normalised


@torch.no_grad()
def score_rollout(ro: Rollout, reward_fn: RewardFn, cfg: PPOConfig) -> None:
    """RM score of each (prompt, response), plus verifier_coef times the rule-based check where the
    prompt has a checkable answer; responses that never reached EOS pay a penalty."""
    rm = flat_scores(reward_fn, ro.prompts, ro.texts)
    score = rm - cfg.reward.missing_eos_penalty * (~ro.finished).float()
    if cfg.reward.verifier_coef:
        checks, has = verifier_scores(ro.prompts, ro.texts)
        score = score + cfg.reward.verifier_coef * torch.tensor(checks)
        if (mean := checked_mean(checks, has)) is not None:
            ro.stats["verified"] = mean
    ro.scores, ro.rm_scores = score.to(ro.mask.device), rm
    ro.stats["rm_score"] = rm.mean().item()
    ro.stats["reward"] = ro.scores.mean().item()
    ro.stats["eos_rate"] = ro.finished.float().mean().item()
    ro.stats["response_len"] = ro.mask.sum(1).mean().item()


# --- 3. log-probs and values -----------------------------------------------------------------
def response_forward(model, ids, attn, pos, P: int, temperature: float,
                     hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits that predict the R response tokens, read at positions P-1 .. P+R-2: (B, R, V); with
    `hidden`, also the last hidden states at those positions, (B, R, H), for a shared value head.
    The last token predicts nothing here, so the model runs on the first P+R-1 columns (causal: the
    same numbers)."""
    R = ids.shape[1] - P
    ids, attn, pos = ids[:, :-1], attn[:, :-1], pos[:, :-1]
    if why_not_unpadded(model) is None:  # projections and MLP on the real tokens only (a DDP wrapper is not)
        states, flat = unpadded_hidden_states(model.model, ids, attn, pos)
        states = scatter_rows(states, flat, *ids.shape)[:, P - 1:]  # (B, R, H)
        logits = model.get_output_embeddings()(states).float()
    else:
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=R,
                    output_hidden_states=hidden)
        logits, states = out.logits.float(), out.hidden_states[-1][:, P - 1:] if hidden else None
    if temperature != 1.0:
        logits = logits / temperature  # the same distribution the rollout sampled from
    return logits, states if hidden else None


def response_logits(model, ids, attn, pos, P: int, temperature: float) -> torch.Tensor:
    return response_forward(model, ids, attn, pos, P, temperature)[0]


def response_values(critic: ValueModel | ValueHead, ids, attn, pos, P: int,
                    hidden: torch.Tensor | None = None) -> torch.Tensor:
    """V(s_t) read at the token before each response token: (B, R). A separate value model runs on
    the tokens; a shared value head reads the policy's `hidden` states at those positions."""
    if hidden is not None:
        return critic(hidden)
    return critic(ids[:, :-1], attn[:, :-1], pos[:, :-1])[:, P - 1:]  # the last token's value is never read


def minibatch_columns(ro: Rollout, idx: torch.Tensor) -> tuple[slice, int, int]:
    """Columns a mini-batch needs: its own longest prompt and longest response, not the batch's.
    Returns (column slice, response length r, prompt length p) -- less padding, fewer FLOPs."""
    P = ro.prompt_len
    p = int(ro.attention_mask[idx, :P].sum(1).max())
    r = max(1, int(ro.mask[idx].sum(1).max()))
    return slice(P - p, P + r), r, p


@torch.no_grad()
def evaluate_rollout(ro: Rollout, policy, ref_policy, value_model: ValueModel | ValueHead | None, cfg: PPOConfig,
                     batch_size: int) -> None:
    """Reference log-probs (frozen SFT) and values (none without a value model), in chunks of
    similar prompt length so little compute goes to padding. The old log-probs came with the rollout,
    and so did the hidden states a shared value head reads."""
    ref, val = torch.zeros_like(ro.mask), torch.zeros_like(ro.mask)
    order = torch.argsort(ro.attention_mask[:, :ro.prompt_len].sum(1).cpu())
    for idx in order.split(batch_size):
        cols, r, p = minibatch_columns(ro, idx)
        args = (ro.input_ids[idx][:, cols], ro.attention_mask[idx][:, cols], ro.position_ids[idx][:, cols], p)
        with reference_model(policy, ref_policy) as ref_model:
            ref[idx, :r] = token_logprobs(response_logits(ref_model, *args, cfg.rollout.temperature), args[0][:, p:])
        if value_model is not None and cfg.advantage.estimator == "gae" and cfg.critic.model == "separate":
            val[idx, :r] = response_values(value_model, *args)
    if value_model is not None and cfg.reads_policy_hidden_states:
        if ro.hidden is None:
            raise ValueError("ppo.critic.model=shared reads the rollout's hidden states: sample with rollout(..., keep_hidden=True)")
        val = value_model(ro.hidden)
    ro.ref_logprobs, ro.values = ref * ro.mask, val * ro.mask


def reference_model(policy, ref_policy):
    """The frozen SFT model: a separate copy, or the LoRA policy with its adapters switched off."""
    if ref_policy is not None:
        return nullcontext(ref_policy)
    ctx = policy.disable_adapter()

    class _Ctx:
        def __enter__(self):
            ctx.__enter__()
            return policy

        def __exit__(self, *exc):
            return ctx.__exit__(*exc)

    return _Ctx()
