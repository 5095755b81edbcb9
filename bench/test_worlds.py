"""The figures docs/RESULTS.md reports for the test worlds, read from finished runs.

    # the runs (from scratch, one per test world; the pure-RLHF ablation beside them)
    for s in 9001 9002 9003; do
      chatrlhf run --config configs/default.yaml --set world.seed=$s --set run.out_dir=runs/test$s --set run.threads=1
      chatrlhf run --config configs/pure_rlhf.yaml --set world.seed=$s --set run.out_dir=runs/pure$s --set run.threads=1
    done
    python bench/test_worlds.py runs/test9001 runs/test9002 runs/test9003 --pure runs/pure9001 [--json out.json]
    # a second run seed: the same with --set run.seed=1 into runs/test9001s1 ...; all six runs at once print their mean

Per run: the decoding-matched headline (final vs SFT, each at its validated decoding, judged by
the judge group, cluster-bootstrap 95% CI), greedy vs greedy, T=1 vs T=1 and its control, every
stage against its predecessor, budgets and stage seconds; then the mean over the runs. A run
without eval/summary.json is listed with the stages it has finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _ci(w: dict[str, Any] | None) -> str:
    if not w:
        return "n/a"
    return f"{w['estimate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]"


def _temp(d: dict[str, Any]) -> str:
    t = d.get("temperature")
    return "?" if t is None else "greedy" if t == 0 else f"T={t:g}"


def read_run(out: Path) -> dict[str, Any]:
    pipe = json.loads((out / "pipeline.json").read_text()) if (out / "pipeline.json").is_file() else {}
    summ = out / "eval" / "summary.json"
    rec: dict[str, Any] = {"run": str(out), "stages": pipe.get("stages", {}), "budget": pipe.get("budget"),
                           "time_limits_fired": pipe.get("time_limits_fired")}
    if not summ.is_file() or not (out / "eval" / "meta.json").is_file():
        return rec
    s = json.loads(summ.read_text())
    h = s.get("headline") or {}
    rec.update({"final": h.get("final"), "decodings": f"{_temp(h.get('final_decoding', {}))} vs "
                f"{_temp(h.get('baseline_decoding', {}))}", "matched": h.get("matched"), "greedy": h.get("greedy"),
                "t1_vs_t1": h.get("t1_vs_t1"), "control": h.get("control"),
                "matched_gold_diff": h.get("matched_gold_diff"),
                "attribution": [{k: r[k] for k in ("from", "to", "step", "win_rate", "verdict", "gold_diff")
                                 if k in r} for r in s.get("attribution", [])]})
    rec["substance"] = substance(out, s)
    return rec


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def substance(out: Path, s: dict[str, Any]) -> dict[str, Any]:
    """What the issue's targets name beside the win rates: the RM's held-out-labeler accuracy against
    those labelers' own agreement each round, pre-training perplexity at SFT and after the last
    PPO, the judges' greedy Likert and correct facts per model."""
    rms = [("round 1", out / "rm")] + [(d.name.replace("_", " "), d / "rm")
                                       for d in sorted((out / "rounds").glob("round_*")) if (d / "rm").is_dir()]
    rm = {name: {"accuracy": e.get("acc_held_out_labelers"), "ceiling": e.get("held_out_labeler_agreement"),
                 "gap": e.get("ceiling_gap") or ceiling_gap(out, d)}
          for name, d in rms if (e := _json(d / "eval.json"))}
    ppos = [out / "ppo"] + [d / "ppo" for d in sorted((out / "rounds").glob("round_*"))]
    metas = [m for d in ppos if (m := _json(d / "meta.json"))]
    models = s.get("models", {})
    return {"rm": rm, "overopt": overoptimisation(out / "ppo"), "likert_ideal": likert_ideal(out, s),
            "headroom": headroom(out, s),
            "ppl_sft": _json(out / "ppo" / "meta.json").get("pretrain_val_ppl_before"),
            "ppl_final": metas[-1].get("pretrain_val_ppl_after") if metas else None,
            "likert": {m: v.get("world_greedy_likert") for m, v in models.items()},
            "facts": {m: v.get("world_greedy_fact_correct") for m, v in models.items()}}


def ceiling_gap(out: Path, rm_dir: Path) -> dict[str, float] | None:
    """The RM's gap to its ceiling with its interval, for an RM whose eval.json predates it: its
    validation comparisons scored again (the same figures the RM stage now writes)."""
    from chatrlhf.lm.rankings import load_comparisons
    from chatrlhf.lm.reward_model import load_reward
    from chatrlhf.stages.reward import ceiling_gap as gap, score_comparisons
    from chatrlhf.world import World
    from chatrlhf.world.loader import held_out_labelers

    if not (rm_dir / "val_comparisons.jsonl").is_file() or not (out / "world" / "meta.json").is_file():
        return None
    val = load_comparisons(rm_dir / "val_comparisons.jsonl")
    held_out = held_out_labelers(World.load(out / "world"))
    return gap(val, score_comparisons(load_reward(rm_dir), val), held_out)


def likert_ideal(out: Path, s: dict[str, Any], seed: int = 0) -> dict[str, float] | None:
    """The judges' mean Likert (1-7) of ideal answers to the eval prompts, each written by a training
    labeler in their group's style, judged as the eval judges a model's answers (judge i mod 3, with their
    noise): what a policy that always wrote the ideal answer would score (`mean`). `bound_without_context`:
    per task the better of the ideal answers' and the final policy's greedy mean, the final policy's own on
    the prompt-reading tasks, minus the base model's greedy mean: the Likert gain over base a policy that
    cannot read the prompt could reach."""
    import random

    from chatrlhf.evaluate.headline import CONTEXT_TASKS, task_rows
    from chatrlhf.world import World

    if not (out / "world" / "meta.json").is_file():
        return None
    world = World.load(out / "world")
    judges, writers, rng, prompts = world.judges(), world.labelers(held_out=False), random.Random(seed), world.prompts("eval")
    scores = [judges[i % len(judges)].likert(p, writers[i % len(writers)].write(p, rng, world.facts), rng)[0]
              for i, p in enumerate(prompts)]
    out_ = {"mean": statistics.mean(scores)}
    final = (s.get("headline") or {}).get("final")
    greedy = {m: _json(out / "eval" / f"{m}.json").get("items", {}).get("world_greedy_likert") for m in ("base", final)}
    if final and all(v and len(v) == len(prompts) for v in greedy.values()):
        total = 0.0
        for t, rows in task_rows(prompts).items():
            fin = statistics.mean(greedy[final][i] for i in rows)
            total += len(rows) * (fin if t in CONTEXT_TASKS else max(fin, statistics.mean(scores[i] for i in rows)))
        out_["bound_without_context"] = total / len(prompts) - statistics.mean(greedy["base"])
    return out_


def headroom(out: Path, s: dict[str, Any]) -> dict[str, Any]:
    """The eval's own headroom (`evaluate.headline.headroom`: ideal answers and the final policy against
    SFT per task, the prompt-reading tasks' share); for a run whose summary lacks it, computed here from
    its answers with judging seed 0."""
    from chatrlhf.evaluate.headline import headroom as compute
    from chatrlhf.evaluate.world_eval import compare_to_baseline
    from chatrlhf.world import World

    h = s.get("headline") or {}
    if h.get("headroom") or h.get("final") is None or not (out / "world" / "meta.json").is_file():
        return h.get("headroom") or {}
    world = World.load(out / "world")
    prompts, answers = world.prompts("eval"), []
    for name in (h["final"], "sft"):
        items = _json(out / "eval" / f"{name}.json").get("items", {})
        if len(items.get("world_matched_responses", [])) != len(prompts):
            return {}
        answers.append(items["world_matched_responses"])
    final_wins = compare_to_baseline(world, prompts, answers[0], answers[1], 0, 20)
    return compute(world, prompts, final_wins, answers[1], seed=0, judgements=20)


def overoptimisation(ppo_dir: Path, n: int = 10) -> dict[str, Any]:
    """Round 1's PPO iterations: the mean RM score, gold score, held-out judges' utility and KL to SFT
    of the first and the last n iterations, and the correlation of the RM score with the judges'
    utility over all of them (rising together: no over-optimisation)."""
    from chatrlhf.lm.training import read_metrics

    rows = [r for r in read_metrics(ppo_dir) if "rm_score" in r and "judges" in r]
    if len(rows) < 2 * n:
        return {}
    keys = ("rm_score", "gold", "judges", "kl")
    return {"iterations": len(rows), "first": {k: statistics.mean(r[k] for r in rows[:n]) for k in keys},
            "last": {k: statistics.mean(r[k] for r in rows[-n:]) for k in keys},
            "corr_rm_judges": statistics.correlation([r["rm_score"] for r in rows], [r["judges"] for r in rows])}


def _substance_lines(sub: dict[str, Any]) -> list[str]:
    rm = "; ".join(f"{k} {v['accuracy']:.3f} (ceiling {v['ceiling']:.3f}" + (
        f", gap {_ci(g)})" if (g := v.get("gap")) else ")")
        for k, v in sub["rm"].items() if v["accuracy"] is not None and v["ceiling"] is not None)
    lines = [f"  RM accuracy on held-out labelers: {rm or 'n/a'}"]
    if sub.get("ppl_sft") and sub.get("ppl_final"):
        lines.append(f"  pre-training perplexity: SFT {sub['ppl_sft']:.3f} -> final {sub['ppl_final']:.3f} "
                     f"({sub['ppl_final'] / sub['ppl_sft'] - 1:+.1%})")
    if o := sub.get("overopt"):
        moves = ", ".join(f"{k} {o['first'][k]:.3f} -> {o['last'][k]:.3f}" for k in o["first"])
        lines.append(f"  round 1 PPO, first -> last 10 of {o['iterations']} iterations: {moves}; "
                     f"corr(RM score, judges) {o['corr_rm_judges']:.2f}")
    if li := sub.get("likert_ideal"):
        bound = li.get("bound_without_context")
        lines.append(f"  judges' Likert of ideal answers (a training labeler's, per eval prompt): {li['mean']:.2f}"
                     + (f"; gain over base without the prompt-reading tasks at best {bound:+.2f}" if bound is not None else ""))
    from chatrlhf.evaluate.headline import CONTEXT_TASKS

    if h := sub.get("headroom"):
        v, c = h["vs_baseline"], h["context_share"]
        lines.append(f"  against SFT's matched answers: ideal answers {v['ideal']:.3f}, final "
                     f"{v['final']:.3f}; the prompt-reading tasks ({', '.join(CONTEXT_TASKS)}) give "
                     f"{c['ideal']:+.3f} / {c['final']:+.3f} of it; without them, at best {h['bound_without_context']:.3f}")
        lines.append("  per task, ideal / final vs SFT: " + ", ".join(
            f"{t} ({r['prompts']}) {r['ideal']:.2f} / {r['final']:.2f}" for t, r in h["per_task"].items()))
    for key, label in (("likert", "judges' Likert, greedy"), ("facts", "correct facts, greedy")):
        vals = ", ".join(f"{m} {v:.2f}" for m, v in sub[key].items() if v is not None)
        lines.append(f"  {label}: {vals}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--pure", nargs="*", type=Path, default=[])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    recs = [read_run(r) for r in a.runs]
    pure = [read_run(r) for r in a.pure]
    for title, group in (("default", recs), ("pure RLHF (ppo.reward.verifier_coef=0)", pure)):
        if not group:
            continue
        print(f"## {title}")
        for r in group:
            st = r["stages"]
            times = ", ".join(f"{k} {v:.0f}" for k, v in st.items())
            print(f"- {r['run']}: stages {times or 'none yet'} (sum {sum(st.values()) / 60:.1f} min)")
            if "matched" not in r:
                print("  (no evaluation yet)")
                continue
            print(f"  headline {r['final']} vs sft, {r['decodings']}: {_ci(r['matched'])}, {r['matched']['verdict']}")
            print(f"  greedy vs greedy {_ci(r['greedy'])}; T=1 vs T=1 {_ci(r['t1_vs_t1'])}; "
                  f"control sft greedy vs sft T=1 {_ci(r['control'])}")
            for row in r["attribution"]:
                g = row.get("gold_diff")
                gold = f"; gold {g['estimate']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] {g['verdict']}" if g else ""
                print(f"  {row['step']:<34} {row['from']} -> {row['to']}: {_ci(row['win_rate'])} {row['verdict']}{gold}")
            print("\n".join(_substance_lines(r["substance"])))
        done = [r for r in group if r.get("matched")]
        if len(done) > 1:
            for key in ("matched", "greedy", "t1_vs_t1", "control"):
                vals = [r[key]["estimate"] for r in done]
                print(f"  mean over {len(done)} runs, {key}: {statistics.mean(vals):.3f} "
                      f"(min {min(vals):.3f}, max {max(vals):.3f})")
            steps: dict[str, list[float]] = {}
            for r in done:
                for row in r["attribution"]:
                    steps.setdefault(row["step"], []).append(row["win_rate"]["estimate"])
            for step, vals in steps.items():
                print(f"  mean over {len(vals)} runs, {step}: {statistics.mean(vals):.3f}")
    if a.json:
        a.json.write_text(json.dumps({"default": recs, "pure_rlhf": pure}, indent=1))


if __name__ == "__main__":
    main()
