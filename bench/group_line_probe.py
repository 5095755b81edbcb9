"""Does a group-conditioned reward model read the group line? Held-out labelers' pairwise accuracy,
group by group, with each comparison scored under every group's line and under none.

    python bench/group_line_probe.py --val runs/X/preferences/conditioned-sft/rm/val_comparisons.jsonl \
        --world runs/X/world runs/X/preferences/{conditioned-sft,brief,thorough,cautious}/rm [--json out.json]

`--val`: comparisons that name their group (a conditioned RM's validation split; with
`rm.groups_per_prompt=3 --set rm.labelers_per_group=3` every answer set once per group, ranked by that
group's held-out members). For each reward model and each group, the accuracy of the RM's order on
that group's comparisons against that group's held-out members, with the comparison's system line
replaced by each group's line, and removed. A conditioned RM that reads its line scores best under
the comparison's own group; a group's own RM (trained without a line) is the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chatrlhf.lm.rankings import load_comparisons, pairwise_accuracy  # noqa: E402
from chatrlhf.lm.reward_model import RewardModel, score_comparisons  # noqa: E402
from chatrlhf.world import World  # noqa: E402
from chatrlhf.world.groups import for_group  # noqa: E402

NONE = "no line"


def with_line(c: dict, line: str) -> list[dict]:
    if line == NONE:
        return [m for m in c["messages"] if m["role"] != "system"]
    return for_group(c, line)["messages"]


def probe(rm: RewardModel, val: list[dict], held_out: set[str], groups: list[str]) -> dict[str, dict[str, float]]:
    """group -> line -> held-out accuracy on that group's comparisons."""
    out = {}
    for g in groups:
        mine = [c for c in val if c.get("group") == g]
        out[g] = {}
        for line in [*groups, NONE]:
            rewards = score_comparisons(rm, [{**c, "messages": with_line(c, line)} for c in mine])
            out[g][line] = pairwise_accuracy(mine, rewards, lambda lab: lab in held_out)[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rms", nargs="+", help="reward model directories")
    ap.add_argument("--val", required=True, help="comparisons naming their group")
    ap.add_argument("--world", required=True, help="the world directory (its held-out labelers)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    world = World.load(Path(args.world))
    held_out = {lab.id for lab in world.labelers(held_out=True)}
    val = load_comparisons(args.val, True)
    groups = sorted({c["group"] for c in val if c.get("group")}, key=world.labeler_groups().index)
    result = {"val": args.val, "n": {g: sum(c.get("group") == g for c in val) for g in groups},
              "rms": {d: probe(RewardModel.load(d), val, held_out, groups) for d in args.rms}}
    print(f"held-out labelers' accuracy, by the comparison's group, under each line ({result['n']} comparisons)")
    print("| reward model | group | " + " | ".join(f"{line} line" if line != NONE else line for line in [*groups, NONE]) + " |")
    print("|---|---|" + "---|" * (len(groups) + 1))
    for d, rows in result["rms"].items():
        for g, row in rows.items():
            print(f"| {d} | {g} | " + " | ".join(f"{row[line]:.3f}" for line in [*groups, NONE]) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
