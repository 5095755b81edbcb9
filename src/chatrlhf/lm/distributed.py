"""Many processes (`accelerate launch`): which rank writes, how a batch is shared out, what ranks agree on.

Every trainer keeps one process's global batch: each rank takes a contiguous share of the batch's
rows and the loss is weighted by the rank's share of the global count (tokens, rankings), so the
all-reduced gradient equals the gradient of one process on the whole batch. Rank 0 writes every
file; the others wait at a barrier. Without a launcher all of this is a no-op: one process, rank 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def use_cpu(device: str = "auto") -> bool:
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def process_group_args(device: str = "auto") -> dict[str, Any]:
    """How Accelerate should join the launcher's processes: `cpu`, and `backend` where it must be named.
    Accelerate runs DeepSpeed only off its CPU path, and there finds no backend for CPU ranks, so a
    DeepSpeed launch on CPUs names gloo (DeepSpeed's CPU accelerator runs on it)."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed and use_cpu(device):
        return {"cpu": False, "backend": "gloo"}
    return {"cpu": use_cpu(device), "backend": None}


def accelerator_args(device: str = "auto") -> dict[str, Any]:
    """`Accelerator(...)`'s `cpu` and, where the backend must be named, `kwargs_handlers`."""
    from accelerate.utils import InitProcessGroupKwargs

    args = process_group_args(device)
    handlers = [InitProcessGroupKwargs(backend=args["backend"])] if args["backend"] else None
    return {"cpu": args["cpu"], "kwargs_handlers": handlers}


def load_whole_models(accelerator) -> None:
    """Under DeepSpeed every rank loads whole models, and ZeRO-3 shards them when they are prepared.
    Left to Accelerate, from_pretrained would partition every model it loads under ZeRO-3, and a load
    on rank 0 alone (an evaluation) would wait forever for the others."""
    if accelerator.distributed_type.value == "DEEPSPEED":
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def zero_stage(accelerator) -> int:
    """DeepSpeed's ZeRO stage, 0 where DeepSpeed does not run."""
    if accelerator.distributed_type.value != "DEEPSPEED":
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def require_whole_model(accelerator, what: str) -> None:
    """Refuse ZeRO-3 to a stage that samples from its model between optimiser steps: every rank
    generates from the whole model, and ZeRO-3 leaves each rank a shard of it."""
    if zero_stage(accelerator) == 3:
        raise ValueError(f"{what} samples from the whole model between optimiser steps, and DeepSpeed ZeRO-3 leaves "
                         "each rank a shard of it: launch it with ZeRO-2 (configs/accelerate/zero2.yaml), DDP or "
                         "one process")


def init_processes(device: str = "auto") -> None:
    """Join the launcher's process group (a no-op in one process) before anything is shared out;
    the Accelerator a trainer builds later reuses it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized()):
        from accelerate import PartialState

        args = process_group_args(device)
        PartialState(cpu=args["cpu"], **({"backend": args["backend"]} if args["backend"] else {}))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only (a file write); every rank waits until it is done."""
    out = fn() if is_main() else None
    barrier()
    return out


def share(n: int, r: int | None = None, w: int | None = None) -> slice:
    """Rank r's contiguous share of n items: sizes differ by at most one, earlier ranks larger."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return slice(lo, lo + base + (1 if r < extra else 0))


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous share of `items` (all of them in one process)."""
    return list(items[share(len(items))])


def gather(items: list[T]) -> list[T]:
    """Every rank's list, concatenated in rank order, on every rank: undoes `shard`."""
    if world_size() == 1:
        return list(items)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def all_sum(x: float | torch.Tensor) -> float:
    """Sum of a number over ranks (the number itself in one process)."""
    if world_size() == 1:
        return float(x)
    t = torch.tensor(float(x), dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def all_mean(stats: dict[str, float]) -> dict[str, float]:
    """Each statistic averaged over the ranks that have it; identical on every rank."""
    if world_size() == 1:
        return dict(stats)
    parts = gather([{k: float(v) for k, v in stats.items()}])
    keys = dict.fromkeys(k for p in parts for k in p)  # first-seen order
    return {k: sum(p[k] for p in parts if k in p) / sum(k in p for p in parts) for k in keys}


def rows_of_rank(n: int) -> tuple[slice, bool]:
    """This rank's share of a batch's n rows, and whether it counts. A rank left without a row (a
    short last batch) still runs the first row, with weight 0, so every rank takes part in the
    all-reduce."""
    part = share(n)
    return (part, True) if part.stop > part.start else (slice(0, 1), False)


def weighted_loss(mean_loss: torch.Tensor, count: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to back-propagate, the global batch's mean loss) for a rank whose `mean_loss` is the mean
    over its `count` items (tokens, rankings). Back-propagating mean_loss * count * world / global
    count makes DDP's gradient average the gradient of one process on the whole batch; the global
    mean (detached) is the same on every rank, so a stop on it (NaN, divergence) is taken by all."""
    if world_size() == 1:
        return mean_loss, mean_loss.detach()
    total = torch.tensor([float(count), float(mean_loss.detach()) * count], dtype=torch.float64)
    dist.all_reduce(total)
    n_global, loss_sum = float(total[0]), float(total[1])
    scaled = mean_loss * (count * world_size() / max(n_global, 1e-12))
    return scaled, torch.tensor(loss_sum / max(n_global, 1e-12), dtype=mean_loss.dtype)


def optimizer_step(accelerator, loss: torch.Tensor, params, opt, sched=None,
                   grad_clip: float = 0.0) -> float:
    """One optimiser step: backward (gradients all-reduced across ranks), clip, step, schedule (once
    per optimiser step, whatever the number of processes), zero. Returns the gradient norm."""
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else None
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm) if grad_norm is not None else float("nan")  # DeepSpeed clips inside, reports none


def sharded_state_dict(accelerator, model) -> dict[str, torch.Tensor] | None:
    """The whole model's weights, for rank 0 to save, where the ranks hold shards of them (FSDP,
    ZeRO-3); None where the unwrapped model holds them all (DDP, ZeRO-1/2, whose own copy would untie
    tied weights). Every rank must call it."""
    if accelerator.distributed_type.value == "FSDP" or zero_stage(accelerator) == 3:
        return accelerator.get_state_dict(model)
    return None


def save_on_main(accelerator, model, save: Callable[[Any, dict[str, torch.Tensor] | None], Any]) -> None:
    """`save(plain model, weights)` on rank 0, the others waiting; `weights` is the gathered state dict
    where ranks hold shards (FSDP, DeepSpeed), else None (the plain model holds them all)."""
    weights = sharded_state_dict(accelerator, model)
    if accelerator.is_main_process:
        save(accelerator.unwrap_model(model), weights)
    accelerator.wait_for_everyone()


def describe(accelerator, stage: str, per_rank: str, global_batch: str) -> str:
    """The startup line: what `accelerate launch` actually gave this run."""
    st = accelerator.state
    backend = getattr(st, "backend", None) or "none"
    line = (f"{stage}: {accelerator.num_processes} process(es) [{st.distributed_type.value}, backend {backend}, "
            f"device {accelerator.device}], per-rank batch {per_rank}, global batch {global_batch}")
    if accelerator.num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1"):
        line += (" (`accelerate launch --cpu` starts one process whatever --num_processes says; CPU ranks come from "
                 "`accelerate launch --multi_gpu --num_processes N` on a machine without GPUs)")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and st.distributed_type.value != "FSDP":
        line += (" (FSDP was asked for, but Accelerate runs FSDP on GPUs and other accelerators only: these ranks "
                 "each hold the whole model, as with `--multi_gpu`)")
    return line


def announce(accelerator, stage: str, per_rank: str, global_batch: str) -> None:
    if accelerator.is_main_process:
        print(describe(accelerator, stage, per_rank, global_batch), file=sys.stderr, flush=True)
