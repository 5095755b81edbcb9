"""Stage 2: supervised fine-tuning on demonstrations (InstructGPT, Ouyang et al. 2022, section 3.5).

    chatrlhf sft              -> run_sft(cfg): fine-tune <out>/pretrain on the demonstrations, save <out>/sft
    chatrlhf sft --eval-only  -> evaluate_sft(cfg): sample base and SFT on held-out world prompts and score
                                 the samples with the gold scorer and the held-out simulated labelers

Each conversation is rendered by the tokenizer's chat template and the loss falls on assistant tokens
only (the model learns to answer, not to imitate users). Examples longer than `sft.max_len` lose their
oldest turns first. Batches are length-grouped (little padding) or packed (several conversations per
row, kept apart by position ids, which transformers turns into a block-diagonal attention mask).
Data order is a pure function of (seed, epoch), so a checkpoint's data position is its step number.
SFT-ptx (`sft.ptx_coef`, on by default) adds the next-token loss on a few pre-training sequences to
every step, as PPO-ptx does for PPO, so the model keeps what pre-training knew while it learns the
demonstrations' form; those rows are a function of (seed, step) too.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from chatrlhf.config import Config
from chatrlhf.lm.chat_data import (
    IGNORE,
    Batches,
    Example,
    encode_conversation,
    ensure_template,
    evaluate_sft_loss,
    sft_loss,
    split_examples,
)
from chatrlhf.lm.conversations import Conversation, load_conversations
from chatrlhf.lm.data import DataError, lm_loss, ptx_chunks
from chatrlhf.lm.distributed import (
    announce,
    barrier,
    is_main,
    optimizer_step,
    rows_of_rank,
    save_on_main,
    weighted_loss,
)
from chatrlhf.lm.lora import save_merged, trainable_params, wrap_lora
from chatrlhf.lm.modeling import check_context, load_causal_lm, load_tokenizer, save_stage, stage_complete
from chatrlhf.lm.prompts import PLAIN_STOPS, plain_prompt
from chatrlhf.lm.tokenizer import document_eos, system_near_answer
from chatrlhf.lm.training import Checkpoints, MetricsLogger, cosine_with_warmup, make_accelerator, progress_bar
from chatrlhf.world.loader import group_messages, load_world, pretraining_text, require_world, world_demonstrations

console = Console(stderr=True, quiet=not is_main())  # one process reports


# --- the stage ----------------------------------------------------------------------------------


def base_model_path(cfg: Config) -> Path | str:
    """sft.start_from where set, else the finished pre-training stage of this run, else
    `model.name_or_path` as it is."""
    if cfg.sft.start_from:
        return Path(cfg.sft.start_from)
    pretrain = cfg.stage_dir("pretrain")
    if stage_complete(pretrain) or not cfg.model.name_or_path:
        return pretrain
    return cfg.model.name_or_path


def run_settings(cfg: Config) -> dict[str, Any]:
    """What fixes the trajectory, so a checkpoint of another configuration is never resumed."""
    s = cfg.sft.model_dump(exclude={"eval_every", "save_every", "log_every", "eval_prompts", "eval_after"})
    for switch in ("group_system_message", "group_line_near_answer", "group_demonstrations", "writer_group"):
        if not s[switch]:  # off, a run's fingerprint is what it was before the switch existed
            del s[switch]
    if s["group_line_turns"] == "every" or "group_line_near_answer" not in s:
        del s["group_line_turns"]
    if not s["ptx_coef"]:
        del s["ptx_coef"], s["ptx_batch_size"]
    return {"sft": s, "base": str(base_model_path(cfg)), "seed": cfg.run.seed}


def run_fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(run_settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def load_split(cfg: Config, tokenizer) -> tuple[list[tuple[Conversation, Example]], list[tuple[Conversation, Example]],
                                                dict[str, Any]]:
    """(conversation, example) pairs for training and validation, and what happened on the way."""
    sc = cfg.sft
    if sc.group_line_near_answer and not sc.group_system_message:
        raise DataError("sft.group_line_near_answer places the group line of sft.group_system_message; turn that on too")
    if sc.group_demonstrations and not sc.group_system_message:
        raise DataError("sft.group_demonstrations needs sft.group_system_message: each group's demonstrations name "
                        "their group in a system message")
    switch = "group_system_message" if sc.group_system_message else "writer_group" if sc.writer_group else None
    if sc.data and switch:
        raise DataError(f"sft.{switch} reads the writers' labeler groups of the embedded world's demonstrations; "
                        f"sft.data={sc.data!r} has no writers' groups (put any system message in the data)")
    convs = load_conversations(sc.data, sc.format, sc.columns, sc.split) if sc.data else world_demonstrations(cfg)
    source = sc.data or f"world demonstrations ({cfg.stage_dir('world')})"
    counts: dict[str, int] = {}
    pairs = [(c, e) for c in convs if (e := encode_conversation(tokenizer, c, sc.max_len, counts)) is not None]
    if not pairs:
        raise DataError(f"{source}: all {len(convs)} conversations were truncated away at sft.max_len="
                        f"{sc.max_len} (no assistant token left); raise sft.max_len")
    train, val = split_examples(pairs, sc.val_fraction, cfg.run.seed)
    train_keys = {json.dumps(c, sort_keys=True) for c, _ in train}
    train_prompts = {json.dumps(c[:-1], sort_keys=True) for c, _ in train}
    stats = {"data": str(source), "conversations": len(convs), "truncated_away": len(convs) - len(pairs),
             "reply_too_long": counts.get("reply_too_long", 0), "prompt_truncated": counts.get("prompt_truncated", 0),
             "older_turns_dropped": counts.get("older_turns_dropped", 0),
             "val_duplicates_of_train": sum(json.dumps(c, sort_keys=True) in train_keys for c, _ in val),
             "val_prompts_in_train": sum(json.dumps(c[:-1], sort_keys=True) in train_prompts for c, _ in val),
             "train_examples": len(train), "val_examples": len(val),
             "assistant_tokens": sum(sum(t != IGNORE for t in e.labels) for _, e in train),
             "tokens": sum(len(e) for _, e in train)}
    return train, val, stats


def load_data(cfg: Config, tokenizer) -> tuple[list[Example], list[Example], dict[str, Any]]:
    train, val, stats = load_split(cfg, tokenizer)
    return [e for _, e in train], [e for _, e in val], stats


def _report_data(stats: dict[str, Any], max_len: int) -> None:
    """What the data checks found, said once before training."""
    if stats["prompt_truncated"] or stats["reply_too_long"] or stats["older_turns_dropped"]:
        console.print(f"sft: at sft.max_len={max_len}: {stats['older_turns_dropped']} conversations lost older turns, "
                      f"{stats['prompt_truncated']} prompts were cut from the left (replies kept whole), "
                      f"{stats['reply_too_long']} examples dropped because the reply alone is longer")
    if stats["val_prompts_in_train"]:
        console.print(f"[yellow]sft: {stats['val_prompts_in_train']} of {stats['val_examples']} validation examples "
                      f"have a prompt that is also in training ({stats['val_duplicates_of_train']} are exact "
                      "duplicates): the validation loss flatters the model; deduplicate the data")


def run_sft(cfg: Config, eval_only: bool = False) -> Path:
    """Fine-tune (unless eval_only), save <out>/sft, then compare SFT and base on held-out prompts."""
    out = cfg.stage_dir("sft")
    if not eval_only:
        train_sft(cfg)
    if (eval_only or cfg.sft.eval_after) and is_main():  # one process samples and writes; the others wait
        _closing_evaluation(cfg, out, eval_only)
    barrier()
    return out


def _closing_evaluation(cfg: Config, out: Path, eval_only: bool) -> None:
    """SFT against the base model: the world's held-out prompts and labelers for the world's
    demonstrations, else the user's own held-out split. Training already succeeded, so a failure
    here is a warning (an error only when the evaluation was all that was asked)."""
    if cfg.sft.data is None:
        evaluate_sft(cfg)
        return
    try:
        evaluate_on_user_data(cfg)
    except (OSError, ValueError) as e:
        if eval_only:
            raise
        console.print(f"[yellow]sft: trained and saved to {out}; the closing evaluation failed: {e}")


def _answer(model, tokenizer, examples: list[Example], cfg: Config) -> list[str]:
    """Greedy answers to the prompts of encoded examples: the tokens before each one's last reply,
    already cut to sft.max_len, so a long prompt is answered as it was trained on."""
    from chatrlhf.lm.chat_data import last_reply_start
    from chatrlhf.lm.engine import Engine, SamplingParams

    ids = [e.input_ids[:last_reply_start([int(t != IGNORE) for t in e.labels])] for e in examples]
    gens = Engine(model, tokenizer).generate(ids, SamplingParams(max_new_tokens=cfg.eval.max_new_tokens,
                                                                 temperature=0.0, seed=cfg.run.seed))
    return [g.text.strip() for g in gens]


def evaluate_on_user_data(cfg: Config) -> dict[str, Any]:
    """The closing check on the user's own held-out examples (the validation split): SFT's loss
    on them, greedy sample answers beside the references, and the RM's score of both when the run
    has a reward model. Written to sft/eval_user_data.json and sft/eval_samples.jsonl."""
    from chatrlhf.lm.chat_data import Batches

    sc, out = cfg.sft, cfg.stage_dir("sft")
    if not stage_complete(out):
        raise FileNotFoundError(f"no finished SFT model at {out}; run `chatrlhf sft` first")
    tokenizer = load_tokenizer(out)
    model = load_causal_lm(out, cfg.model.dtype).eval()
    _, val, _ = load_split(cfg, tokenizer)
    if not val:
        console.print(f"sft: no validation examples (sft.val_fraction={sc.val_fraction}): nothing held out to evaluate on")
        return {}
    batches = Batches([e for _, e in val], sc.batch_size, sc.max_len, False, cfg.run.seed, tokenizer.pad_token_id)
    results: dict[str, Any] = {"data": sc.data, "val_examples": len(val),
                               "val_loss": evaluate_sft_loss(model, batches, next(model.parameters()).device)}
    held = val[: sc.eval_prompts or None]
    convs, prompts = [c for c, _ in held], [c[:-1] for c, _ in held]
    answers = _answer(model, tokenizer, [e for _, e in held], cfg)
    rows = [{"messages": p, "reference": c[-1]["content"], "response": a} for p, c, a in zip(prompts, convs, answers)]
    rm_dir = cfg.stage_dir("rm")
    if stage_complete(rm_dir):
        from chatrlhf.lm.reward_model import load_reward

        rm = load_reward(rm_dir, cfg.model.dtype)
        sft_scores = rm.score(prompts, answers).tolist()
        ref_scores = rm.score(prompts, [r["reference"] for r in rows]).tolist()
        for r, a, b in zip(rows, sft_scores, ref_scores):
            r["rm_score"], r["reference_rm_score"] = float(a), float(b)
        results.update(reward_model=str(rm_dir), rm_score=sum(sft_scores) / len(sft_scores),
                       reference_rm_score=sum(ref_scores) / len(ref_scores))
    results["samples"] = len(rows)
    results["empty_answers"] = sum(not a.strip() for a in answers)
    (out / "eval_user_data.json").write_text(json.dumps(results, indent=2))
    with (out / "eval_samples.jsonl").open("w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    rm_note = (f", RM score {results['rm_score']:+.3f} (references {results['reference_rm_score']:+.3f})"
               if "rm_score" in results else " (no reward model yet: `chatrlhf sft --eval-only` after `chatrlhf rm` adds its score)")
    console.print(f"sft: on {len(val)} held-out examples of {sc.data}: loss {results['val_loss']:.3f}{rm_note}; "
                  f"{len(rows)} sample answers in {out / 'eval_samples.jsonl'}")
    for r in rows[:3]:
        console.print(f"  [dim]Q:[/dim] {r['messages'][-1]['content'][:120]!r}\n  [dim]A:[/dim] {r['response'][:120]!r}")
    return results


def train_sft(cfg: Config, out: Path | None = None) -> Path:
    sc, out = cfg.sft, out or cfg.stage_dir("sft")
    accelerator = make_accelerator(cfg.run.seed, "no", cfg.run.device)
    src = base_model_path(cfg)
    if isinstance(src, Path) and not src.is_dir():
        what = "sft.start_from" if cfg.sft.start_from else "a pre-trained model; run `chatrlhf pretrain` first or set model.name_or_path"
        raise FileNotFoundError(f"no model at {src}: SFT needs {what}")
    tokenizer = _chat_tokenizer(cfg, src)
    model = load_causal_lm(src, cfg.model.dtype)

    # --- data
    train, val, stats = load_data(cfg, tokenizer)
    check_context(model, sc.max_len, "sft.max_len", max(len(e) for e in train + val))
    pad_id = tokenizer.pad_token_id
    train_b = Batches(train, sc.batch_size, sc.max_len, sc.packing, cfg.run.seed, pad_id)
    val_b = Batches(val, sc.batch_size, sc.max_len, sc.packing, cfg.run.seed, pad_id)
    total = sc.max_steps or max(1, math.ceil(sc.epochs * train_b.per_epoch))
    ptx = _ptx_chunks(cfg, tokenizer)

    # --- model, optimizer, resume
    if sc.lora.enabled:
        model = wrap_lora(model, sc.lora)
    n_train, n_all = trainable_params(model)
    _report_data(stats, sc.max_len)
    announce(accelerator, "sft", f"{sc.batch_size / accelerator.num_processes:g} rows", f"{sc.batch_size} rows")
    console.print(f"sft: {stats['train_examples']} train / {stats['val_examples']} val examples "
                  f"({stats['truncated_away']} truncated away), {stats['assistant_tokens']:,} assistant tokens, "
                  f"{total} steps ({total / train_b.per_epoch:.1f} epochs), {n_train:,}/{n_all:,} trainable params")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=sc.learning_rate, weight_decay=sc.weight_decay, betas=(0.9, 0.95))
    sched = cosine_with_warmup(opt, sc.warmup_steps, total, sc.min_lr_ratio)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    ckpts, fingerprint = Checkpoints.for_run(cfg, out, run_settings(cfg)), run_fingerprint(cfg)
    state = _resume(ckpts, accelerator, fingerprint)
    start = state.get("step", 0)
    if is_main():
        (out / "meta.json").unlink(missing_ok=True)  # the stage is incomplete until saved again
    logger = MetricsLogger(out, cfg.run.tensorboard, resume=start > 0)

    # --- train
    val_before = state["val_loss_before"] if start else evaluate_sft_loss(model, val_b, accelerator.device)
    loop = _TrainLoop(cfg, accelerator, model, opt, sched, train_b, val_b, ckpts, logger,
                      {"fingerprint": fingerprint, "val_loss_before": val_before}, total, ptx)
    step, last_loss, tok_s = loop.run(start)

    # --- final evaluation and the stage output
    val_loss = evaluate_sft_loss(model, val_b, accelerator.device)
    logger.log(step, {"val/loss": val_loss})
    logger.close()
    meta = {"stage": "sft", "base": str(src), "steps": step, "epochs": step / train_b.per_epoch,
            "train_loss": last_loss, "val_loss": val_loss, "val_loss_before": val_before,
            "tokens_per_s": round(tok_s, 1), "lora": sc.lora.model_dump() if sc.lora.enabled else None,
            "packing": sc.packing, "max_len": sc.max_len, "ptx_coef": sc.ptx_coef if ptx is not None else 0.0,
            **stats, **_group_meta(cfg)}
    save_on_main(accelerator, model, lambda plain, weights: save_merged(plain, tokenizer, out, meta) if weights is None
                 else save_stage(plain, tokenizer, out, meta, state_dict=weights))  # LoRA: adapters folded in
    summary = f"val loss {val_before:.3f} -> {val_loss:.3f}" if val_b.examples else "no validation split"
    console.print(f"sft: {summary} after {step} steps ({tok_s:,.0f} tok/s) -> {out}")
    return out


def _chat_tokenizer(cfg: Config, src: Path | str):
    """The base tokenizer with a chat template; with sft.group_line_near_answer, the embedded one
    writes the group line right before each answer (saved with the model: its RM, PPO and chat follow)."""
    tokenizer = _base_tokenizer(cfg, src)
    ensure_template(tokenizer)
    if cfg.sft.group_line_near_answer and cfg.sft.group_system_message:  # without the line, load_split refuses it
        where = "each answer" if cfg.sft.group_line_turns == "every" else "the last answer"
        console.print(f"sft: the chat template writes the group line right before {where}"
                      if system_near_answer(tokenizer, cfg.sft.group_line_turns)
                      else "[yellow]sft: group_line_near_answer: the tokenizer has a chat template of its own; kept")
    return tokenizer


def _base_tokenizer(cfg: Config, src: Path | str):
    """model.tokenizer when set, else the base model's own."""
    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer, "model.tokenizer")
    what = "sft.start_from" if cfg.sft.start_from else "model.name_or_path" if src == cfg.model.name_or_path else "the pretrain stage"
    return load_tokenizer(src, what)


def _ptx_chunks(cfg: Config, tokenizer) -> torch.Tensor | None:
    """SFT-ptx's pre-training text as (N, pretrain.seq_len + 1) token chunks; None when it is off."""
    if cfg.sft.ptx_coef <= 0:
        return None
    text = pretraining_text(cfg, load_world(cfg), on_world=not cfg.sft.data)
    chunks = ptx_chunks(tokenizer, text[0], cfg.pretrain.seq_len) if text else None
    if chunks is None or len(chunks) == 0:
        console.print(f"sft: SFT-ptx off (sft.ptx_coef={cfg.sft.ptx_coef:g} needs pre-training text; set "
                      "pretrain.data to a text corpus to mix it in)")
        return None
    return chunks


def _group_meta(cfg: Config) -> dict[str, Any]:
    """With sft.group_system_message, the lines `chatrlhf chat --group` puts in the system message."""
    if not cfg.sft.group_system_message:
        return {}
    return {"group_messages": group_messages(require_world(cfg, "sft.group_system_message"))}


def _resume(ckpts: Checkpoints, accelerator, fingerprint: str) -> dict[str, Any]:
    return ckpts.resume(accelerator, fingerprint, "sft/model") or {}


class _TrainLoop:
    """Step, log, evaluate, checkpoint, stop on NaN."""

    def __init__(self, cfg: Config, accelerator, model, opt, sched, train_b: Batches, val_b: Batches,
                 ckpts: Checkpoints, logger: MetricsLogger, state: dict[str, Any], total: int,
                 ptx: torch.Tensor | None = None):
        self.sc, self.acc, self.model, self.opt, self.sched = cfg.sft, accelerator, model, opt, sched
        self.ptx, self.seed, self.ptx_loss = ptx, cfg.run.seed, float("nan")
        self.train_b, self.val_b, self.ckpts, self.logger = train_b, val_b, ckpts, logger
        self.state, self.total = state, total  # state: saved with every checkpoint
        self.counts, self.batch_tokens = True, 0  # this rank's rows count (rows_of_rank); the global batch's tokens

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's share of the step's global batch; self.counts says whether it counts (rows_of_rank)."""
        epoch, pos = divmod(step, self.train_b.per_epoch)
        rows = self.train_b.epoch(epoch)[pos]
        part, self.counts = rows_of_rank(len(rows))
        self.batch_tokens = sum(len(e) for r in rows for e in (r if self.train_b.packing else [r]))  # all ranks' rows
        return {k: v.to(self.acc.device) for k, v in self.train_b.tensors(rows[part]).items()}

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> tuple[float, float]:
        targets = int((batch["labels"][:, 1:] != IGNORE).sum()) if self.counts else 0
        loss, global_loss = weighted_loss(sft_loss(self.model, batch), targets)  # the global batch's token mean
        self.ckpts.check_loss(global_loss, step, "sft")  # before the update: weights stay good
        if self.ptx is not None:  # SFT-ptx: the same pre-training rows on every rank, a function of (seed, step)
            rows = torch.randint(len(self.ptx), (self.sc.ptx_batch_size,),
                                 generator=torch.Generator().manual_seed(self.seed * 1_000_003 + step))
            chunk = self.ptx[rows].to(self.acc.device)
            lm = lm_loss(self.model, chunk[:, :-1], chunk[:, 1:])
            loss, self.ptx_loss = loss + self.sc.ptx_coef * lm, lm.item()
        grad_norm = optimizer_step(self.acc, loss, self.model.parameters(), self.opt, self.sched, self.sc.grad_clip)
        return global_loss.item(), grad_norm

    def run(self, start: int) -> tuple[int, float, float]:
        """Train from `start` to the last step; returns (step, last train loss, tokens/s)."""
        sc, step, loss = self.sc, start, float("nan")
        tokens, train_time = 0, 0.0
        with progress_bar("sft") as bar:
            task = bar.add_task("sft", total=self.total, completed=start, info="")
            while step < self.total:
                t0 = time.time()
                batch = self.batch(step)
                loss, grad_norm = self.train_step(batch, step)
                train_time += time.time() - t0
                step += 1
                tokens += self.batch_tokens
                tok_s = tokens / max(train_time, 1e-9)
                bar.update(task, completed=step, info=f"loss {loss:.3f} {tok_s:,.0f} tok/s")
                if step % sc.log_every == 0 or step == self.total:
                    self.logger.log(step, {"train/loss": loss, "train/lr": self.sched.get_last_lr()[0],
                                           "train/grad_norm": grad_norm, "train/tokens_per_s": tok_s,
                                           **({"train/ptx_loss": self.ptx_loss} if self.ptx is not None else {})})
                if step % sc.eval_every == 0 and step < self.total:
                    val = evaluate_sft_loss(self.model, self.val_b, self.acc.device)
                    self.logger.log(step, {"val/loss": val})
                    bar.console.print(f"step {step}: train loss {loss:.3f}, val loss {val:.3f}")
                if step % sc.save_every == 0 or step == self.total:
                    self.ckpts.save(self.acc, step, {"data_position": step, **self.state})
        return step, loss, tokens / max(train_time, 1e-9)


# --- SFT vs base on held-out prompts ------------------------------------------------------------


def answer_prompts(model, tokenizer, prompts: list[Conversation], chat: bool, temperature: float,
                     max_new_tokens: int, seed: int) -> list[str]:
    """One response per prompt: the SFT model through its chat template, the base model on plain text."""
    from chatrlhf.lm.engine import Engine, SamplingParams

    engine = Engine(model, tokenizer)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                            stop=[] if chat else PLAIN_STOPS)
    if chat:
        gens = engine.generate_chat(prompts, params)
    else:
        ids = [tokenizer(plain_prompt(p), add_special_tokens=False)["input_ids"] for p in prompts]
        gens = engine.generate(ids, params)
    if chat:
        return [g.text.strip() for g in gens]
    # the base model ends a document with the separator, which the engine does not stop on
    sep = document_eos(tokenizer)
    texts = []
    for g in gens:
        ids = g.token_ids[: g.token_ids.index(sep)] if sep in g.token_ids else g.token_ids
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for stop in PLAIN_STOPS:
            text = text.split(stop)[0]
        texts.append(text.strip())
    return texts


def score_samples(world, prompts: list[dict], responses: list[str], seed: int) -> dict[str, float]:
    """Mean gold score (0..1) and mean judge-group Likert (1..7) of one response per prompt."""
    labelers = world.judges()
    rng = random.Random(seed)
    gold = [world.gold(p, r).total for p, r in zip(prompts, responses)]
    likert = [sum(lab.likert(p, r, rng)[0] for lab in labelers) / len(labelers)
              for p, r in zip(prompts, responses)]
    mean, se = mean_se(gold)
    return {"gold": mean, "gold_se": se, "likert": sum(likert) / len(likert), "n": len(gold), "golds": gold}


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error."""
    n = len(xs)
    mean = sum(xs) / n
    return mean, (sum((x - mean) ** 2 for x in xs) / max(n - 1, 1)) ** 0.5 / n ** 0.5


def evaluate_sft(cfg: Config) -> dict[str, Any]:
    """Sample base and SFT models on held-out world prompts, greedy and at temperature 1, and score
    them with the world's gold scorer and the held-out simulated labelers (never trained on)."""
    sc, out = cfg.sft, cfg.stage_dir("sft")
    if not stage_complete(out):
        raise FileNotFoundError(f"no finished SFT model at {out}; run `chatrlhf sft` first")
    world = require_world(cfg, "sft's evaluation against the base model")
    prompts = world.prompts("eval")[: sc.eval_prompts or None]
    conversations = [p["messages"] for p in prompts]
    results: dict[str, Any] = {"n_prompts": len(prompts), "max_new_tokens": cfg.eval.max_new_tokens}
    samples = []
    for name, path, chat in (("base", base_model_path(cfg), False), ("sft", out, True)):
        tokenizer = load_tokenizer(path)
        model = load_causal_lm(path, cfg.model.dtype).eval()
        for temperature in (0.0, 1.0):
            key = f"{name}_{'greedy' if temperature == 0 else 't1'}"
            responses = answer_prompts(model, tokenizer, conversations, chat, temperature,
                                         cfg.eval.max_new_tokens, cfg.run.seed)
            results[key] = score_samples(world, prompts, responses, cfg.run.seed)
            samples += [{"model": key, "prompt_id": p["id"], "response": r} for p, r in zip(prompts, responses)]
    for mode in ("greedy", "t1"):  # paired by prompt: SFT minus base on the same prompts
        base, tuned = results[f"base_{mode}"].pop("golds"), results[f"sft_{mode}"].pop("golds")
        gain, se = mean_se([t - b for t, b in zip(tuned, base)])
        results[f"gain_{mode}"] = {"gold": gain, "gold_se": se, "n": len(base)}
    (out / "eval_vs_base.json").write_text(json.dumps(results, indent=2))
    with (out / "eval_samples.jsonl").open("w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    _print_eval(results)
    return results


def _print_eval(results: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"SFT vs base on {results['n_prompts']} held-out world prompts")
    for col in ("model", "mean gold (0-1)", "± s.e.", "held-out labelers Likert (1-7)", "samples"):
        table.add_column(col)
    for key, r in results.items():
        if isinstance(r, dict):
            likert = f"{r['likert']:.2f}" if "likert" in r else ""
            table.add_row(key, f"{r['gold']:+.3f}" if key.startswith("gain") else f"{r['gold']:.3f}",
                          f"{r['gold_se']:.3f}", likert, str(r["n"]))
    console.print(table)
