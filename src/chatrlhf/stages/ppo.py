"""`chatrlhf ppo`: load the SFT policy, reference and reward model, run the best-of-n fine-tune,
then PPO (`rl.ppo.PPOTrainer`), and save the policy as a stage directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from chatrlhf.config import Config, PPOConfig
from chatrlhf.config_ppo import guard_sampling
from chatrlhf.lm.distributed import barrier, is_main, on_main, require_whole_model
from chatrlhf.lm.training import Checkpoints
from chatrlhf.rl.critic import load_critic
from chatrlhf.rl.experience import GoldFn, RewardFn, reference_model, rollout_texts
from chatrlhf.rl.guard import LabelerGuard
from chatrlhf.rl.ppo import PPOTrainer
from chatrlhf.world import loader

console = Console(stderr=True, quiet=not is_main())  # one process reports


# --- the stage -------------------------------------------------------------------------------
def ppo_prompts(cfg: Config, world) -> tuple[list[dict], str]:
    """PPO's prompt pool and where it came from: ppo.data, else the embedded world's PPO prompts."""
    from chatrlhf.lm.data import DataError

    if cfg.ppo.data:
        from chatrlhf.lm.conversations import load_prompts

        return load_prompts(cfg.ppo.data, cfg.ppo.format, cfg.ppo.columns, cfg.ppo.split), str(cfg.ppo.data)
    if world is None:
        raise DataError(f"ppo: no prompts: ppo.data is not set and there is no embedded world at "
                        f"{cfg.stage_dir('world')}. Set ppo.data to your prompts (jsonl/csv/parquet or a datasets "
                        "name: a prompt column, one string per line, or any SFT format; ppo.columns maps your "
                        "column names), or run `chatrlhf world` for the embedded world's prompts")
    return world.prompts("ppo"), f"the embedded world ({cfg.stage_dir('world')})"


def fresh_prompts(world, cfg: Config, r: int) -> list[dict]:
    """Round r's slice of the PPO prompt pool (ppo.data, else the world's, less the guard's
    held-out tail)."""
    pool, _ = ppo_prompts(cfg, world)
    if not cfg.ppo.data:
        pool = pool[: len(pool) - min(cfg.ppo.guard.prompts, len(pool) // 4)]
    n = cfg.iterate.prompts_per_round
    start = ((r - 2) * n) % max(1, len(pool))
    return [pool[(start + i) % len(pool)] for i in range(min(n, len(pool)))]


def _conditioned(cfg: Config, world, prompts: list[dict]) -> list[dict]:
    """With rm.conditioned, each prompt asks for a group (its system message), in the RM's proportions."""
    if not cfg.rm.conditioned:
        return prompts
    if world is None:
        raise ValueError("rm.conditioned needs the embedded world's labeler groups (or prompts that carry their own "
                         "system messages, with rm.conditioned=false)")
    from chatrlhf.world.groups import condition, group_weights

    return condition(prompts, group_weights(world, cfg.rm.labeler_groups), cfg.run.seed)


def _group_messages(world, cfg: Config) -> dict[str, str]:
    from chatrlhf.world.groups import group_message, group_weights

    return {g: group_message(g)["content"] for g in group_weights(world, cfg.rm.labeler_groups)}


def _fitting(prompts: list[dict], tok, policy, max_new_tokens: int, source: str) -> list[dict]:
    """The prompts that leave room for a max_new_tokens reply in the policy's context."""
    from chatrlhf.lm.chat_data import prompt_length
    from chatrlhf.lm.data import DataError
    from chatrlhf.lm.modeling import context_length

    limit = (context_length(policy) or 10**9) - max_new_tokens
    kept = [p for p in prompts if prompt_length(tok, p["messages"]) <= limit]
    if len(kept) < len(prompts):
        console.print(f"ppo: {len(prompts) - len(kept)} of {len(prompts)} prompts of {source} are longer than "
                      f"{limit} tokens (the context less ppo.rollout.max_new_tokens) and are left out")
    if not kept:
        raise DataError(f"ppo: every prompt of {source} is longer than {limit} tokens (the model's context less "
                        "ppo.rollout.max_new_tokens); use shorter prompts or a lower ppo.rollout.max_new_tokens")
    return kept


def _require_stage(path: Path, what: str, command: str) -> None:
    from chatrlhf.lm.modeling import stage_complete

    if not stage_complete(path):
        state = "is not a finished stage (no meta.json with complete: true)" if path.exists() else "does not exist"
        raise FileNotFoundError(f"ppo needs {what} at {path}, which {state}; run `{command}` first "
                                "(both write into run.out_dir)")


def _comparison_guard(cfg: Config, rm_dir: Path, tok):
    """The guard from the RM's held-out comparisons, or None (with a note) when it has none."""
    from chatrlhf.lm.rankings import load_comparisons
    from chatrlhf.rl.guard import ComparisonGuard

    val_file = rm_dir / "val_comparisons.jsonl"
    val = load_comparisons(val_file, cfg.rm.allow_ties) if val_file.is_file() and val_file.stat().st_size else []
    guard = ComparisonGuard(val[: cfg.ppo.guard.prompts], tok, cfg.rm.max_len) if val else None
    if not guard:
        console.print(f"[yellow]ppo: no guard: the reward model in {rm_dir} kept no held-out comparisons "
                      "(rm.val_fraction=0?); the last iteration is exported. Set ppo.guard.early_stop=target_kl to stop "
                      "at ppo.reward.target_kl instead")
        return None
    console.print(f"ppo: guard = {len(guard)} pairs of {min(len(val), cfg.ppo.guard.prompts)} held-out comparisons "
                  f"from {val_file}")
    return guard


def _rejection_sampling_prompts(cfg: Config, train_prompts: list[dict], world) -> list[dict]:
    """rejection_sampling.prompts prompts: PPO's training prompts, topped up with the world's RM
    prompts when PPO runs on the world (more distinct prompts distil better), each asking for a group
    as PPO's own do where the RM is conditioned."""
    n = cfg.ppo.rejection_sampling.prompts
    extra = _conditioned(cfg, world, world.prompts("rm")) if world is not None and not cfg.ppo.data else []
    return (train_prompts + extra[: max(0, n - len(train_prompts))])[:n]


def _lm_text(cfg: Config, tok, world) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Pre-training text for PPO-ptx and the perplexity check (`world.loader.pretraining_text`: pretrain.data,
    else the world's corpus when PPO runs on the world); none at all leaves the check and PPO-ptx out, with a note."""
    pc = cfg.ppo
    text = loader.pretraining_text(cfg, world, on_world=not pc.data)
    if text is None:
        if pc.ptx.coef > 0:
            console.print(f"ppo: PPO-ptx off (ppo.ptx.coef={pc.ptx.coef:g} needs pre-training text; set pretrain.data "
                          "to a text corpus to mix it in)")
        return None, torch.zeros(0, pc.ptx.seq_len + 1, dtype=torch.long)
    train, val = text
    from chatrlhf.lm.data import ptx_chunks, text_chunks

    ptx = ptx_chunks(tok, train, pc.ptx.seq_len) if pc.ptx.coef > 0 else None
    return ptx, text_chunks(tok, val[:300], pc.ptx.seq_len, 48)


def _lm_ppl(model, chunks: torch.Tensor, device) -> float:
    from chatrlhf.lm.data import evaluate_lm_loss

    return math.exp(evaluate_lm_loss(model, chunks, 8, device)) if len(chunks) else float("nan")


def _load_policy(path: Path, cfg: Config):
    from chatrlhf.lm.lora import wrap_lora
    from chatrlhf.lm.modeling import load_causal_lm

    policy = load_causal_lm(path, cfg.model.dtype)
    return wrap_lora(policy, cfg.ppo.lora) if cfg.ppo.lora.enabled else policy


def _sft_baseline(policy, ref, tokenizer, prompts: list[dict], cfg: PPOConfig, seed: int) -> list[str]:
    """SFT answers for the guard prompts, sampled once (the comparison the guard keeps making)."""
    with reference_model(policy, ref) as sft:
        return rollout_texts(sft, tokenizer, prompts, guard_sampling(cfg), seed=seed)


def run_ppo(cfg: Config, policy_dir: str | Path | None = None, rm_dir: str | Path | None = None,
            out_dir: str | Path | None = None, ref_dir: str | Path | None = None,
            group_rm_dirs: dict[str, Path] | None = None) -> Path:
    """`chatrlhf ppo`: policy from `policy_dir` (default sft/), KL to `ref_dir` (default sft/), reward
    and value init from `rm_dir` (default rm/), or the reward from `group_rm_dirs` (_load_rewards);
    writes the policy to `out_dir` (default ppo/)."""
    from chatrlhf.lm.lora import is_lora
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.lm.training import make_accelerator

    pc = cfg.ppo
    policy_dir = Path(policy_dir or cfg.stage_dir("sft"))
    ref_dir, rm_dir = Path(ref_dir or cfg.stage_dir("sft")), Path(rm_dir or cfg.stage_dir("rm"))
    out = Path(out_dir or cfg.stage_dir("ppo"))
    if is_main():  # the stage is incomplete until saved again (rank 0 by the launcher's RANK: no group yet)
        _clear_stage(out)
    _require_stage(policy_dir, "a policy", "chatrlhf sft")
    _require_stage(ref_dir, "the reference (SFT) model", "chatrlhf sft")
    _require_stage(rm_dir, "a reward model", "chatrlhf rm")
    acc = make_accelerator(cfg.run.seed, device=cfg.run.device)
    require_whole_model(acc, "ppo")
    tok = load_tokenizer(policy_dir)
    policy = _load_policy(policy_dir, cfg).to(acc.device)  # on the device before any sampling or scoring
    ref = None if is_lora(policy) and ref_dir == policy_dir else load_causal_lm(ref_dir, cfg.model.dtype).to(acc.device)
    rm, value = _reward_and_critic(cfg, rm_dir, group_rm_dirs, policy, str(acc.device))

    world = loader.load_world(cfg)  # the run's world, or None: PPO never generates one
    prompts, source = ppo_prompts(cfg, world)
    prompts = _fitting(_conditioned(cfg, world, _topped_up(cfg, world, prompts)), tok, policy, pc.rollout.max_new_tokens, source)
    console.print(f"ppo: {len(prompts)} prompts from {source}")
    train_prompts, guard_prompts = _split_guard_prompts(cfg, world, prompts)
    ptx_train, ppl_chunks = _lm_text(cfg, tok, world)
    guard = _make_guard(cfg, policy, ref, tok, world, guard_prompts, rm_dir)
    reward_fn, gold_fn = _reward_fns(rm, world, pc)
    reward_fn = _normalised(cfg, reward_fn, rm_dir)
    ppl_before = _lm_ppl(policy, ppl_chunks, acc.device)
    start_is_ref = policy_dir.resolve() == ref_dir.resolve()
    if pc.rejection_sampling.n > 1 and Checkpoints(out).latest() is None:  # a resumed run already holds it
        rs_prompts = _rejection_sampling_prompts(cfg, train_prompts, world)
        policy, ref = _best_of_n_start(cfg, policy, ref, tok, rs_prompts, reward_fn, gold_fn, out / "best_of_n",
                                       ref_dir, start_is_ref, acc)
        start_is_ref = False
    trainer = PPOTrainer(pc, policy, ref, value, tok, reward_fn, train_prompts, out, acc, seed=cfg.run.seed,
                         gold_fn=gold_fn, guard=guard, ptx_data=ptx_train, watch=_watch_fns(world, pc),
                         start_win_rate=0.5 if start_is_ref else None)
    trainer.ckpts.configure(resume_anyway=cfg.run.resume_anyway)
    history = trainer.train(resume=True, tensorboard=cfg.run.tensorboard)
    if guard is not None:
        trainer.restore_best()  # take the policy before over-optimisation, not after
    policy = acc.unwrap_model(trainer.policy)
    ppl_after = _lm_ppl(policy, ppl_chunks, acc.device)
    meta = _summary(cfg, trainer, history, ppl_before, ppl_after, policy_dir, rm_dir, ref_dir)
    meta["prompts"] = {"source": source, "train": len(train_prompts), "guard": type(guard).__name__ if guard else None}
    meta |= {"group_reward_models": {g: str(d) for g, d in group_rm_dirs.items()}} if group_rm_dirs else {}
    if cfg.rm.conditioned:  # what `chatrlhf chat --group` and the server's `group` field put in the system message
        meta["group_messages"] = _group_messages(world, cfg)
    if guard is not None and meta["selected_iteration"] == 0:
        _warn_start_kept(out)
    on_main(lambda: _save_outputs(acc, trainer, tok, out, meta, history))  # every rank holds the same weights
    return out


def _reward_and_critic(cfg: Config, rm_dir: Path, group_rm_dirs: dict[str, Path] | None, policy, device: str):
    """The reward PPO is paid (_load_rewards) and, for GAE, the value model initialised from `rm_dir`."""
    from chatrlhf.lm.reward_model import compile_reward

    rm = _load_rewards(cfg, rm_dir, group_rm_dirs, device)
    pc = cfg.ppo
    value = load_critic(rm_dir, pc.critic.model, policy, cfg.model.dtype) if pc.advantage.estimator == "gae" else None
    if pc.update.compile:  # the RM scores every rollout; its trunk shares the critic's compiled graphs
        compile_reward(rm)
    return rm, value


def _load_rewards(cfg: Config, rm_dir: Path, group_rm_dirs: dict[str, Path] | None, device: str):
    """The reward PPO is paid: the RM in `rm_dir`; or with `group_rm_dirs` (rm.conditioned only) on each
    prompt the RM of the group it asks for, shown the prompt without the group line (_reward_fns)."""
    from chatrlhf.lm.reward_model import RewardByKey, load_reward

    if not group_rm_dirs:
        return load_reward(rm_dir, cfg.model.dtype, device=device, penalty=cfg.rm.ensemble_penalty)
    if not cfg.rm.conditioned:
        raise ValueError("group reward models pay each prompt by the group it asks for: they need rm.conditioned=true")
    for d in group_rm_dirs.values():
        _require_stage(Path(d), "a group's reward model", "chatrlhf preferences")
    return RewardByKey({g: load_reward(d, cfg.model.dtype, device=device, penalty=cfg.rm.ensemble_penalty)
                        for g, d in group_rm_dirs.items()})


def _topped_up(cfg: Config, world, prompts: list[dict]) -> list[dict]:
    """ppo.top_up_prompts of the world's RM prompts, then PPO's own: first, so the guard's prompts (the
    last few of PPO's own) stay the same; the trainer shuffles the order anyway."""
    if not cfg.ppo.top_up_prompts or world is None or cfg.ppo.data:
        return prompts
    return world.prompts("rm")[: cfg.ppo.top_up_prompts] + prompts


def _split_guard_prompts(cfg: Config, world, prompts: list[dict]) -> tuple[list[dict], list[dict]]:
    """PPO's training prompts, and the last few kept back for the held-out labelers' guard when it is
    a world run stopped on held-out comparisons (none otherwise)."""
    pc = cfg.ppo
    labeler_guard = world is not None and not pc.data and pc.guard.early_stop == "held_out_comparisons"
    n_guard = min(pc.guard.prompts, len(prompts) // 4) if labeler_guard else 0
    return prompts[: len(prompts) - n_guard], prompts[len(prompts) - n_guard:]


def _make_guard(cfg: Config, policy, ref, tok, world, guard_prompts: list[dict], rm_dir: Path):
    """What early stopping asks: held-out labelers comparing the policy with SFT answers on the guard
    prompts, else the reward model's held-out comparisons; None when neither applies."""
    pc = cfg.ppo
    if guard_prompts:
        baseline = _sft_baseline(policy, ref, tok, guard_prompts, pc, seed=cfg.run.seed + 99)
        return LabelerGuard(guard_prompts, baseline, _guard_labelers(cfg, world, guard_prompts), cfg.run.seed,
                            pc.guard.labelers)
    if pc.guard.early_stop == "held_out_comparisons":
        return _comparison_guard(cfg, rm_dir, tok)
    return None


def _guard_labelers(cfg: Config, world, prompts: list[dict]) -> list:
    """The training labelers whose taste the run optimises, who judge the guard: those of
    rm.labeler_groups (every training labeler by default), and for a group-conditioned run, on each
    prompt, the group that prompt asks for. One pool, or one per prompt."""
    pool = [lab for lab, _ in world.labeler_mix(cfg.rm.labeler_groups)]
    if not cfg.rm.conditioned:
        return pool
    return [world.labelers(held_out=False, groups=[p["group"]]) if p.get("group") else pool for p in prompts]


def _reward_fns(rm, world, pc: PPOConfig) -> tuple[RewardFn, GoldFn | None]:
    """The score PPO is paid (the reward model's, or with reward.source=gold the scaled gold rubric,
    a diagnostic upper bound), and the world's gold score where PPO runs on the world's prompts."""
    from chatrlhf.lm.reward_model import RewardByKey

    def reward_fn(ps: list[dict], texts: list[str]) -> torch.Tensor:
        if isinstance(rm, RewardByKey):  # each group's RM, on the prompt as its labelers ranked it: no group line
            plain = [[m for m in p["messages"] if m["role"] != "system"] for p in ps]
            return rm.score_by([p["group"] for p in ps], plain, texts)
        return rm.score([p["messages"] for p in ps], texts)

    def world_gold(p: dict, text: str) -> float:
        return float(world.gold(p, text).total)

    def gold_reward(ps: list[dict], texts: list[str]) -> torch.Tensor:
        return torch.tensor([pc.reward.gold_scale * world_gold(p, t) for p, t in zip(ps, texts)])

    gold_fn = world_gold if world is not None and not pc.data else None  # the rubric knows only its own prompts
    if pc.reward.source == "gold":
        if gold_fn is None:
            raise ValueError("ppo.reward.source=gold needs the embedded world's prompts (no ppo.data): "
                             "the gold rubric scores only those")
        return gold_reward, gold_fn
    return reward_fn, gold_fn


def _normalised(cfg: Config, reward_fn: RewardFn, rm_dir: Path) -> RewardFn:
    """ppo.reward.group_normalise, then ppo.reward.normalise: statistics from the RM's scores on the
    answers of its validation comparisons (per group for the first, pooled for the second)."""
    from chatrlhf.lm.rankings import load_comparisons
    from chatrlhf.rl.experience import group_normalised, standardised

    rc = cfg.ppo.reward
    if not (rc.group_normalise or rc.normalise):
        return reward_fn
    path = rm_dir / "val_comparisons.jsonl"
    if rc.group_normalise and not cfg.rm.conditioned:
        raise ValueError("ppo.reward.group_normalise needs a group-conditioned RM (rm.conditioned)")
    if not path.is_file():
        raise ValueError(f"ppo.reward.{'group_normalise' if rc.group_normalise else 'normalise'} needs the RM's "
                         f"validation comparisons ({path})")
    val = load_comparisons(path)
    prompts = [{"messages": c["messages"], "group": c.get("group")} for c in val for _ in c["responses"]]
    responses = [r for c in val for r in c["responses"]]
    if rc.group_normalise:
        reward_fn = group_normalised(reward_fn, prompts, responses)
    return standardised(reward_fn, prompts, responses) if rc.normalise else reward_fn


def _warn_start_kept(out: Path) -> None:
    """The guard found no PPO iteration better than the start: say what the stage directory holds."""
    console.print("[yellow]ppo: the guard kept the starting policy (iteration 0): no PPO iteration beat it, so "
                  f"{out} holds the {'best-of-n policy' if (out / 'best_of_n' / 'meta.json').is_file() else 'policy PPO started from'}"
                  "; try more iterations, a lower ppo.update.learning_rate or ppo.guard.early_stop=none")


def _clear_stage(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)


def _save_outputs(acc, trainer: PPOTrainer, tok, out: Path, meta: dict[str, Any], history: list[dict]) -> None:
    """The value model, the reward-vs-gold plot and the policy's stage directory (meta.json last)."""
    from chatrlhf.lm.lora import merge
    from chatrlhf.lm.modeling import save_stage, stage_complete

    if stage_complete(out / "best_of_n"):
        meta["best_of_n_start"] = str(out / "best_of_n")  # PPO started from there, not from policy_init
    if trainer.value_model is not None:  # RLOO and GRPO train none
        acc.unwrap_model(trainer.value_model).save_pretrained(out / "value")
    if trainer.value_model is not None and trainer.cfg.critic.model == "separate":  # a loadable model; a shared head is one file
        tok.save_pretrained(out / "value")
    plot_reward_vs_gold(history, out / "reward_vs_gold.png")
    policy = acc.unwrap_model(trainer.policy)
    save_stage(merge(policy) if trainer.cfg.lora.merge else policy, tok, out, meta)


def _watch_fns(world, pc: PPOConfig) -> dict[str, GoldFn]:
    """Scores logged beside gold on the world's prompts and never paid, guarded or selected on: the
    held-out judges' mean noise-free utility, the over-optimisation check of the report's plot."""
    judges = world.judges() if world is not None and not pc.data else []
    if not judges:
        return {}
    return {"judges": lambda p, t: sum(j.expected_utility(p, t) for j in judges) / len(judges)}


def _best_of_n_start(cfg: Config, policy, ref, tok, prompts: list[dict], reward_fn: RewardFn, gold_fn: GoldFn,
                     rs_dir: Path, ref_dir: Path, start_is_ref: bool, accelerator=None):
    """PPO's starting policy after rejection-sampling fine-tuning (rejection_sampling.py), saved
    to `rs_dir` and reused from there. Returns (policy, reference)."""
    from chatrlhf.lm.lora import merge
    from chatrlhf.lm.modeling import load_causal_lm, save_stage, stage_complete
    from chatrlhf.rl.rejection_sampling import run_rejection_sampling

    if not stage_complete(rs_dir):
        meta = run_rejection_sampling(policy, ref, tok, prompts, reward_fn, cfg.ppo, seed=cfg.run.seed * 100_003 + 77_777,
                                      max_len=cfg.sft.max_len, same_as_reference=start_is_ref, gold_fn=gold_fn,
                                      accelerator=accelerator)
        if is_main():
            save_stage(merge(policy) if cfg.ppo.lora.enabled else policy, tok, rs_dir, meta)
        barrier()
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
            "selected_iteration": best_it, "guard": cfg.ppo.guard.early_stop, "guard_win_rate": trainer.best["win_rate"],
            "reward": at_best.get("reward"), "gold": at_best.get("gold"), "kl": at_best.get("kl"),
            "verified": at_best.get("verified"),  # mean ground-truth check score (verifier_coef > 0)
            "final_iteration_reward": last.get("reward"), "final_iteration_gold": last.get("gold"),
            "final_iteration_kl": last.get("kl"), "ptx_coef": cfg.ppo.ptx.coef if trainer.ptx_data is not None else 0.0,
            "pretrain_val_ppl_before": ppl_before, "pretrain_val_ppl_after": ppl_after,
            "config": cfg.ppo.model_dump(mode="json")}


def plot_reward_vs_gold(history: list[dict], path: Path) -> None:
    """The reward-hacking check: RM reward, gold score, the held-out judges' utility and KL over PPO
    iterations."""
    if not history or "gold" not in history[0]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = list(range(1, len(history) + 1))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(its, [h["rm_score"] for h in history], label="RM score")
    ax[0].plot(its, [h["gold"] for h in history], label="gold rubric")
    judged = [(i, h["judges"]) for i, h in zip(its, history) if "judges" in h]
    if judged:
        ax[0].plot(*zip(*judged), label="held-out judges' utility (logged only)")
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
