"""Batched generation with the transformers KV cache: shared by chat, the server, sampling and PPO.

    eng = Engine(model, tokenizer)
    gens = eng.generate(prompt_id_lists, SamplingParams(max_new_tokens=48, temperature=1.0, seed=0))
    for piece in eng.stream(prompt_ids, params): print(piece, end="")
    ro = eng.rollout(prompt_id_lists, params)   # padded tensors + sampled-token mask for the PPO loss

One prefill over the batch's prompts, then one token per step with a KV cache. Rows that finish
(eos or a stop string) are dropped from the batch and its cache, so a long straggler does not make
the finished rows pay for more forward passes. Each row samples with its own torch.Generator
(seed + row), so a row's sample depends on its seed and logits only, not on what it is batched with
(beyond float rounding of the logits, which can tip a draw that lands on a boundary between two tokens).

Two paths give the same samples (tokens equal, log-probs to float rounding): the fast path
(`Engine(fast=True)`, the default where the model allows it, see engine_fast.py) runs prefill and
decode steps as a fused forward on the model's own weights over a preallocated per-row cache; the
transformers path (`fast=False`, and any model the fused step does not cover) calls the model with
a DynamicCache.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatrlhf.lm import engine_fast
from chatrlhf.lm.decode import DecodeBatch, Generation, SamplingParams, sample_tokens, sampled_logprobs
from chatrlhf.lm.prompts import PLAIN_TURN_STOP, plain_prompt
from chatrlhf.lm.tokenizer import apply_template

__all__ = ["ChatFront", "DecodeBatch", "Engine", "Generation", "Rollout", "SamplingParams", "load_engine",
           "sample_tokens", "sampled_logprobs"]


@dataclass
class Rollout:
    """Padded tensors for PPO: left-padded queries followed by right-padded responses."""

    input_ids: torch.Tensor  # (B, Q + R) query + response ids, pad elsewhere
    attention_mask: torch.Tensor  # (B, Q + R) 1 on real tokens
    response_mask: torch.Tensor  # (B, Q + R) 1 on sampled response tokens (eos included)
    logprobs: torch.Tensor  # (B, Q + R) log p of each response token as sampled (PPO's old log-probs), 0 elsewhere
    query_len: int  # Q: responses start at this column
    generations: list[Generation]
    hidden: torch.Tensor | None = None  # (B, R, H) each response token's last hidden state (keep_hidden only), 0 elsewhere



def context_of(config) -> int:
    """Positions a model takes (its config's max_position_embeddings; no limit when it has none)."""
    return int(getattr(config, "max_position_embeddings", 0) or 1_000_000)


class ChatFront:
    """What a chat front end needs of a model, without its weights: the prompt a conversation makes
    and the context it must fit (the server's HTTP process, when a child process decodes)."""

    def __init__(self, tokenizer, context: int):
        self.tok = tokenizer
        self.context = context
        self.plain_chat = getattr(tokenizer, "chat_template", None) is None

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "ChatFront":
        from chatrlhf.lm.modeling import load_model_config, load_tokenizer

        context = context_of(load_model_config(model_dir))  # first: a directory that is no model is named as such
        return cls(load_tokenizer(model_dir), context)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation ready for the assistant's next turn."""
        if self.plain_chat:
            return self.tok(plain_prompt(messages), add_special_tokens=True)["input_ids"]
        text = apply_template(self.tok, messages, add_generation_prompt=True, tokenize=False)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def chat_params(self, params: SamplingParams) -> SamplingParams:
        if not self.plain_chat or PLAIN_TURN_STOP in params.stop:
            return params
        return SamplingParams(**{**params.__dict__, "stop": [*params.stop, PLAIN_TURN_STOP]})


class Engine(ChatFront):
    """Generation for any transformers causal LM + tokenizer (the embedded Llama or a user's model)."""

    def __init__(self, model, tokenizer, max_batch: int = 64, keep_hidden: bool = False, fast: bool | None = None,
                 compile: bool = False):
        """`fast`: decode with the fused step (engine_fast.py); None = wherever the model allows it,
        True = require it, False = the transformers forward every step. `compile`: a single row's
        decode step runs compiled (engine_compiled.CompiledStep; needs the fast path and a C++ compiler;
        each cache size compiles once, seconds, on first use)."""
        self.model = model.eval()
        why = engine_fast.unsupported(model)
        if fast and why:
            raise ValueError(f"the fast decode path does not support this model: {why}")
        self.fast = why is None if fast is None else bool(fast)
        if compile and not self.fast:
            raise ValueError(f"compile needs the fast decode path, which this model does not take: {why or 'fast=False'}")
        if compile and next(model.parameters()).device.type != "cpu":
            raise ValueError("compile: the compiled decode step is built for the CPU (on a GPU the fast path runs eagerly)")
        self.compile = compile
        self._fused: engine_fast.FusedLlama | None = None
        super().__init__(tokenizer, context_of(model.config))
        self.max_batch = max_batch
        # keep the last hidden state each token was sampled from (PPO's shared value head reads it)
        self.keep_hidden = keep_hidden
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id} - {None}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) - {None}
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters

    # --- low level --------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache,
                last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, the last position's last hidden state (B, H) with keep_hidden, else None)."""
        kw: dict[str, Any] = {"logits_to_keep": 1} if last_only and self._keep_arg else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                         use_cache=True, output_hidden_states=self.keep_hidden, **kw)
        return out.logits, out.hidden_states[-1][:, -1] if self.keep_hidden else None

    def _slots(self) -> engine_fast.SlotKV | None:
        """A fresh per-row cache for a fast-path batch (weights re-read if the model was trained since);
        None when this batch takes the transformers path."""
        if not self.fast:
            return None
        if self._fused is None or self._fused.model is not self.model:
            self._fused = engine_fast.FusedLlama(self.model, compile=self.compile)
        if self._fused.hooked():
            return None
        self._fused.refresh()
        f = self._fused
        return engine_fast.SlotKV(len(f.layers), f.n_kv, f.head_dim, f.embed.dtype, self.device, pow2=self.compile)

    def decode(self, ids: Sequence[int]) -> str:
        """A reply's text. Its first word carries the byte-level BPE's word-start space (the
        tokenizer adds one after <|assistant|>, so a reply starts with the well-trained ' Hello'
        rather than 'H'+'ell'+'o'); the reader never sees it."""
        text = self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text[1:] if text.startswith(" ") else text

    def budget(self, prompt_len: int, max_new_tokens: int) -> int:
        """max_new_tokens capped by the context window; a prompt that fills it is an error."""
        room = self.context - prompt_len
        if room <= 0:
            raise ValueError(f"prompt of {prompt_len} tokens does not fit the model's context of {self.context} tokens")
        return max(1, min(max_new_tokens, room))

    def batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]) -> DecodeBatch:
        per_row = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        seeds = None
        if isinstance(params, SamplingParams):  # one seed for the call: row i samples with seed + i
            base = params.seed if params.seed is not None else random.getrandbits(62)
            seeds = [base + i for i in range(len(prompts))]
        return DecodeBatch(self, prompts, per_row, seeds)

    # --- public API (docs/ARCHITECTURE.md "Generation engine") ------------------------------

    progress: Callable[[int, int], None] | None = None  # called with (prompts started, prompts) as they join

    def generate(self, prompt_id_lists: Sequence[Sequence[int]], params: SamplingParams | None = None,
                 n: int = 1) -> list[Generation]:
        """`n` responses per prompt (vLLM's SamplingParams.n), prompt-major: row i * n + j samples
        with seed + i * n + j, the same samples as passing each prompt n times, but each prompt is
        prefilled once and its cache shared by its n rows. More rows than max_batch are decoded with
        continuous batching: waiting prompts join the running batch whenever a quarter of its rows
        have finished, so short answers do not leave the batch half empty."""
        params = params or SamplingParams()
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        total = len(prompt_id_lists)
        base = params.seed if params.seed is not None else random.getrandbits(62)
        refill = max(1, self.max_batch // 4)
        b: DecodeBatch | None = None
        rows: list[int] = []  # batch row -> output index
        nxt = 0  # next prompt to start
        while nxt < total or (b is not None and not b.done):
            live = 0 if b is None or b.done else len(b.active)
            room = min(self.max_batch - live, (total - nxt) * n) // n  # whole prompts only
            if live == 0:
                room = max(room, 1) if nxt < total else 0  # an empty batch always takes a prompt
            if room and (live == 0 or (room * n >= refill and b.can_join())):
                out_rows = range(nxt * n, (nxt + room) * n)
                args = ([prompt_id_lists[i] for i in range(nxt, nxt + room)], [params] * len(out_rows),
                        [base + r for r in out_rows])
                if b is None:
                    b = DecodeBatch(self, *args, n=n)
                else:
                    b.join(*args, n=n)
                rows += out_rows
                nxt += room
                if self.progress is not None:
                    self.progress(nxt, total)
            b.step()
        out: list[Generation | None] = [None] * (total * n)
        for r, i in enumerate(rows):
            out[i] = b.result(r)
        return out  # type: ignore[return-value]

    def generate_chat(self, message_lists: Sequence[list[dict[str, str]]], params: SamplingParams | None = None,
                      n: int = 1) -> list[Generation]:
        params = self.chat_params(params or SamplingParams())
        gens = self.generate([self.chat_prompt(m) for m in message_lists], params, n)
        if self.plain_chat:
            for g in gens:
                g.text = g.text.strip()
        return gens

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Text pieces of one prompt's response as they are sampled (joined, they equal `.text`)."""
        b = self.batch([prompt_ids], params or SamplingParams())
        while not b.done:
            b.step()
            piece = b.delta(0)
            if piece:
                yield piece

    def rollout(self, prompt_id_lists: Sequence[Sequence[int]], params: SamplingParams | None = None,
                n: int = 1) -> Rollout:
        """Sample n responses per prompt and pack them for PPO: [left-padded query | right-padded response]."""
        gens = self.generate(prompt_id_lists, params, n)
        q = max(len(g.prompt_ids) for g in gens)
        r = max(1, max(len(g.token_ids) for g in gens))
        ids = torch.full((len(gens), q + r), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        resp = torch.zeros_like(ids)
        logprobs = torch.zeros(ids.shape)
        h0 = next((g.hidden for g in gens if g.hidden is not None), None)
        hidden = torch.zeros(len(gens), r, h0.shape[-1], dtype=h0.dtype) if h0 is not None else None
        for i, g in enumerate(gens):
            ids[i, q - len(g.prompt_ids): q] = torch.tensor(g.prompt_ids)
            attn[i, q - len(g.prompt_ids): q] = 1
            n = len(g.token_ids)
            if n:
                ids[i, q: q + n] = torch.tensor(g.token_ids)
                attn[i, q: q + n] = 1
                resp[i, q: q + n] = 1
                logprobs[i, q: q + n] = torch.tensor(g.logprobs)
                if hidden is not None:
                    hidden[i, :n] = g.hidden.cpu()
        return Rollout(ids, attn, resp, logprobs, q, gens, hidden)


def load_engine(model_dir: str | Path, dtype: str = "float32", device: str = "auto", max_batch: int = 64,
                compile: bool = False) -> Engine:
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer

    model = load_causal_lm(model_dir, dtype)
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        model = model.to("cuda")
    return Engine(model, load_tokenizer(model_dir), max_batch, compile=compile)
