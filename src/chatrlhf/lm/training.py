"""Habits every trainer shares: Accelerate, LR schedule, metrics, checkpoints, NaN stop, progress.

Trainers run on Accelerate from the start (single process by default), so DDP/FSDP/DeepSpeed is a
matter of `accelerate launch`, not a rewrite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from chatrlhf.lm.distributed import accelerator_args, barrier, is_main, load_whole_models, use_cpu

# Accelerate warns on every save that it dropped lm_head.weight; with tied embeddings that is the
# intended layout (the tie is restored on load), so the warning is noise in every progress bar.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


class TrainingStopped(RuntimeError):
    """A trainer stopped itself (non-finite or diverging loss, weights that fail verification); the
    message names the last verified checkpoint. The CLI prints it without a traceback."""


class NonFiniteLossError(TrainingStopped):
    """A loss (or a weight about to be checkpointed) is NaN or inf; the last verified checkpoint is kept."""


class DivergenceError(TrainingStopped):
    """Raised when a finite loss climbs far above its running range (see run.divergence_factor)."""


_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (physical cores), before anyone changes it


def cpu_busy() -> bool:
    """Is the machine already busy (1-minute load average >= cores)?"""
    return hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1)


def configure_threads(threads: int = 0) -> int:
    """Set torch's CPU threads: `threads` when > 0; on 0 (auto) all cores, but 1 when the machine is
    already busy (cpu_busy). OpenMP threads wait on each other at every op, so on an oversubscribed
    CPU two threads measured 5-12x slower than one for this model size."""
    if threads <= 0:
        threads = 1 if cpu_busy() else _DEFAULT_THREADS
    torch.set_num_threads(threads)
    return threads


def make_accelerator(seed: int | None, mixed_precision: str = "no", device: str = "auto") -> Accelerator:
    """The run's Accelerator (one per trainer; they share the process group). `seed` None leaves the
    RNGs as they are (a trainer inside a stage that already seeded them)."""
    cpu = use_cpu(device)
    # each trainer shares out one global batch itself, so the schedule steps once per optimiser step
    # (Accelerate's default steps it once per process, for per-process batches)
    acc = Accelerator(mixed_precision=mixed_precision if not cpu or mixed_precision == "bf16" else "no",
                      step_scheduler_with_optimizer=False, **accelerator_args(device))
    load_whole_models(acc)
    if seed is not None:
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


RESUME_HINT = " (a rerun with changed settings continues from it with --resume-anyway)"


def _kept(ckpt_dir: Path | None) -> str:
    return f"last verified checkpoint kept: {ckpt_dir}{RESUME_HINT}" if ckpt_dir else "no verified checkpoint yet"


def check_finite(loss: torch.Tensor, step: int, stage: str, ckpt_dir: Path | None = None) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(f"{stage}: loss became {loss.item()} at step {step}; stopping, {_kept(ckpt_dir)}. "
                                 "Try a lower learning rate or a tighter grad_clip.")


class DivergenceGuard:
    """Stops a run whose loss climbs far above its running range while still finite.

    The range is the loss's first `window` values (the highest of them) down to its running
    minimum, and at least half the first loss: a step is diverged when
    loss > lowest + factor * range. A loss that falls or wobbles stays well inside; one that
    explodes (a far too high learning rate) leaves it within a step or two. factor <= 0 turns it off."""

    def __init__(self, factor: float, window: int = 5, floor: float = 0.1):
        self.factor, self.window, self.floor = factor, window, floor
        self.first: list[float] = []
        self.low = math.inf

    def state(self) -> dict[str, Any]:
        return {"first": self.first, "low": self.low if math.isfinite(self.low) else None}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state:
            self.first = list(state.get("first", []))
            self.low = state["low"] if state.get("low") is not None else math.inf

    def limit(self) -> float:
        if not self.first:
            return math.inf
        scale = max(max(self.first) - self.low, 0.5 * abs(self.first[0]), self.floor)
        return self.low + self.factor * scale

    def check(self, loss: float, step: int, stage: str, latest: Callable[[], Path | None]) -> None:
        """Raise DivergenceError naming `latest()` (the checkpoint kept) when `loss` is out of range."""
        if self.factor <= 0 or not math.isfinite(loss):
            return
        limit = self.limit()
        if loss > limit:
            ckpt_dir = latest()
            raise DivergenceError(
                f"{stage}: loss {loss:.4g} at step {step} is far above its running range (lowest {self.low:.4g}, "
                f"limit {limit:.4g} = run.divergence_factor {self.factor:g} x range); stopping, {_kept(ckpt_dir)}. "
                "Try a lower learning rate, or raise run.divergence_factor (0 turns this check off).")
        if len(self.first) < self.window:
            self.first.append(loss)
        self.low = min(self.low, loss)


def first_nonfinite(models: list[torch.nn.Module]) -> str | None:
    """Name of the first parameter or buffer holding NaN or inf, None when all are finite."""
    for i, m in enumerate(models):
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            if t.is_floating_point() and not torch.isfinite(t).all():
                return f"{name}" if len(models) == 1 else f"model {i}: {name}"
    return None


def flat_settings(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: settings as dotted names, to name the ones that differ."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_settings(v, key + "."))
        else:
            out[key] = v
    return out


def settings_diff(saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[str]:
    """`name: saved -> current` for every dotted setting that differs. A setting only one side has, at an
    off value (false, 0, none, empty) or at its default in `defaults`, is none: an option added later and
    left as it was does not block a resume."""
    a, b, d = (flat_settings(json.loads(json.dumps(x or {}, default=str))) for x in (saved, current, defaults))
    kept = {k for k, v in (a | b).items() if (k in a) != (k in b) and (v in (False, 0, None, "", []) or d.get(k, []) == v)}
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in kept]


class SettingsMismatchError(ValueError):
    """A checkpoint was written with other settings than the current run's."""


class MetricsLogger:
    """Scalars to TensorBoard (<stage>/tb) and to <stage>/metrics.jsonl (read by the report); rank 0
    writes, other ranks' loggers do nothing."""

    def __init__(self, stage_dir: Path, tensorboard: bool = True, resume: bool = False):
        self.path = Path(stage_dir) / "metrics.jsonl"
        self.tb = None
        self.enabled = is_main()
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        if resume:
            self._drop_after_checkpoint(Path(stage_dir))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(stage_dir) / "tb"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)

    def _drop_after_checkpoint(self, stage_dir: Path) -> None:
        """A resumed run repeats the steps after its checkpoint: drop the rows the interrupted run
        logged for them, so each step is logged once."""
        latest = Checkpoints(stage_dir).latest()
        if latest is None or not self.path.is_file():
            return
        step = json.loads((latest / "trainer_state.json").read_text()).get("step")
        if step is None:
            return
        lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        if len(keep) != len(lines):
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            tmp.replace(self.path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(stage_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(stage_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _hyperparameters(accelerator: Accelerator) -> list[tuple[Any, Any]]:
    """Each prepared optimizer's group settings and scheduler plan, as this run configured them."""
    snap = []
    for opt in getattr(accelerator, "_optimizers", []):
        inner = getattr(opt, "optimizer", opt)
        snap.append((inner, [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups]))
    for sch in getattr(accelerator, "_schedulers", []):
        inner = getattr(sch, "scheduler", sch)
        lambdas = [dict(vars(f)) for f in getattr(inner, "lr_lambdas", []) if hasattr(f, "__dict__")]
        snap.append((inner, (list(getattr(inner, "base_lrs", [])), lambdas)))
    return snap


def _restore_hyperparameters(snap: list[tuple[Any, Any]]) -> None:
    """Put back what _hyperparameters took, after a checkpoint's states overwrote it; each scheduled
    learning rate is recomputed at the resumed step."""
    for obj, saved in snap:
        if isinstance(obj, torch.optim.Optimizer):
            for g, h in zip(obj.param_groups, saved):
                g.update(h)
        else:
            base, lambdas = saved
            obj.base_lrs = base
            for f, d in zip([f for f in getattr(obj, "lr_lambdas", []) if hasattr(f, "__dict__")], lambdas):
                vars(f).update(d)
            for g, b, lam in zip(obj.optimizer.param_groups, base, getattr(obj, "lr_lambdas", [])):
                g["initial_lr"], g["lr"] = b, b * lam(obj.last_epoch)


# plain and DDP saves; FSDP's sharded state and DeepSpeed's engine directory
WEIGHT_FILES = ("model*.safetensors", "pytorch_model*.bin", "pytorch_model_fsdp_*", "pytorch_model*/mp_rank_*",
                "pytorch_model*/zero_pp_rank_*_model_states.pt")  # DeepSpeed: ZeRO-1/2, and ZeRO-3
_WARNED: set[Path] = set()  # incomplete checkpoints already reported


class Checkpoints:
    """Resumable checkpoints under <stage>/checkpoints/step_NNNNNN.

    Accelerate's save_state holds model, optimizer, scheduler and RNG states; `state` (step, data
    position, anything else) goes to trainer_state.json. A checkpoint is only written once every
    weight is finite, to a temp dir that is then renamed, so a crash mid-write never leaves a half
    checkpoint that looks complete; one without weight files (written by other means) is skipped
    with a warning. `settings` (what fixes the trajectory) are saved with each checkpoint and a
    resume with other settings is refused, naming them, unless `resume_anyway`. `guard` stops a
    finite but diverging loss (check_loss); its running range is saved too.
    """

    def __init__(self, stage_dir: Path, keep: int = 2, settings: dict[str, Any] | None = None,
                 resume_anyway: bool = False, divergence_factor: float = 0.0, defaults: dict[str, Any] | None = None):
        self.root = Path(stage_dir) / "checkpoints"
        self.keep = keep
        self.settings = json.loads(json.dumps(settings, default=str)) if settings is not None else None
        self.defaults, self.resume_anyway = defaults, resume_anyway  # settings_diff's defaults
        self.guard = DivergenceGuard(divergence_factor)

    def configure(self, settings: dict[str, Any] | None = None, resume_anyway: bool | None = None,
                  divergence_factor: float | None = None) -> "Checkpoints":
        """Set the run's settings and options after construction (trainers that build their own)."""
        if settings is not None:
            self.settings = json.loads(json.dumps(settings, default=str))
        if resume_anyway is not None:
            self.resume_anyway = resume_anyway
        if divergence_factor is not None:
            self.guard.factor = divergence_factor
        return self

    @classmethod
    def for_run(cls, cfg, stage_dir: Path, settings: dict[str, Any] | None = None) -> "Checkpoints":
        """A stage's checkpoints with the run's resume_anyway and divergence_factor settings."""
        return cls(stage_dir, settings=settings, resume_anyway=cfg.run.resume_anyway,
                   divergence_factor=cfg.run.divergence_factor)

    @staticmethod
    def has_weights(path: Path) -> bool:
        return any(next(path.glob(pattern), None) is not None for pattern in WEIGHT_FILES)

    def good(self) -> list[Path]:
        """Complete checkpoints, oldest first; incomplete ones are reported and skipped."""
        out = []
        for p in sorted(self.root.glob("step_*")):
            if not (p / "trainer_state.json").is_file():
                continue
            if not self.has_weights(p):
                if p not in _WARNED:
                    _WARNED.add(p)
                    print(f"warning: checkpoint {p} has trainer_state.json but no weight files (half written); "
                          "skipped, using the one before it", file=sys.stderr)
                continue
            out.append(p)
        return out

    def latest(self) -> Path | None:
        done = self.good()
        return done[-1] if done else None

    def check_loss(self, loss: torch.Tensor, step: int, stage: str) -> None:
        """Stop on a non-finite loss or a finite one far above its running range, before the update."""
        # the loss at `step` is the one of the weights checkpointed as step_<step> (if one was): a bad
        # loss sets that checkpoint aside, and the stop names the one before it
        if not torch.isfinite(loss).all():
            check_finite(loss, step, stage, self.reject(step, f"{stage}: its loss was {loss.item()}"))
        self.guard.check(float(loss.detach().float().mean()), step, stage,
                         lambda: self.reject(step, f"{stage}: its loss was far above its running range"))

    def verify(self, accelerator: Accelerator, step: int) -> None:
        """Raise NonFiniteLossError naming the last verified checkpoint when any prepared model holds
        NaN or inf (before a checkpoint, or a stage output, is written from it)."""
        bad = first_nonfinite(list(getattr(accelerator, "_models", [])))
        if bad is not None:
            raise NonFiniteLossError(f"weights became non-finite ({bad}) by step {step}; not saved, "
                                     f"{_kept(self.latest())}. Try a lower learning rate or a tighter grad_clip.")

    def save(self, accelerator: Accelerator, step: int, state: dict[str, Any]) -> Path:
        """Every rank writes its part (weights, optimizer, its RNG state) into a temp dir; only when
        all have finished does rank 0 add trainer_state.json and rename it, so a checkpoint that
        counts is complete. Every rank must call this (it holds barriers)."""
        self.verify(accelerator, step)
        final = self.root / f"step_{step:06d}"
        tmp = self.root / f".tmp_step_{step:06d}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            extra: dict[str, Any] = {"verified_finite": True, "divergence_guard": self.guard.state(),
                                     "world_size": accelerator.num_processes}
            if self.settings is not None:
                extra["settings"] = self.settings
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state, **extra}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.good()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def reject(self, step: int, why: str) -> Path | None:
        """Move the checkpoint of `step` out of the resumable set (kept as rejected_step_N for a
        look); returns the checkpoint now latest."""
        path = self.root / f"step_{step:06d}"
        if path.is_dir() and is_main():
            dest = self.root / f"rejected_step_{step:06d}"
            shutil.rmtree(dest, ignore_errors=True)
            path.rename(dest)
            (dest / "REJECTED").write_text(why + "\n")
        barrier()
        return self.latest()

    def check_settings(self, path: Path, saved: dict[str, Any], fingerprint: str | None, what: str) -> bool:
        """Refuse (or with resume_anyway, warn about) a checkpoint made with other settings; True
        when they differ and the resume goes ahead."""
        if self.settings is not None and "settings" in saved:
            diff = settings_diff(saved["settings"], self.settings, self.defaults)
        elif fingerprint is not None and saved.get("fingerprint") is not None:
            diff = [] if saved["fingerprint"] == fingerprint else ["(settings not recorded; config fingerprint differs)"]
        else:
            diff = []
        if not diff:
            return False
        listed = "; ".join(diff)
        if self.resume_anyway:
            print(f"warning: resuming {path} although its {what} settings differ: {listed}; "
                  "the current settings apply from here on", file=sys.stderr)
            return True
        raise SettingsMismatchError(
            f"checkpoint {path} was made with a different {what} config, settings that differ: {listed}. "
            f"Restore them to resume, pass --resume-anyway (run.resume_anyway=true) to resume anyway, "
            f"or delete {self.root} to start over")

    def resume(self, accelerator: Accelerator, fingerprint: str | None, what: str) -> dict[str, Any] | None:
        """Restore the newest checkpoint if it was made with the same settings; different ones are
        refused, never silently resumed. None when there is none."""
        latest = self.latest()
        if latest is None:
            return None
        saved = json.loads((latest / "trainer_state.json").read_text())
        differ = self.check_settings(latest, saved, fingerprint, what)
        current = _hyperparameters(accelerator) if differ else None
        state = self.load(accelerator)
        if current is not None:  # weights and moments from the checkpoint, the schedule from this run
            _restore_hyperparameters(current)
        print(f"resuming from {latest} (step {state['step']})", file=sys.stderr)
        return state

    def load(self, accelerator: Accelerator) -> dict[str, Any] | None:
        """Restore the newest checkpoint into the prepared objects; returns its state or None."""
        path = self.latest()
        if path is None:
            return None
        accelerator.load_state(str(path))
        state = json.loads((path / "trainer_state.json").read_text())
        self.guard.restore(state.get("divergence_guard"))
        return state


def progress_bar(description: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        disable=not is_main(),
        console=Console(quiet=not is_main()),  # bar.console.print: one process reports
    )
