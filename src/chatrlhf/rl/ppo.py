"""Stage 3 of InstructGPT: PPO against the reward model with a per-token KL penalty to SFT.

The environment is a bandit: it shows a prompt, the policy writes a response, the frozen RM pays
a reward at the last token and the frozen SFT model charges kl_coef * (log pi - log pi_SFT) on
every token. Each iteration:

    1. rollout     sample responses with the KV-cache engine, stop at EOS (rollout)
                   and keep the old log-probs of the logits it sampled from
    2. score       RM score, missing-EOS penalty, gold score for logging (score_rollout)
    3. evaluate    reference log-probs, values                            (evaluate_rollout)
    4. advantages  KL-penalised per-token rewards (+ the SFT model's      (compute_advantages)
                   log-likelihood of the response), GAE, whitening; or a group baseline
                   over the prompt's samples without a critic (rloo, grpo)
    5. update      update.epochs x mini-batches of clipped surrogate + clipped value loss
                   (+ GRPO's k3 KL term, + PPO-ptx LM loss on pre-training text) (ppo_update)

Over-optimisation guard (no gold judge needed): every `eval_every` iterations a small held-out set
of prompts is answered by the policy and compared against SFT answers by the *training* labelers
(a small human eval a real team can afford). The best checkpoint by that win rate is the one
exported, and the run stops after `patience` evaluations without improvement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from chatrlhf.config import PPOConfig
from chatrlhf.config_ppo import guard_sampling
from chatrlhf.lm.distributed import all_mean, all_sum, announce, barrier, is_main, share, weighted_loss, world_size
from chatrlhf.lm.training import Checkpoints, MetricsLogger, TrainingStopped, progress_bar
from chatrlhf.lm.unpadded import compile_unpadded
from chatrlhf.rl.critic import ValueHead, ValueModel
from chatrlhf.rl.experience import (
    GoldFn,
    RewardFn,
    Rollout,
    evaluate_rollout,
    minibatch_columns,
    response_forward,
    response_values,
    rollout,
    rollout_texts,
    score_rollout,
)
from chatrlhf.rl.guard import ComparisonGuard, LabelerGuard
from chatrlhf.rl.kl_controller import make_kl_controller
from chatrlhf.rl.losses import (
    compiled_logprobs_and_entropy,
    gae_advantages,
    group_normalized_advantages,
    k3_kl,
    kl_estimate,
    kl_penalized_rewards,
    leave_one_out_baseline,
    logprobs_and_entropy,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    sft_loglik_rewards,
)


class PPOInstabilityError(TrainingStopped):
    """NaN loss or exploding KL; the last good checkpoint is left in place."""


# --- 4. advantages ---------------------------------------------------------------------------


def batch_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """masked_mean over the global batch, every rank's rows (the same value on each), so advantages are
    whitened as one process whitens them."""
    if world_size() == 1:
        return masked_mean(x, mask)
    return torch.tensor(all_sum((x * mask).sum()) / max(all_sum(mask.sum()), 1.0), dtype=x.dtype)


def compute_advantages(ro: Rollout, kl_coef: float, cfg: PPOConfig) -> None:
    if cfg.advantage.estimator != "gae":
        return _group_advantages(ro, kl_coef, cfg)
    rewards, kl = kl_penalized_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, kl_coef, cfg.reward.kl_estimator)
    if cfg.reward.sft_loglik_coef:
        rewards = rewards + sft_loglik_rewards(ro.ref_logprobs, ro.mask, cfg.reward.sft_loglik_coef)
        ro.stats["sft_loglik"] = masked_mean(ro.ref_logprobs, ro.mask, dim=1).mean().item()
    if cfg.advantage.whiten_rewards:
        rewards = masked_whiten(rewards, ro.mask, shift_mean=False, mean_fn=batch_mean)
    adv, ro.returns = gae_advantages(rewards, ro.values, ro.mask, cfg.advantage.gamma, cfg.advantage.lam)
    ro.advantages = masked_whiten(adv, ro.mask, mean_fn=batch_mean)
    ro.stats["value_explained_var"] = explained_variance(ro.values, ro.returns, ro.mask)
    ro.stats["kl"] = kl.sum(1).mean().item()  # nats per sequence
    ro.stats["non_score_reward"] = (-kl_coef * kl).sum(1).mean().item()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the response tokens, before the update: 1 is a
    critic that predicts the returns, 0 one no better than their mean (then GAE's advantages carry
    the returns' full noise), below 0 worse than the mean."""
    var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    err = returns - values
    var_err = masked_mean((err - masked_mean(err, mask)) ** 2, mask)
    return (1.0 - var_err / var).item() if var > 0 else float("nan")


def _group_advantages(ro: Rollout, kl_coef: float, cfg: PPOConfig) -> None:
    """Critic-free estimators over the samples_per_prompt samples of each prompt, one advantage per
    sequence given to all its tokens. The sequence reward is the same as GAE's summed per-token
    reward (score + the SFT log-likelihood term); the KL sits where each paper puts it:
      rloo  KL in the reward, R = score - kl_coef * sum_t KL_t, minus the mean R of the prompt's other
            samples (Ahmadian et al. 2024), then whitened as GAE's advantages are (one learning rate
            serves both);
      grpo  (R - mean) / std over the group without KL; the KL to SFT is a loss term with the k3
            estimator (Shao et al. 2024), added in ppo_update."""
    kl = kl_estimate(ro.logprobs, ro.ref_logprobs, ro.mask, cfg.reward.kl_estimator)  # as GAE's reward uses
    seq = ro.scores.float().clone()
    if cfg.reward.sft_loglik_coef:
        seq = seq + sft_loglik_rewards(ro.ref_logprobs, ro.mask, cfg.reward.sft_loglik_coef).sum(1)
        ro.stats["sft_loglik"] = masked_mean(ro.ref_logprobs, ro.mask, dim=1).mean().item()
    k = cfg.rollout.samples_per_prompt
    if cfg.advantage.estimator == "rloo":
        seq = seq - kl_coef * kl.sum(1)
        ro.advantages = masked_whiten(leave_one_out_baseline(seq, k)[:, None] * ro.mask, ro.mask, mean_fn=batch_mean)
        ro.stats["non_score_reward"] = (-kl_coef * kl).sum(1).mean().item()
    else:
        ro.advantages = group_normalized_advantages(seq, k)[:, None] * ro.mask
    ro.returns = seq[:, None] * ro.mask  # no value target; kept for logging and shape
    ro.stats["kl"] = kl.sum(1).mean().item()  # nats per sequence


# --- 5. update -------------------------------------------------------------------------------


def ptx_loss(policy, batch: torch.Tensor) -> torch.Tensor:
    """PPO-ptx (InstructGPT eq. 2, last term): next-token loss on pre-training text."""
    logits = policy(input_ids=batch, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def ppo_update(ro: Rollout, policy, value_model: ValueModel | ValueHead | None, optimizer, accelerator, cfg: PPOConfig,
               seed: int, ptx_sampler: Callable[[], torch.Tensor] | None = None,
               kl_coef: float | None = None, first_row: int = 0) -> dict[str, float]:
    """update.epochs passes over the global batch in shuffled mini-batches of update.mini_batch_size
    rows; returns the mean of each loss statistic. `kl_coef` (default cfg.reward.kl_coef) weighs GRPO's
    KL loss term. When the batch is shared out, this rank holds global rows first_row... and runs the
    rows of each mini-batch it holds, its loss weighted by its share of the mini-batch's tokens
    (lm.distributed.weighted_loss): the all-reduced update is one process's on the whole batch."""
    gen = torch.Generator().manual_seed(seed)
    B = len(ro.texts)
    B_global = int(all_sum(B))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    n = 0
    kl_loss_coef = (cfg.reward.kl_coef if kl_coef is None else kl_coef) if cfg.advantage.estimator == "grpo" else 0.0
    for _ in range(cfg.update.epochs):
        for idx in torch.randperm(B_global, generator=gen).split(cfg.update.mini_batch_size):
            local = idx[(idx >= first_row) & (idx < first_row + B)] - first_row
            counts = len(local) > 0  # a rank without rows here runs row 0 with weight 0, to join the all-reduce
            local = local if counts else torch.zeros(1, dtype=torch.long)
            loss, stats = minibatch_loss(ro, local, policy, value_model, cfg, kl_loss_coef)
            loss, global_loss = weighted_loss(loss, float(ro.mask[local].sum()) if counts else 0.0)
            if ptx_sampler is not None and cfg.ptx.coef > 0:
                lm = ptx_loss(policy, ptx_sampler())  # the same batch on every rank
                loss, global_loss = loss + cfg.ptx.coef * lm, global_loss + cfg.ptx.coef * lm.detach()
                stats["ptx_loss"] = lm.item()
            if not torch.isfinite(global_loss):
                raise PPOInstabilityError(f"PPO loss became {global_loss.item()}")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, cfg.update.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if counts:
                for k, val in stats.items():
                    sums[k] = sums.get(k, 0.0) + val
                n += 1
    return {k: val / max(n, 1) for k, val in sums.items()}


def minibatch_loss(ro: Rollout, idx: torch.Tensor, policy, value_model: ValueModel | ValueHead | None,
                   cfg: PPOConfig, kl_loss_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate on rows `idx` (+ GAE's clipped value loss, + GRPO's KL term), each a mean
    over the rows' response tokens, and its statistics."""
    cols, r, p = minibatch_columns(ro, idx)
    args = (ro.input_ids[idx][:, cols], ro.attention_mask[idx][:, cols], ro.position_ids[idx][:, cols], p)
    mask = ro.mask[idx, :r]
    logits, hidden = response_forward(policy, *args, cfg.rollout.temperature, hidden=cfg.reads_policy_hidden_states)
    lp, entropy = (compiled_logprobs_and_entropy() if cfg.update.compile else logprobs_and_entropy)(logits, args[0][:, p:])
    pg, pg_stats = ppo_policy_loss(lp, ro.logprobs[idx, :r], ro.advantages[idx, :r], mask, cfg.update.cliprange)
    loss, stats = pg, {"pg_loss": pg.item(), **{k: t.item() for k, t in pg_stats.items()}}
    if cfg.advantage.estimator == "gae":  # RLOO and GRPO have no value model to train
        if hidden is not None:
            hidden = hidden.detach()  # the head reads the policy's features; only the policy loss trains them
        v = response_values(value_model, *args, hidden=hidden)
        vf, vf_stats = ppo_value_loss(v, ro.values[idx, :r], ro.returns[idx, :r], mask, cfg.critic.cliprange_value)
        loss = loss + cfg.critic.vf_coef * vf
        stats |= {"vf_loss": vf.item(), **{k: t.item() for k, t in vf_stats.items()}}
    if kl_loss_coef:
        kl_term = masked_mean(k3_kl(lp, ro.ref_logprobs[idx, :r]), mask)
        loss = loss + kl_loss_coef * kl_term
        stats["kl_loss"] = kl_term.item()
    stats["entropy"] = masked_mean(entropy, mask).item()
    return loss, stats


# --- the trainer -----------------------------------------------------------------------------


class PPOTrainer:
    """Holds the models and optimizer; `train()` runs iterations with checkpoints and the guard."""

    def __init__(self, cfg: PPOConfig, policy, ref_policy, value_model: ValueModel | ValueHead | None, tokenizer,
                 reward_fn: RewardFn, prompts: list[dict], out_dir: str | Path, accelerator, seed: int = 0,
                 gold_fn: GoldFn | None = None, guard: LabelerGuard | ComparisonGuard | None = None,
                 ptx_data: torch.Tensor | None = None, start_win_rate: float | None = None,
                 watch: dict[str, GoldFn] | None = None):
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        if (value_model is not None) != (cfg.advantage.estimator == "gae"):
            raise TypeError(f"ppo.advantage.estimator={cfg.advantage.estimator} "
                            f"{'needs a critic' if value_model is None else 'trains no critic; pass value_model=None'}")
        if value_model is not None and isinstance(value_model, ValueHead) != (cfg.critic.model == "shared"):
            raise TypeError(f"ppo.critic.model={cfg.critic.model} needs a {'ValueHead' if cfg.critic.model == 'shared' else 'ValueModel'}, "
                            f"got a {type(value_model).__name__}")
        self.cfg, self.tokenizer, self.reward_fn, self.prompts = cfg, tokenizer, reward_fn, prompts
        self.guard, self.ptx_data, self.seed = guard, ptx_data, seed
        # scores of each rollout logged beside the reward (gold, the held-out judges): nothing is paid or selected on them
        self.watch = ({"gold": gold_fn} if gold_fn is not None else {}) | (watch or {})
        # the starting policy's win rate when known without asking: 0.5 when it *is* the reference
        self.start_win_rate = start_win_rate
        self.out_dir, self.accelerator = Path(out_dir), accelerator
        world = accelerator.num_processes  # each rank rolls out and updates on its share of the batch
        if (cfg.rollout.batch_size // cfg.rollout.samples_per_prompt) % world:
            raise ValueError(f"ppo: with {world} processes, rollout.batch_size / rollout.samples_per_prompt "
                             f"({cfg.rollout.batch_size // cfg.rollout.samples_per_prompt}) must be a multiple of {world}")
        announce(accelerator, "ppo", f"{cfg.rollout.batch_size // world} rollouts, its rows of each mini-batch",
                 f"{cfg.rollout.batch_size} rollouts, mini-batch {cfg.update.mini_batch_size}")
        if ref_policy is not None:
            ref_policy.requires_grad_(False).eval()
        if cfg.update.compile:  # the layer stacks of the update's, reference and value passes (lm.unpadded)
            for m in (policy, ref_policy, value_model):
                if m is not None and not compile_unpadded(m):
                    break
        head_lr = cfg.update.learning_rate * (cfg.critic.head_lr_scale if cfg.critic.model == "shared" else 1.0)
        trainable = [{"params": [p for p in policy.parameters() if p.requires_grad]}]
        if value_model is not None:
            trainable.append({"params": list(value_model.parameters()), "lr": head_lr})
        # fused: one kernel per step instead of ~10 small ops per tensor (TRL's default optimizer too)
        optimizer = torch.optim.AdamW(trainable, lr=cfg.update.learning_rate, eps=1e-5, weight_decay=0.0, fused=True)
        self._prepare(policy, value_model, optimizer)
        # eval mode throughout (gradients still flow): with dropout on, the update's log-probs would
        # differ from the rollout's and the reference's before any step, a ratio and KL made of noise
        self.policy.eval()
        if self.value_model is not None:
            self.value_model.eval()
        self.ref_policy = ref_policy.to(accelerator.device) if ref_policy is not None else None
        self.kl_ctl = make_kl_controller(cfg.reward.kl_coef, cfg.reward.adaptive_kl, cfg.reward.target_kl, cfg.reward.horizon)
        self.ckpts = Checkpoints(self.out_dir, settings={"ppo": cfg.model_dump(mode="json", exclude={  # how long, not how
            "total_iterations": True, "max_minutes": True, "save_every": True, "guard": {"eval_every", "patience"}}),
            "seed": seed}, defaults={"ppo": type(cfg)().model_dump(mode="json")})
        self.iteration, self.best = 0, {"win_rate": -1.0, "iteration": 0, "stale": 0}
        self.guard_history: list[float] = []  # every guard evaluation, iteration 0 first
        self.history: list[dict[str, float]] = []
        self.stop_reason = "not_started"

    def _prepare(self, policy, value_model, optimizer) -> None:
        """Policy, critic and optimizer through Accelerate. DeepSpeed wraps one model per Accelerator:
        there policy and critic become one engine, and each is called directly (ZeRO-1/2 reduce
        gradients by parameter hooks, whichever module made them)."""
        acc = self.accelerator
        if value_model is None:
            (self.policy, self.optimizer), self.value_model = acc.prepare(policy, optimizer), None
        elif acc.distributed_type.value == "DEEPSPEED":
            engine, self.optimizer = acc.prepare(torch.nn.ModuleDict({"policy": policy, "value": value_model}), optimizer)
            self.policy, self.value_model = engine.module["policy"], engine.module["value"]
        else:
            self.policy, self.value_model, self.optimizer = acc.prepare(policy, value_model, optimizer)

    # -- one iteration
    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        it, cfg = self.iteration, self.cfg
        prompts, first = self._rank_prompts(it)
        policy = self.accelerator.unwrap_model(self.policy)  # sampling and scoring read the plain model
        ro = rollout(policy, self.tokenizer, prompts, cfg, seed=self.seed * 100_003 + it + first,
                     keep_hidden=cfg.reads_policy_hidden_states)  # 1.
        t_roll = time.perf_counter() - t0
        score_rollout(ro, self.reward_fn, cfg)  # 2.
        for name, fn in self.watch.items():
            ro.stats[name] = sum(fn(p, t) for p, t in zip(ro.prompts, ro.texts)) / len(ro.texts)
        value = self.accelerator.unwrap_model(self.value_model) if self.value_model is not None else None
        evaluate_rollout(ro, policy, self.ref_policy, value, cfg, cfg.update.mini_batch_size)  # 3.
        compute_advantages(ro, self.kl_ctl.value, cfg)  # 4.
        ro.stats = all_mean(ro.stats)  # the global batch's figures, the same on every rank
        self._check_kl(ro.stats["kl"])
        self.policy.eval()
        if self.value_model is not None:
            self.value_model.eval()
        sampler = self._ptx_sampler(it) if self.ptx_data is not None and cfg.ptx.coef > 0 else None
        try:
            stats = all_mean(ppo_update(ro, self.policy, self.value_model, self.optimizer, self.accelerator,
                                        cfg, seed=self.seed * 7 + it, ptx_sampler=sampler,
                                        kl_coef=self.kl_ctl.value, first_row=first))  # 5.
        except PPOInstabilityError as e:
            raise PPOInstabilityError(f"{e} at iteration {it + 1}; stopping, last good checkpoint kept in "
                                      f"{self.ckpts.latest() or '(none yet)'}. Lower ppo.update.learning_rate.") from None
        stats = {**ro.stats, **stats, "kl_coef": self.kl_ctl.value}
        self.kl_ctl.update(ro.stats["kl"], cfg.rollout.batch_size)
        stats["time_rollout_s"], stats["time_step_s"] = t_roll, time.perf_counter() - t0
        self.iteration += 1
        return stats

    def _batch_prompts(self, it: int) -> list[dict]:
        """Epoch-wise shuffled prompts, each repeated samples_per_prompt times in a row (the groups
        RLOO's baseline needs); a pure function of (seed, iteration) so resume is exact."""
        n, k = len(self.prompts), self.cfg.rollout.samples_per_prompt
        bs = self.cfg.rollout.batch_size // k
        out = []
        for j in range(it * bs, (it + 1) * bs):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + j // n))
            out += [self.prompts[perm[j % n].item()]] * k
        return out

    def _rank_prompts(self, it: int) -> tuple[list[dict], int]:
        """This rank's share of the iteration's prompts (whole groups of samples_per_prompt) and the
        position of its first row in the global batch."""
        rows, k = self._batch_prompts(it), self.cfg.rollout.samples_per_prompt
        mine = share(len(rows) // k)
        return rows[mine.start * k: mine.stop * k], mine.start * k

    def _ptx_sampler(self, it: int) -> Callable[[], torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 31 + it)

        def sample() -> torch.Tensor:
            idx = torch.randint(len(self.ptx_data), (self.cfg.ptx.batch_size,), generator=gen)
            return self.ptx_data[idx].to(self.accelerator.device)

        return sample

    def _check_kl(self, kl: float) -> None:
        if not math.isfinite(kl) or kl > self.cfg.guard.max_kl:
            # the policy just measured is not good: a checkpoint of it is set aside, never resumed
            last = self.ckpts.reject(self.iteration, f"KL to SFT {kl:.3g} > ppo.guard.max_kl {self.cfg.guard.max_kl}")
            raise PPOInstabilityError(
                f"PPO stopped at iteration {self.iteration}: KL to SFT is {kl:.3g} nats/sequence "
                f"(ppo.guard.max_kl = {self.cfg.guard.max_kl}); last good checkpoint kept in {last or '(none yet)'}. "
                "Lower ppo.update.learning_rate, raise ppo.reward.kl_coef or use ppo.reward.adaptive_kl=true"
                + (", and rerun with --resume-anyway to continue from that checkpoint." if last else "."))

    # -- guard
    def evaluate_guard(self, repeat: int = 0) -> float:
        """One guard evaluation; `repeat` k > 0 draws fresh samples and judgements of the same policy."""
        if isinstance(self.guard, ComparisonGuard):  # deterministic: no samples to redraw
            return self.guard.evaluate(self.accelerator.unwrap_model(self.policy), self.ref_policy)
        texts = rollout_texts(self.accelerator.unwrap_model(self.policy), self.tokenizer, self.guard.prompts,
                              guard_sampling(self.cfg), seed=self.seed * 17 + 1 + 1000 * repeat)
        return self.guard.win_rate(texts, self.iteration - 1000 * repeat)

    def _update_best(self, win_rate: float) -> float:
        """Record a guard evaluation; a new best *smoothed* win rate (the mean of the last
        guard.window evaluations) saves the current policy. One evaluation of 64 prompts has a standard
        error near 0.05, as large as the gains it should see: the best of many raw evaluations is a
        noise peak, which stopped rounds early. Returns the smoothed win rate."""
        self.guard_history.append(win_rate)
        recent = self.guard_history[-self.cfg.guard.window:]
        smoothed = sum(recent) / len(recent)
        if smoothed > self.best["win_rate"]:
            self.best = {"win_rate": smoothed, "iteration": self.iteration, "stale": 0}
            unwrap = self.accelerator.unwrap_model
            if is_main():
                state = {"policy": _cpu_state(unwrap(self.policy))}
                if self.value_model is not None:
                    state["value"] = _cpu_state(unwrap(self.value_model))
                torch.save(state, self.out_dir / "best_state.pt")
            barrier()
        else:
            self.best["stale"] += 1
        return smoothed

    def restore_best(self) -> None:
        """Load the guard's best weights back (the policy taken before over-optimisation)."""
        path = self.out_dir / "best_state.pt"
        if path.is_file():
            state = torch.load(path, weights_only=True)
            self.accelerator.unwrap_model(self.policy).load_state_dict(state["policy"])
            if self.value_model is not None:
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
                # A start that is the reference scores a known 0.5: measuring it would only add noise, and
                # a high draw would make every later iteration look worse. An unknown start (a later
                # round's policy) is measured guard.window times, so its score is a mean like every
                # later one, not a single draw that may be a noise peak.
                if self.start_win_rate is None:
                    self.guard_history += [self.evaluate_guard(k) for k in range(1, cfg.guard.window)]
                    self._update_best(self.evaluate_guard())
                else:
                    self._update_best(self.start_win_rate)
            while self.iteration < cfg.total_iterations:
                stats = self.step()
                if self.guard is not None and self.iteration % cfg.guard.eval_every == 0:
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
                if cfg.max_minutes and all_sum(time.time() - t_start > 60 * cfg.max_minutes):  # any rank: all stop
                    stop_reason = "max_minutes"
                    self.save_checkpoint()
                    break
        logger.close()
        self.stop_reason = stop_reason
        return self.history

    def _should_stop(self, stats: dict[str, float]) -> bool:
        if self.cfg.guard.early_stop == "target_kl":
            return stats["kl"] > self.cfg.reward.target_kl
        if self.cfg.guard.early_stop == "held_out_comparisons" and self.guard is not None:
            return self.best["stale"] >= self.cfg.guard.patience
        return False


def _cpu_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _info(s: dict[str, float]) -> str:
    gold = f" gold {s['gold']:.3f}" if "gold" in s else ""
    gold += f" checks {s['verified']:.2f}" if "verified" in s else ""
    return f"reward {s['reward']:+.3f}{gold} kl {s['kl']:.2f} len {s['response_len']:.0f}"
