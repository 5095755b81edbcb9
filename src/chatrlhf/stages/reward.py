"""Stage 2 of InstructGPT: a reward model trained on K-way rankings (`chatrlhf rm`).

    rm = RewardModel.load("runs/default/rm")
    rm.score([[{"role": "user", "content": "Where does Zorbel live?"}]], ["In Varnok."])  # -> (1,) tensor

The RM is the SFT (or pretrained) transformer as an AutoModelForSequenceClassification with
num_labels=1: the backbone plus a linear `score` head read at the last token (<|end|> of the reply).
Loss: InstructGPT eq. 1 (`losses.ranking_loss`), all pairs of a ranking in one batch, each weighted
1/C(K,2). After training a bias makes the mean reward of the labelers' demonstrations 0
(InstructGPT sec. 3.5); it is stored in meta.json as `reward_bias` and added by `score()`.
With `rm.ensemble` = M > 1, M - 1 more RMs are trained the same way from other seeds into
rm/ensemble/1.. (`lm.reward_model.load_reward` then gives their mean as the reward), and eval.json
evaluates that mean.

Sections: encoding -> model -> evaluation -> training loop -> stage entry points.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.console import Console

from chatrlhf.config import Config
from chatrlhf.evaluate.stats import ci_text, cluster_bootstrap_ratio_diff
from chatrlhf.lm.distributed import (
    all_mean,
    all_sum,
    announce,
    barrier,
    init_processes,
    is_main,
    optimizer_step,
    rows_of_rank,
    weighted_loss,
)
from chatrlhf.lm.lora import merge, wrap_lora
from chatrlhf.lm.modeling import check_context, load_tokenizer, read_meta, save_stage, stage_complete, write_meta
from chatrlhf.lm.rankings import (
    PairBatch,
    calibration,
    labeler_agreement,
    load_comparisons,
    make_batch,
    pairwise_accuracy,
    split_by_prompt,
    write_comparisons,
)
from chatrlhf.lm.reward_model import (
    Messages,
    ResponseLMTerm,
    RewardEnsemble,
    RewardModel,
    build_reward_model,
    collate_packed_sequences,
    collate_sequences,
    encode_response,
    pair_rewards,
    raw_rewards,
    reward_backbone_and_head,
    score_comparisons,
)
from chatrlhf.lm.training import Checkpoints, MetricsLogger, cosine_with_warmup, make_accelerator, progress_bar
from chatrlhf.rl.losses import ranking_loss
from chatrlhf.world.loader import held_out_labelers, load_world
from chatrlhf.world.tasks import content_cluster

console = Console(stderr=True, quiet=not is_main())  # one process reports

log = logging.getLogger(__name__)


def evaluate_rm(rm: RewardModel | RewardEnsemble, val: list[dict], held_out: set[str], world=None) -> dict[str, Any]:
    """Held-out prompts (training labelers), held-out labelers, their agreement (the ceiling),
    correlation with the world's gold rubric, calibration."""
    rewards = score_comparisons(rm, val)
    train_lab = lambda lab: lab not in held_out  # noqa: E731
    held_lab = lambda lab: lab in held_out  # noqa: E731
    acc_p, n_p = pairwise_accuracy(val, rewards, train_lab)
    acc_l, n_l = pairwise_accuracy(val, rewards, held_lab)
    agree_h, n_agree_h = labeler_agreement(val, held_out) if held_out else (float("nan"), 0)
    agree_all, _ = labeler_agreement(val)
    out: dict[str, Any] = {
        "val_comparisons": len(val),
        "acc_held_out_prompts": acc_p, "pairs_held_out_prompts": n_p,
        "acc_held_out_labelers": acc_l, "pairs_held_out_labelers": n_l,
        "held_out_labeler_agreement": agree_h, "held_out_agreement_pairs": n_agree_h,
        "all_labeler_agreement": agree_all,
        "calibration": calibration(val, rewards, train_lab),
    }
    if held_out:
        out["ceiling_gap"] = ceiling_gap(val, rewards, held_out)
    if world is not None:
        golds = gold_scores(world, val)
        out.update(gold_correlation(golds, rewards))
        if held_out and any(g is not None for g in golds):
            out.update(gold_as_reward(val, golds, rewards, held_lab))
    return out


def ceiling_gap(val: list[dict], rewards: list[list[float]], held_out: set[str], seed: int = 0) -> dict[str, float]:
    """The held-out labelers' agreement minus the RM's accuracy with them (how far the RM is below its
    ceiling), with a 95% interval that resamples the comparisons' content clusters."""
    acc = [pairwise_accuracy([c], [r], lambda lab: lab in held_out) for c, r in zip(val, rewards)]
    agree = [labeler_agreement([c], held_out) for c in val]
    est, lo, hi = cluster_bootstrap_ratio_diff([a * n if n else 0.0 for a, n in agree], [n for _, n in agree],
                                               [a * n if n else 0.0 for a, n in acc], [n for _, n in acc],
                                               [content_cluster(c) for c in val], seed=seed)
    return {"estimate": est, "low": lo, "high": hi}


def gold_scores(world, comparisons: list[dict]) -> list[list[float] | None]:
    """The world's gold rubric score of each comparison's responses; None where the prompt has no
    world reference (free conversations, external data)."""
    out: list[list[float] | None] = []
    for c in comparisons:
        prompt = _gold_prompt(c) if c.get("reference") is not None else None
        out.append(None if prompt is None else [world.gold(prompt, resp).total for resp in c["responses"]])
    return out


def gold_as_reward(comparisons: list[dict], golds: list[list[float] | None], rewards: list[list[float]],
                   keep) -> dict[str, Any]:
    """The world's noise-free rubric (`golds`, from gold_scores) scored as if it were the RM, on the
    same held-out pairs: what any reward could reach (the labelers' noise and groups stay). Also the
    RM's and the rubric's accuracy per task, which says what the RM misses. Prompts without a world
    reference are left out."""
    rows = [(c, r, g) for c, r, g in zip(comparisons, rewards, golds) if g is not None]
    out: dict[str, Any] = {"gold_acc_held_out_labelers": pairwise_accuracy([c for c, _, _ in rows], [g for _, _, g in rows], keep)[0]}
    by_task: dict[str, dict[str, float]] = {}
    for task in sorted({str(c.get("task")) for c, _, _ in rows}):
        sub = [row for row in rows if str(row[0].get("task")) == task]
        acc, n = pairwise_accuracy([c for c, _, _ in sub], [r for _, r, _ in sub], keep)
        if n:
            gold = pairwise_accuracy([c for c, _, _ in sub], [g for _, _, g in sub], keep)[0]
            by_task[task] = {"rm": acc, "gold": gold, "pairs": n}
    out["acc_held_out_labelers_by_task"] = by_task
    return out


def _gold_prompt(c: dict) -> dict:
    prompt = {k: c.get(k) for k in ("id", "task", "messages", "reference")}
    prompt["id"] = c.get("prompt_id", c.get("id"))
    return prompt


def gold_correlation(golds: list[list[float] | None], rewards: list[list[float]]) -> dict[str, float]:
    """Pearson and Spearman correlation of reward with the world's gold rubric score (`golds`, from
    gold_scores; comparisons without one are left out)."""
    from scipy.stats import pearsonr, spearmanr

    pairs = [(g, x) for gs, r in zip(golds, rewards) if gs is not None for g, x in zip(gs, r)]
    gold, rew = [g for g, _ in pairs], [x for _, x in pairs]
    if len(gold) < 3 or np.std(gold) == 0 or np.std(rew) == 0:
        return {"gold_pearson": float("nan"), "gold_spearman": float("nan"), "gold_n": len(gold)}
    return {"gold_pearson": float(pearsonr(rew, gold)[0]), "gold_spearman": float(spearmanr(rew, gold)[0]),
            "gold_n": len(gold)}


def demonstrations(world, train: list[dict]) -> tuple[list[Messages], list[str], str]:
    """What the bias centres: the labelers' demonstrations (InstructGPT), or without a world the
    top-ranked response of each training comparison."""
    if world is not None:
        ms, rs = [], []
        for d in world.demonstrations():
            msgs = d["messages"]
            if msgs and msgs[-1]["role"] == "assistant":
                ms.append(msgs[:-1])
                rs.append(msgs[-1]["content"])
        if rs:
            return ms, rs, "world demonstrations"
    ms, rs = [], []
    for c in train:
        ranks = c["rankings"][0]["ranks"] if c.get("rankings") else []
        if ranks:
            best = min((r, i) for i, r in enumerate(ranks) if r is not None)[1]
            ms.append(c["messages"])
            rs.append(c["responses"][best])
    return ms, rs, "top-ranked training responses"


# --- training loop --------------------------------------------------------------------------


def _epoch_batches(n: int, batch_prompts: int, seed: int) -> list[list[int]]:
    """One epoch's batches of comparison indices: shuffled chunks (packing, not length grouping,
    removes the padding, so batches keep a random mix of lengths)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i: i + batch_prompts] for i in range(0, len(order), batch_prompts)]


def _train_steps(cfg: Config, model, tok, train: list[dict], tokens: list[list[list[int]]], held_out: set[str],
                 out_dir: Path, seed: int, init_dir: Path) -> dict[str, Any]:
    """The optimisation loop: resumable, logged, NaN-guarded. Returns the trained (unwrapped) model info."""
    rc = cfg.rm
    acc = make_accelerator(seed, "no", cfg.run.device)
    n_batches = math.ceil(len(train) / rc.batch_prompts)
    widths = [max(map(len, seqs)) for seqs in tokens]  # a prompt's K responses pad to its longest
    batches, batches_epoch = [], -1
    total = max(1, math.ceil(rc.epochs * n_batches))
    opt = torch.optim.AdamW(model.parameters(), lr=rc.learning_rate, weight_decay=rc.weight_decay)
    sched = cosine_with_warmup(opt, rc.warmup_steps, total)
    model, opt, sched = acc.prepare(model, opt, sched)
    lm_term = ResponseLMTerm(model, init_dir, tok, train, held_out, rc.max_len) if rc.lm_coef > 0 else None
    announce(acc, "rm", f"{rc.batch_prompts / acc.num_processes:g} rankings", f"{rc.batch_prompts} rankings")
    settings = {"rm": cfg.rm.model_dump(exclude={"save_every", "log_every", "sample_batch", "data", "split", "columns",
                                                 "ensemble"}),
                "seed": seed, "dtype": cfg.model.dtype, **data_fingerprints(tok, train)}  # what fixes the trajectory
    ckpts = Checkpoints.for_run(cfg, out_dir, settings)
    _refuse_other_data(ckpts, settings)
    state = ckpts.resume(acc, None, "rm")
    start = state["step"] if state else 0
    metrics = MetricsLogger(out_dir, cfg.run.tensorboard, resume=start > 0)
    model.train()
    packing = rc.packing
    t0, seqs_seen, pairs_seen, last = time.time(), 0, 0, {}
    with progress_bar("rm") as bar:
        task = bar.add_task("rm", total=total, completed=start, info="")
        for step in range(start, total):
            epoch, pos = divmod(step, n_batches)  # data order is a function of (seed, epoch): resume-exact
            if epoch != batches_epoch:
                batches, batches_epoch = _epoch_batches(len(widths), rc.batch_prompts, seed * 1000 + epoch), epoch
            part, counts = rows_of_rank(len(batches[pos]))  # this rank's share of the global batch
            idx = batches[pos][part]
            pb: PairBatch = make_batch([train[i] for i in idx], held_out)
            seqs = [tokens[idx[g]][k] for g, k in pb.sequences]
            if packing and step == start:  # every rank packs, or none does
                packing = all_sum(not _packing_matches_padding(model, seqs, tok.pad_token_id, acc.device)) == 0
            batch = (collate_packed_sequences if packing else collate_sequences)(seqs, tok.pad_token_id)
            ch, rj, lm_loss = pair_rewards(model, {k: v.to(acc.device) for k, v in batch.items()}, pb.chosen, pb.rejected,
                                           lm_term, [(idx[g], k) for g, k in pb.sequences])  # (P,) per pair
            ranking = ranking_loss(ch, rj, torch.tensor(pb.weight, device=acc.device), pb.n_groups)
            loss, global_loss = weighted_loss(ranking + rc.lm_coef * (0 if lm_loss is None else lm_loss), pb.n_groups if counts else 0)
            ckpts.check_loss(global_loss, step, "rm")
            optimizer_step(acc, loss, model.parameters(), opt, sched, rc.grad_clip)
            whole = pb if acc.num_processes == 1 else make_batch([train[i] for i in batches[pos]], held_out)  # global counts
            seqs_seen, pairs_seen = seqs_seen + len(whole.sequences), pairs_seen + len(whole.chosen)
            last = {"loss": global_loss.item(), "acc": (ch > rj).float().mean().item(), "margin": (ch - rj).mean().item()}
            if (step + 1) % rc.log_every == 0 or step + 1 == total:  # over ranks: logged and returned
                last |= all_mean({k: last[k] for k in ("acc", "margin")}) | ({} if lm_loss is None else {
                    "lm_loss": weighted_loss(lm_loss.detach(), pb.n_groups if counts else 0)[1].item()})
                metrics.log(step + 1, {f"rm/{k}": v for k, v in last.items()} | {"rm/lr": sched.get_last_lr()[0]})
            if rc.save_every and (step + 1) % rc.save_every == 0 and step + 1 < total:
                ckpts.save(acc, step + 1, {"epoch": epoch})
            bar.update(task, advance=1, info=f"loss {last['loss']:.3f} acc {last['acc']:.2f}")
    metrics.close()
    ckpts.verify(acc, total)  # the stage output is saved from these weights
    secs = time.time() - t0
    return {"model": acc.unwrap_model(model), "steps": total, "resumed_from": start, "train_seconds": secs,
            "sequences_per_second": seqs_seen / secs if secs > 0 else 0.0,
            "pairs_per_second": pairs_seen / secs if secs > 0 else 0.0, "last": last}


def data_fingerprints(tok, train: list[dict]) -> dict[str, str]:
    """Hashes of what an RM run trains on, so a resume can say which one differs: the comparisons
    and the starting model's vocabulary."""
    import hashlib

    def h(x: Any) -> str:
        return hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:16]

    return {"comparisons": h([[c["messages"], c["responses"], c.get("rankings")] for c in train]),
            "tokenizer": h(sorted(tok.get_vocab().items()))}


def _refuse_other_data(ckpts: Checkpoints, settings: dict[str, Any]) -> None:
    """A checkpoint left by an interrupted RM run is resumed only for the same data: resuming another
    dataset's run would save that run's model as this one, whatever --resume-anyway says."""
    latest = ckpts.latest()
    if latest is None:
        return
    saved = json.loads((latest / "trainer_state.json").read_text()).get("settings")
    names = {"comparisons": "comparisons (rm.data, its columns, split or content)",
             "tokenizer": "starting model's tokenizer (rm.init_from / model.name_or_path)"}
    differ = [names[k] for k in names if not isinstance(saved, dict) or saved.get(k) != settings[k]]
    if differ:
        old = not isinstance(saved, dict) or "comparisons" not in saved
        raise ValueError(f"rm: {ckpts.root} holds an interrupted RM run whose " + " and ".join(differ)
                         + f" differ from this run's{' (it predates this check)' if old else ''}; it is not "
                         f"resumed for this data. Delete {ckpts.root} to train from scratch, or rerun with that run's "
                         "data to finish it")


@torch.no_grad()
def _packing_matches_padding(model, seqs: list[list[int]], pad_id: int, device) -> bool:
    """Packed rows are right only where the model builds its attention mask from restarting position
    ids (transformers' masking utilities do for most architectures): compare with padding on one
    batch, and fall back to padding where they differ."""
    model.eval()
    padded, packed = (raw_rewards(model, {k: v.to(device) for k, v in fn(seqs, pad_id).items()})
                      for fn in (collate_sequences, collate_packed_sequences))
    model.train()
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if torch.allclose(padded, packed, atol=tol, rtol=tol):
        return True
    log.warning("rm.packing: packed rows give other rewards than padded ones with this model (max difference "
                "%.3g); training with padded batches instead", (padded - packed).abs().max().item())
    return False


MEMBER_SEED_STEP = 7919  # ensemble member m trains with seed run.seed + m * this


def with_replay(fresh: list[dict], older: list[dict], seed: int) -> list[dict]:
    """A continued RM's data: the fresh comparisons plus as many earlier ones drawn at random (replay), so
    it learns the newest policy's mistakes from half its data without forgetting the rest."""
    return fresh + random.Random(seed).sample(older, min(len(older), len(fresh)))


def train_reward_model(cfg: Config, comparisons: str | Path | list[dict], init_dir: str | Path,
                       out_dir: str | Path, world: Any = "auto", val: list[dict] | None = None,
                       member: int = 0) -> dict[str, Any]:
    """Train an RM from `init_dir` (SFT/pretrain causal LM, or an earlier RM to continue) on
    `comparisons` (file or list), evaluate it, save it to `out_dir`. Used by `chatrlhf rm` and by
    the iterate stage. Rankings by held-out labelers are never trained on. Returns the eval metrics.
    `member` m of an ensemble starts its head and orders its data from seed run.seed + m * 7919; the
    train/validation split is the same for every member."""
    out_dir, init_dir = Path(out_dir), Path(init_dir)
    if out_dir.resolve() == init_dir.resolve():
        raise ValueError(f"rm: init_dir and out_dir are both {out_dir}; write the new RM to another directory")
    world = load_world(cfg) if world == "auto" else world
    held_out = held_out_labelers(world)
    data = load_comparisons(comparisons, cfg.rm.allow_ties, cfg.rm.columns, cfg.rm.split)
    train, val_split = split_by_prompt(data, cfg.rm.val_fraction, cfg.run.seed)
    val = val if val is not None else val_split
    train = [c for c in train if make_batch([c], held_out).n_groups]  # a comparison with no strict preference teaches nothing
    if not train:
        raise ValueError(f"rm: no training comparisons with a strict preference in {comparisons if not isinstance(comparisons, list) else 'the given list'}")
    if stage_complete(out_dir) and is_main():  # a finished RM is retrained from scratch, not resumed; until done it is not complete
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        write_meta(out_dir, {**read_meta(out_dir), "complete": False})
    barrier()
    tok = load_tokenizer(init_dir)
    seed = cfg.run.seed + MEMBER_SEED_STEP * member
    with torch.random.fork_rng():  # a new head's init is a function of the seed, however many processes run
        torch.manual_seed(seed)
        model = build_reward_model(init_dir, tok, cfg.model.dtype)
        if cfg.rm.lora.enabled:  # its adapters drawn from the seed too; the new head trains in full
            model = wrap_lora(model, cfg.rm.lora, task_type=None, also_train=[reward_backbone_and_head(model)[1]])
    tokens = [[encode_response(tok, c["messages"], r, cfg.rm.max_len) for r in c["responses"]] for c in train]
    check_context(model, cfg.rm.max_len, "rm.max_len", max(len(s) for seqs in tokens for s in seqs))
    run = _train_steps(cfg, model, tok, train, tokens, held_out, out_dir, seed, init_dir)
    model = merge(run.pop("model")).eval()  # LoRA: the adapters folded in, a plain checkpoint from here on

    rm = RewardModel(model, tok, 0.0, cfg.rm.max_len)
    dm, dr, bias_ref = demonstrations(world, train)
    rm.bias = -float(rm.score(dm, dr, raw=True).mean()) if dr else 0.0  # InstructGPT: demos score 0 on average
    metrics = evaluate_rm(rm, val, held_out, world)
    sub = train[:100]  # enough to see over-fitting, cheap enough for the default run
    metrics["acc_train"] = pairwise_accuracy(sub, score_comparisons(rm, sub), lambda lab: lab not in held_out)[0]
    metrics.update({k: v for k, v in run.items() if k != "last"}, train_comparisons=len(train), reward_bias=rm.bias)
    agreement = cfg.stage_dir("world") / "agreement.json"  # the world's own labeler agreement on its candidates
    if world is not None and agreement.is_file():
        a = json.loads(agreement.read_text())
        metrics["world_agreement"] = {k: a.get(k) for k in ("train", "held_out", "train_vs_held_out")}
    if is_main():  # every rank evaluated the same weights; rank 0 writes
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
        write_comparisons(val, out_dir / "val_comparisons.jsonl")  # held out: PPO's guard without a world reads them
        save_stage(model, tok, out_dir, {"stage": "rm", "reward_bias": rm.bias, "bias_reference": bias_ref,
                                         "max_len": cfg.rm.max_len, "init_from": str(init_dir),
                                         "held_out_labelers": sorted(held_out), "eval": metrics,
                                         **({"ensemble_member": member, "seed": seed} if member else {})})
        _print_summary(metrics)
    barrier()
    return metrics


def member_dir(out_dir: str | Path, m: int) -> Path:
    """Where ensemble member m of the RM in out_dir lives (member 0: out_dir itself)."""
    return Path(out_dir) if m == 0 else Path(out_dir) / "ensemble" / str(m)


def reward_complete(out_dir: str | Path, members: int) -> bool:
    """The RM in out_dir is finished, with exactly `members` members."""
    return stage_complete(out_dir) and len(read_meta(out_dir).get("ensemble") or []) == members - 1


def train_reward_ensemble(cfg: Config, comparisons: str | Path | list[dict], init_dir: Callable[[int], Path],
                          out_dir: str | Path, world: Any = "auto", keep_done: bool = False) -> dict[str, Any]:
    """cfg.rm.ensemble RMs on the same comparisons (train_reward_model, member m from init_dir(m))
    into out_dir and out_dir/ensemble/m. With one member this is train_reward_model. With more,
    out_dir's eval.json and meta.json ("eval") evaluate the members' mean reward, the one
    `load_reward` gives PPO, and list each member's held-out-labeler accuracy; meta.json's
    "ensemble" names the other members' directories once all are trained. `keep_done`: members
    already complete are kept, not retrained (a run resumed after a crash)."""
    out_dir, n = Path(out_dir), cfg.rm.ensemble
    world = load_world(cfg) if world == "auto" else world
    if is_main():  # not complete as an ensemble until every member is; member 0 gets its own eval back
        meta = read_meta(out_dir)
        if "member_eval" in meta:
            meta["eval"] = meta.pop("member_eval")
            (out_dir / "eval.json").write_text(json.dumps(meta["eval"], indent=2))
        if stage_complete(out_dir):
            write_meta(out_dir, {k: v for k, v in meta.items() if k != "ensemble"})
        if not keep_done:
            shutil.rmtree(out_dir / "ensemble", ignore_errors=True)
    barrier()
    member_metrics = []
    for m in range(n):
        d = member_dir(out_dir, m)
        if keep_done and stage_complete(d):
            member_metrics.append(read_meta(d)["eval"])
        else:
            member_metrics.append(train_reward_model(cfg, comparisons, init_dir(m), d, world=world, member=m))
    if n == 1:
        return member_metrics[0]
    members = [member_dir(out_dir, m) for m in range(n)]
    val = load_comparisons(out_dir / "val_comparisons.jsonl")
    ensemble = RewardEnsemble([RewardModel.load(d, cfg.model.dtype) for d in members])
    metrics = evaluate_rm(ensemble, val, held_out_labelers(world), world)
    metrics["members"] = [{k: e.get(k) for k in ("acc_held_out_prompts", "acc_held_out_labelers", "reward_bias")}
                          for e in member_metrics]
    metrics |= {k: member_metrics[0][k] for k in ("train_comparisons", "world_agreement") if k in member_metrics[0]}
    if is_main():
        (out_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
        write_meta(out_dir, {**read_meta(out_dir), "eval": metrics, "member_eval": member_metrics[0],
                             "ensemble": [str(d.relative_to(out_dir)) for d in members[1:]]})
        console.print(f"[bold]rm[/bold]: the mean of {n} reward models: held-out labelers acc "
                      f"{metrics['acc_held_out_labelers']:.3f} (members "
                      + ", ".join(f"{e['acc_held_out_labelers']:.3f}" for e in metrics["members"]) + ")")
    barrier()
    return metrics


def _print_summary(m: dict[str, Any]) -> None:
    labelers = (f"held-out labelers acc {m['acc_held_out_labelers']:.3f} ({m['pairs_held_out_labelers']} pairs), "
                f"held-out labelers' agreement (ceiling) {m['held_out_labeler_agreement']:.3f}, gap "
                f"{ci_text(m['ceiling_gap'])}, "
                if m["pairs_held_out_labelers"] else "")  # only simulated labelers are held out
    console.print(f"[bold]rm[/bold]: held-out prompts acc {m['acc_held_out_prompts']:.3f} ({m['pairs_held_out_prompts']} pairs), "
                  f"{labelers}train acc {m['acc_train']:.3f}, ECE {m['calibration']['ece']:.3f}"
                  + (f", gold spearman {m['gold_spearman']:.3f}" if "gold_spearman" in m else "")
                  + (f"; the world's noise-free rubric as the reward: {m['gold_acc_held_out_labelers']:.3f} on the same "
                     "held-out pairs" if "gold_acc_held_out_labelers" in m else ""))


# --- stage entry point ----------------------------------------------------------------------


def init_dir_for(cfg: Config) -> Path:
    """The RM's starting weights: the configured stage, else the user's model."""
    d = cfg.stage_dir(cfg.rm.init_from)
    if stage_complete(d):
        return d
    if cfg.model.name_or_path:
        return Path(cfg.model.name_or_path)
    raise FileNotFoundError(f"rm: {d} is not a complete stage (no meta.json with complete: true); "
                            f"run `chatrlhf {cfg.rm.init_from}` first or set model.name_or_path")


def run_rm(cfg: Config, keep_done: bool = False) -> Path:
    """`chatrlhf rm`: sample and rank comparisons if missing (world default), then train and evaluate.
    `keep_done` (`chatrlhf run`, resuming): finished ensemble members are kept."""
    out = cfg.stage_dir("rm")
    init_processes(cfg.run.device)
    if cfg.rm.data:
        comparisons: str | Path = cfg.rm.data
        world = None
    else:
        comparisons = out / "comparisons.jsonl"
        if load_world(cfg) is None and not comparisons.is_file():
            raise FileNotFoundError(f"rm.data is not set and there is no embedded world at {cfg.stage_dir('world')}: "
                                    "set rm.data to your comparisons (jsonl/csv/parquet or a datasets name: rankings, "
                                    "chosen/rejected pairs or OpenAssistant trees; rm.columns maps your column names), "
                                    "or run `chatrlhf world` to rank samples with the embedded world's labelers")
        console.print(f"rm: comparisons ranked by the embedded world's simulated labelers ({comparisons}); "
                      "set rm.data to use your own")
        if not comparisons.is_file():
            from chatrlhf.stages.sampling import run_sample

            sft = cfg.stage_dir("sft")  # InstructGPT ranks samples of the SFT model
            run_sample(cfg, policy=sft if stage_complete(sft) else init_dir_for(cfg), out=comparisons)
        world = "auto"
    init = init_dir_for(cfg)
    train_reward_ensemble(cfg, comparisons, lambda m: init, out, world=world, keep_done=keep_done)
    return out
