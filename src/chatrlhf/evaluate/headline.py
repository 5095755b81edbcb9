"""What the report leads with: the decoding-matched headline, stage attribution, real-data domain.

Decoding-matched headline (InstructGPT compares each model at its own decoding): the final policy
against the baseline (SFT), each answering the eval prompts at the temperature the *training*
labelers score best on a validation split (`eval.validation_prompts` prompts of the guard split:
content of their own, never trained on, never eval prompts), judged by the judge group
(`world.judges()`, used for nothing else). A sharper policy at T=1 beats a rambling SFT at T=1 by
sharpening alone; matching decodings removes that. T=1 vs T=1 stays as a secondary line beside its
control, SFT greedy vs SFT T=1 (what lowering the temperature alone buys).

Stage attribution: each stage against its predecessor on the same eval prompts, all greedy:
base -> SFT, SFT -> PPO (through the best-of-n fine-tune when there is one), and per later round
r: round r-1 -> round r (through round r's best-of-n when there is one), plus round r-1 -> round r as
a whole.

Headroom (the embedded world only): a training labeler's ideal answer to every eval prompt against the
baseline's, judged as the headline is, per task beside the final policy's: how far the headline could
go, and how much of that lies in the tasks answered by reading the prompt's own words.

Every win rate and paired difference on world prompts gets a cluster bootstrap interval (prompts
that ask the same content share a `cluster`) and reads through `stats.change_verdict`: a preference
or a difference only where the interval excludes no change.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from chatrlhf.evaluate.stats import change_verdict, cluster_bootstrap_ci, paired_cluster_diff_ci

# Real-data sections: the metric that counts their items, and the prefix of their metrics.
REAL_SECTIONS = {"real_prompts": ("real_prompts_n", "real_"), "truthfulqa": ("truthfulqa_mc_n", "truthfulqa_"),
                 "crows_pairs": ("crows_pairs_n", "crows_pairs_"), "rtp": ("rtp_n_prompts", "rtp_")}
OUT_OF_DOMAIN = "out of domain for this model"
# Tasks answered by reading the prompt's own words: a list's first or last item, its length, a word n times.
CONTEXT_TASKS = ("list_first", "list_last", "count", "repeat")


def ci_dict(t: tuple[float, float, float]) -> dict[str, float]:
    return {"estimate": t[0], "low": t[1], "high": t[2]}


def win_verdict(w: dict[str, float], name: str, other: str) -> str:
    """A win rate's reading: `name` or `other` preferred only when the interval excludes 0.5."""
    v = change_verdict((w["estimate"] - 0.5, w["low"] - 0.5, w["high"] - 0.5),
                       up=f"{name} preferred", down=f"{other} preferred")
    return v


def diff_verdict(d: dict[str, float], sign: int = +1) -> str:
    """A paired difference's reading, `sign` -1 when lower is better."""
    return change_verdict((d["estimate"], d["low"], d["high"]), up="better" if sign > 0 else "worse",
                          down="worse" if sign > 0 else "better")


# --- choosing each model's decoding on validation prompts --------------------------------------------


def choose_decoding(world, h, val_prompts: list[dict], temperatures: list[float], max_new_tokens: int, seed: int,
                    judgements: int = 3) -> dict[str, Any]:
    """The temperature whose answers to `val_prompts` the training labelers rate highest (mean Likert,
    `judgements` ratings per answer in rotation); ties go to the lower temperature. Never sees eval
    prompts or the judges."""
    from chatrlhf.evaluate.models import generate, prompt_text

    temps = sorted({float(t) for t in temperatures}) or [0.0]
    if not val_prompts or len(temps) == 1:
        return {"temperature": temps[0], "validation_likert": {}, "validation_prompts": len(val_prompts)}
    labs = world.labelers(held_out=False)
    texts = [prompt_text(h, p["messages"]) for p in val_prompts]
    scores: dict[float, float] = {}
    for t in temps:
        resp = generate(h, texts, max_new_tokens, temperature=t, seed=seed + 17)
        rng = random.Random(seed + 29)
        ratings = [labs[(i + k) % len(labs)].likert(p, r, rng)[0]
                   for i, (p, r) in enumerate(zip(val_prompts, resp)) for k in range(judgements)]
        scores[t] = float(np.mean(ratings))
    best = max(temps, key=lambda t: (round(scores[t], 9), -t))
    return {"temperature": best, "validation_likert": {f"{t:g}": s for t, s in scores.items()},
            "validation_prompts": len(val_prompts), "judged_by": "training labelers"}


# --- win rates with cluster intervals ----------------------------------------------------------------------


def judged_win_rate(world, prompts: list[dict], clusters: list, a: list[str], b: list[str], seed: int,
                    judgements: int, n_boot: int) -> dict[str, Any]:
    """The judge group's win rate of answers `a` over `b` on the same prompts, with its cluster
    bootstrap interval."""
    from chatrlhf.evaluate.world_eval import compare_to_baseline

    return win_rate(compare_to_baseline(world, prompts, a, b, seed, judgements), clusters, seed, judgements, n_boot)


def win_rate(wins: list[float], clusters: list, seed: int, judgements: int, n_boot: int) -> dict[str, Any]:
    """Per-prompt judged wins -> their mean with its cluster bootstrap interval."""
    return {**ci_dict(cluster_bootstrap_ci(wins, clusters, n_boot, seed)), "judgements_per_pair": judgements,
            "clusters": len(set(clusters)), "prompts": len(wins)}


def headline(ctx, results: dict[str, dict[str, Any]], baseline: str, final: str | None) -> dict[str, Any]:
    """Final vs baseline at each one's chosen decoding (the headline), T=1 vs T=1 and its control,
    with verdicts and a few example answers side by side."""
    from chatrlhf.evaluate.world_eval import compare_to_baseline

    if ctx.world is None or final is None or final not in results or baseline not in results:
        return {}
    ev, seed = ctx.cfg.eval, ctx.cfg.run.seed
    fi, bi = results[final]["items"], results[baseline]["items"]
    if "world_matched_responses" not in fi or "world_matched_responses" not in bi:
        return {}
    def judge(a: list[str], b: list[str]) -> dict[str, Any]:
        return judged_win_rate(ctx.world, ctx.prompts, ctx.clusters, a, b, seed, ev.judgements_per_pair, ev.bootstrap)

    out: dict[str, Any] = {"final": final, "baseline": baseline, "judges": [lab.id for lab in ctx.world.judges()],
                           "final_decoding": results[final].get("decoding", {}),
                           "baseline_decoding": results[baseline].get("decoding", {})}
    # the matched pair's per-prompt wins, judged once: the headline and the headroom's final row
    matched = compare_to_baseline(ctx.world, ctx.prompts, fi["world_matched_responses"], bi["world_matched_responses"],
                                  seed, ev.judgements_per_pair)
    out["matched"] = win_rate(matched, ctx.clusters, seed, ev.judgements_per_pair, ev.bootstrap)
    out["matched"]["verdict"] = win_verdict(out["matched"], final, baseline)
    out["greedy"] = judge(fi["world_greedy_responses"], bi["world_greedy_responses"])
    out["greedy"]["verdict"] = win_verdict(out["greedy"], final, baseline)
    out["t1_vs_t1"] = judge(fi["world_sample_responses"], bi["world_sample_responses"])
    out["t1_vs_t1"]["verdict"] = win_verdict(out["t1_vs_t1"], final, baseline)
    out["control"] = judge(bi["world_greedy_responses"], bi["world_sample_responses"])
    out["control"]["verdict"] = win_verdict(out["control"], f"{baseline} greedy", f"{baseline} T={ev.temperature:g}")
    for key in ("gold", "likert"):
        a, b = fi.get(f"world_matched_{key}"), bi.get(f"world_matched_{key}")
        if a and b and len(a) == len(b):
            d = ci_dict(paired_cluster_diff_ci(a, b, ctx.clusters, ev.bootstrap, seed))
            out[f"matched_{key}_diff"] = {**d, "verdict": diff_verdict(d)}
    out["examples"] = examples(ctx.prompts, fi["world_matched_responses"], bi["world_matched_responses"])
    out["headroom"] = headroom(ctx.world, ctx.prompts, matched, bi["world_matched_responses"], seed,
                               ev.judgements_per_pair)
    return out


def ideal_answers(world, prompts: list[dict], seed: int) -> list[str]:
    """An ideal answer to each prompt, written by training labeler i mod n in their group's style."""
    writers, rng = world.labelers(held_out=False), random.Random(seed)
    return [writers[i % len(writers)].write(p, rng, world.facts) for i, p in enumerate(prompts)]


def prompt_clusters(prompts: list[dict]) -> list:
    """The content each eval prompt asks about (its cluster, else its id): the unit the bootstrap resamples."""
    return [p.get("cluster") or p["id"] for p in prompts]


def task_rows(prompts: list[dict]) -> dict[str, list[int]]:
    """Task -> the indices of its prompts, tasks in sorted order: for figures split by task."""
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        rows.setdefault(p.get("task", "other"), []).append(i)
    return dict(sorted(rows.items()))


def headroom(world, prompts: list[dict], final_wins: list[float], base: list[str], seed: int,
             judgements: int) -> dict[str, Any]:
    """Ideal answers and the final policy's, each against the baseline's, per task (`final_wins`: the final
    policy's per-prompt wins, the headline's own; the ideal answers are judged the same way). `context_share`: the part
    of each win rate's distance from 0.5 that CONTEXT_TASKS make up. `bound_without_context`: a generous
    bound for a policy that cannot read the prompt, the better of the two on every other task and the
    baseline's level (0.5) on the prompt-reading ones."""
    from chatrlhf.evaluate.world_eval import compare_to_baseline

    wins = {"ideal": compare_to_baseline(world, prompts, ideal_answers(world, prompts, seed), base, seed, judgements),
            "final": final_wins}
    per_task = {t: {"prompts": len(rows), **{k: float(np.mean([ws[i] for i in rows])) for k, ws in wins.items()}}
                for t, rows in task_rows(prompts).items()}
    n = len(prompts)
    context = {k: sum(w - 0.5 for p, w in zip(prompts, ws) if p["task"] in CONTEXT_TASKS) / n for k, ws in wins.items()}
    bound = 0.5 + sum(r["prompts"] * (max(r["ideal"], r["final"]) - 0.5) for t, r in per_task.items()
                      if t not in CONTEXT_TASKS) / n
    return {"vs_baseline": {k: float(np.mean(ws)) for k, ws in wins.items()}, "context_share": context,
            "bound_without_context": bound, "per_task": per_task}


def headroom_note(summary: dict[str, Any]) -> str | None:
    """The report's line under the headline: how far it could go, and what lies out of reach."""
    h = (summary.get("headline") or {}).get("headroom")
    if not h:
        return None
    v, c, base = h["vs_baseline"], h["context_share"], summary.get("baseline", "the baseline")
    return (f"How far it could go: a training labeler's ideal answers win {v['ideal']:.3f} against {base} "
            f"({c['ideal']:+.3f} of it on the prompts answered by reading the prompt's words: "
            f"{', '.join(CONTEXT_TASKS)}; the final policy {c['final']:+.3f} there). A policy as good as those "
            f"answers on every other task would win at best {h['bound_without_context']:.3f}.")


def examples(prompts: list[dict], final: list[str], base: list[str], n: int = 4) -> list[dict[str, str]]:
    """The first prompt of each of a few tasks, with both answers: what the numbers are about."""
    seen: set[str] = set()
    out = []
    for p, a, b in zip(prompts, final, base):
        task = p.get("task", "?")
        if task in seen:
            continue
        seen.add(task)
        out.append({"task": task, "prompt": p["messages"][-1]["content"], "final": a, "baseline": b})
        if len(out) == n:
            break
    return out


# --- stage attribution ------------------------------------------------------------------------------


def attribution_pairs(names: list[str]) -> list[tuple[str, str, str]]:
    """(predecessor, successor, what the step adds) for every stage whose predecessor was evaluated."""
    have = set(names)
    pairs: list[tuple[str, str, str]] = []

    def add(a: str, b: str, what: str) -> None:
        if a in have and b in have:
            pairs.append((a, b, what))

    add("base", "sft", "SFT")
    start = "best_of_n" if "best_of_n" in have else "sft"
    add("sft", "best_of_n", "best-of-n fine-tune (round 1)")
    add(start, "ppo", "PPO over its start (round 1)")
    rounds = sorted(int(n.split("_")[1]) for n in names if n.startswith("round_") and n.split("_")[1].isdigit()
                    and not n.endswith("_best_of_n"))
    prev = "ppo"
    for r in rounds:
        cur, bon = f"round_{r}", f"round_{r}_best_of_n"
        add(prev, bon, f"best-of-n fine-tune (round {r})")
        add(bon, cur, f"PPO over its start (round {r})")
        add(prev, cur, f"round {r - 1} -> round {r}")
        prev = cur if cur in have else prev
    return pairs


def attribution(ctx, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stage against its predecessor, greedy answers on the same eval prompts: the judge group's
    win rate and the paired gold difference, both with cluster intervals and verdicts."""
    if ctx.world is None:
        return []
    ev, seed = ctx.cfg.eval, ctx.cfg.run.seed
    rows = []
    for a, b, what in attribution_pairs(list(results)):
        ia, ib = results[a]["items"], results[b]["items"]
        if "world_greedy_responses" not in ia or "world_greedy_responses" not in ib:
            continue
        w = judged_win_rate(ctx.world, ctx.prompts, ctx.clusters, ib["world_greedy_responses"],
                            ia["world_greedy_responses"], seed, ev.judgements_per_pair, ev.bootstrap)
        row = {"from": a, "to": b, "step": what, "win_rate": w, "verdict": win_verdict(w, b, a)}
        ga, gb = ia.get("world_greedy_gold"), ib.get("world_greedy_gold")
        if ga and gb and len(ga) == len(gb):
            d = ci_dict(paired_cluster_diff_ci(gb, ga, ctx.clusters, ev.bootstrap, seed))
            row["gold_diff"] = {**d, "verdict": diff_verdict(d)}
        rows.append(row)
    return rows


# --- real data: a verdict only where it can mean something -------------------------------------------------


def in_domain(cfg) -> bool:
    """Whether the real benchmarks measure this run's models: a model pre-trained on the embedded
    world alone has never seen the English those benchmarks are written in, so it is at chance on
    them and any difference between its stages is noise about nothing."""
    if cfg.eval.real_data_in_domain != "auto":
        return cfg.eval.real_data_in_domain == "yes"
    return cfg.model.name_or_path is not None


def real_data_status(cfg, models: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per real-data section present: its item count and whether it gets a verdict ("measured"),
    or why not (out of domain; fewer than eval.min_real_items items)."""
    domain = in_domain(cfg)
    out = {}
    for section, (n_key, prefix) in REAL_SECTIONS.items():
        ns = [m[n_key] for m in models.values() if n_key in m]
        if not ns:
            continue
        n = int(min(ns))
        if not domain:
            status = f"{OUT_OF_DOMAIN}: figures shown, no verdict"
        elif n < cfg.eval.min_real_items:
            status = f"{n} items, fewer than eval.min_real_items={cfg.eval.min_real_items}: no verdict"
        else:
            status = "measured"
        out[section] = {"items": n, "prefix": prefix, "verdict": status == "measured", "status": status}
    return out


def blocked_prefixes(status: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """Metric prefixes of the real-data sections that get no verdict."""
    return tuple(s["prefix"] for s in status.values() if not s["verdict"])
