"""Chat conversations as training examples: assistant-only labels, packing, batches and the SFT loss."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from rich.console import Console

from chatrlhf.lm.conversations import Conversation
from chatrlhf.lm.data import DataError
from chatrlhf.lm.distributed import is_main
from chatrlhf.lm.packing import best_fit_decreasing, length_grouped_batches, pack_rows, packed_position_ids
from chatrlhf.lm.tokenizer import apply_template, ensure_chat_template

console = Console(stderr=True, quiet=not is_main())  # one process reports
IGNORE = -100  # label id that cross-entropy skips


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on every non-assistant token

    def __len__(self) -> int:
        return len(self.input_ids)


# --- tokenisation and the assistant-only loss mask ----------------------------------------------
def ensure_template(tokenizer) -> None:
    """A tokenizer without a chat template gets the project's fallback (shared with PPO and chat)."""
    if not tokenizer.chat_template:
        console.print("[yellow]sft: tokenizer has no chat template; using chatrlhf's fallback template")
        ensure_chat_template(tokenizer)


def has_generation_markers(tokenizer) -> bool:
    return bool(re.search(r"{%-?\s*generation\s*-?%}", tokenizer.chat_template or ""))


def _ids(tokenizer, conv: Conversation, add_generation_prompt: bool = False) -> list[int]:
    return list(apply_template(tokenizer, conv, tokenize=True, return_dict=True,
                                              add_generation_prompt=add_generation_prompt)["input_ids"])


def prompt_length(tokenizer, conv: Conversation) -> int:
    """Tokens of a conversation ready for the assistant's next turn."""
    return len(_ids(tokenizer, conv, add_generation_prompt=True))


def assistant_mask(tokenizer, conv: Conversation) -> tuple[list[int], list[int]]:
    """(input_ids, mask) with mask 1 on tokens the assistant wrote (its end-of-turn token included).

    With `{% generation %}` markers the template itself marks them. Otherwise prefix-diff: the tokens
    between `conv[:i]` + generation prompt and `conv[:i+1]` belong to assistant turn i.
    """
    if has_generation_markers(tokenizer):
        enc = apply_template(tokenizer, conv, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return list(enc["input_ids"]), list(enc["assistant_masks"])
    ids = _ids(tokenizer, conv)
    mask = [0] * len(ids)
    for i, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, conv[:i], add_generation_prompt=True)) if i else 0
        end = len(_ids(tokenizer, conv[: i + 1]))
        mask[start:end] = [1] * (end - start)
    return ids, mask


def _to_example(ids: list[int], mask: list[int]) -> Example:
    return Example(ids, [t if m else IGNORE for t, m in zip(ids, mask)])


def last_reply_start(mask: list[int]) -> int:
    """Index of the first token of the last assistant turn (the last run of 1s in the mask)."""
    end = max(i for i, m in enumerate(mask) if m)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return start


def encode_conversation(tokenizer, conv: Conversation, max_len: int, stats: dict[str, int] | None = None) -> Example | None:
    """Tokenise with the loss mask. Over max_len the oldest turns go first (a system prompt stays);
    if the last exchange alone is still too long, its prompt is cut from the left and the reply kept
    whole (cutting from the right would remove the very tokens the loss is on). None when the reply
    alone does not fit. `stats` counts what happened: older_turns_dropped, prompt_truncated,
    reply_too_long."""
    stats = {} if stats is None else stats
    ids, mask = assistant_mask(tokenizer, conv)
    if len(ids) > max_len:
        system = [m for m in conv[:1] if m["role"] == "system"]
        starts = [i for i, m in enumerate(conv) if m["role"] == "user" and i > len(system)]
        for start in starts:  # oldest first: keep as many of the latest turns as fit
            ids, mask = assistant_mask(tokenizer, system + conv[start:])
            if len(ids) <= max_len:
                stats["older_turns_dropped"] = stats.get("older_turns_dropped", 0) + 1
                break
    if len(ids) > max_len:
        if not any(mask) or len(ids) - last_reply_start(mask) > max_len - 1:
            stats["reply_too_long"] = stats.get("reply_too_long", 0) + 1
            return None
        ids, mask = ids[-max_len:], mask[-max_len:]
        stats["prompt_truncated"] = stats.get("prompt_truncated", 0) + 1
    if not any(mask[1:]):  # position 0 is never predicted
        return None
    return _to_example(ids, mask)


def build_examples(tokenizer, convs: list[Conversation], max_len: int, source: str,
                   stats: dict[str, int] | None = None) -> tuple[list[Example], int]:
    """Encode all conversations; (examples, how many were truncated away). All gone is an error.
    `stats` collects encode_conversation()'s counts."""
    stats = {} if stats is None else stats
    examples = [encode_conversation(tokenizer, c, max_len, stats) for c in convs]
    kept = [e for e in examples if e is not None]
    if not kept:
        raise DataError(f"{source}: all {len(convs)} conversations were truncated away at sft.max_len="
                        f"{max_len} (no assistant token left); raise sft.max_len")
    return kept, len(examples) - len(kept)


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, round(len(examples) * val_fraction)) if val_fraction > 0 else 0
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


# --- batches: length-grouped or packed ----------------------------------------------------------
def pack(examples: list[Example], max_len: int, seed: int) -> list[list[Example]]:
    """Best-fit-decreasing bin packing of shuffled examples into rows of at most max_len tokens."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # ties keep the shuffled order
    rows = [[examples[i] for i in row] for row in best_fit_decreasing([len(e) for e in examples], max_len, order)]
    random.Random(seed + 1).shuffle(rows)
    return rows


def collate_examples(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, attention_mask and labels."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e)] = torch.tensor(e.input_ids)
        labels[b, : len(e)] = torch.tensor(e.labels)
        attn[b, : len(e)] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def collate_packed_examples(rows: list[list[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows (`packing.packed_position_ids`: conversations never see each other). Labels stay
    per conversation: the first token of each is never a target."""
    ids = pack_rows([[e.input_ids for e in row] for row in rows], pad_id)
    labels = pack_rows([[e.labels for e in row] for row in rows], IGNORE)
    pos = packed_position_ids([[len(e) for e in row] for row in rows], ids.shape[1])
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


class Batches:
    """All batches of an epoch, a pure function of (seed, epoch)."""

    def __init__(self, examples: list[Example], batch_size: int, max_len: int, packing: bool, seed: int, pad_id: int):
        self.examples, self.batch_size, self.max_len = examples, batch_size, max_len
        self.packing, self.seed, self.pad_id = packing, seed, pad_id
        self._cache: tuple[int, list] | None = None
        self.per_epoch = len(self.epoch(0))

    def epoch(self, epoch: int) -> list[list]:
        """The epoch's batches: lists of Examples, or (packed) lists of rows of Examples."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._plan(self.seed * 1_000_003 + epoch))
        return self._cache[1]

    def _plan(self, seed: int) -> list[list]:
        if self.packing:
            rows = pack(self.examples, self.max_len, seed)
            return [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        groups = length_grouped_batches([len(e) for e in self.examples], self.batch_size, seed)
        return [[self.examples[i] for i in g] for g in groups]

    def tensors(self, batch: list) -> dict[str, torch.Tensor]:
        return collate_packed_examples(batch, self.pad_id) if self.packing else collate_examples(batch, self.pad_id)


# --- loss, evaluation ---------------------------------------------------------------------------
def sft_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over assistant tokens (transformers shifts the labels).
    No KV cache: with one, transformers would not build the packed block-diagonal mask."""
    return model(**batch, use_cache=False).loss


@torch.no_grad()
def evaluate_sft_loss(model, batches: Batches, device: torch.device) -> float:
    """Token-weighted mean validation loss over all validation batches."""
    if not batches.examples:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches.epoch(0):
        t = {k: v.to(device) for k, v in batches.tensors(batch).items()}
        n = int((t["labels"][:, 1:] != IGNORE).sum())
        total += sft_loss(model, t).item() * n
        count += n
    model.train(was_training)
    return total / max(count, 1)
