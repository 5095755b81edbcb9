"""Where does a run's final policy refuse harmless requests, and which term of PPO's reward pays for it?

    python bench/refusal_probe.py --run runs/d1235 [--json out.json]

On the run's eval prompts whose task is not a harmful request, per task: how many the SFT model and
the final policy (the last round's PPO) refuse, greedy, by the world's rubric (`flags["refused"]`).
Then, on the same prompts, the final policy's most frequent refusal against one T=1 sample of the SFT
model (the kind of answer the RM was trained to rank), for the two learned terms of PPO's reward:
the round-1 reward model's score, and the SFT model's mean token log-likelihood (paid x
ppo.reward.sft_loglik_coef). And what the training labelers make of the change: their mean
noise-free utility of the SFT model's and the final policy's greedy answers.

When the run's RM comparisons hold refusals (`rm.refusal_answers`), first: per task, how often the
labelers' recorded rankings put the refusal first and last among the answers, and how often the
training labelers and the held-out judges would, by their noise-free utilities.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chatrlhf.config import load_config  # noqa: E402
from chatrlhf.evaluate.models import (  # noqa: E402
    answer_logprobs,
    generate,
    load_handle,
    prompt_text,
)
from chatrlhf.layout import resolve_model  # noqa: E402
from chatrlhf.lm.reward_model import load_reward  # noqa: E402
from chatrlhf.world.loader import require_world  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run directory (world, sft, rm, ppo)")
    ap.add_argument("--set", action="append", default=[], help="config override, as on the CLI")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    cfg = load_config(None, [f"run.out_dir={a.run}", *a.set])
    world = require_world(cfg, "bench/refusal_probe.py")
    ranked = refusal_rankings(a.run / "rm" / "comparisons.jsonl", world)
    final_dir = resolve_model(cfg, None)  # the newest policy: the last round's PPO
    prompts = [p for p in world.prompts("eval") if p.get("task") != "harmful"]
    sft, final = load_handle("sft", str(a.run / "sft"), cfg.model.dtype), load_handle("final", str(final_dir), cfg.model.dtype)
    greedy = {h.name: generate(h, [prompt_text(h, p["messages"]) for p in prompts], cfg.eval.max_new_tokens, 0.0, cfg.run.seed)
              for h in (sft, final)}
    refused = {n: [world.gold(p, r).flags["refused"] for p, r in zip(prompts, rs)] for n, rs in greedy.items()}
    canned = collections.Counter(r for r, x in zip(greedy["final"], refused["final"]) if x).most_common(1)
    if not canned:
        print(f"{final_dir}: refuses no harmless eval request")
        return
    refusal = canned[0][0]
    sample = generate(sft, [prompt_text(sft, p["messages"]) for p in prompts], cfg.eval.max_new_tokens, 1.0, cfg.run.seed + 1)
    rm = load_reward(a.run / "rm", cfg.model.dtype)
    rm_refusal = rm.score([p["messages"] for p in prompts], [refusal] * len(prompts)).tolist()
    rm_sample = rm.score([p["messages"] for p in prompts], sample).tolist()
    msgs = [p["messages"] for p in prompts]
    ll_refusal, ll_sample = answer_logprobs(sft, msgs, [refusal] * len(msgs), mean=True), answer_logprobs(sft, msgs, sample, mean=True)
    labelers = world.labelers(held_out=False)

    def utility(p: dict, r: str) -> float:
        return statistics.mean(lab.expected_utility(p, r) for lab in labelers)

    rows = {}
    for task in sorted({p["task"] for p in prompts}):
        ix = [i for i, p in enumerate(prompts) if p["task"] == task]
        m = lambda xs: round(statistics.mean(xs[i] for i in ix), 3)  # noqa: E731
        rows[task] = {
            "prompts": len(ix), "sft_refuses": sum(refused["sft"][i] for i in ix), "final_refuses": sum(refused["final"][i] for i in ix),
            "rm_refusal": m(rm_refusal), "rm_sft_sample": m(rm_sample),
            "sft_loglik_refusal": m(ll_refusal), "sft_loglik_sft_sample": m(ll_sample),
            "labelers_sft_greedy": round(statistics.mean(utility(prompts[i], greedy["sft"][i]) for i in ix), 3),
            "labelers_final_greedy": round(statistics.mean(utility(prompts[i], greedy["final"][i]) for i in ix), 3),
        }
    coef = cfg.ppo.reward.sft_loglik_coef
    print(f"final policy {final_dir}; its most frequent refusal of a harmless request: {refusal!r}")
    print(f"| task | refused greedy: SFT / final | RM: refusal / SFT sample | {coef:g} x SFT mean log-lik: refusal / SFT sample "
          "| training labelers: SFT greedy / final greedy |")
    print("|---|---|---|---|---|")
    for task, r in rows.items():
        print(f"| {task} | {r['sft_refuses']} / {r['final_refuses']} of {r['prompts']} | {r['rm_refusal']:+.2f} / {r['rm_sft_sample']:+.2f} "
              f"| {coef * r['sft_loglik_refusal']:+.2f} / {coef * r['sft_loglik_sft_sample']:+.2f} "
              f"| {r['labelers_sft_greedy']:.2f} / {r['labelers_final_greedy']:.2f} |")
    if a.json:
        a.json.write_text(json.dumps({"run": str(a.run), "final": str(final_dir), "refusal": refusal,
                                      "sft_loglik_coef": coef, "tasks": rows, "refusal_rankings": ranked}, indent=2))


def refusal_rankings(path: Path, world) -> dict | None:
    """Where the rankings of the RM's comparisons put the refusal rm.refusal_answers added (None when none did):
    per task, the share of recorded rankings with it first / last, and of the training labelers' and the judges'
    noise-free utilities ranking it first / last (ties count for both)."""
    if not path.is_file():
        return None
    tally: dict[str, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0, 0]))
    training, judges = [lab for lab, _ in world.labeler_mix(None)], world.judges()
    for line in path.open():
        c = json.loads(line)
        at = c.get("refusal_index")
        if at is None:
            continue
        prompt = {"messages": c["messages"], "task": c["task"], "reference": c.get("reference")}
        orders = {"rankings": [r["ranks"] for r in c["rankings"]]}  # rank 1 = best
        for name, labs in (("training", training), ("judges", judges)):
            orders[name] = [[-u for u in (lab.expected_utility(prompt, r) for r in c["responses"])] for lab in labs]
        for task in (c["task"], "all"):
            for name, rows in orders.items():
                for ranks in rows:
                    t = tally[task][name]
                    t[0], t[1], t[2] = t[0] + 1, t[1] + (ranks[at] <= min(ranks)), t[2] + (ranks[at] >= max(ranks))
    if not tally:
        return None
    out = {task: {name: {"first": round(n1 / n, 3), "last": round(n2 / n, 3), "n": n} for name, (n, n1, n2) in by.items()}
           for task, by in sorted(tally.items())}
    print(f"the refusal among the answers of {out['all']['rankings']['n']} rankings ({path}): share ranked first / last")
    print("| task | recorded rankings | training labelers, noise-free | judges, noise-free |")
    print("|---|---|---|---|")
    for task, by in out.items():
        print(f"| {task} | " + " | ".join(f"{by[k]['first']:.2f} / {by[k]['last']:.2f}" for k in ("rankings", "training", "judges")) + " |")
    return out


if __name__ == "__main__":
    main()
