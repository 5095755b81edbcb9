"""On what scale does a group-conditioned RM score each group's line? Each comparison's answers are
scored under the group line it carries; per group: the mean score, its spread, and the mean spread
within a prompt (what whitened advantages compare answers by).

    python bench/reward_scale_by_group.py --rm runs/X/preferences/conditioned-sft/rm \
        --comparisons runs/X/preferences/conditioned-sft/comparisons.jsonl [--n 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chatrlhf.lm.rankings import load_comparisons  # noqa: E402
from chatrlhf.lm.reward_model import RewardModel, score_comparisons  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rm", required=True)
    ap.add_argument("--comparisons", required=True, help="comparisons whose messages carry the group line, with `group`")
    ap.add_argument("--n", type=int, default=600, help="the first n comparisons")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rm = RewardModel.load(a.rm)
    comparisons = load_comparisons(a.comparisons)[: a.n]
    scores: dict[str, list[float]] = {}
    within: dict[str, list[float]] = {}
    for c, s in zip(comparisons, score_comparisons(rm, comparisons)):
        scores.setdefault(c.get("group"), []).extend(s)
        within.setdefault(c.get("group"), []).append(torch.tensor(s).std().item())
    out = {str(g): {"answers": len(v), "mean": statistics.mean(v), "sd": statistics.pstdev(v),
                    "within_prompt_sd": statistics.mean(within[g])} for g, v in sorted(scores.items(), key=str)}
    for g, r in out.items():
        print(f"{g:10s} {r['answers']:5d} answers  mean {r['mean']:+.3f}  sd {r['sd']:.3f}  "
              f"within a prompt {r['within_prompt_sd']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rm": a.rm, "comparisons": a.comparisons, "n": a.n, "by_group": out}, indent=2))


if __name__ == "__main__":
    main()
