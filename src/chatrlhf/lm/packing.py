"""Rows into batches: length-grouped order, best-fit packing of sequences into rows, and the
position ids that keep packed sequences apart."""

from __future__ import annotations

import random

import torch


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort within mega-batches of 50 batches by length, then shuffle the batch order:
    similar lengths share a batch (little padding) while the order stays random."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 50
    batches = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i:i + mega], key=lambda j: lengths[j], reverse=True)
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def best_fit_decreasing(lengths: list[int], capacity: int, order: list[int] | None = None) -> list[list[int]]:
    """Bin packing: indices into rows of at most `capacity` tokens, longest first, each into the
    fullest row it fits (best fit). `order` breaks ties between equal lengths (default: index order)."""
    order = sorted(order if order is not None else range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        fits = [r for r in range(len(rows)) if free[r] >= lengths[i]]
        if fits:
            r = min(fits, key=lambda r: free[r])
            rows[r].append(i)
            free[r] -= lengths[i]
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def pack_rows(rows: list[list[list[int]]], fill: int) -> torch.Tensor:
    """(R, W) long tensor: each row's sequences back to back, then `fill` up to the longest row."""
    flat = [[x for seq in row for x in seq] for row in rows]
    width = max(map(len, flat))
    return torch.tensor([r + [fill] * (width - len(r)) for r in flat], dtype=torch.long)


def packed_position_ids(row_lengths: list[list[int]], width: int) -> torch.Tensor:
    """Position ids of packed rows, given each row's sequence lengths: they restart at 0 for every
    sequence and for the padding tail, so with no attention_mask (and no cache) transformers builds a
    block-diagonal mask and no sequence sees another."""
    return torch.tensor([[p for n in row + [width - sum(row)] for p in range(n)] for row in row_lengths],
                        dtype=torch.long)
