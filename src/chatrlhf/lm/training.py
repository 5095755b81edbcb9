"""Habits every trainer shares: Accelerate, LR schedule, metrics, checkpoints, NaN stop, progress.

Trainers run on Accelerate from the start (single process by default), so DDP/FSDP/DeepSpeed is a
matter of `accelerate launch`, not a rewrite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Accelerate warns on every save that it dropped lm_head.weight; with tied embeddings that is the
# intended layout (the tie is restored on load), so the warning is noise in every progress bar.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


class NonFiniteLossError(RuntimeError):
    """Raised when a loss is NaN or inf; the last good checkpoint is left untouched."""


_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (physical cores), before anyone changes it


def configure_threads(threads: int = 0) -> int:
    """Set torch's CPU threads: `threads` when > 0; on 0 (auto) all cores, but 1 when the machine is
    already busy (1-minute load average >= cores). OpenMP threads wait on each other at every op,
    so on an oversubscribed CPU two threads measured 5-12x slower than one for this model size."""
    if threads <= 0:
        cores = os.cpu_count() or 1
        busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores
        threads = 1 if busy else _DEFAULT_THREADS
    torch.set_num_threads(threads)
    return threads


def make_accelerator(seed: int, mixed_precision: str = "no", device: str = "auto") -> Accelerator:
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    acc = Accelerator(mixed_precision=mixed_precision if not cpu or mixed_precision == "bf16" else "no", cpu=cpu)
    set_seed(seed)
    return acc


class WarmupCosine:
    """LR factor: linear warm-up to the peak, then cosine decay to min_lr_ratio * peak at total_steps.

    A callable object rather than a closure, so LambdaLR's state_dict saves `total_steps` with the
    checkpoint: a trainer may re-plan its length (time budgets) and a resumed run keeps the plan."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1):
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / max(1, self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1):
    """LambdaLR with WarmupCosine; `sched.lr_lambdas[0].total_steps` may be changed mid-run."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))


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


def check_finite(loss: torch.Tensor, step: int, stage: str, ckpt_dir: Path | None = None) -> None:
    if not torch.isfinite(loss).all():
        where = f"; last good checkpoint kept in {ckpt_dir}" if ckpt_dir else ""
        raise NonFiniteLossError(f"{stage}: loss became {loss.item()} at step {step}; stopping{where}. "
                                 "Try a lower learning rate or a tighter grad_clip.")


class MetricsLogger:
    """Scalars to TensorBoard (<stage>/tb) and to <stage>/metrics.jsonl (read by the report)."""

    def __init__(self, stage_dir: Path, tensorboard: bool = True, resume: bool = False):
        self.path = Path(stage_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(stage_dir) / "tb"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(stage_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(stage_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


class Checkpoints:
    """Resumable checkpoints under <stage>/checkpoints/step_NNNNNN.

    Accelerate's save_state holds model, optimizer, scheduler and RNG states; `state` (step, data
    position, anything else) goes to trainer_state.json. Written to a temp dir and renamed, so a
    crash mid-write never leaves a half checkpoint that looks complete.
    """

    def __init__(self, stage_dir: Path, keep: int = 2):
        self.root = Path(stage_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("step_*") if (p / "trainer_state.json").is_file())
        return done[-1] if done else None

    def save(self, accelerator: Accelerator, step: int, state: dict[str, Any]) -> Path:
        final = self.root / f"step_{step:06d}"
        tmp = self.root / f".tmp_step_{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.save_state(str(tmp), safe_serialization=True)
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(p for p in self.root.glob("step_*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def resume(self, accelerator: Accelerator, fingerprint: str, what: str) -> dict[str, Any] | None:
        """Restore the newest checkpoint if it was made with the same config (`fingerprint`, saved in
        its state); a different config is refused, never silently resumed. None when there is none."""
        latest = self.latest()
        if latest is None:
            return None
        saved = json.loads((latest / "trainer_state.json").read_text())
        if saved.get("fingerprint") != fingerprint:
            raise ValueError(f"checkpoint {latest} was made with a different {what} config; "
                             f"delete {self.root} to start over, or restore that config to resume")
        state = self.load(accelerator)
        print(f"resuming from {latest} (step {state['step']})", file=sys.stderr)
        return state

    def load(self, accelerator: Accelerator) -> dict[str, Any] | None:
        """Restore the newest checkpoint into the prepared objects; returns its state or None."""
        path = self.latest()
        if path is None:
            return None
        accelerator.load_state(str(path))
        return json.loads((path / "trainer_state.json").read_text())


def progress_bar(description: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
