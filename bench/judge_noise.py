"""How much of a whose-preferences cell is the judges' own noise? The same answers, judged again.

For each row of a finished `chatrlhf preferences` run, the policy's greedy answers to the first
--prompts eval prompts (by default the config's preferences.eval_prompts, as the table's) are judged
against the pooled policy's by the row's group's held-out members, as `chatrlhf preferences` judges
them, --draws times (judge seeds 0, 1, ...) at each number of judgements per answer pair. The answers
do not change between draws, so the spread of a cell over the draws is what the judges' noise alone
adds to it; draw k at J judgements is the cell the table gives with run.seed=k and
preferences.judgements=J.

    python bench/judge_noise.py --run runs/X --rows cautious conditioned-sft:cautious brief \
        --judgements 4 20 100 --draws 6 [--config configs/default.yaml] [--json out.json]

A row is a variant (`cautious`: preferences/cautious/ppo, judged by cautious's members) or a
conditioned variant asked for a group (`conditioned-sft:cautious`, judged by cautious's members).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chatrlhf.config import Config, load_config  # noqa: E402
from chatrlhf.stages.preferences import answers, judged_by_groups  # noqa: E402
from chatrlhf.world import World  # noqa: E402
from chatrlhf.world.groups import for_group  # noqa: E402


def row_answers(cfg: Config, prefs: Path, row: str, prompts: list[dict]) -> tuple[str, list[str]]:
    """The group that judges the row, and the row's greedy answers (asked for that group if conditioned)."""
    variant, _, group = row.partition(":")
    asked = [for_group(p, group) for p in prompts] if group else prompts
    return group or variant, answers(cfg, prefs / variant / "ppo", asked)


def spread(world, prompts: list[dict], said: list[str], pooled: list[str], group: str, judgements: int,
           draws: int) -> dict:
    cells = [judged_by_groups(world, prompts, said, pooled, [group], seed, judgements)[group]["win_rate"]
             for seed in range(draws)]
    return {"draws": cells, "mean": statistics.fmean(cells), "sd": statistics.stdev(cells) if draws > 1 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run directory with world/ and a finished preferences/")
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"), help="the config the run was made with")
    ap.add_argument("--rows", nargs="+", default=["cautious", "conditioned-sft:cautious"])
    ap.add_argument("--judgements", nargs="+", type=int, default=[4, 20, 100])
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--prompts", type=int, help="eval prompts (default: the config's preferences.eval_prompts)")
    ap.add_argument("--json")
    a = ap.parse_args()
    run = Path(a.run)
    cfg = load_config(a.config, [f"run.out_dir={run}"])
    world = World.load(run / "world")
    prompts = world.prompts("eval")[: a.prompts or cfg.preferences.eval_prompts]
    prefs = run / "preferences"
    pooled = answers(cfg, prefs / "pooled" / "ppo", prompts)
    result: dict = {"run": str(run), "prompts": len(prompts), "draws": a.draws, "rows": {}}
    for row in a.rows:
        group, said = row_answers(cfg, prefs, row, prompts)
        result["rows"][row] = {str(j): spread(world, prompts, said, pooled, group, j, a.draws) for j in a.judgements}
    print(f"{'row':28s} " + " ".join(f"{'J=' + str(j):>16s}" for j in a.judgements))
    for row, by_j in result["rows"].items():
        print(f"{row:28s} " + " ".join(f"{v['mean']:.3f} sd {v['sd']:.4f}" for v in by_j.values()))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
