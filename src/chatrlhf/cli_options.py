"""Options every command shares: --config and --set, and loading the config they name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from chatrlhf.config import Config, ConfigError, load_config

console = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (defaults: configs/default.yaml).")]

ResumeOpt = Annotated[bool, typer.Option("--resume-anyway", help="Resume checkpoints even when they were written with other settings (listed as a warning; same as --set run.resume_anyway=true).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Dotted override, e.g. --set ppo.reward.kl_coef=0.05 (repeatable).")]


def load_cfg(config: Path | None, overrides: list[str] | None, resume_anyway: bool = False) -> Config:
    try:
        cfg = load_config(config, list(overrides or []) + (["run.resume_anyway=true"] if resume_anyway else []))
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    return cfg


def fail_with(e: Exception) -> None:
    console.print(f"[red]error:[/red] {e}")
    raise typer.Exit(1) from None
