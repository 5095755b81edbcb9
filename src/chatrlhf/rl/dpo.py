"""Direct preference optimisation (Rafailov et al. 2023) on the RM's comparison data.

No reward model and no sampling: the policy is trained on the ranked pairs directly,

    loss = -log sigmoid(beta * ((log pi(y_w) - log pi_SFT(y_w)) - (log pi(y_l) - log pi_SFT(y_l))))

with log pi(y) the summed log-probs of the response tokens only (`losses.dpo_loss`). K-way rankings
become pairs exactly as for the RM (`rankings.make_batch`: every ordered pair of a ranking, weight
1/C(K,2) per ranking, held-out labelers' rankings never trained on), and all pairs of a comparison
share a batch so each response is scored once per step.

Sequences are laid out as the RL stage's rollouts are, [left-padded prompt | right-padded response],
so the LM head runs on the response positions only (`experience.response_forward`). The reference
is frozen, so its log-probs are computed once before training and reused by every epoch (TRL's
`precompute_ref_log_probs`). Held-out preference accuracy uses the implicit reward
beta * (log pi - log pi_SFT), scored like the RM's pairwise accuracy.

Under `accelerate launch` each rank trains on its contiguous share of every batch's comparisons, its
loss weighted by its share of the batch's rankings (`lm.distributed.weighted_loss`), so the update is
one process's on the whole batch; the reference and evaluation log-probs are shared out the same way
and gathered on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatrlhf.config import DPOConfig
from chatrlhf.lm.chat_data import ensure_template
from chatrlhf.lm.distributed import (
    all_mean,
    announce,
    gather,
    optimizer_step,
    rows_of_rank,
    shard,
    weighted_loss,
    world_size,
)
from chatrlhf.lm.packing import best_fit_decreasing, pack_rows, packed_position_ids
from chatrlhf.lm.rankings import expand_pairs, make_batch
from chatrlhf.lm.training import Checkpoints, MetricsLogger, check_finite, cosine_with_warmup, progress_bar
from chatrlhf.rl.experience import response_forward
from chatrlhf.rl.losses import dpo_loss, token_logprobs

Encoded = tuple[list[int], list[int]]  # (prompt ids, response ids)
log = logging.getLogger(__name__)


# --- encoding -------------------------------------------------------------------------------
def encode_pair_side(tokenizer, messages: list[dict], response: str, max_len: int) -> Encoded:
    """(prompt ids, response ids) of `messages` answered by `response`, tokenised as the generation
    engine does (chat template rendered, then tokenised without added specials), so the log-probs
    are those of the tokens the policy samples. The response is every token after the generation
    prompt (its end-of-turn token included); over max_len the prompt loses its oldest tokens, then
    the response its last ones."""
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    p = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    f = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    start = 0
    while start < min(len(p), len(f)) and p[start] == f[start]:  # merges may differ at the seam
        start += 1
    resp = f[start:][: max(1, max_len - 1)]
    prompt = f[:start][-(max_len - len(resp)):] if max_len > len(resp) else f[:start][-1:]
    return prompt, resp


def collate_responses(seqs: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """[left-padded prompt | right-padded response]: (ids, attention_mask, position_ids, P, response mask)."""
    P = max(len(p) for p, _ in seqs)
    R = max(1, max(len(r) for _, r in seqs))
    ids = torch.full((len(seqs), P + R), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    mask = torch.zeros((len(seqs), R))
    for i, (p, r) in enumerate(seqs):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(p):P + len(r)] = 1
        mask[i, :len(r)] = 1.0
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    return ids, attn, pos, P, mask


def sequence_logprobs(model, seqs: list[Encoded], pad_id: int, device) -> torch.Tensor:
    """(S,) summed log pi(response | prompt) of each sequence, response tokens only."""
    ids, attn, pos, P, mask = (t.to(device) if isinstance(t, torch.Tensor) else t
                               for t in collate_responses(seqs, pad_id))
    logits, _ = response_forward(model, ids, attn, pos, P, temperature=1.0)
    return (token_logprobs(logits, ids[:, P:]) * mask).sum(1)


def packed_sequence_logprobs(model, seqs: list[Encoded], pad_id: int, device) -> torch.Tensor:
    """sequence_logprobs without padding: the sequences packed into rows no longer than the longest
    one (best fit decreasing), position ids restarting per sequence so none sees another (as the RM
    packs), and the LM head run on the response-predicting positions only: a pre-hook hands it
    those hidden states, so the model's own forward (which DDP wrappers need to see) still runs."""
    lengths = [len(p) + len(r) for p, r in seqs]
    rows = best_fit_decreasing(lengths, max(lengths))
    ids = pack_rows([[seqs[i][0] + seqs[i][1] for i in row] for row in rows], pad_id)
    width = ids.shape[1]
    pos = packed_position_ids([[lengths[i] for i in row] for row in rows], width)
    at, target, owner = [], [], []
    for b, row in enumerate(rows):
        off = b * width
        for i in row:
            p, r = seqs[i]
            at += range(off + len(p) - 1, off + len(p) - 1 + len(r))  # the position that predicts each response token
            target += r
            owner += [i] * len(r)
            off += lengths[i]
    at_t = torch.tensor(at, device=device)
    head = getattr(model, "module", model).get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _m, args: (args[0].flatten(0, 1)[at_t].unsqueeze(0), *args[1:]))
    try:
        logits = model(input_ids=ids.to(device), position_ids=pos.to(device), use_cache=False).logits[0].float()
    finally:
        hook.remove()
    lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(target, device=device)[:, None]).squeeze(1)
    return torch.zeros(len(seqs), device=device, dtype=lp.dtype).index_add(0, torch.tensor(owner, device=device), lp)


@torch.no_grad()
def packing_matches_padding(model, seqs: list[Encoded], pad_id: int, device) -> bool:
    """Packed rows are right only where the model builds its attention mask from restarting
    position ids; checked against the padded layout on one batch (the RM stage does the same)."""
    was_training = model.training
    model.eval()
    a = sequence_logprobs(model, seqs, pad_id, device)
    b = packed_sequence_logprobs(model, seqs, pad_id, device)
    model.train(was_training)
    tol = 1e-3 * max(1.0, float(a.abs().max())) if next(model.parameters()).dtype == torch.float32 else 5e-2
    if torch.allclose(a, b, atol=tol, rtol=1e-3):
        return True
    log.warning("dpo.packing: packed rows give other log-probs than padded ones with this model (max difference "
                "%.3g); training with padded batches instead", (a - b).abs().max().item())
    return False


@torch.no_grad()
def batched_logprobs(model, seqs: list[Encoded], pad_id: int, device, batch: int, packing: bool = False) -> torch.Tensor:
    """sequence_logprobs (packed_sequence_logprobs with `packing`) in chunks of similar length, in the input order."""
    fn = packed_sequence_logprobs if packing else sequence_logprobs
    was_training = model.training
    model.eval()
    out = torch.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i][0]), len(seqs[i][1])))
    for k in range(0, len(order), batch):
        idx = order[k:k + batch]
        out[idx] = fn(model, [seqs[i] for i in idx], pad_id, device).float().cpu()
    model.train(was_training)
    return out


def shared_logprobs(model, seqs: list[Encoded], pad_id: int, device, batch: int, packing: bool = False) -> torch.Tensor:
    """batched_logprobs with the sequences shared out over the ranks, each scoring its contiguous
    share; every rank gets all of them back, in the input order."""
    mine = batched_logprobs(model, shard(seqs), pad_id, device, batch, packing)
    return torch.cat(gather([mine])) if world_size() > 1 else mine


# --- evaluation -----------------------------------------------------------------------------
def preference_accuracy(comparisons: list[dict], rewards: list[list[float]], keep) -> tuple[float, int]:
    """Share of ranked pairs (rankings whose labeler passes `keep`) whose chosen response gets the
    higher implicit reward; a tie counts half (at the start, policy = reference: every pair ties)."""
    hit, n = 0.0, 0
    for g, (c, r) in enumerate(zip(comparisons, rewards)):
        skip = {rk.get("labeler") for rk in c.get("rankings", []) if not keep(rk.get("labeler"))}
        for p in expand_pairs(c, g, skip):
            hit += 1.0 if r[p.chosen] > r[p.rejected] else 0.5 if r[p.chosen] == r[p.rejected] else 0.0
            n += 1
    return (hit / n if n else float("nan")), n


def implicit_rewards(policy, tokens: list[list[Encoded]], ref_lp: list[torch.Tensor], beta: float, pad_id: int,
                     device, batch: int, packing: bool = False) -> list[list[float]]:
    """beta * (log pi(y) - log pi_SFT(y)) of every response of every comparison."""
    flat = [s for seqs in tokens for s in seqs]
    lp = shared_logprobs(policy, flat, pad_id, device, batch, packing) if flat else torch.zeros(0)
    out, k = [], 0
    for seqs, ref in zip(tokens, ref_lp):
        out.append((beta * (lp[k:k + len(seqs)] - ref)).tolist())
        k += len(seqs)
    return out


def evaluate_dpo(policy, tokens: list[list[Encoded]], ref_lp: list[torch.Tensor], val: list[dict], held_out: set[str],
                 cfg: DPOConfig, pad_id: int, device, packing: bool = False) -> dict[str, Any]:
    """Held-out preference accuracy of the implicit reward: on held-out prompts by the training
    labelers, and by the held-out labelers (the RM stage's two figures, comparable with them)."""
    if not val:
        return {}
    rewards = implicit_rewards(policy, tokens, ref_lp, cfg.beta, pad_id, device, cfg.ref_batch, packing)
    acc_p, n_p = preference_accuracy(val, rewards, lambda lab: lab not in held_out)
    acc_l, n_l = preference_accuracy(val, rewards, lambda lab: lab in held_out)
    return {"acc_held_out_prompts": acc_p, "pairs_held_out_prompts": n_p,
            "acc_held_out_labelers": acc_l, "pairs_held_out_labelers": n_l}


# --- training -------------------------------------------------------------------------------
def _epoch_batches(n: int, batch_prompts: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_prompts] for i in range(0, len(order), batch_prompts)]


def train_dpo(policy, ref, tokenizer, train: list[dict], val: list[dict], cfg: DPOConfig, out_dir: str | Path,
              accelerator, seed: int = 0, held_out: set[str] | frozenset = frozenset(),
              tensorboard: bool = False) -> dict[str, Any]:
    """DPO of `policy` against the frozen `ref` on `train` comparisons; resumable from out_dir's
    checkpoints. `ref=None` with a LoRA (peft) policy: the reference is the policy with its adapters
    off, so no second model is held. Returns metrics (preference accuracy before and after on `val`,
    speed) and the trained, unwrapped model under "model"."""
    out_dir = Path(out_dir)
    ensure_template(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    held_out = set(held_out)
    train = [c for c in train if make_batch([c], held_out).n_groups]  # no strict preference: nothing to learn
    if not train:
        raise ValueError("dpo: no training comparisons with a strict preference")
    dev = accelerator.device
    enc = lambda cs: [[encode_pair_side(tokenizer, c["messages"], r, cfg.max_len) for r in c["responses"]] for c in cs]  # noqa: E731
    tokens, val_tokens = enc(train), enc(val)
    policy.to(dev)
    t_ref = time.time()
    with reference(policy, ref, dev) as frozen:
        packing = cfg.packing and packing_matches_padding(frozen, [s for seqs in tokens[:8] for s in seqs], pad, dev)
        ref_lp = _reference_logprobs(frozen, tokens, pad, dev, cfg.ref_batch, packing)
        val_ref_lp = _reference_logprobs(frozen, val_tokens, pad, dev, cfg.ref_batch, packing)
    ref_seconds = time.time() - t_ref
    before = evaluate_dpo(policy, val_tokens, val_ref_lp, val, held_out, cfg, pad, dev, packing)

    data = _TrainData(train, tokens, ref_lp, held_out, pad, packing)
    model, run = _optimise(policy, data, cfg, out_dir, accelerator, seed, tensorboard)
    secs = run["seconds"]
    model = accelerator.unwrap_model(model).eval()
    after = evaluate_dpo(model, val_tokens, val_ref_lp, val, held_out, cfg, pad, dev, packing)
    return {"model": model, "steps": run["steps"], "resumed_from": run["start"], "train_comparisons": len(train),
            "val_comparisons": len(val), "train_seconds": secs, "reference_seconds": ref_seconds,
            "sequences_per_second": run["sequences"] / secs if secs > 0 else 0.0,
            "pairs_per_second": run["pairs"] / secs if secs > 0 else 0.0, "tokens_trained": run["tokens"],
            "packing": bool(packing), "before": before, "after": after, "last": run["last"]}


@contextlib.contextmanager
def reference(policy, ref, dev):
    """The frozen reference to score with: `ref` on `dev`, or where it is None the LoRA policy with
    its adapters disabled (its base weights, which the adapters never change)."""
    if ref is not None:
        ref.requires_grad_(False).eval()
        yield ref.to(dev)
        return
    from chatrlhf.lm.lora import is_lora

    if not is_lora(policy):
        raise ValueError("dpo: no reference model given, and the policy has no LoRA adapters to switch off")
    with policy.disable_adapter():
        yield policy


def _reference_logprobs(ref, toks: list[list[Encoded]], pad: int, dev, batch: int, packing: bool) -> list[torch.Tensor]:
    """Each comparison's response log-probs under the frozen reference, computed once before training
    (the reference never changes, so one pass serves every epoch)."""
    lp = shared_logprobs(ref, [s for seqs in toks for s in seqs], pad, dev, batch, packing)
    out, k = [], 0
    for seqs in toks:
        out.append(lp[k:k + len(seqs)])
        k += len(seqs)
    return out


@dataclass
class _TrainData:
    """The training comparisons as the optimisation loop reads them."""

    comparisons: list[dict]
    tokens: list[list[Encoded]]  # per comparison, its responses encoded with the prompt
    ref_lp: list[torch.Tensor]  # per comparison, the reference's log-prob of each response
    held_out: set[str]
    pad: int
    packing: bool


def _optimise(policy, data: _TrainData, cfg: DPOConfig, out_dir: Path, accelerator, seed: int,
              tensorboard: bool) -> tuple[Any, dict[str, Any]]:
    """The training loop, resumed from out_dir's latest checkpoint: returns the (wrapped) model and
    what the run did (steps, where it resumed, sequences, pairs and tokens trained, seconds, last scalars)."""
    dev = accelerator.device
    n_batches = math.ceil(len(data.comparisons) / cfg.batch_prompts)
    total = max(1, math.ceil(cfg.epochs * n_batches))
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay)
    sched = cosine_with_warmup(opt, cfg.warmup_steps, total, cfg.min_lr_ratio)
    model, opt, sched = accelerator.prepare(policy, opt, sched)
    announce(accelerator, "dpo", f"{cfg.batch_prompts / accelerator.num_processes:g} comparisons",
             f"{cfg.batch_prompts} comparisons")
    ckpts = Checkpoints(out_dir)
    state = ckpts.load(accelerator)
    start = state["step"] if state else 0
    metrics = MetricsLogger(out_dir, tensorboard, resume=start > 0)
    model.train()
    batches, batches_epoch = [], -1
    t0, seqs_seen, pairs_seen, tokens_seen, last = time.time(), 0, 0, 0, {}
    with progress_bar("dpo") as bar:
        task = bar.add_task("dpo", total=total, completed=start, info="")
        for step in range(start, total):
            epoch, pos = divmod(step, n_batches)  # data order is a function of (seed, epoch): resume-exact
            if epoch != batches_epoch:
                batches = _epoch_batches(len(data.comparisons), cfg.batch_prompts, seed * 1000 + epoch)
                batches_epoch = epoch
            part, counts = rows_of_rank(len(batches[pos]))  # this rank's share of the global batch
            idx = batches[pos][part]
            pb = make_batch([data.comparisons[i] for i in idx], data.held_out)
            seqs = [data.tokens[idx[g]][k] for g, k in pb.sequences]
            ref_seq = torch.stack([data.ref_lp[idx[g]][k] for g, k in pb.sequences]).to(dev)
            last = _update(model, seqs, ref_seq, pb, counts, data, cfg, accelerator, opt, sched, step, ckpts)
            whole = batches[pos]  # the global batch's counts (this rank's batch in one process)
            wb = pb if accelerator.num_processes == 1 else make_batch([data.comparisons[i] for i in whole], data.held_out)
            seqs_seen += len(wb.sequences)
            pairs_seen += len(wb.chosen)
            tokens_seen += sum(len(p) + len(r) for p, r in (data.tokens[whole[g]][k] for g, k in wb.sequences))
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:  # over ranks: logged and returned
                last = {"loss": last["loss"]} | all_mean({k: v for k, v in last.items() if k != "loss"})
                metrics.log(step + 1, {f"dpo/{k}": v for k, v in last.items()} | {"dpo/lr": sched.get_last_lr()[0]})
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                ckpts.save(accelerator, step + 1, {"epoch": epoch})
            bar.update(task, advance=1, info=f"loss {last['loss']:.3f} acc {last['rewards/accuracies']:.2f}")
    metrics.close()
    return model, {"steps": total, "start": start, "sequences": seqs_seen, "pairs": pairs_seen,
                   "tokens": tokens_seen, "seconds": time.time() - t0, "last": last}


def _update(model, seqs: list[Encoded], ref_seq: torch.Tensor, pb, counts: bool, data: _TrainData, cfg: DPOConfig,
            accelerator, opt, sched, step: int, ckpts: Checkpoints) -> dict[str, float]:
    """One optimiser step on this rank's share of a batch (`counts`: whether it holds any of it);
    returns the global batch's loss and this rank's DPO statistics."""
    dev = accelerator.device
    lp = (packed_sequence_logprobs if data.packing else sequence_logprobs)(model, seqs, data.pad, dev)
    ch, rj = torch.tensor(pb.chosen, device=dev), torch.tensor(pb.rejected, device=dev)
    loss, stats = dpo_loss(lp[ch], lp[rj], ref_seq[ch], ref_seq[rj], cfg.beta,
                           torch.tensor(pb.weight, device=dev), pb.n_groups, cfg.loss_type, cfg.label_smoothing)
    loss, global_loss = weighted_loss(loss, pb.n_groups if counts else 0)
    check_finite(global_loss, step, "dpo", ckpts.latest())
    optimizer_step(accelerator, loss, model.parameters(), opt, sched, cfg.grad_clip)
    return {"loss": global_loss.item(), **{k: v.item() for k, v in stats.items()}}
