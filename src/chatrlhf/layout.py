"""The run directory's layout: where stages and rounds live, and which model a command talks to."""

from __future__ import annotations

from pathlib import Path

from chatrlhf.config import Config
from chatrlhf.lm.modeling import stage_complete


# --- loading --------------------------------------------------------------------------------
def resolve_model(cfg, model: str | Path | None = None) -> Path:
    """The model to talk to: the given directory, else cfg.chat.model, else the run's newest policy
    (latest round's PPO, then ppo/, sft/, pretrain/)."""

    chosen = model or cfg.chat.model
    if chosen:
        p = Path(chosen)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--model {p}: not a model directory (no config.json)")
        return p
    out = Path(cfg.run.out_dir)
    rounds = sorted(out.glob("rounds/round_*/ppo"), key=lambda d: int(d.parent.name.split("_")[-1]), reverse=True)
    candidates = [*rounds, out / "ppo", out / "sft", out / "pretrain"]
    for d in candidates:
        if stage_complete(d) and (d / "config.json").is_file():
            return d
    raise FileNotFoundError(f"no trained policy under {out} (looked for a complete ppo/, sft/ or pretrain/ stage); "
                            "run `chatrlhf run` first or pass --model DIR")


def round_dir(cfg: Config, r: int) -> Path:
    return cfg.stage_dir("rounds") / f"round_{r}"


def round_paths(cfg: Config, r: int) -> tuple[Path, Path]:
    """(rm dir, ppo dir) of round r; round 1 lives in the stage dirs rm/ and ppo/."""
    if r == 1:
        return cfg.stage_dir("rm"), cfg.stage_dir("ppo")
    return round_dir(cfg, r) / "rm", round_dir(cfg, r) / "ppo"
