"""Why does PPO add little over its start? PPO against the reward model vs against the gold rubric.

    python bench/ppo_reward_source.py --run runs/default [--iterations 120] [--sources rm,gold]
        [--json bench/results/ppo_reward_source.json] [--set KEY=VALUE ...]

From a finished run's best-of-n start (<run>/ppo/best_of_n) PPO runs once per reward source, everything
else as configured: the same start, reference (sft/), seed, prompts and iterations, with the guard off
(ppo.guard.early_stop=none: the last iteration is kept, nothing is selected). Sources:

    rm    the learned reward model (what the method uses)
    gold  ppo.reward.source=gold: reward.gold_scale x the world's gold rubric, the function the labelers'
          preferences are built on before their noise and taste (a diagnostic upper bound)

Then, for the start and each final policy:
  1. judged against the start by the held-out judge group on the 400 eval prompts (20 judgements a
     pair, ties half, cluster-bootstrap 95% intervals), greedy vs greedy and at matched decoding (each
     model's temperature chosen by the training labelers on validation prompts, as `chatrlhf eval`
     does), with the paired gold difference;
  2. the RM on the policy's own samples: two T=1 samples for each of 256 PPO training prompts and
     256 eval prompts, their gold (overall and per task), the correlation of the RM score with gold,
     the share of the RM's and gold's variance that lies between two samples of one prompt,
     and on each prompt's pair how often the RM, the training labelers (one noisy judgement each;
     their noise-free mean) and the judges' noise-free mean order the pair as gold does;
  3. the headroom: on 256 eval prompts, the gold of the greedy answer, of a T=1 sample, of the best
     of 8 samples by gold (an oracle) and by the RM, with the judges' win rate of each pick over greedy
     and each task's part of the pick's gold gain;
  4. the training curves (<out>/metrics.jsonl): gold and RM score of the rollouts, KL to SFT, value
     loss and explained variance, mean of the first and last 10 iterations.
A diagnostic of a few PPO runs, not a speed benchmark, so `bench/run_all.py` does not run it.
Also the RM's held-out accuracy beside the held-out labelers' own agreement (<run>/rm/eval.json).
The PPO runs go under <run>/<--out>/ppo_<source>/ (a finished one there is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PROMPTS = 256


def diag_config(run: Path, iterations: int, extra: list[str]):
    """The run's config with the guard off, a fixed iteration count and no best-of-n (PPO starts from
    the run's finished best-of-n policy)."""
    from chatrlhf.config import load_config

    sets = [f"run.out_dir={run}", "ppo.guard.early_stop=none", f"ppo.total_iterations={iterations}",
            "ppo.rejection_sampling.n=0", "eval.sections=[world]", *extra]
    return load_config(ROOT / "configs" / "default.yaml", sets)


def train(cfg, run: Path, out_name: str, source: str) -> Path:
    from chatrlhf.lm.modeling import stage_complete
    from chatrlhf.stages.ppo import run_ppo

    out = run / out_name / f"ppo_{source}"
    if not stage_complete(out):
        pc = cfg.ppo.model_copy(update={"reward": cfg.ppo.reward.model_copy(update={"source": source})})
        run_ppo(cfg.model_copy(update={"ppo": pc}), policy_dir=run / "ppo" / "best_of_n", rm_dir=run / "rm",
                out_dir=out, ref_dir=run / "sft")
    return out


# --- 1. judged against the start ------------------------------------------------------------------


def judge_against_start(cfg, models: dict[str, Path]) -> dict[str, dict]:
    """Each model's greedy and matched-decoding answers to the eval prompts, judged against the start's."""
    from chatrlhf.evaluate.headline import ci_dict, diff_verdict, judged_win_rate, win_verdict
    from chatrlhf.evaluate.models import load_handle
    from chatrlhf.evaluate.run import Context, evaluate_model
    from chatrlhf.evaluate.stats import paired_cluster_diff_ci

    ctx, ev, seed = Context(cfg), cfg.eval, cfg.run.seed
    items = {name: evaluate_model(ctx, load_handle(name, str(path)), choose=True) for name, path in models.items()}
    start = items["start"]["items"]
    out = {}
    for name, res in items.items():
        it = res["items"]
        row = {"temperature": res.get("decoding", {}).get("temperature"),
               "validation_likert": res.get("decoding", {}).get("validation_likert"),
               "gold_greedy": statistics.fmean(it["world_greedy_gold"]),
               "gold_matched": statistics.fmean(it["world_matched_gold"]),
               "gold_sampled": statistics.fmean(it["world_sample_gold"]),
               "rm_greedy": res["metrics"].get("world_greedy_rm_score")}
        if name != "start":
            for mode in ("greedy", "matched"):
                w = judged_win_rate(ctx.world, ctx.prompts, ctx.clusters, it[f"world_{mode}_responses"],
                                    start[f"world_{mode}_responses"], seed, ev.judgements_per_pair, ev.bootstrap)
                d = ci_dict(paired_cluster_diff_ci(it[f"world_{mode}_gold"], start[f"world_{mode}_gold"],
                                                   ctx.clusters, ev.bootstrap, seed))
                row[f"win_vs_start_{mode}"] = {**w, "verdict": win_verdict(w, name, "start")}
                row[f"gold_diff_{mode}"] = {**d, "verdict": diff_verdict(d)}
        out[name] = row
    return out


# --- 2. the RM on the policy's own samples ------------------------------------------------------------


def _agree(scores: list[tuple[float, float]], gold: list[tuple[float, float]]) -> float:
    """Share of pairs a scorer orders as gold does (gold ties left out, a scorer's tie half)."""
    hits = [1.0 if (a - b) * (ga - gb) > 0 else 0.5 if a == b else 0.0
            for (a, b), (ga, gb) in zip(scores, gold) if ga != gb]
    return round(statistics.fmean(hits), 4) if hits else float("nan")


def rm_on_samples(cfg, world, rm, path: Path, split: str) -> dict:
    """Two T=1 samples per prompt of `split` from `path`; their gold (overall and per task) and how the
    RM's view of them matches gold's."""
    from chatrlhf.evaluate.models import generate, load_handle, prompt_text

    prompts = world.prompts(split)[:SAMPLE_PROMPTS]
    h = load_handle("policy", str(path))
    texts = [prompt_text(h, p["messages"]) for p in prompts]
    a, b = (generate(h, texts, cfg.ppo.rollout.max_new_tokens, temperature=1.0, seed=cfg.run.seed + s) for s in (101, 202))
    msgs = [p["messages"] for p in prompts]
    ra, rb = rm.score(msgs, a).tolist(), rm.score(msgs, b).tolist()
    ga, gb = ([world.gold(p, t).total for p, t in zip(prompts, x)] for x in (a, b))
    by_task: dict[str, list[float]] = {}
    for p, x, y in zip(prompts, ga, gb):
        by_task.setdefault(p["task"], []).extend((x, y))
    return {"prompts": f"{split}[:{len(prompts)}]", "samples": 2 * len(prompts),
            "gold_mean": round(statistics.fmean(ga + gb), 4), "rm_mean": round(statistics.fmean(ra + rb), 4),
            "gold_by_task": {t: round(statistics.fmean(v), 4) for t, v in sorted(by_task.items())},
            "rm_gold_pearson": round(statistics.correlation(ra + rb, ga + gb), 4),
            "rm_std": round(statistics.stdev(ra + rb), 4), "gold_std": round(statistics.stdev(ga + gb), 4),
            "distinct_pairs": sum(x != y for x, y in zip(ga, gb)),
            "within_prompt_share": {"gold": within_prompt_share(ga, gb), "rm": within_prompt_share(ra, rb)},
            "agree_with_gold": pair_agreement(cfg, world, prompts, a, b, list(zip(ra, rb)), list(zip(ga, gb)))}


def within_prompt_share(a: list[float], b: list[float]) -> float:
    """The share of the samples' variance that lies between two samples of the same prompt (the part an
    advantage should carry); the rest is which prompt it was, which only a good baseline removes."""
    within = statistics.fmean((x - y) ** 2 / 2 for x, y in zip(a, b))
    return round(within / statistics.variance(a + b), 4)


def pair_agreement(cfg, world, prompts, a, b, rm_pairs, gold_pairs) -> dict[str, float]:
    """On each prompt's pair of samples: how often the RM, one training labeler's noisy judgement, the
    training labelers' noise-free mean utility and the judges' order the pair as gold does."""
    rng = random.Random(cfg.run.seed)
    train_labs, judges = world.labelers(held_out=False), world.judges()

    def mean_utility(labs, p, t):
        return statistics.fmean(lab.expected_utility(p, t) for lab in labs)

    noisy = [(train_labs[i % len(train_labs)].compare(p, x, y, rng), 0.5) for i, (p, x, y) in enumerate(zip(prompts, a, b))]
    return {"rm": _agree(rm_pairs, gold_pairs), "training_labeler_one_judgement": _agree(noisy, gold_pairs),
            "training_labelers_noise_free_mean": _agree(
                [(mean_utility(train_labs, p, x), mean_utility(train_labs, p, y)) for p, x, y in zip(prompts, a, b)],
                gold_pairs),
            "judges_noise_free_mean": _agree(
                [(mean_utility(judges, p, x), mean_utility(judges, p, y)) for p, x, y in zip(prompts, a, b)],
                gold_pairs)}


def headroom(cfg, world, rm, path: Path, n: int = 8) -> dict:
    """What reweighting the policy's own samples could reach on eval prompts: the gold of its greedy
    answer, of a T=1 sample, and of the best of n T=1 samples picked by gold (an oracle) or by the RM
    (KL <= log n from the policy), with the judges' win rate of each pick over the greedy answer."""
    from chatrlhf.evaluate.models import generate, load_handle, prompt_text
    from chatrlhf.evaluate.world_eval import compare_to_baseline

    prompts = world.prompts("eval")[:SAMPLE_PROMPTS]
    h = load_handle("policy", str(path))
    texts = [prompt_text(h, p["messages"]) for p in prompts]
    greedy = generate(h, texts, cfg.ppo.rollout.max_new_tokens, temperature=0.0, seed=cfg.run.seed)
    samples = [generate(h, texts, cfg.ppo.rollout.max_new_tokens, temperature=1.0, seed=cfg.run.seed + 1000 * k)
               for k in range(n)]
    msgs = [p["messages"] for p in prompts]
    rms = [rm.score(msgs, s).tolist() for s in samples]
    golds = [[world.gold(p, t).total for p, t in zip(prompts, s)] for s in samples]
    pick = {"gold": [max(range(n), key=lambda k: golds[k][i]) for i in range(len(prompts))],
            "rm": [max(range(n), key=lambda k: rms[k][i]) for i in range(len(prompts))]}
    gold_greedy = [world.gold(p, t).total for p, t in zip(prompts, greedy)]
    by_task: dict[str, list[float]] = {}
    for p, g in zip(prompts, gold_greedy):
        by_task.setdefault(p["task"], []).append(g)
    out = {"n": n, "prompts": len(prompts), "gold_greedy": round(statistics.fmean(gold_greedy), 4),
           "gold_greedy_by_task": {t: round(statistics.fmean(v), 4) for t, v in sorted(by_task.items())},
           "gold_sample": round(statistics.fmean(golds[0]), 4)}
    for by, ks in pick.items():
        best = [samples[k][i] for i, k in enumerate(ks)]
        out[f"gold_best_by_{by}"] = round(statistics.fmean(golds[k][i] for i, k in enumerate(ks)), 4)
        gain: dict[str, list[float]] = {}
        for i, (p, k) in enumerate(zip(prompts, ks)):
            gain.setdefault(p["task"], []).append(golds[k][i] - gold_greedy[i])
        out[f"gold_gain_best_by_{by}_over_greedy_by_task"] = {  # the task's share of the mean gain, and its size
            t: {"prompts": len(v), "mean": round(statistics.fmean(v), 4), "share": round(sum(v) / len(prompts), 4)}
            for t, v in sorted(gain.items())}
        wins = compare_to_baseline(world, prompts, best, greedy, cfg.run.seed, cfg.eval.judgements_per_pair)
        out[f"judges_win_best_by_{by}_vs_greedy"] = round(statistics.fmean(wins), 4)
    return out


# --- 3. training curves ----------------------------------------------------------------------------


def curves(out: Path, k: int = 10) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = ("gold", "rm_score", "reward", "kl", "vf_loss", "value_explained_var", "response_len", "verified")

    def mean(part: list[dict], key: str) -> float | None:
        xs = [r[key] for r in part if isinstance(r.get(key), (int, float))]
        return round(statistics.fmean(xs), 4) if xs else None

    return {"iterations": len(rows), "first": {key: mean(rows[:k], key) for key in keys},
            "last": {key: mean(rows[-k:], key) for key in keys},
            "per_iteration": [{key: r.get(key) for key in ("step", *keys)} for r in rows]}


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/default", help="a run with world, sft, rm and ppo/best_of_n")
    ap.add_argument("--iterations", type=int, default=120)
    ap.add_argument("--sources", default="rm,gold")
    ap.add_argument("--out", default="diag_reward_source", help="the PPO runs' directory under --run (one per setting)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for both PPO runs")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "ppo_reward_source.json"))
    args = ap.parse_args()
    from chatrlhf.lm.reward_model import RewardModel
    from chatrlhf.world.loader import load_world

    run = Path(args.run)
    cfg = diag_config(run, args.iterations, args.set)
    models = {"start": run / "ppo" / "best_of_n"}
    for source in args.sources.split(","):
        models[f"ppo_{source}"] = train(cfg, run, args.out, source)
    world, rm = load_world(cfg), RewardModel.load(run / "rm")
    result = {"run": str(run), "iterations": args.iterations, "overrides": args.set, "seed": cfg.run.seed,
              "rm_eval": {k: v for k, v in json.loads((run / "rm" / "eval.json").read_text()).items()
                          if k.startswith(("acc_", "held_out_labeler_agreement", "all_labeler"))},
              "judged": judge_against_start(cfg, models),
              "rm_on_samples": {split: {name: rm_on_samples(cfg, world, rm, path, split) for name, path in models.items()}
                                for split in ("ppo", "eval")},
              "headroom": {name: headroom(cfg, world, rm, path) for name, path in models.items()},
              "curves": {name: curves(path) for name, path in models.items() if name != "start"}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("rm_eval", "judged", "rm_on_samples")}, indent=1))
    for name, c in result["curves"].items():
        print(name, "first", c["first"], "\n", name, "last ", c["last"])


if __name__ == "__main__":
    main()
