"""`chatrlhf run`: the whole mission in one command, resumable stage by stage.

    world -> tokenizer -> pretrain -> sft -> rm -> ppo -> more rounds -> eval -> report

A stage whose directory has `meta.json` with `"complete": true` is skipped, so a rerun after a
crash (or Ctrl-C) picks up at the first unfinished stage; inside a stage the trainers resume from
their own checkpoints. `--force` deletes each stage's outputs and reruns it. Stage wall times go to
<out_dir>/pipeline.json (the 15-minute target is checked against them) with the run's budget plan
(`layout.budget_plan`: steps, iterations and rounds, the same on every machine) and any wall-clock
safety that fired (`layout.time_limits_fired`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from chatrlhf.config import Config
from chatrlhf.layout import budget_plan, time_limits_fired
from chatrlhf.lm.distributed import barrier, is_main, on_main
from chatrlhf.lm.modeling import read_meta, stage_complete

console = Console(stderr=True, quiet=not is_main())  # one process speaks for all


def _world(cfg: Config) -> None:
    from chatrlhf.world.generate import run_world

    run_world(cfg)


def _tokenizer(cfg: Config) -> None:
    from chatrlhf.stages.pretrain import run_tokenizer

    run_tokenizer(cfg)


def _pretrain(cfg: Config) -> None:
    from chatrlhf.stages.pretrain import run_pretrain

    run_pretrain(cfg)


def _sft(cfg: Config) -> None:
    from chatrlhf.stages.sft import run_sft

    run_sft(cfg)


def _rm(cfg: Config) -> None:
    from chatrlhf.stages.reward import run_rm

    run_rm(cfg, keep_done=True)


def _ppo(cfg: Config) -> None:
    from chatrlhf.stages.ppo import run_ppo

    run_ppo(cfg)


def _rounds(cfg: Config) -> None:
    from chatrlhf.stages.iterate import run_iterate

    path = Path(cfg.run.out_dir) / "pipeline.json"
    stages = json.loads(path.read_text()).get("stages", {}) if path.is_file() else {}
    names = [name for name, _, _ in STAGES]
    before = names[:names.index("rounds")]
    run_iterate(cfg, elapsed_s=sum(stages.get(name, 0.0) for name in before))  # more rounds if the budget allows


def _eval(cfg: Config) -> None:
    from chatrlhf.evaluate.run import run_eval

    run_eval(cfg, models=[])


def _report(cfg: Config) -> None:
    from chatrlhf.evaluate.report import run_report

    run_report(cfg)


# (name, directory under out_dir, runner)
STAGES: list[tuple[str, str, Callable[[Config], None]]] = [
    ("world", "world", _world), ("tokenizer", "tokenizer", _tokenizer), ("pretrain", "pretrain", _pretrain),
    ("sft", "sft", _sft), ("rm", "rm", _rm), ("ppo", "ppo", _ppo), ("rounds", "rounds", _rounds),
    ("eval", "eval", _eval), ("report", "report", _report),
]


def _complete(cfg: Config, name: str, d: Path) -> bool:
    """rounds/ is complete once iterate decided on every round and ran at least iterate.rounds (so
    raising iterate.rounds on a finished run adds rounds)."""
    if name == "rounds":
        return stage_complete(d) and read_meta(d).get("rounds", 0) >= cfg.iterate.rounds
    if name == "rm":
        from chatrlhf.stages.reward import reward_complete

        return reward_complete(d, cfg.rm.ensemble)
    return stage_complete(d)


def run_all(cfg: Config, force: bool = False) -> dict[str, float]:
    """Run every unfinished stage in order; returns {stage: seconds} of the stages that ran."""
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.time()
    for name, subdir, runner in STAGES:
        if name == "rounds" and max(cfg.iterate.rounds, cfg.iterate.max_rounds) < 2:
            continue
        marker = cfg.stage_dir(subdir)
        barrier()  # every rank has finished the stage before: all see the same stages complete
        if force:
            on_main(lambda d=cfg.stage_dir(subdir): shutil.rmtree(d, ignore_errors=True))
        elif _complete(cfg, name, marker):
            console.print(f"[dim]run: {name} complete, skipped ({marker}/meta.json)[/dim]")
            continue
        console.rule(f"[bold]{name}")
        t0 = time.time()
        runner(cfg)
        timings[name] = round(time.time() - t0, 1)
        _write_timings(cfg, timings, time.time() - t_all)
    total = time.time() - t_all
    _write_timings(cfg, timings, total)
    console.print(f"[bold green]run complete[/bold green] in {total / 60:.1f} min: "
                  + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return timings


def _write_timings(cfg: Config, timings: dict[str, float], total: float) -> None:
    """Rank 0 writes (whole, by rename) while the others wait: every rank then reads the same times,
    so all take the same decision on a further round."""
    path = Path(cfg.run.out_dir) / "pipeline.json"

    def write() -> None:
        prev = json.loads(path.read_text()) if path.is_file() else {}
        stages = {**prev.get("stages", {}), **timings}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"stages": stages, "last_run_seconds": round(total, 1),
                                   "sum_of_stage_seconds": round(sum(stages.values()), 1),
                                   "threads": cfg.run.threads, "budget": budget_plan(cfg),
                                   "time_limits_fired": time_limits_fired(cfg)}, indent=2))
        tmp.replace(path)

    on_main(write)
