"""Rejection-sampling fine-tuning before PPO (Llama 2, Touvron et al. 2023, section 3.2.3).

For each of `ppo.rejection_sampling.prompts` prompts (PPO's training prompts, topped up with the RM
stage's), sample n responses from the starting policy, keep the one PPO's reward ranks highest (the
RM score minus the missing-EOS penalty, plus sft_loglik_coef times the SFT model's mean
log-likelihood of the response, plus verifier_coef times the rule-based check where the prompt has
one), and fine-tune the policy on the kept answers with the SFT loss.
Best-of-n is the trade PPO makes, reward for KL (at most log n - (n-1)/n nats), taken in one step
from many prompts (docs/RESULTS.md measures what it adds). PPO then starts from the distilled policy,
with the KL penalty still to the SFT model.

The result is a stage directory (`<ppo out>/best_of_n/`, loadable with from_pretrained); a rerun
whose directory is complete reuses it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from rich.console import Console

from chatrlhf.config import PPOConfig
from chatrlhf.lm.data import DataError
from chatrlhf.lm.distributed import all_mean, gather, is_main, optimizer_step, rows_of_rank, share, weighted_loss
from chatrlhf.lm.training import check_finite, cosine_with_warmup, make_accelerator, progress_bar
from chatrlhf.lm.verifiers import checked_mean, verifier_scores
from chatrlhf.rl.losses import masked_mean, sft_loglik_rewards

console = Console(stderr=True, quiet=not is_main())  # one process reports


@torch.no_grad()
def best_of_n(policy, ref_policy, tokenizer, prompts: list[dict], reward_fn, cfg: PPOConfig, seed: int,
              same_as_reference: bool = False, gold_fn=None) -> tuple[list[str | None], dict[str, float]]:
    """The best of n samples per prompt under PPO's reward (None where it scores below
    rejection_sampling.min_check on the prompt's check), and statistics of the selection.
    `same_as_reference`: the policy *is* the SFT model, so the rollout's own log-probs are its
    log-likelihoods (at temperature 1) and the reference pass is skipped."""
    from chatrlhf.rl.experience import evaluate_rollout, rollout, score_rollout

    rc, n = cfg.rejection_sampling, cfg.rejection_sampling.n
    with progress_bar(f"best-of-{n} sampling") as bar:  # the longest step before PPO's first iteration
        task = bar.add_task("sample", total=len(prompts), info=f"{len(prompts)} prompts x {n}")
        ro = rollout(policy, tokenizer, prompts, cfg, seed=seed, max_batch=rc.sample_batch, n=n,
                     progress=lambda done, total: bar.update(task, completed=done))
        bar.update(task, completed=len(prompts))
    rows = ro.prompts  # each prompt n times
    # a sharpened policy repeats itself (after one round about half of the 8 samples are copies):
    # score each prompt's distinct responses once, then give every copy its original's numbers
    first, copy_of = distinct_responses(ro, n)
    u = ro.select(first)
    score_rollout(u, reward_fn, cfg)  # RM score (+ verifier_coef x check) minus the missing-EOS penalty
    if same_as_reference and cfg.rollout.temperature == 1.0:
        u.ref_logprobs = u.logprobs * u.mask
    else:
        evaluate_rollout(u, policy, ref_policy, None, cfg, batch_size=64)
    loglik = masked_mean(u.ref_logprobs, u.mask, dim=1)[copy_of]  # mean log pi_SFT(y_t) per response
    # PPO's reward without its KL penalty: best-of-n bounds the KL itself (0 when the policy is SFT)
    reward = (u.scores + sft_loglik_rewards(u.ref_logprobs, u.mask, cfg.reward.sft_loglik_coef).sum(1))[copy_of]
    reward, rm_scores = reward.view(len(prompts), n), u.rm_scores[copy_of.cpu()]
    best = reward.argmax(1)
    picked = [ro.texts[i * n + int(b)] for i, b in enumerate(best)]
    stats = {"reward_mean": reward.mean().item(), "reward_best": reward.max(1).values.mean().item(),
             "rm_score_mean": rm_scores.mean().item(),
             "rm_score_best": rm_scores.view(len(prompts), n).gather(1, best[:, None].cpu()).mean().item(),
             "sft_loglik_best": loglik.view(len(prompts), n).gather(1, best[:, None]).mean().item(),
             "eos_rate": ro.finished.float().mean().item(), "distinct_responses": len(first) / len(rows)}
    checks, has = verifier_scores(prompts, picked)
    if "verified" in u.stats:  # how well the kept answers pass their prompts' checks, against all samples
        stats["verified_mean"] = checked_mean(*verifier_scores(rows, ro.texts))
        stats["verified_best"] = checked_mean(checks, has)
    if gold_fn is not None:  # for the log only: the selection never sees the gold score
        gold = torch.tensor([gold_fn(p, t) for p, t in zip(u.prompts, u.texts)], dtype=torch.float64)[copy_of.cpu()]
        stats["gold_mean"] = gold.mean().item()
        stats["gold_best"] = sum(gold_fn(p, t) for p, t in zip(prompts, picked)) / len(prompts)
    # a kept answer that fails its check would teach the error: train on verified answers only
    keep = [not h or c >= cfg.rejection_sampling.min_check for c, h in zip(checks, has)]
    stats["kept"] = sum(keep)
    return [t if k else None for t, k in zip(picked, keep)], stats


def distinct_responses(ro, n: int) -> tuple[list[int], torch.Tensor]:
    """For rows in groups of n (one prompt each): the first row of each distinct response (by token
    ids) of each prompt, and for every row the position of its distinct response in that list."""
    seen: dict[tuple, int] = {}
    first, copy_of = [], []
    for i, (ids, m) in enumerate(zip(ro.input_ids[:, ro.prompt_len:].tolist(), ro.mask.tolist())):
        key = (i // n, tuple(t for t, keep in zip(ids, m) if keep))
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        copy_of.append(seen[key])
    return first, torch.tensor(copy_of, device=ro.mask.device)


def fine_tune(policy, tokenizer, prompts: list[dict], answers: list[str], cfg: PPOConfig, seed: int,
              max_len: int, accelerator=None) -> dict[str, float]:
    """SFT loss (assistant tokens only) on (prompt, kept answer) conversations, in place, on
    Accelerate: each rank trains on its share of every batch (a new Accelerator when none is given;
    the one given is left with nothing prepared, for the next trainer)."""
    from chatrlhf.lm.chat_data import IGNORE, Batches, build_examples, sft_loss

    rc = cfg.rejection_sampling
    convs = [p["messages"] + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers)]
    examples, _ = build_examples(tokenizer, convs, max_len, "best-of-n answers")
    batches = Batches(examples, rc.batch_size, max_len, False, seed, tokenizer.pad_token_id)
    total = max(1, math.ceil(rc.epochs * batches.per_epoch))
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=rc.learning_rate, weight_decay=0.0, betas=(0.9, 0.95))
    sched = cosine_with_warmup(opt, rc.warmup_steps, total)
    acc = accelerator or make_accelerator(None, device=next(policy.parameters()).device.type)
    model, opt, sched = acc.prepare(policy, opt, sched)
    model.train()
    losses: list[float] = []
    with progress_bar("best-of-n sft") as bar:
        task = bar.add_task("best-of-n sft", total=total, info="")
        for step in range(total):
            epoch, pos = divmod(step, batches.per_epoch)
            rows = batches.epoch(epoch)[pos]
            part, counts = rows_of_rank(len(rows))  # this rank's share of the global batch
            batch = {k: v.to(acc.device) for k, v in batches.tensors(rows[part]).items()}
            targets = int((batch["labels"][:, 1:] != IGNORE).sum()) if counts else 0
            loss, global_loss = weighted_loss(sft_loss(model, batch), targets)
            check_finite(global_loss, step + 1, "best-of-n fine-tuning")  # before the update; best_of_n/ is saved only after
            optimizer_step(acc, loss, params, opt, sched, cfg.update.grad_clip)
            losses.append(global_loss.item())
            bar.update(task, advance=1, info=f"loss {losses[-1]:.3f}")
    acc.free_memory()  # the policy object itself was trained (DDP shares its parameters)
    policy.eval()
    tail = losses[-max(1, batches.per_epoch):]
    return {"steps": total, "loss_first": losses[0], "loss_last_epoch": sum(tail) / len(tail)}


def run_rejection_sampling(policy, ref_policy, tokenizer, prompts: list[dict], reward_fn, cfg: PPOConfig,
                           seed: int, max_len: int, same_as_reference: bool, gold_fn=None,
                           accelerator=None) -> dict[str, Any]:
    """Best-of-n, then fine-tune `policy` on the kept answers, in place; returns the stage's meta."""
    t0 = time.time()
    mine = share(len(prompts))  # each rank samples its share; row i still samples with seed + i
    picked, stats = best_of_n(policy, ref_policy, tokenizer, prompts[mine], reward_fn, cfg,
                              seed + mine.start * cfg.rejection_sampling.n, same_as_reference, gold_fn)
    picked, stats = gather(picked), all_mean(stats)
    stats["kept"] = sum(a is not None for a in picked)
    t1 = time.time()
    kept = [(p, a) for p, a in zip(prompts, picked) if a is not None]
    if not kept:
        raise DataError(f"best-of-{cfg.rejection_sampling.n}: no kept answer of {len(prompts)} prompts passes its check "
                        f"at ppo.rejection_sampling.min_check={cfg.rejection_sampling.min_check}; lower it (0 = keep all)")
    train = fine_tune(policy, tokenizer, [p for p, _ in kept], [a for _, a in kept], cfg, seed, max_len, accelerator)
    meta = {"stage": "best_of_n", "prompts_sampled": len(prompts), "n": cfg.rejection_sampling.n, **stats,
            **{f"fine_tune_{k}": v for k, v in train.items()}, "sample_seconds": round(t1 - t0, 1),
            "train_seconds": round(time.time() - t1, 1), "config": cfg.rejection_sampling.model_dump()}
    console.print(f"best-of-{cfg.rejection_sampling.n}: {len(prompts)} prompts, reward {stats['reward_mean']:+.3f} -> "
                  f"{stats['reward_best']:+.3f} (RM {stats['rm_score_mean']:+.3f} -> {stats['rm_score_best']:+.3f}"
                  + (f", checks passed {stats['verified_mean']:.2f} -> {stats['verified_best']:.2f}" if "verified_best" in stats else "")
                  + f"); fine-tuned on {len(kept)} kept answers, {train['steps']} steps, loss {train['loss_first']:.3f} -> {train['loss_last_epoch']:.3f}")
    return meta
