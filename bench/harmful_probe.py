"""Why does a group's policy in `chatrlhf preferences` stop refusing harmful requests the pooled policy refuses?

    python bench/harmful_probe.py --run runs/plr9001s1 --set world.seed=9001 [--variants brief thorough] [--round 2]
        [--json out.json]

On the harmful requests among the eval prompts the whose-preferences table judges: how many each
variant's policy and the pooled policy refuse (greedy, the world's rubric), and how many of the
variant's answers the rubric finds harmful. Then, on the prompts where the variant does not refuse
and the pooled policy does, the margin of the variant's answer over
the pooled policy's refusal under the variant's own RM, under the pooled RM, and under the noise-free
utility of the variant's own training labelers (what its RM learns from). Last, in the variant's RM
training comparisons on harmful prompts, the share of (refusal, other answer) pairs that its
labelers ranked with the refusal first. And for the variant's most common such answer (a deflection
such as "I understand you're frustrated. How can I help you?"): how often that exact answer is among its
RM's training answers to harmful and to insulting prompts, and what its RM and its training labelers
give it on the eval's harmful and insulting prompts (an RM that pays for the words whatever the prompt
scores it alike on both). With --round N (`preferences.rounds`), every variant's round-N policy and RM,
and that round's fresh comparisons.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chatrlhf.config import load_config  # noqa: E402
from chatrlhf.lm.reward_model import load_reward  # noqa: E402
from chatrlhf.stages.preferences import answers  # noqa: E402
from chatrlhf.world.loader import require_world  # noqa: E402


def refusal_ranked_first(path: Path, world) -> float | None:
    """Of every (refusal, other answer) pair of answers to a harmful prompt in the comparisons at `path`,
    over every labeler's ranking, the share with the refusal ranked above (1 is best); None if no pair."""
    above = pairs = 0
    for line in path.open():
        c = json.loads(line)
        if c.get("task") != "harmful":
            continue
        refused = [world.gold(c, r).flags["refused"] for r in c["responses"]]
        for ranking in c.get("rankings", []):
            ranks = ranking["ranks"]
            for i, j in ((i, j) for i in range(len(ranks)) for j in range(len(ranks)) if refused[i] and not refused[j]):
                pairs += 1
                above += ranks[i] < ranks[j]
    return above / pairs if pairs else None


def answer_by_task(where: Path, rm, labelers: list, answer: str, tasks: dict[str, list[dict]]) -> dict:
    """One answer to every prompt of each task: how often its exact text is among the variant's RM training
    answers to that task (in `where`), and the mean score its RM (`rm`) and its training `labelers` give it there."""
    seen = Counter(c.get("task") for line in (where / "comparisons.jsonl").open()
                   for c in [json.loads(line)] for r in c["responses"] if r == answer)
    return {task: {"in_rm_answers": seen.get(task, 0),
                   "own_rm": round(float(rm.score([p["messages"] for p in ps], [answer] * len(ps)).float().mean()), 3),
                   "own_labelers": round(statistics.mean(lab.expected_utility(p, answer) for p in ps for lab in labelers), 3)}
            for task, ps in tasks.items()}


def probe(cfg, world, where: Path, variant: str, prompts: list[dict], pooled: list[str], pooled_refused: list[bool],
          pooled_rm, insults: list[dict]) -> dict:
    said = answers(cfg, where / "ppo", prompts)
    gold = [world.gold(p, r) for p, r in zip(prompts, said)]
    refused = [g.flags["refused"] for g in gold]
    ix = [i for i in range(len(prompts)) if pooled_refused[i] and not refused[i]]
    out = {"prompts": len(prompts), "variant_refuses": sum(refused), "pooled_refuses": sum(pooled_refused),
           "variant_harmful": sum(g.flags["harmful"] for g in gold),
           "not_refused_where_pooled_refuses": len(ix), "example": said[ix[0]] if ix else None}
    if ix:
        msgs = [prompts[i]["messages"] for i in ix]
        own_rm = load_reward(where / "rm", cfg.model.dtype)
        for name, rm in (("own_rm", own_rm), ("pooled_rm", pooled_rm)):
            diff = rm.score(msgs, [said[i] for i in ix]) - rm.score(msgs, [pooled[i] for i in ix])
            out[f"{name}_margin"] = round(float(diff.float().mean()), 3)
        labelers = world.labelers(held_out=False, groups=[variant])
        out["own_labelers_margin"] = round(statistics.mean(
            lab.expected_utility(prompts[i], said[i]) - lab.expected_utility(prompts[i], pooled[i])
            for i in ix for lab in labelers), 3)
        example, n = Counter(said[i] for i in ix).most_common(1)[0]
        out |= {"example": example, "example_count": n,
                "example_by_task": answer_by_task(where, own_rm, labelers, example,
                                                  {"harmful": prompts, "insult": insults})}
    out["comparisons_refusal_ranked_first"] = refusal_ranked_first(where / "comparisons.jsonl", world)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run directory after `chatrlhf preferences`")
    ap.add_argument("--set", action="append", default=[], help="config override, as on the CLI")
    ap.add_argument("--variants", nargs="+", help="per-group variants to probe (default: every group)")
    ap.add_argument("--round", type=int, default=1, help="probe each variant's round N (preferences.rounds)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    cfg = load_config(None, [f"run.out_dir={a.run}", *a.set])
    world = require_world(cfg, "bench/harmful_probe.py")
    prefs = a.run / "preferences"
    where = lambda v: prefs / v if a.round == 1 else prefs / v / f"round_{a.round}"  # noqa: E731
    evals = world.prompts("eval")[: cfg.preferences.eval_prompts]
    prompts = [p for p in evals if p.get("task") == "harmful"]
    insults = [p for p in evals if p.get("task") == "insult"]
    pooled = answers(cfg, where("pooled") / "ppo", prompts)
    pooled_refused = [world.gold(p, r).flags["refused"] for p, r in zip(prompts, pooled)]
    pooled_rm = load_reward(where("pooled") / "rm", cfg.model.dtype)
    rows = {v: probe(cfg, world, where(v), v, prompts, pooled, pooled_refused, pooled_rm, insults) for v in a.variants or cfg.preferences.groups}
    print("| variant | refuses: variant / pooled, of N | harmful answers (rubric) | does not refuse where pooled refuses | margin over the pooled refusal: "
          "own RM / pooled RM / own labelers | its comparisons: refusal ranked above another answer |")
    print("|---|---|---|---|---|---|")
    f = lambda x: "-" if x is None else f"{x:+.2f}"  # noqa: E731
    for v, r in rows.items():
        first = r["comparisons_refusal_ranked_first"]
        print(f"| {v} | {r['variant_refuses']} / {r['pooled_refuses']} of {r['prompts']} | {r['variant_harmful']} "
              f"| {r['not_refused_where_pooled_refuses']} "
              f"| {f(r.get('own_rm_margin'))} / {f(r.get('pooled_rm_margin'))} / {f(r.get('own_labelers_margin'))} "
              f"| {'-' if first is None else f'{first:.2f}'} |")
    for v, r in rows.items():
        if r["example"]:
            print(f"{v}, where the pooled policy refuses ({r['example_count']} of {r['not_refused_where_pooled_refuses']}): "
                  f"{r['example']!r}")
            for task, t in r["example_by_task"].items():
                print(f"  to {task} prompts: {t['in_rm_answers']} times among its RM's training answers; "
                      f"own RM {t['own_rm']:+.2f}, own labelers {t['own_labelers']:+.2f}")
    if a.json:
        a.json.write_text(json.dumps({"run": str(a.run), "round": a.round, "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
