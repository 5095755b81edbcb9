"""Two runs of the same world, model against model: which arm's models the judges prefer.

    python bench/versus.py runs/armB1234 runs/d1234 [runs/armB1235 runs/d1235 ...] [--json out.json]

A run's headline compares its final policy with its own SFT model, so a change that improves SFT
can lower it while improving what users get. This compares arms directly, pair by pair (A against
B, same world seed): each stage's model of A against the same stage of B, on the world's eval
prompts, each at its own validated decoding (the headline's matched answers; greedy for the base
and round-1 models, whose matched answers are not kept), judged by the judge group (20 judgements
per pair, ties half, cluster-bootstrap 95% intervals), beside both runs' headlines, the judges'
Likert of the final policies and their correct facts.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _items(run: Path, model: str) -> dict[str, Any]:
    p = run / "eval" / f"{model}.json"
    return json.loads(p.read_text()).get("items", {}) if p.is_file() else {}


def _summary(run: Path) -> dict[str, Any]:
    p = run / "eval" / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def compare(a: Path, b: Path, judgements: int = 20, n_boot: int = 1000) -> dict[str, Any]:
    """A's models against B's, stage by stage, on their shared world's eval prompts."""
    from chatrlhf.evaluate.headline import judged_win_rate, prompt_clusters
    from chatrlhf.world import World

    if (a / "world" / "prompts_eval.jsonl").read_text() != (b / "world" / "prompts_eval.jsonl").read_text():
        raise SystemExit(f"{a} and {b} have different eval prompts: compare runs of the same world")
    world = World.load(a / "world")
    prompts = world.prompts("eval")
    clusters = prompt_clusters(prompts)
    sa, sb = _summary(a), _summary(b)
    final_a, final_b = (s.get("headline", {}).get("final") for s in (sa, sb))
    out: dict[str, Any] = {"a": str(a), "b": str(b), "rows": []}
    for label, ma, mb, key in (("base", "base", "base", "world_greedy_responses"),
                               ("SFT", "sft", "sft", "world_matched_responses"),
                               ("round 1", "ppo", "ppo", "world_greedy_responses"),
                               ("final", final_a, final_b, "world_matched_responses")):
        ia, ib = _items(a, ma or ""), _items(b, mb or "")
        if key not in ia or key not in ib:
            continue
        w = judged_win_rate(world, prompts, clusters, ia[key], ib[key], 0, judgements, n_boot)
        out["rows"].append({"model": label, "a_model": ma, "b_model": mb, "win_rate": w})
    for side, s in (("a", sa), ("b", sb)):
        models = s.get("models", {})
        h = s.get("headline", {}).get("matched") or {}
        out[side + "_headline"] = h.get("estimate")
        out[side + "_likert"] = {m: models[m].get("world_greedy_likert") for m in ("base", "sft", final_a)
                                 if m in models}
        out[side + "_facts"] = {m: models[m].get("world_greedy_fact_correct") for m in ("base", "sft", final_a)
                                if m in models}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="pairs: A B [A B ...]")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if len(args.runs) % 2:
        raise SystemExit("give runs in pairs: A B [A B ...]")
    pairs = [compare(args.runs[i], args.runs[i + 1]) for i in range(0, len(args.runs), 2)]
    for p in pairs:
        print(f"## {p['a']} against {p['b']}")
        for r in p["rows"]:
            w = r["win_rate"]
            print(f"  {r['model']:<8} {r['a_model']} vs {r['b_model']}: {w['estimate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]")
        print(f"  headline (final vs own SFT): A {p['a_headline']}, B {p['b_headline']}")
        print(f"  judges' Likert, greedy: A {p['a_likert']}, B {p['b_likert']}")
        print(f"  correct facts, greedy: A {p['a_facts']}, B {p['b_facts']}")
    if len(pairs) > 1:
        finals = [r["win_rate"]["estimate"] for p in pairs for r in p["rows"] if r["model"] == "final"]
        if finals:
            print(f"mean over {len(finals)} pairs, final vs final: {statistics.mean(finals):.3f} "
                  f"(min {min(finals):.3f}, max {max(finals):.3f})")
    if args.json:
        args.json.write_text(json.dumps(pairs, indent=1))


if __name__ == "__main__":
    main()
