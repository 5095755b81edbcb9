"""The run directory's layout, in one place: where each stage and each RLHF round writes, and
which model a command talks to when none is named.

    runs/default/
      world/ tokenizer/ pretrain/ sft/ rm/ ppo/     one stage directory each (round 1 is rm/ + ppo/)
      rounds/round_2/{rm,ppo}/ ...                  later rounds
      eval/ report/
"""

from __future__ import annotations

import re
from pathlib import Path

from chatrlhf.config import Config
from chatrlhf.lm.modeling import stage_complete


def round_dir(cfg: Config, r: int) -> Path:
    return cfg.stage_dir("rounds") / f"round_{r}"


def round_paths(cfg: Config, r: int) -> tuple[Path, Path]:
    """(rm dir, ppo dir) of round r; round 1 lives in the stage dirs rm/ and ppo/."""
    if r == 1:
        return cfg.stage_dir("rm"), cfg.stage_dir("ppo")
    return round_dir(cfg, r) / "rm", round_dir(cfg, r) / "ppo"


def rounds_on_disk(cfg: Config) -> list[int]:
    """Numbers of the later rounds (2, 3, ...) that have a directory, in order."""
    found = [int(m.group(1)) for p in cfg.stage_dir("rounds").glob("round_*")
             if (m := re.fullmatch(r"round_(\d+)", p.name))]
    return sorted(found)


def stage_path(cfg: Config, name: str) -> Path:
    """Directory of a named model: base -> pretrain/, round_N -> that round's ppo/, else the stage."""
    if name == "base":
        return cfg.stage_dir("pretrain")
    m = re.fullmatch(r"round_(\d+)", name)
    if m:
        return round_paths(cfg, int(m.group(1)))[1]
    return cfg.stage_dir(name)


def resolve_model(cfg: Config, model: str | Path | None = None) -> Path:
    """The model to talk to: the given directory, else cfg.chat.model, else the run's newest policy
    (latest round's PPO, then ppo/, sft/, pretrain/)."""
    chosen = model or cfg.chat.model
    if chosen:
        p = Path(chosen)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--model {p}: not a model directory (no config.json)")
        return p
    rounds = [round_paths(cfg, r)[1] for r in reversed(rounds_on_disk(cfg))]
    for d in [*rounds, cfg.stage_dir("ppo"), cfg.stage_dir("sft"), cfg.stage_dir("pretrain")]:
        if stage_complete(d) and (d / "config.json").is_file():
            return d
    raise FileNotFoundError(f"no trained policy under {cfg.run.out_dir} (looked for a complete ppo/, sft/ or "
                            "pretrain/ stage); run `chatrlhf run` first or pass --model DIR")
