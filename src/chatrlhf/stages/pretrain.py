"""Stage 1: the tokenizer and generative pre-training of the causal LM (GPT-style, as in InstructGPT's
base models, at laptop scale).

    chatrlhf tokenizer   -> run_tokenizer(cfg): byte-level BPE on the corpus, or a user's model's tokenizer
    chatrlhf pretrain    -> run_pretrain(cfg):  packed next-token training of the tiny Llama (or a user's
                                                AutoModelForCausalLM), resumable, with held-out loss

Data order is a pure function of (seed, step), so a checkpoint's data position is just its step
number and a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from chatrlhf.config import Config
from chatrlhf.lm.data import (
    PackedStream,
    TextCorpus,
    eval_chunks,
    evaluate_lm_loss,
    lm_loss,
    load_text_corpus,
    pack_documents,
    read_text_file,
)
from chatrlhf.lm.distributed import (
    all_mean,
    announce,
    is_main,
    on_main,
    optimizer_step,
    rows_of_rank,
    save_on_main,
    weighted_loss,
)
from chatrlhf.lm.modeling import build_tiny_llama, count_params, load_causal_lm, load_tokenizer, save_stage, write_meta
from chatrlhf.lm.tokenizer import CHAT_FORMATS, ensure_chat_template, save_tokenizer, train_tokenizer
from chatrlhf.lm.training import (
    Checkpoints,
    MetricsLogger,
    WarmupCosine,
    configure_threads,
    cosine_with_warmup,
    make_accelerator,
    progress_bar,
)

console = Console(stderr=True, quiet=not is_main())  # one process reports
WIKITEXT = "wikitext2/valid.txt"  # under cfg.eval.shared_data; eval only, never trained on


def _corpus(cfg: Config) -> TextCorpus:
    return load_text_corpus(cfg.pretrain.data, cfg.stage_dir("world"), cfg.pretrain.text_column,
                            cfg.pretrain.val_fraction)


# --- tokenizer stage ----------------------------------------------------------------------------


def run_tokenizer(cfg: Config) -> Path:
    """Train the BPE on the pre-training corpus (or copy a user's model's tokenizer) into <out>/tokenizer
    (rank 0 writes while any other process waits)."""
    on_main(lambda: _write_tokenizer(cfg))
    return cfg.stage_dir("tokenizer")


def _write_tokenizer(cfg: Config) -> Path:
    out = cfg.stage_dir("tokenizer")
    if cfg.model.name_or_path or cfg.model.tokenizer:
        source = cfg.model.tokenizer or cfg.model.name_or_path
        tok = ensure_chat_template(load_tokenizer(source))
        meta: dict[str, Any] = {"source": str(source), "trained": False}
    else:
        corpus = _corpus(cfg)
        texts = corpus.train[: cfg.tokenizer.max_docs or None]
        t0 = time.time()
        tok = train_tokenizer(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency,
                              CHAT_FORMATS[cfg.tokenizer.chat_format])
        meta = {"source": corpus.source, "trained": True, "docs": len(texts),
                "seconds": round(time.time() - t0, 2), "vocab_size_requested": cfg.tokenizer.vocab_size}
    save_tokenizer(tok, out)
    meta.update(stage="tokenizer", vocab_size=len(tok), chars_per_token=_chars_per_token(tok, cfg))
    write_meta(out, {**meta, "complete": True})
    console.print(f"tokenizer: {len(tok)} tokens -> {out}")
    return out


def _chars_per_token(tok, cfg: Config) -> float | None:
    """Compression on a sample of the validation documents (a tokenizer health check)."""
    try:
        sample = _corpus(cfg).val[:200]
    except Exception:  # a user's tokenizer may come without a local corpus
        return None
    text = "\n".join(sample)
    n = len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0
    return round(len(text) / n, 3) if n else None


def unigram_loss(train_tokens: torch.Tensor, val_tokens: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy of an add-one-smoothed unigram model fitted on the training tokens, on val:
    the loss a model reaches by learning token frequencies and nothing about context."""
    counts = torch.bincount(train_tokens, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[val_tokens[1:]].mean())


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Tokenizer-independent loss: nats/token * tokens/byte / ln 2."""
    return loss * n_tokens / max(1, n_bytes) / math.log(2)


def _utf8_bytes(docs: list[str]) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


# --- model, optimizer, resume -------------------------------------------------------------------


def build_model(cfg: Config, tokenizer) -> torch.nn.Module:
    """The embedded tiny Llama, or the user's AutoModelForCausalLM to continue pre-training."""
    if cfg.model.name_or_path:
        return load_causal_lm(cfg.model.name_or_path, cfg.model.dtype)
    if cfg.pretrain.seq_len > cfg.model.max_position_embeddings:
        raise ValueError(f"pretrain.seq_len ({cfg.pretrain.seq_len}) exceeds model.max_position_embeddings "
                         f"({cfg.model.max_position_embeddings})")
    return build_tiny_llama(cfg.model, tokenizer)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, decaying matrices only (norm gains and biases stay free), GPT-3 betas."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def run_settings(cfg: Config) -> dict[str, Any]:
    """Everything that fixes the trajectory except its length, so a checkpoint from another
    configuration is never silently resumed."""
    p = cfg.pretrain.model_dump(exclude={"max_steps", "max_minutes", "eval_every", "eval_batches",
                                         "save_every", "log_every"})
    return {"model": cfg.model.model_dump(), "pretrain": p, "seed": cfg.run.seed}


def run_fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(run_settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _resume(ckpts: Checkpoints, accelerator, fingerprint: str) -> dict[str, Any]:
    return ckpts.resume(accelerator, fingerprint, "model/pretrain") or {"step": 0, "tokens_seen": 0}


# --- the stage ----------------------------------------------------------------------------------


@dataclass
class _Data:
    """What pre-training reads: packed token streams, fixed held-out chunks, the unigram baseline."""
    corpus: TextCorpus
    train_tokens: torch.Tensor
    val_tokens: torch.Tensor
    stream: PackedStream
    val_chunks: torch.Tensor
    final_chunks: torch.Tensor
    wiki: tuple[torch.Tensor, float] | None
    baseline: float


def _load_data(cfg: Config, tokenizer, model) -> _Data:
    pc = cfg.pretrain
    corpus = _corpus(cfg)
    train_tokens, val_tokens = pack_documents(tokenizer, corpus.train), pack_documents(tokenizer, corpus.val)
    vocab = model.get_input_embeddings().num_embeddings
    return _Data(corpus, train_tokens, val_tokens, PackedStream(train_tokens, pc.seq_len, pc.batch_size, cfg.run.seed),
                 eval_chunks(val_tokens, pc.seq_len, pc.eval_batches * pc.batch_size),
                 eval_chunks(val_tokens, pc.seq_len, 4 * pc.eval_batches * pc.batch_size),
                 _wikitext_chunks(cfg, tokenizer),
                 unigram_loss(train_tokens, val_tokens, vocab) if len(val_tokens) > 1 else float("nan"))


def run_pretrain(cfg: Config) -> Path:
    """Pre-train and save to <out>/pretrain (from_pretrained-loadable, meta.json with the figures)."""
    pc, out = cfg.pretrain, cfg.stage_dir("pretrain")
    threads = configure_threads(cfg.run.threads)
    accelerator = make_accelerator(cfg.run.seed, pc.mixed_precision, cfg.run.device)  # seeds init too
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.stage_dir("tokenizer"))
    model = build_model(cfg, tokenizer)
    d = _load_data(cfg, tokenizer, model)
    console.print(f"pretrain: {threads} threads, {len(d.corpus.train)} docs, {len(d.train_tokens):,} train tokens, "
                  f"{len(d.val_tokens):,} val tokens, {count_params(model):,} params, "
                  f"up to {d.stream.epochs(pc.max_steps):.1f} epochs; unigram baseline {d.baseline:.3f}")

    # --- optimizer, schedule, resume
    opt = make_optimizer(model, pc.learning_rate, pc.weight_decay)
    sched = cosine_with_warmup(opt, pc.warmup_steps, pc.max_steps, pc.min_lr_ratio)
    schedule = sched.lr_lambdas[0]  # its total_steps is the plan; saved with the scheduler state
    model, opt, sched = accelerator.prepare(model, opt, sched)
    ckpts, fingerprint = Checkpoints.for_run(cfg, out, run_settings(cfg)), run_fingerprint(cfg)
    state = _resume(ckpts, accelerator, fingerprint)
    on_main(lambda: (out / "meta.json").unlink(missing_ok=True))  # the stage is incomplete until saved again
    logger = MetricsLogger(out, cfg.run.tensorboard, resume=state["step"] > 0)

    loop = _TrainLoop(cfg, accelerator, model, opt, sched, schedule, d.stream, d.val_chunks, ckpts, logger, fingerprint)
    counters = loop.run(state["step"], {k: state.get(k, 0) for k in ("tokens_seen", "train_seconds", "loop_seconds")})

    # --- final evaluation and the stage output
    meta = _final_meta(cfg, model, accelerator.device, d, counters, schedule.total_steps, threads)
    logger.log(meta["steps"], {k: v for k, v in meta.items() if k.startswith(("val_", "wikitext2_"))})
    logger.close()
    save_on_main(accelerator, model, lambda plain, weights: save_stage(plain, tokenizer, out, meta, state_dict=weights))
    console.print(f"pretrain: val loss {meta['val_loss']:.3f} (ppl {meta['val_ppl']:.1f}) vs unigram {d.baseline:.3f}; "
                  f"{meta['tokens_seen']:,} tokens at {meta['tokens_per_s']:,.0f} tok/s -> {out}")
    return out


def _final_meta(cfg: Config, model, device, d: _Data, counters: dict[str, float], planned_steps: int,
                threads: int) -> dict[str, Any]:
    """The stage's meta.json: held-out loss, perplexity and bits per byte (and on WikiText-2 when it
    is there), against the unigram baseline, with what the run took."""
    pc = cfg.pretrain
    step, tokens_seen = int(counters["steps"]), int(counters["tokens_seen"])
    tok_per_s = tokens_seen / max(counters["train_seconds"], 1e-9)  # over all segments of a resumed run
    val_loss = evaluate_lm_loss(model, d.final_chunks, pc.batch_size, device)
    meta: dict[str, Any] = {
        "stage": "pretrain", "data": d.corpus.source, "steps": step, "tokens_seen": tokens_seen,
        "tokens_per_s": round(tok_per_s, 1), "params": count_params(model),
        "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)),
        "val_tokens": d.final_chunks[:, 1:].numel() if len(d.final_chunks) else 0,
        "val_bpb": bits_per_byte(val_loss, len(d.val_tokens), _utf8_bytes(d.corpus.val)),
        "unigram_val_loss": d.baseline, "train_tokens": len(d.train_tokens),
        "epochs": d.stream.epochs(step), "planned_steps": planned_steps, "threads": threads,
        "max_steps": pc.max_steps, "max_minutes": pc.max_minutes,
        "time_limited": bool(pc.max_minutes > 0 and step < pc.max_steps),  # the wall-clock safety cut it short
        "train_seconds": counters["train_seconds"], "loop_seconds": counters["loop_seconds"],
        "mixed_precision": pc.mixed_precision,
    }
    if d.wiki is not None:
        chunks, bytes_per_token = d.wiki
        meta["wikitext2_loss"] = evaluate_lm_loss(model, chunks, pc.batch_size, device)
        meta["wikitext2_ppl"] = math.exp(min(meta["wikitext2_loss"], 50))
        meta["wikitext2_bpb"] = meta["wikitext2_loss"] / bytes_per_token / math.log(2)
    return meta


def _wikitext_chunks(cfg: Config, tokenizer) -> tuple[torch.Tensor, float] | None:
    """WikiText-2 validation chunks (eval only) and its bytes per token, when the shared data is present."""
    path = Path(cfg.eval.shared_data) / WIKITEXT
    if not cfg.pretrain.wikitext_eval or not path.is_file():
        return None
    docs = read_text_file(path)
    n_chunks = cfg.pretrain.eval_batches * cfg.pretrain.batch_size
    tokens = pack_documents(tokenizer, docs[: 40 * n_chunks])  # enough text, without tokenizing it all
    chunks = eval_chunks(tokens, cfg.pretrain.seq_len, n_chunks)
    n_bytes = _utf8_bytes(docs[: 40 * n_chunks])
    return chunks, n_bytes / max(1, len(tokens))


class _TrainLoop:
    """The optimisation loop: step, log, evaluate, checkpoint, plan to the time budget, stop on NaN."""

    def __init__(self, cfg: Config, accelerator, model, opt, sched, schedule: WarmupCosine, stream: PackedStream,
                 val_chunks: torch.Tensor, ckpts: Checkpoints, logger: MetricsLogger, fingerprint: str):
        self.cfg, self.pc, self.acc = cfg, cfg.pretrain, accelerator
        self.model, self.opt, self.sched, self.schedule, self.stream = model, opt, sched, schedule, stream
        self.val_chunks, self.ckpts, self.logger, self.fingerprint = val_chunks, ckpts, logger, fingerprint

    def train_step(self, step: int) -> tuple[float, float]:
        x, y = self.stream.batch(step)
        rows, counts = rows_of_rank(len(x))  # this rank's share of the global batch
        x, y = x[rows].to(self.acc.device), y[rows].to(self.acc.device)
        with self.acc.autocast():
            loss, global_loss = weighted_loss(lm_loss(self.model, x, y), y.numel() if counts else 0)
        self.ckpts.check_loss(global_loss, step, "pretrain")  # before the update: weights stay good
        grad_norm = optimizer_step(self.acc, loss, self.model.parameters(), self.opt, self.sched, self.pc.grad_clip)
        return global_loss.item(), grad_norm

    def plan(self, step: int, elapsed: float, sec_per_step: float) -> None:
        """Fit the run to pretrain.max_minutes: the cosine ends where the budget does, at the speed
        measured so far (steps after warm-up depend on the plan, so it is re-made as speed changes)."""
        agreed = all_mean({"elapsed": elapsed, "sec_per_step": sec_per_step})  # every rank plans the same
        remaining = 60 * self.pc.max_minutes - agreed["elapsed"]
        fit = step + max(0, int(remaining / max(agreed["sec_per_step"], 1e-6)))
        self.schedule.total_steps = max(step, min(self.pc.max_steps, fit))

    def save(self, step: int, counters: dict[str, float]) -> None:
        self.ckpts.save(self.acc, step, {**counters, "data_position": step, "planned_steps": self.schedule.total_steps,
                                         "fingerprint": self.fingerprint})

    def run(self, start: int, counters: dict[str, float]) -> dict[str, float]:
        """Train from step `start`; `counters` (tokens_seen, train_seconds, loop_seconds) carry over
        from the checkpoint a resumed run started from, and are returned updated."""
        pc, tokens_per_step, c = self.pc, self.pc.batch_size * self.pc.seq_len, dict(counters)
        t_loop, loop_before, step = time.time(), c["loop_seconds"], start
        mark = (start + 1, 0.0)  # (step, time) speed is measured from: after this segment's first step
        first_plan = max(pc.warmup_steps, start + 5)
        announce(self.acc, "pretrain", f"{pc.batch_size / self.acc.num_processes:g} x {pc.seq_len} tokens",
                 f"{pc.batch_size} x {pc.seq_len} tokens")
        with progress_bar("pretrain") as bar:
            task = bar.add_task("pretrain", total=self.schedule.total_steps, completed=start, info="")
            while step < self.schedule.total_steps:
                t0 = time.time()
                loss, grad_norm = self.train_step(step)
                c["train_seconds"] += time.time() - t0
                step, c["tokens_seen"] = step + 1, c["tokens_seen"] + tokens_per_step
                c["loop_seconds"] = loop_before + time.time() - t_loop
                tok_s = (step - start) * tokens_per_step / max(c["loop_seconds"] - loop_before, 1e-9)
                if step % pc.eval_every == 0 and step < self.schedule.total_steps:
                    val = evaluate_lm_loss(self.model, self.val_chunks, pc.batch_size, self.acc.device)
                    self.logger.log(step, {"val/loss": val, "val/ppl": math.exp(min(val, 50))})
                    bar.console.print(f"step {step}: train loss {loss:.3f}, val loss {val:.3f}")
                if step == start + 1:
                    mark = (step, time.time())  # the first step pays allocations: not representative
                if pc.max_minutes > 0 and step >= first_plan and (step == first_plan or step % pc.log_every == 0):
                    sec_per_step = (time.time() - mark[1]) / max(1, step - mark[0])  # evals included
                    self.plan(step, loop_before + time.time() - t_loop, sec_per_step)
                bar.update(task, completed=step, total=self.schedule.total_steps, info=f"loss {loss:.3f} {tok_s:,.0f} tok/s")
                if step % pc.log_every == 0 or step == self.schedule.total_steps:
                    self.logger.log(step, {"train/loss": loss, "train/lr": self.sched.get_last_lr()[0],
                                           "train/grad_norm": grad_norm, "train/tokens_per_s": tok_s,
                                           "train/tokens_seen": c["tokens_seen"]})
                if step % pc.save_every == 0 or step == self.schedule.total_steps:
                    c["loop_seconds"] = loop_before + time.time() - t_loop
                    self.save(step, c)
        c["steps"] = step
        return c
