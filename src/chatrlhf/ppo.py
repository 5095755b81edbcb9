"""Stage 3 of InstructGPT: PPO against the reward model with a per-token KL penalty to SFT.

The environment is a bandit: it shows a prompt, the policy writes a response, the frozen RM pays
a reward at the last token and the frozen SFT model charges kl_coef * (log pi - log pi_SFT) on
every token. Each iteration:

    1. rollout     sample responses with the KV-cache engine, stop at EOS (rollout)
                   and keep the old log-probs of the logits it sampled from
    2. score       RM score, missing-EOS penalty, gold score for logging (score_rollout)
    3. evaluate    reference log-probs, values                            (evaluate_rollout)
    4. advantages  KL-penalised per-token rewards (+ the SFT model's      (compute_advantages)
                   log-likelihood of the response), GAE, whitening
    5. update      ppo_epochs x mini-batches of clipped surrogate + clipped value loss
                   (+ PPO-ptx LM loss on pre-training text)              (ppo_update)

Over-optimisation guard (no gold judge needed): every `eval_every` iterations a small held-out set
of prompts is answered by the policy and compared against SFT answers by the *training* labelers
(a small human eval a real team can afford). The best checkpoint by that win rate is the one
exported, and the run stops after `patience` evaluations without improvement.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from chatrlhf.config import Config, PPOConfig
from chatrlhf.engine import Engine, SamplingParams
from chatrlhf.kl_controller import make_kl_controller
from chatrlhf.losses import (discounted_returns, entropy_from_logprobs, gae_advantages, gather_logprobs,
                             kl_penalized_rewards, leave_one_out_baseline, masked_mean, masked_whiten,
                             ppo_policy_loss, ppo_value_loss, sft_loglik_rewards, token_logprobs)
from chatrlhf.training import Checkpoints, MetricsLogger, TrainingStopped, progress_bar
from chatrlhf.value import ValueHead, ValueModel, load_critic
from chatrlhf.verifiers import checked_mean, verifier_scores

RewardFn = Callable[[list[dict], list[str]], torch.Tensor]  # (prompts, responses) -> (B,) scores
GoldFn = Callable[[dict, str], float]


class PPOInstabilityError(TrainingStopped):
    """NaN loss or exploding KL; the last good checkpoint is left in place."""


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
            keep_hidden: bool = False, n: int = 1) -> Rollout:
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
    ids = [eng.chat_prompt(p["messages"]) for p in prompts]
    ro = eng.rollout(ids, SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed), n)
    prompts = [p for p in prompts for _ in range(n)]
    model.train(was_training)
    dev, P = eng.device, ro.query_len
    attn = ro.attention_mask.to(dev)
    return Rollout(prompts=prompts, texts=[g.text.strip() for g in ro.generations], input_ids=ro.input_ids.to(dev),
                   attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0), prompt_len=P,
                   mask=ro.response_mask[:, P:].float().to(dev),
                   finished=torch.tensor([g.finished for g in ro.generations]), logprobs=ro.logprobs[:, P:].to(dev),
                   hidden=None if ro.hidden is None else ro.hidden.to(dev))


# --- 2. score --------------------------------------------------------------------------------


@torch.no_grad()
def score_rollout(ro: Rollout, reward_fn: RewardFn, cfg: PPOConfig, gold_fn: GoldFn | None = None) -> None:
    """RM score of each (prompt, response), plus verifier_coef times the rule-based check where the
    prompt has a checkable answer; responses that never reached EOS pay a penalty."""
    rm = reward_fn(ro.prompts, ro.texts).detach().float().cpu().reshape(-1)
    score = rm - cfg.missing_eos_penalty * (~ro.finished).float()
    if cfg.verifier_coef:
        checks, has = verifier_scores(ro.prompts, ro.texts)
        score = score + cfg.verifier_coef * torch.tensor(checks)
        if (mean := checked_mean(checks, has)) is not None:
            ro.stats["verified"] = mean
    ro.scores, ro.rm_scores = score.to(ro.mask.device), rm
    ro.stats["rm_score"] = rm.mean().item()
    ro.stats["reward"] = ro.scores.mean().item()
    ro.stats["eos_rate"] = ro.finished.float().mean().item()
    ro.stats["response_len"] = ro.mask.sum(1).mean().item()
    if gold_fn is not None:
        ro.stats["gold"] = sum(gold_fn(p, t) for p, t in zip(ro.prompts, ro.texts)) / len(ro.texts)


# --- 3. log-probs and values -----------------------------------------------------------------


def response_forward(model, ids, attn, pos, P: int, temperature: float,
                     hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits that predict the R response tokens, read at positions P-1 .. P+R-2: (B, R, V); with
    `hidden`, also the last hidden states at those positions, (B, R, H), for a shared value head."""
    R = ids.shape[1] - P
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=R + 1,
                output_hidden_states=hidden)
    logits = out.logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature  # the same distribution the rollout sampled from
    return logits, out.hidden_states[-1][:, P - 1:P + R - 1] if hidden else None


def response_logits(model, ids, attn, pos, P: int, temperature: float) -> torch.Tensor:
    return response_forward(model, ids, attn, pos, P, temperature)[0]


def response_values(critic: ValueModel | ValueHead, ids, attn, pos, P: int,
                    hidden: torch.Tensor | None = None) -> torch.Tensor:
    """V(s_t) read at the token before each response token: (B, R). A separate value model runs on
    the tokens; a shared value head reads the policy's `hidden` states at those positions."""
    if hidden is not None:
        return critic(hidden)
    R = ids.shape[1] - P
    return critic(ids, attn, pos)[:, P - 1:P + R - 1]


@torch.no_grad()
def evaluate_rollout(ro: Rollout, policy, ref_policy, value_model: ValueModel | ValueHead | None, cfg: PPOConfig,
                     batch_size: int) -> None:
    """Reference log-probs (frozen SFT) and values (none without a value model), in chunks of
    similar prompt length so little compute goes to padding. The old log-probs came with the rollout,
    and so did the hidden states a shared value head reads."""
    ref, val = torch.zeros_like(ro.mask), torch.zeros_like(ro.mask)
    order = torch.argsort(ro.attention_mask[:, :ro.prompt_len].sum(1).cpu())
    for idx in order.split(batch_size):
        cols, r, p = _trim(ro, idx)
        args = (ro.input_ids[idx][:, cols], ro.attention_mask[idx][:, cols], ro.position_ids[idx][:, cols], p)
        with _reference(policy, ref_policy) as ref_model:
            ref[idx, :r] = token_logprobs(response_logits(ref_model, *args, cfg.temperature), args[0][:, p:])
        if value_model is not None and cfg.advantage_estimator == "gae" and cfg.critic == "separate":
            val[idx, :r] = response_values(value_model, *args)
    if value_model is not None and cfg.reads_policy_hidden_states:
        if ro.hidden is None:
            raise ValueError("ppo.critic=shared reads the rollout's hidden states: sample with rollout(..., keep_hidden=True)")
        val = value_model(ro.hidden)
    ro.ref_logprobs, ro.values = ref * ro.mask, val * ro.mask


def _reference(policy, ref_policy):
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


# --- 4. advantages ---------------------------------------------------------------------------


def compute_advantages(ro: Rollout, kl_coef: float, cfg: PPOConfig) -> None:
    scores = ro.scores
    if cfg.advantage_estimator == "rloo":  # only differences within a prompt carry signal
        scores = leave_one_out_baseline(scores, cfg.samples_per_prompt)
    rewards, kl = kl_penalized_rewards(scores, ro.logprobs, ro.ref_logprobs, ro.mask, kl_coef)
    if cfg.sft_loglik_coef:
        rewards = rewards + sft_loglik_rewards(ro.ref_logprobs, ro.mask, cfg.sft_loglik_coef)
        ro.stats["sft_loglik"] = masked_mean(ro.ref_logprobs, ro.mask, dim=1).mean().item()
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, ro.mask, shift_mean=False)
    if cfg.advantage_estimator == "rloo":
        adv = ro.returns = discounted_returns(rewards, ro.mask, cfg.gamma)
    else:
        adv, ro.returns = gae_advantages(rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)
    ro.advantages = masked_whiten(adv, ro.mask)
    ro.stats["kl"] = kl.sum(1).mean().item()  # nats per sequence
    ro.stats["non_score_reward"] = (-kl_coef * kl).sum(1).mean().item()


# --- 5. update -------------------------------------------------------------------------------


def ptx_loss(policy, batch: torch.Tensor) -> torch.Tensor:
    """PPO-ptx (InstructGPT eq. 2, last term): next-token loss on pre-training text."""
    logits = policy(input_ids=batch, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def _trim(ro: Rollout, idx: torch.Tensor) -> tuple[slice, int, int]:
    """Columns a mini-batch needs: its own longest prompt and longest response, not the batch's.
    Returns (column slice, response length r, prompt length p) -- less padding, fewer FLOPs."""
    P = ro.prompt_len
    p = int(ro.attention_mask[idx, :P].sum(1).max())
    r = max(1, int(ro.mask[idx].sum(1).max()))
    return slice(P - p, P + r), r, p


def ppo_update(ro: Rollout, policy, value_model: ValueModel | ValueHead, optimizer, accelerator, cfg: PPOConfig,
               seed: int, ptx_sampler: Callable[[], torch.Tensor] | None = None) -> dict[str, float]:
    """ppo_epochs passes of shuffled mini-batches; returns the mean of each loss statistic."""
    gen = torch.Generator().manual_seed(seed)
    B = len(ro.texts)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    n = 0
    gae = cfg.advantage_estimator == "gae"  # RLOO has no value model to train
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(B, generator=gen).split(cfg.mini_batch_size):
            cols, r, p = _trim(ro, idx)
            args = (ro.input_ids[idx][:, cols], ro.attention_mask[idx][:, cols], ro.position_ids[idx][:, cols], p)
            mask = ro.mask[idx, :r]
            logits, hidden = response_forward(policy, *args, cfg.temperature, hidden=cfg.reads_policy_hidden_states)
            logp = F.log_softmax(logits, dim=-1)  # (b, r, V)
            lp = gather_logprobs(logp, args[0][:, p:])  # logp is kept for the entropy
            pg, pg_stats = ppo_policy_loss(lp, ro.logprobs[idx, :r], ro.advantages[idx, :r], mask, cfg.cliprange)
            loss, stats = pg, {"pg_loss": pg.item(), **{k: t.item() for k, t in pg_stats.items()}}
            if gae:
                if hidden is not None and not cfg.value_loss_trains_policy:
                    hidden = hidden.detach()  # the head reads the policy's features; only the policy loss trains them
                v = response_values(value_model, *args, hidden=hidden)
                vf, vf_stats = ppo_value_loss(v, ro.values[idx, :r], ro.returns[idx, :r], mask, cfg.cliprange_value)
                loss = loss + cfg.vf_coef * vf
                stats |= {"vf_loss": vf.item(), **{k: t.item() for k, t in vf_stats.items()}}
            if ptx_sampler is not None and cfg.ptx_coef > 0:
                lm = ptx_loss(policy, ptx_sampler())
                loss = loss + cfg.ptx_coef * lm
                stats["ptx_loss"] = lm.item()
            if not torch.isfinite(loss):
                raise PPOInstabilityError(f"PPO loss became {loss.item()}")
            with torch.no_grad():
                stats["entropy"] = masked_mean(entropy_from_logprobs(logp), mask).item()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for k, val in stats.items():
                sums[k] = sums.get(k, 0.0) + val
            n += 1
    return {k: val / n for k, val in sums.items()}


# --- the over-optimisation guard -------------------------------------------------------------


class LabelerGuard:
    """Win rate of the policy against fixed SFT answers on held-out prompts, judged by training
    labelers (not the held-out ones, not the gold score): what a real team could afford."""

    def __init__(self, prompts: list[dict], baseline_texts: list[str], labelers: list, seed: int,
                 per_prompt: int = 1):
        self.prompts, self.baseline, self.labelers, self.seed = prompts, baseline_texts, labelers, seed
        self.per_prompt = max(1, min(per_prompt, len(labelers)))

    def win_rate(self, texts: list[str], iteration: int) -> float:
        rng = random.Random(self.seed * 7919 + iteration)
        wins = []
        for i, (p, t, b) in enumerate(zip(self.prompts, texts, self.baseline)):
            for j in range(self.per_prompt):  # distinct labelers per pair: their noise averages out
                lab = self.labelers[(i * self.per_prompt + j) % len(self.labelers)]
                if rng.random() < 0.5:  # random order: a labeler's position bias favours neither side
                    wins.append(float(lab.compare(p, t, b, rng)))
                else:
                    wins.append(1.0 - float(lab.compare(p, b, t, rng)))
        return sum(wins) / max(1, len(wins))


# --- the trainer -----------------------------------------------------------------------------


class PPOTrainer:
    """Holds the models and optimizer; `train()` runs iterations with checkpoints and the guard."""

    def __init__(self, cfg: PPOConfig, policy, ref_policy, value_model: ValueModel | ValueHead, tokenizer,
                 reward_fn: RewardFn, prompts: list[dict], out_dir: str | Path, accelerator, seed: int = 0,
                 gold_fn: GoldFn | None = None, guard: LabelerGuard | None = None,
                 ptx_data: torch.Tensor | None = None, start_win_rate: float | None = None):
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        if isinstance(value_model, ValueHead) != (cfg.critic == "shared"):
            raise TypeError(f"ppo.critic={cfg.critic} needs a {'ValueHead' if cfg.critic == 'shared' else 'ValueModel'}, "
                            f"got a {type(value_model).__name__}")
        self.cfg, self.tokenizer, self.reward_fn, self.prompts = cfg, tokenizer, reward_fn, prompts
        self.gold_fn, self.guard, self.ptx_data, self.seed = gold_fn, guard, ptx_data, seed
        # the starting policy's win rate when known without asking: 0.5 when it *is* the reference
        self.start_win_rate = start_win_rate
        self.out_dir, self.accelerator = Path(out_dir), accelerator
        for m in (ref_policy,):
            if m is not None:
                m.requires_grad_(False).eval()
        head_lr = cfg.learning_rate * (cfg.value_head_lr_scale if cfg.critic == "shared" else 1.0)
        trainable = [{"params": [p for p in policy.parameters() if p.requires_grad]},
                     {"params": list(value_model.parameters()), "lr": head_lr}]
        # fused: one kernel per step instead of ~10 small ops per tensor (TRL's default optimizer too)
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0, fused=True)
        self.policy, self.value_model, self.optimizer = accelerator.prepare(policy, value_model, optimizer)
        self.ref_policy = ref_policy.to(accelerator.device) if ref_policy is not None else None
        self.kl_ctl = make_kl_controller(cfg.kl_coef, cfg.adaptive_kl, cfg.target_kl, cfg.horizon)
        self.ckpts = Checkpoints(self.out_dir, settings={"ppo": cfg.model_dump(mode="json", exclude={
            "total_iterations", "max_minutes", "eval_every", "save_every", "patience"}), "seed": seed})
        self.iteration, self.best = 0, {"win_rate": -1.0, "iteration": 0, "stale": 0}
        self.guard_history: list[float] = []  # every guard evaluation, iteration 0 first
        self.history: list[dict[str, float]] = []
        self.stop_reason = "not_started"

    # -- one iteration
    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        it, cfg = self.iteration, self.cfg
        prompts = self._batch_prompts(it)
        ro = rollout(self.policy, self.tokenizer, prompts, cfg, seed=self.seed * 100_003 + it,
                     keep_hidden=cfg.reads_policy_hidden_states)  # 1.
        t_roll = time.perf_counter() - t0
        score_rollout(ro, self.reward_fn, cfg, self.gold_fn)  # 2.
        evaluate_rollout(ro, self.policy, self.ref_policy, self.value_model, cfg, cfg.mini_batch_size)  # 3.
        compute_advantages(ro, self.kl_ctl.value, cfg)  # 4.
        self._check_kl(ro.stats["kl"])
        self.policy.train()
        sampler = self._ptx_sampler(it) if self.ptx_data is not None and cfg.ptx_coef > 0 else None
        try:
            stats = ppo_update(ro, self.policy, self.value_model, self.optimizer, self.accelerator, cfg,
                               seed=self.seed * 7 + it, ptx_sampler=sampler)  # 5.
        except PPOInstabilityError as e:
            raise PPOInstabilityError(f"{e} at iteration {it + 1}; stopping, last good checkpoint kept in "
                                      f"{self.ckpts.latest() or '(none yet)'}. Lower ppo.learning_rate.") from None
        stats = {**ro.stats, **stats, "kl_coef": self.kl_ctl.value}
        self.kl_ctl.update(ro.stats["kl"], len(prompts))
        stats["time_rollout_s"], stats["time_step_s"] = t_roll, time.perf_counter() - t0
        self.iteration += 1
        return stats

    def _batch_prompts(self, it: int) -> list[dict]:
        """Epoch-wise shuffled prompts, each repeated samples_per_prompt times in a row (the groups
        RLOO's baseline needs); a pure function of (seed, iteration) so resume is exact."""
        n, k = len(self.prompts), self.cfg.samples_per_prompt
        bs = self.cfg.rollout_batch_size // k
        out = []
        for j in range(it * bs, (it + 1) * bs):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + j // n))
            out += [self.prompts[perm[j % n].item()]] * k
        return out

    def _ptx_sampler(self, it: int) -> Callable[[], torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 31 + it)

        def sample() -> torch.Tensor:
            idx = torch.randint(len(self.ptx_data), (self.cfg.ptx_batch_size,), generator=gen)
            return self.ptx_data[idx].to(self.accelerator.device)

        return sample

    def _check_kl(self, kl: float) -> None:
        if not math.isfinite(kl) or kl > self.cfg.max_kl:
            # the policy just measured is not good: a checkpoint of it is set aside, never resumed
            last = self.ckpts.reject(self.iteration, f"KL to SFT {kl:.3g} > ppo.max_kl {self.cfg.max_kl}")
            raise PPOInstabilityError(
                f"PPO stopped at iteration {self.iteration}: KL to SFT is {kl:.3g} nats/sequence "
                f"(ppo.max_kl = {self.cfg.max_kl}); last good checkpoint kept in {last or '(none yet)'}. "
                "Lower ppo.learning_rate, raise ppo.kl_coef or use ppo.adaptive_kl=true"
                + (", and rerun with --resume-anyway to continue from that checkpoint." if last else "."))

    # -- guard
    def evaluate_guard(self, repeat: int = 0) -> float:
        """One guard evaluation; `repeat` k > 0 draws fresh samples and judgements of the same policy."""
        ro = rollout(self.policy, self.tokenizer, self.guard.prompts, self.cfg, seed=self.seed * 17 + 1 + 1000 * repeat)
        return self.guard.win_rate(ro.texts, self.iteration - 1000 * repeat)

    def _update_best(self, win_rate: float) -> float:
        """Record a guard evaluation; a new best *smoothed* win rate (the mean of the last
        guard_window evaluations) saves the current policy. One evaluation of 64 prompts has a standard
        error near 0.05, as large as the gains it should see: the best of many raw evaluations is a
        noise peak, which stopped rounds early. Returns the smoothed win rate."""
        self.guard_history.append(win_rate)
        recent = self.guard_history[-self.cfg.guard_window:]
        smoothed = sum(recent) / len(recent)
        if smoothed > self.best["win_rate"]:
            self.best = {"win_rate": smoothed, "iteration": self.iteration, "stale": 0}
            unwrap = self.accelerator.unwrap_model
            torch.save({"policy": _cpu_state(unwrap(self.policy)), "value": _cpu_state(unwrap(self.value_model))},
                       self.out_dir / "best_state.pt")
        else:
            self.best["stale"] += 1
        return smoothed

    def restore_best(self) -> None:
        """Load the guard's best weights back (the policy taken before over-optimisation)."""
        path = self.out_dir / "best_state.pt"
        if path.is_file():
            state = torch.load(path, weights_only=True)
            self.accelerator.unwrap_model(self.policy).load_state_dict(state["policy"])
            self.accelerator.unwrap_model(self.value_model).load_state_dict(state["value"])

    # -- checkpoints
    def save_checkpoint(self) -> Path:
        state = {"iteration": self.iteration, "kl_coef": self.kl_ctl.value, "best": self.best,
                 "guard_history": self.guard_history}
        return self.ckpts.save(self.accelerator, self.iteration, state)

    def resume(self) -> bool:
        state = self.ckpts.resume(self.accelerator, None, "ppo")
        if state is None:
            return False
        self.iteration, self.kl_ctl.value, self.best = state["iteration"], state["kl_coef"], state["best"]
        self.guard_history = list(state.get("guard_history", []))
        return True

    # -- loop
    def train(self, resume: bool = True, tensorboard: bool = False) -> list[dict[str, float]]:
        cfg = self.cfg
        resumed = resume and self.resume()
        logger = MetricsLogger(self.out_dir, tensorboard=tensorboard, resume=resumed)
        stop_reason, t_start = "total_iterations", time.time()
        with progress_bar("ppo") as bar:
            task = bar.add_task("ppo", total=cfg.total_iterations, completed=self.iteration, info="")
            if self.guard is not None and self.iteration == 0:  # iteration 0 = the starting policy
                # measuring a known 0.5 only adds noise: a lucky 0.56 there kept whole rounds at SFT.
                # An unknown start (a later round's policy) is measured guard_window times, so its
                # score is a mean like every later one, not a single draw that may be a noise peak.
                if self.start_win_rate is None:
                    self.guard_history += [self.evaluate_guard(k) for k in range(1, cfg.guard_window)]
                    self._update_best(self.evaluate_guard())
                else:
                    self._update_best(self.start_win_rate)
            while self.iteration < cfg.total_iterations:
                stats = self.step()
                if self.guard is not None and self.iteration % cfg.eval_every == 0:
                    stats["guard_win_rate"] = self.evaluate_guard()
                    stats["guard_win_rate_smoothed"] = self._update_best(stats["guard_win_rate"])
                    stats["guard_best_iteration"] = self.best["iteration"]
                logger.log(self.iteration, stats)
                self.history.append(stats)
                bar.update(task, advance=1, info=_info(stats))
                if self.iteration % cfg.save_every == 0 or self.iteration == cfg.total_iterations:
                    self.save_checkpoint()
                if self._should_stop(stats):
                    stop_reason = "early_stop"
                    self.save_checkpoint()
                    break
                if cfg.max_minutes and time.time() - t_start > 60 * cfg.max_minutes:
                    stop_reason = "max_minutes"
                    self.save_checkpoint()
                    break
        logger.close()
        self.stop_reason = stop_reason
        return self.history

    def _should_stop(self, stats: dict[str, float]) -> bool:
        if self.cfg.early_stop == "target_kl":
            return stats["kl"] > self.cfg.target_kl
        if self.cfg.early_stop == "held_out_comparisons" and self.guard is not None:
            return self.best["stale"] >= self.cfg.patience
        return False


def _cpu_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _info(s: dict[str, float]) -> str:
    gold = f" gold {s['gold']:.3f}" if "gold" in s else ""
    gold += f" checks {s['verified']:.2f}" if "verified" in s else ""
    return f"reward {s['reward']:+.3f}{gold} kl {s['kl']:.2f} len {s['response_len']:.0f}"


# --- the stage -------------------------------------------------------------------------------


def _load_world(cfg: Config):
    from chatrlhf.world import World

    world_dir = cfg.stage_dir("world")
    return World.load(world_dir) if (world_dir / "meta.json").is_file() else World.generate(cfg.world)


def _ptx_chunks(tokenizer, docs: list[str], seq_len: int, max_chunks: int) -> torch.Tensor:
    """Pre-training text as (N, seq_len + 1) token chunks, for PPO-ptx and the perplexity check."""
    from chatrlhf.pretrain import eval_chunks, pack_documents

    return eval_chunks(pack_documents(tokenizer, docs), seq_len, max_chunks)


def _lm_ppl(model, chunks: torch.Tensor, device) -> float:
    from chatrlhf.pretrain import evaluate_loss

    return math.exp(evaluate_loss(model, chunks, 8, device)) if len(chunks) else float("nan")


def _load_policy(path: Path, cfg: Config):
    from chatrlhf.lora import wrap_lora
    from chatrlhf.modeling import load_causal_lm

    policy = load_causal_lm(path, cfg.model.dtype)
    return wrap_lora(policy, cfg.ppo.lora) if cfg.ppo.lora.enabled else policy


def _sft_baseline(policy, ref, tokenizer, prompts: list[dict], cfg: PPOConfig, seed: int) -> list[str]:
    """SFT answers for the guard prompts, sampled once (the comparison the guard keeps making)."""
    with _reference(policy, ref) as sft:
        return rollout(sft, tokenizer, prompts, cfg, seed=seed).texts


def run_ppo(cfg: Config, policy_dir: str | Path | None = None, rm_dir: str | Path | None = None,
            out_dir: str | Path | None = None, ref_dir: str | Path | None = None) -> Path:
    """`chatrlhf ppo`: policy from `policy_dir` (default sft/), KL to `ref_dir` (default sft/), reward
    and value init from `rm_dir` (default rm/); writes the policy to `out_dir` (default ppo/)."""
    from chatrlhf.lora import is_lora, merge
    from chatrlhf.modeling import load_causal_lm, load_tokenizer, save_stage, stage_complete
    from chatrlhf.reward import RewardModel
    from chatrlhf.training import make_accelerator

    pc = cfg.ppo
    policy_dir = Path(policy_dir or cfg.stage_dir("sft"))
    ref_dir, rm_dir = Path(ref_dir or cfg.stage_dir("sft")), Path(rm_dir or cfg.stage_dir("rm"))
    out = Path(out_dir or cfg.stage_dir("ppo"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # the stage is incomplete until saved again
    acc = make_accelerator(cfg.run.seed, device=cfg.run.device)
    tok = load_tokenizer(policy_dir)
    policy = _load_policy(policy_dir, cfg).to(acc.device)  # on the device before any sampling or scoring
    ref = None if is_lora(policy) and ref_dir == policy_dir else load_causal_lm(ref_dir, cfg.model.dtype).to(acc.device)
    rm = RewardModel.load(rm_dir, cfg.model.dtype, device=str(acc.device))
    value = load_critic(rm_dir, pc.critic, policy, cfg.model.dtype)

    world = _load_world(cfg)
    prompts = world.prompts("ppo")
    n_guard = min(pc.guard_prompts, len(prompts) // 4) if pc.early_stop == "held_out_comparisons" else 0
    train_prompts, guard_prompts = prompts[: len(prompts) - n_guard], prompts[len(prompts) - n_guard:]
    ptx_train = _ptx_chunks(tok, world.corpus("train")[:2000], pc.ptx_seq_len, 4000) if pc.ptx_coef > 0 else None
    ppl_chunks = _ptx_chunks(tok, world.corpus("val")[:300], pc.ptx_seq_len, 48)
    guard = None
    if n_guard:
        baseline = _sft_baseline(policy, ref, tok, guard_prompts, pc, seed=cfg.run.seed + 99)
        guard = LabelerGuard(guard_prompts, baseline, world.labelers(held_out=False), cfg.run.seed, pc.guard_labelers)

    def reward_fn(ps: list[dict], texts: list[str]) -> torch.Tensor:
        return rm.score([p["messages"] for p in ps], texts)

    def gold_fn(p: dict, text: str) -> float:
        return float(world.gold(p, text).total)

    ppl_before = _lm_ppl(policy, ppl_chunks, acc.device)
    start_is_ref = policy_dir.resolve() == ref_dir.resolve()
    if pc.rejection_sampling.n > 1 and Checkpoints(out).latest() is None:  # a resumed run already holds it
        # PPO's training prompts, topped up with the RM stage's: more distinct prompts distil better
        rs_prompts = train_prompts + world.prompts("rm")[: max(0, pc.rejection_sampling.prompts - len(train_prompts))]
        policy, ref = _best_of_n_start(cfg, policy, ref, tok, rs_prompts, reward_fn, gold_fn, out / "best_of_n",
                                       ref_dir, start_is_ref)
        start_is_ref = False
    trainer = PPOTrainer(pc, policy, ref, value, tok, reward_fn, train_prompts, out, acc, seed=cfg.run.seed,
                         gold_fn=gold_fn, guard=guard, ptx_data=ptx_train,
                         start_win_rate=0.5 if start_is_ref else None)
    trainer.ckpts.configure(resume_anyway=cfg.run.resume_anyway)
    history = trainer.train(resume=True, tensorboard=cfg.run.tensorboard)
    if guard is not None:
        trainer.restore_best()  # take the policy before over-optimisation, not after
    policy = acc.unwrap_model(trainer.policy)
    ppl_after = _lm_ppl(policy, ppl_chunks, acc.device)
    meta = _summary(cfg, trainer, history, ppl_before, ppl_after, policy_dir, rm_dir, ref_dir)
    if stage_complete(out / "best_of_n"):
        meta["best_of_n_start"] = str(out / "best_of_n")  # PPO started from there, not from policy_init
    acc.unwrap_model(trainer.value_model).save_pretrained(out / "value")
    if pc.critic == "separate":  # a loadable sequence-classification model; a shared head is one weight file
        tok.save_pretrained(out / "value")
    plot_reward_vs_gold(history, out / "reward_vs_gold.png")
    return save_stage(merge(policy) if pc.lora.merge else policy, tok, out, meta)


def _best_of_n_start(cfg: Config, policy, ref, tok, prompts: list[dict], reward_fn: RewardFn, gold_fn: GoldFn,
                     rs_dir: Path, ref_dir: Path, start_is_ref: bool):
    """PPO's starting policy after rejection-sampling fine-tuning (rejection_sampling.py), saved
    to `rs_dir` and reused from there. Returns (policy, reference)."""
    from chatrlhf.lora import merge
    from chatrlhf.modeling import load_causal_lm, save_stage, stage_complete
    from chatrlhf.rejection_sampling import run_rejection_sampling

    if not stage_complete(rs_dir):
        meta = run_rejection_sampling(policy, ref, tok, prompts, reward_fn, cfg.ppo, seed=cfg.run.seed * 100_003 + 77_777,
                                      max_len=cfg.sft.max_len, same_as_reference=start_is_ref, gold_fn=gold_fn)
        save_stage(merge(policy) if cfg.ppo.lora.enabled else policy, tok, rs_dir, meta)
    if ref is None:  # a LoRA policy's reference was itself with adapters off; the new start is not SFT
        ref = load_causal_lm(ref_dir, cfg.model.dtype)
    return _load_policy(rs_dir, cfg), ref


def _summary(cfg: Config, trainer: PPOTrainer, history: list[dict], ppl_before: float, ppl_after: float,
             policy_dir: Path, rm_dir: Path, ref_dir: Path) -> dict[str, Any]:
    last = history[-1] if history else {}
    best_it = trainer.best["iteration"] if trainer.guard is not None else trainer.iteration
    # history holds this process's iterations (a resumed run starts mid-way); each one's rollout was
    # sampled from the policy before its update, so the selected policy's own samples are at
    # best_it - first. The final policy has none: its last rollout is the nearest.
    first = trainer.iteration - len(history)
    at_best = history[min(best_it - first, len(history) - 1)] if history and best_it >= first else {}
    return {"stage": "ppo", "policy_init": str(policy_dir), "reference": str(ref_dir), "reward_model": str(rm_dir),
            "iterations": trainer.iteration, "stop_reason": trainer.stop_reason,
            "selected_iteration": best_it, "guard": cfg.ppo.early_stop, "guard_win_rate": trainer.best["win_rate"],
            "reward": at_best.get("reward"), "gold": at_best.get("gold"), "kl": at_best.get("kl"),
            "verified": at_best.get("verified"),  # mean ground-truth check score (verifier_coef > 0)
            "final_iteration_reward": last.get("reward"), "final_iteration_gold": last.get("gold"),
            "final_iteration_kl": last.get("kl"), "ptx_coef": cfg.ppo.ptx_coef,
            "pretrain_val_ppl_before": ppl_before, "pretrain_val_ppl_after": ppl_after,
            "config": cfg.ppo.model_dump(mode="json")}


def plot_reward_vs_gold(history: list[dict], path: Path) -> None:
    """The reward-hacking check: RM reward, gold score and KL over PPO iterations."""
    if not history or "gold" not in history[0]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = list(range(1, len(history) + 1))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(its, [h["rm_score"] for h in history], label="RM score")
    ax[0].plot(its, [h["gold"] for h in history], label="gold (simulated labelers)")
    guard = [(i, h["guard_win_rate"]) for i, h in zip(its, history) if "guard_win_rate" in h]
    if guard:
        ax[0].plot(*zip(*guard), "o", ms=3, label="guard win rate vs SFT")
        smooth = [(i, h["guard_win_rate_smoothed"]) for i, h in zip(its, history) if "guard_win_rate_smoothed" in h]
        ax[0].plot(*zip(*smooth), "-", label="guard, smoothed (selects)")
    ax[0].set_xlabel("PPO iteration")
    ax[0].legend(fontsize=7)
    ax[1].plot(its, [h["kl"] for h in history], color="C3")
    ax[1].set_xlabel("PPO iteration")
    ax[1].set_ylabel("KL to SFT (nats/seq)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
