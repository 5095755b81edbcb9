"""Decoding, one token at a time: sampling settings, the sampler and `DecodeBatch`, the batch that
`Engine` (lm/engine.py) runs for generate, stream and rollout, and the server runs continuously.

Each row samples with its own torch.Generator (seed + row) by inverse CDF over one uniform number,
so a row's sample depends on its seed and logits only, not on what it is batched with
(beyond float rounding of the logits, which can tip a draw that lands on a boundary between two tokens).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache


@dataclass
class SamplingParams:
    max_new_tokens: int = 48
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: list[str] = field(default_factory=list)
    seed: int | None = 0  # None = a fresh random seed per call


@dataclass
class Generation:
    prompt_ids: list[int]
    token_ids: list[int]  # response only; includes the eos token when one was produced
    logprobs: list[float]  # log p of each token id under the temperature-scaled logits it was sampled from
    text: str  # decoded without special tokens, cut before a stop string
    finished: bool  # ended at eos or a stop string (False: ran out of max_new_tokens)
    finish_reason: str = "length"  # "eos" | "stop" | "length" | "cancelled" | "error" (server only)
    hidden: torch.Tensor | None = None  # (n, H) last hidden state each token was sampled from (keep_hidden only)



# --- sampling -------------------------------------------------------------------------------


class Draw(NamedTuple):
    """The next token's draw, per row: its uniform number, temperature, top-k and top-p, and whether
    any row needs the sorted (top-k/top-p) path."""

    u: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    sort: bool


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  uniform: torch.Tensor, sort: bool | None = None) -> torch.Tensor:
    """One token per row from (B, V) logits with per-row temperature/top-k/top-p.

    Inverse-CDF sampling with one uniform number per row, so each row's randomness comes from its
    own generator. Rows with temperature 0 take the argmax. `sort`: whether any row needs top-k/top-p
    (None: read from top_k and top_p; a traced graph, which cannot branch on tensor values, says it).
    """
    greedy = temperature <= 0
    x = logits.float() / temperature.clamp_min(1e-5).unsqueeze(1)
    need_sort = bool((top_k > 0).any() or (top_p < 1.0).any()) if sort is None else sort
    if need_sort:
        x, order = x.sort(dim=-1, descending=True)
        rank = torch.arange(x.shape[-1], device=x.device).unsqueeze(0)
        x = x.masked_fill((top_k > 0).unsqueeze(1) & (rank >= top_k.unsqueeze(1)), float("-inf"))
        probs = x.softmax(-1)
        # nucleus (Holtzman et al. 2020): keep the smallest prefix whose mass reaches top_p
        x = x.masked_fill(probs.cumsum(-1) - probs >= top_p.unsqueeze(1), float("-inf"))
    probs = x.softmax(-1)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(1)).clamp_max(x.shape[-1] - 1)
    picked = order.gather(1, idx) if need_sort else idx
    return torch.where(greedy, logits.argmax(-1), picked.squeeze(1))


def sampled_logprobs(logits: torch.Tensor, temperature: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature), before top-k/top-p: the distribution whose
    ratio PPO clips, so the rollout's log-probs are its old log-probs. (B, V), (B,), (B,) -> (B,)"""
    x = logits.float() / temperature.clamp_min(1e-5).unsqueeze(1)
    return x.log_softmax(-1).gather(1, tokens.unsqueeze(1)).squeeze(1)


# --- one decoding batch ---------------------------------------------------------------------


class DecodeBatch:
    """A batch being decoded: `step()` adds one token to every live row until `done`.

    Per-row SamplingParams (the server batches requests with different settings). New prompts can
    `join` a running batch (continuous batching); rows can be cancelled (a client went away) and
    their cache rows are dropped at the next step.
    """

    def __init__(self, engine: Any, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
                 seeds: Sequence[int | None] | None = None, n: int = 1):
        self.eng = engine  # an lm.engine.Engine (which imports this module, so it is not named here)
        self.prompts: list[list[int]] = []
        self.params: list[SamplingParams] = []
        self.max_new: list[int] = []
        self.tokens: list[list[int]] = []
        self.logprobs: list[list[float]] = []
        self.hidden: list[list[torch.Tensor]] = []  # per row, with Engine.keep_hidden
        self.reason: list[str | None] = []
        self.text: list[str] = []  # decoded so far (kept for rows with stop strings)
        self.stop_at: list[int | None] = []
        self.emitted: list[int] = []
        self.uniforms: list[torch.Tensor] = []  # per row: the uniform number behind each of its tokens
        self.cancelled: set[int] = set()
        self.steps = 0
        self.active, self.cache = torch.zeros(0, dtype=torch.long), None
        # fast path: rows live in slots 0..B-1 of a preallocated cache, row j at positions 0..pos[j]
        self.kv = engine._slots()  # None: the transformers path (not fast, or a module hooked since)
        self.fast = self.kv is not None
        self.width = 0  # fast path: 1 + the largest position of a live row
        self.waiting: list[int] = []  # fast path: rows that joined a running batch, prefilled in the next step
        self.drawn: tuple | None = None  # (logits, tokens, log-probs): the next draw, made by a compiled step
        self.join(prompts, params, seeds, n)

    @property
    def done(self) -> bool:  # every unfinished row is in the batch: no need to scan all rows ever added
        return not self.waiting and all(self.reason[r] is not None for r in self.active.tolist())

    def _add_rows(self, prompts, params, seeds) -> list[int]:
        if len(prompts) != len(params) or not prompts:
            raise ValueError("DecodeBatch needs one SamplingParams per prompt and at least one prompt")
        first = len(self.prompts)
        seeds = seeds if seeds is not None else [sp.seed for sp in params]
        vocab = self.eng.model.get_input_embeddings().weight.shape[0]
        for i, p in enumerate(prompts):  # check all before adding any: a bad prompt leaves the batch as it was
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if min(p) < 0 or max(p) >= vocab:  # the embedding would refuse it in a forward that other rows share
                raise ValueError(f"prompt {i} has a token id outside the vocabulary [0, {vocab})")
        budgets = [self.eng.budget(len(p), sp.max_new_tokens) for p, sp in zip(prompts, params)]
        for p, sp, s, b in zip(prompts, params, seeds, budgets):
            self.max_new.append(b)
            self.prompts.append(list(map(int, p)))
            self.params.append(sp)
            # a row draws one uniform per token from its own generator; drawn up front (the same
            # numbers as one torch.rand(()) per step) so a step indexes a table instead of B calls
            gen = torch.Generator().manual_seed(s if s is not None else random.getrandbits(62))
            self.uniforms.append(torch.rand(b, generator=gen))
        n = len(prompts)
        self.tokens += [[] for _ in range(n)]
        self.logprobs += [[] for _ in range(n)]
        self.hidden += [[] for _ in range(n)]
        self.reason += [None] * n
        self.text += [""] * n
        self.stop_at += [None] * n
        self.emitted += [0] * n
        return list(range(first, first + n))

    def join(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
             seeds: Sequence[int | None] | None = None, n: int = 1) -> list[int]:
        """Add prompts to the running batch (continuous batching); returns their row indices.

        Fast path: a prompt that joins a running batch is prefilled inside the next step, its tokens
        beside the running rows' (FusedLlama.step(joining=...)), and samples its first token at the
        step after; with n > 1, or into an empty batch, the prompts are prefilled at once into their
        slots. Transformers path: the newcomers are prefilled on their own, then both caches are
        left-padded to one length and stacked. Either way running rows keep going without
        recomputing anything. `n` > 1: each prompt becomes n rows (params and seeds are per row)
        that share one prefill.
        """
        if len(params) != len(prompts) * n:
            raise ValueError(f"DecodeBatch.join needs one SamplingParams per row: {len(prompts)} prompts x n={n}")
        rows = self._add_rows([p for p in prompts for _ in range(n)], params, seeds)
        if self.fast:
            if n == 1 and self.cache is not None and len(self.active):
                self.waiting += rows  # prefilled inside the next step, beside the running rows' tokens
            else:
                self._join_slots(prompts, rows, n)
            return rows
        eng, dev = self.eng, self.eng.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), eng.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[i, width - len(p):] = torch.tensor(list(p))
            mask[i, width - len(p):] = 1
        position_ids = (mask.cumsum(1) - 1).clamp_min(0)  # right positions under left padding
        cache = DynamicCache(config=eng.model.config)
        ids, mask, position_ids = ids.to(dev), mask.to(dev), position_ids.to(dev)
        with self._starting(rows):
            logits, h = eng.forward(ids, mask, position_ids, cache, last_only=True)
            logits = logits[:, -1]
        if n > 1:  # the n samples of a prompt start from the same prefill
            cache.batch_repeat_interleave(n)
            mask, logits = mask.repeat_interleave(n, 0), logits.repeat_interleave(n, 0)
            h = None if h is None else h.repeat_interleave(n, 0)
        pos = mask.sum(1) - 1  # position of each row's last real token
        new_active = torch.tensor(rows)
        self._join_rows(rows)
        if self.cache is None or not len(self.active):
            self.cache, self.mask, self.pos, self.logits, self.active = cache, mask, pos, logits, new_active
            self.h, self.padded = h, not bool(mask.all())
        else:
            self._merge(cache, mask)
            self.pos, self.logits = torch.cat([self.pos, pos]), torch.cat([self.logits, logits])
            self.h = None if h is None else torch.cat([self.h, h])
            self.active = torch.cat([self.active, new_active])
        return rows

    def _join_slots(self, prompts, rows: list[int], n: int) -> None:
        """Fast path: prefill the newcomers straight into slots after the live rows (the n rows of a
        prompt share its prefill)."""
        live = len(self.active) if self.cache is not None else 0
        self._reserve(rows, live, self.width + 1)
        with self._starting(rows):
            logits, h = self.eng._fused.prefill([list(map(int, p)) for p in prompts], self.kv, live, n,
                                                self.eng.keep_hidden)
        if n > 1:
            logits = logits.repeat_interleave(n, 0)
            h = None if h is None else h.repeat_interleave(n, 0)
        pos = torch.tensor([len(self.prompts[r]) - 1 for r in rows], device=logits.device)
        self._join_rows(rows)
        if not live:
            self.active, self.pos, self.logits, self.h = torch.tensor(rows), pos, logits, h
            self.cache = self.kv
        else:
            self.active = torch.cat([self.active, torch.tensor(rows)])
            self.pos, self.logits = torch.cat([self.pos, pos]), torch.cat([self.logits, logits])
            self.h = None if h is None else torch.cat([self.h, h])
        self.width = int(self.pos.max()) + 1

    def _reserve(self, rows: list[int], live: int, cols: int) -> None:
        """Fast path: slots for `rows` after the first `live`, as wide as each one's prompt and token
        budget need and at least `cols`."""
        need = max(len(self.prompts[r]) + self.max_new[r] for r in rows)
        self.kv.reserve(live + len(rows), max(need, cols), live)

    @contextmanager
    def _starting(self, rows: list[int]) -> Iterator[None]:
        """The forward that prefills newcomers `rows`: if it raises they end as "error" (they never
        started) and the error goes on to the caller."""
        try:
            yield
        except Exception:
            for r in rows:
                self.reason[r] = "error"
            raise

    def _join_rows(self, rows: list[int]) -> None:
        """Per-row sampling state of the newcomers, appended after the live rows (call before
        self.active changes). Row j's uniform for this step is U[j, steps - u_off]: a newcomer's
        draws start at the current step's column."""
        dev = self.eng.device
        fresh = self.cache is None or not len(self.active)
        if fresh:
            self.u_off = self.steps
        col = self.steps - self.u_off
        width = max(col + self.max_new[r] for r in rows)
        U = torch.zeros(len(rows), width)
        for i, r in enumerate(rows):
            U[i, col: col + self.max_new[r]] = self.uniforms[r]
            self.uniforms[r] = None  # in the table now
        ps = [self.params[r] for r in rows]
        knobs = (torch.tensor([p.temperature for p in ps], device=dev), torch.tensor([p.top_k for p in ps], device=dev),
                 torch.tensor([p.top_p for p in ps], device=dev))
        if not fresh:
            w = max(width, self.U.shape[1])
            pad = lambda t: torch.nn.functional.pad(t, (0, w - t.shape[1]))  # noqa: E731
            U = torch.cat([pad(self.U), pad(U)])
            knobs = tuple(torch.cat([mine, new]) for mine, new in zip((self.temp, self.top_k, self.top_p), knobs))
        self.U = U
        self._set_knobs(*knobs)

    def _set_knobs(self, temp: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> None:
        self.temp, self.top_k, self.top_p = temp, top_k, top_p
        self.temp_col = temp.clamp_min(1e-5).unsqueeze(1)
        self.plain = not bool((top_k > 0).any() or (top_p < 1.0).any())  # no sort needed
        greedy = temp <= 0
        self.any_greedy, self.all_greedy = bool(greedy.any()), bool(greedy.all())

    def _select_rows(self, idx: torch.Tensor) -> None:
        """Keep the per-row sampling state of batch rows idx, in that order (past columns of U dropped)."""
        self.U = self.U[idx.cpu(), self.steps - self.u_off:]
        self.u_off = self.steps
        self._set_knobs(self.temp[idx], self.top_k[idx], self.top_p[idx])

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Stack a newly prefilled cache under ours, left-padding the shorter one with masked zeros."""
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        t = max(t_old, t_new)
        pad = lambda x, n: torch.nn.functional.pad(x, (0, 0, n, 0)) if n else x  # noqa: E731  (B, H, T, D)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([pad(mine.keys, t - t_old), pad(theirs.keys, t - t_new)])
            mine.values = torch.cat([pad(mine.values, t - t_old), pad(theirs.values, t - t_new)])
        lpad = lambda m, n: torch.nn.functional.pad(m, (n, 0)) if n else m  # noqa: E731
        self.mask = torch.cat([lpad(self.mask, t - t_old), lpad(mask, t - t_new)])
        self.padded = not bool(self.mask.all())

    def minibatch_columns(self) -> None:
        """Drop leading cache columns that no live row attends to (padding left by finished rows), so
        that under continuous batching the cache stays as wide as its longest live row."""
        used = self.mask.any(0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first and self.can_join():
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def can_join(self) -> bool:
        """Joining edits plain DynamicLayer caches; other cache kinds (sliding windows) start new batches."""
        from transformers.cache_utils import DynamicLayer

        if self.fast:
            return self.cache is not None
        return self.cache is not None and all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def cancel(self, row: int) -> None:
        if self.reason[row] is None:
            self.cancelled.add(row)

    def step(self) -> list[int]:
        """Sample one token for every live row; returns the prompt indices that got a token."""
        if self.done:
            return []
        rows = self.active.tolist()
        if self.drawn is not None and self.drawn[0] is self.logits:  # the compiled step drew it already
            nxt, lps = self.drawn[1:]
        else:
            nxt, lps = self._sample(self.logits, self.U[:, self.steps - self.u_off])
        got, keep = [], []
        for j, (r, t, lp) in enumerate(zip(rows, nxt.tolist(), lps.tolist())):
            if self.reason[r] is not None:  # finished at an earlier step; its cache row is dropped later
                continue
            if r in self.cancelled:
                self.reason[r] = "cancelled"
                continue
            self.tokens[r].append(t)
            self.logprobs[r].append(lp)
            if self.h is not None:
                self.hidden[r].append(self.h[j])
            got.append(r)
            self._check_end(r, t)
            if self.reason[r] is None:
                keep.append(j)
        self.steps += 1
        if not keep:  # everyone finished: free the cache; a later join starts afresh
            self.active, self.cache = self.active[:0], None
            if self.waiting:
                rows, self.waiting = self.waiting, []
                self._join_slots([self.prompts[r] for r in rows], rows, 1)
        elif self.fast:
            self._advance_slots(nxt, keep)
        else:
            self._advance(nxt, keep)
        return got

    def _sample(self, logits: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, their log-probs): sample_tokens + sampled_logprobs, op for op, computing the
        temperature-scaled logits once and skipping the sort and the argmax when no row needs them."""
        if not self.plain:
            nxt = sample_tokens(logits, self.temp, self.top_k, self.top_p, u)
            return nxt, sampled_logprobs(logits, self.temp, nxt)
        x = logits.float() / self.temp_col
        if self.all_greedy:
            nxt = logits.argmax(-1)
        else:
            cdf = x.softmax(-1).cumsum(-1)
            idx = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)).clamp_max(x.shape[-1] - 1)
            nxt = idx.squeeze(1)
            if self.any_greedy:
                nxt = torch.where(self.temp <= 0, logits.argmax(-1), nxt)
        return nxt, x.log_softmax(-1).gather(1, nxt.unsqueeze(1)).squeeze(1)

    def _check_end(self, r: int, t: int) -> None:
        sp = self.params[r]
        if t in self.eng.eos_ids:
            self.reason[r] = "eos"
        elif sp.stop:
            text = self.eng.decode(self.tokens[r])
            start = max(0, len(self.text[r]) - max(len(s) for s in sp.stop))
            hits = [i for i in (text.find(s, start) for s in sp.stop) if i >= 0]
            self.text[r] = text
            if hits:
                self.stop_at[r] = min(hits)
                self.reason[r] = "stop"
        if self.reason[r] is None and len(self.tokens[r]) >= self.max_new[r]:
            self.reason[r] = "length"

    def _advance(self, nxt: torch.Tensor, keep: list[int]) -> None:
        """Feed the sampled tokens of the rows still running (one forward, KV cache). Finished rows
        are dropped from the cache once they are an eighth of it: compacting copies every layer's
        keys and values, and doing it whenever any row ends (most steps of a large batch of short
        answers) cost more than the finished rows' share of the forward."""
        dead = len(self.active) - len(keep)
        if dead and dead >= max(1, len(self.active) // 8):  # drop finished rows from the batch and the cache
            idx = torch.tensor(keep, device=nxt.device)
            self.cache.batch_select_indices(idx)
            self._select_rows(idx)
            self.active, self.pos, nxt = self.active[idx.cpu()], self.pos[idx], nxt[idx]
            self.mask = self.mask[idx]
            self.minibatch_columns()
            self.padded = not bool(self.mask.all())
        self.pos = self.pos + 1
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.mask), 1)], 1)
        # no padding anywhere (one row, or equal lengths): a plain causal mask, cheaper to build
        mask = self.mask if self.padded else None
        logits, self.h = self.eng.forward(nxt.unsqueeze(1), mask, self.pos.unsqueeze(1), self.cache)
        self.logits = logits[:, -1]

    def _advance_slots(self, nxt: torch.Tensor, keep: list[int]) -> None:
        """Fast path: feed the sampled tokens of the rows still running. A finished row's slot is
        refilled at once with a live row from the end of the batch (only those rows' cache columns
        are copied), so no finished row is ever fed again."""
        n = len(keep)
        if n < len(self.active):
            kept = set(keep)
            holes = [j for j in range(n) if j not in kept]
            movers = [j for j in keep if j >= n]
            order = list(range(n))
            for hole, mover in zip(holes, movers):
                order[hole] = mover
            if holes:
                self.kv.move(movers, holes, self.width)
            idx = torch.tensor(order, device=nxt.device)
            self.active, self.pos, nxt = self.active[idx.cpu()], self.pos[idx], nxt[idx]
            self._select_rows(idx)
            self.width = int(self.pos.max()) + 1
        self.pos = self.pos + 1
        self.width += 1
        if not self.waiting:
            f, col = self.eng._fused, self.steps - self.u_off
            draw = Draw(self.U[:, col], self.temp, self.top_k, self.top_p, not self.plain) if col < self.U.shape[1] else None
            self.logits, self.h = f.step(nxt, self.pos, self.kv, self.width, self.eng.keep_hidden, draw=draw)
            self.drawn = None if f.drawn is None else (self.logits, *f.drawn)
            return
        rows, self.waiting = self.waiting, []
        self._reserve(rows, n, self.width)
        with self._starting(rows):
            self.logits, self.h = self.eng._fused.step(nxt, self.pos, self.kv, self.width, self.eng.keep_hidden,
                                                       joining=[self.prompts[r] for r in rows])
        self._join_rows(rows)
        self.active = torch.cat([self.active, torch.tensor(rows)])
        self.pos = torch.cat([self.pos, torch.tensor([len(self.prompts[r]) - 1 for r in rows], device=self.pos.device)])
        self.width = int(self.pos.max()) + 1

    # --- results --------------------------------------------------------------------------

    def final_text(self, r: int) -> str:
        text = self.eng.decode(self.tokens[r])
        return text[: self.stop_at[r]] if self.stop_at[r] is not None else text

    def delta(self, r: int) -> str:
        """New text of row r that is safe to show: no half UTF-8 character, no possible stop prefix."""
        if self.reason[r] is not None:
            text, safe = self.final_text(r), None
        else:
            text = self.eng.decode(self.tokens[r])
            safe = len(text.rstrip("\ufffd"))
            for s in self.params[r].stop:  # hold back a tail that may become a stop string
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        safe = min(safe, len(text) - k)
                        break
        piece = text[self.emitted[r]: safe]
        self.emitted[r] += len(piece)
        return piece

    def release(self, r: int) -> None:
        """Forget a finished row's prompt, tokens and text once its result was taken: a server's batch
        runs as long as requests keep arriving, and must not hold every answer it ever gave."""
        if self.reason[r] is None:
            raise ValueError(f"row {r} is still decoding")
        self.prompts[r], self.tokens[r], self.logprobs[r], self.hidden[r], self.text[r] = [], [], [], [], ""

    def result(self, r: int) -> Generation:
        reason = self.reason[r] or "length"
        hidden = torch.stack(self.hidden[r]) if self.hidden[r] else None
        return Generation(prompt_ids=self.prompts[r], token_ids=list(self.tokens[r]), logprobs=list(self.logprobs[r]),
                          text=self.final_text(r), finished=reason in ("eos", "stop"), finish_reason=reason,
                          hidden=hidden)


# --- the engine -----------------------------------------------------------------------------
