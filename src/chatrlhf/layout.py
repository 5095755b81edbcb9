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
    """Directory of a named model: base -> pretrain/, round_N -> that round's ppo/, best_of_n ->
    round 1's best-of-n fine-tune (PPO's start), round_N_best_of_n -> round N's, else the stage."""
    if name == "base":
        return cfg.stage_dir("pretrain")
    if name == "best_of_n":
        return cfg.stage_dir("ppo") / "best_of_n"
    m = re.fullmatch(r"round_(\d+)(_best_of_n)?", name)
    if m:
        ppo = round_paths(cfg, int(m.group(1)))[1]
        return ppo / "best_of_n" if m.group(2) else ppo
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


# --- budgets ------------------------------------------------------------------------------------


def budget_plan(cfg: Config) -> dict:
    """What a run will do, from the config alone: pre-training steps, PPO's iteration cap per round
    and the number of rounds. Nothing here reads the clock or the thread count, so the same config
    gives the same plan on any machine. `speed_dependent` names every wall-clock limit that is on:
    where one fires, the run's result depends on the machine's speed (`time_limits_fired` says
    whether it did)."""
    it = cfg.iterate
    extra = it.max_rounds > it.rounds
    speed = [name for name, on in (("pretrain.max_minutes", cfg.pretrain.max_minutes > 0),
                                   ("ppo.max_minutes", cfg.ppo.max_minutes > 0),
                                   ("iterate.max_rounds/budget_minutes", extra)) if on]
    return {"pretrain_steps": cfg.pretrain.max_steps, "ppo_iterations_max": cfg.ppo.total_iterations,
            "ppo_stop": cfg.ppo.guard.early_stop, "rounds": it.rounds, "rounds_max": max(it.rounds, it.max_rounds),
            "speed_dependent": speed}


def time_limits_fired(cfg: Config) -> list[str]:
    """One line per wall-clock safety that cut this run short (none when every budget is in steps)."""
    from chatrlhf.lm.modeling import read_meta

    fired = []
    pre = read_meta(cfg.stage_dir("pretrain"))
    if pre.get("time_limited") or (pre.get("max_minutes", 0) > 0 and pre.get("steps", 0) < pre.get("max_steps", 0)):
        fired.append(f"pretrain.max_minutes={pre['max_minutes']:g} stopped pre-training at step {pre.get('steps')} "
                     f"of {pre.get('max_steps')}")
    for r in [1, *rounds_on_disk(cfg)]:
        ppo = read_meta(round_paths(cfg, r)[1])
        if ppo.get("stop_reason") == "max_minutes":
            fired.append(f"ppo.max_minutes stopped round {r}'s PPO at iteration {ppo.get('iterations')}")
    rounds = read_meta(cfg.stage_dir("rounds"))
    if rounds.get("budget"):
        fired.append(f"rounds decided by the time budget: {rounds['budget']}")
    return fired
