"""How far can PPO get with this reward model? Best-of-n under the RM, judged by held-out labelers.

    .venv/bin/python bench/bench_rm_ceiling.py [--run runs/default] [--rm DIR ...] [--n 16]

PPO maximises the RM's score at a KL cost; best-of-n sampling from SFT, picking the response the RM
scores highest, is the same trade without training (KL ~ log n - (n-1)/n nats). If best-of-n by the
RM stops improving the held-out win rate against SFT while best-of-n by the gold rubric (an oracle
no real team has) keeps rising, the RM, not PPO, is what limits alignment. On the eval prompts of a
finished run: n SFT samples (T=1) per prompt, then per n the expected win rate against the SFT's own
T=1 answer of the eval (held-out labelers, 20 judgements per pair averaged, ties half), its gold
score, and the same per task. The run's PPO policies are listed beside it for comparison. Also
best-of-n by the SFT model's mean log-likelihood, and by RM + sft_loglik_coef x that likelihood: the
reward PPO optimises with ppo.reward.sft_loglik_coef.
Writes bench/results/rm_ceiling.json; skips with a note when the run is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rm_ceiling.json"


def summarise(world, prompts: list[dict], picks: list[str], baseline: list[str]) -> dict:
    from chatrlhf.evaluate.world_eval import compare_to_baseline

    wins = compare_to_baseline(world, prompts, picks, baseline, seed=0, judgements=20)  # the eval's own measure
    by_task: dict[str, list[float]] = defaultdict(list)
    for p, w in zip(prompts, wins):
        by_task[p["task"]].append(w)
    gold = [world.gold(p, t).total for p, t in zip(prompts, picks)]
    return {"win_rate": round(sum(wins) / len(wins), 4), "gold": round(sum(gold) / len(gold), 4),
            "win_rate_by_task": {t: round(sum(v) / len(v), 3) for t, v in sorted(by_task.items())}}


def knowledge_pairs(world, prompts: list[dict], seed: int = 0) -> dict[str, list[tuple[dict, str, str]]]:
    """(prompt, right answer, wrong answer) per kind, both answers in the same template."""
    from chatrlhf.world.writing import fact_sentence

    rng = random.Random(seed)
    pairs: dict[str, list[tuple[dict, str, str]]] = defaultdict(list)
    for p in prompts:
        task, ref = p["task"], p["reference"]
        if task == "fact":
            variant = rng.randrange(3)  # one sentence template for the right and the wrong answer

            def say(value: str) -> str:
                return fact_sentence(ref["entity"], ref["entity_type"], ref["attribute"], value, rng, variant)

            others = [x for x in world.facts.domains[ref["attribute"]] if x not in (ref["value"], ref["rumour"])]
            pairs["fact_vs_rumour"].append((p, say(ref["value"]), say(ref["rumour"])))
            pairs["fact_vs_other_value"].append((p, say(ref["value"]), say(rng.choice(others))))
        elif task in ("list_first", "list_last"):
            pos = task.split("_")[1]
            wrong = rng.choice([x for x in ref["items"] if x != ref["answer"]])
            pairs["list_item"].append((p, f"The {pos} item is {ref['answer']}.", f"The {pos} item is {wrong}."))
        elif task == "count":
            off = ref["answer"] + rng.choice([-1, 1])
            pairs["count"].append((p, f"There are {ref['answer']} items.", f"There are {off} items."))
        elif task == "repeat":
            off = max(1, ref["n"] + rng.choice([-1, 1]))
            pairs["repeat"].append((p, " ".join([ref["word"]] * ref["n"]), " ".join([ref["word"]] * off)))
    return dict(pairs)


def pair_accuracy(pairs: dict[str, list[tuple[dict, str, str]]], score) -> dict[str, float]:
    """Share of pairs where score(right) > score(wrong), ties half; `score(prompts, answers)` -> list."""
    out = {}
    for kind, ps in pairs.items():
        right, wrong = score([p for p, _, _ in ps], [r for _, r, _ in ps]), score([p for p, _, _ in ps], [w for _, _, w in ps])
        out[kind] = round(sum((a > b) + 0.5 * (a == b) for a, b in zip(right, wrong)) / len(ps), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--rm", nargs="*", default=None, help="RM directories (default: the run's rm/ and last round's rm/)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sft-loglik-coef", type=float, default=2.0,
                    help="weight of the SFT mean log-likelihood in PPO's reward (ppo.reward.sft_loglik_coef)")
    args = ap.parse_args()
    run = ROOT / args.run
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not (run / "eval" / "sft.json").is_file():
        RESULTS.write_text(json.dumps({"skipped": f"no finished run at {run}; run `make run` first"}, indent=2))
        print(f"skipped: no finished run at {run}")
        return

    import torch

    from chatrlhf.evaluate.models import answer_logprobs, generate, load_handle, prompt_text
    from chatrlhf.lm.reward_model import RewardModel
    from chatrlhf.world import World

    torch.set_num_threads(args.threads)
    t0 = time.time()
    world = World.load(run / "world")
    prompts = world.prompts("eval")
    evals = {p.stem: json.loads(p.read_text())["items"] for p in (run / "eval").glob("*.json")
             if p.stem not in ("summary", "meta")}
    baseline = evals["sft"]["world_sample_responses"]
    prompts = prompts[: len(baseline)]
    sft = load_handle("sft", str(run / "sft"))
    texts = [prompt_text(sft, p["messages"]) for p in prompts]
    cands = [generate(sft, texts, 48, temperature=1.0, seed=100 + k) for k in range(args.n)]
    gold = torch.tensor([[world.gold(p, c[i]).total for i, p in enumerate(prompts)] for c in cands])
    ns = [n for n in (1, 2, 4, 8, 16, 32) if n <= args.n]

    def best_of(scores: torch.Tensor) -> dict:
        out = {}
        for n in ns:
            best = scores[:n].argmax(0)
            out[f"best_of_{n}"] = summarise(world, prompts, [cands[int(best[i])][i] for i in range(len(prompts))], baseline)
        return out

    rm_dirs = args.rm if args.rm is not None else [str(run / "rm")] + sorted(str(p.parent) for p in run.glob("rounds/round_*/rm/config.json"))
    result = {"run": args.run, "n_prompts": len(prompts), "samples_per_prompt": args.n,
              "oracle_gold": best_of(gold + 1e-6 * torch.rand(gold.shape, generator=torch.Generator().manual_seed(0))),
              "reward_models": {}, "policies": {}, "knowledge_probe": {}}
    pairs = knowledge_pairs(world, prompts)

    def sft_loglik(ps: list[dict], answers: list[str], mean: bool = False) -> list[float]:
        return answer_logprobs(sft, [p["messages"] for p in ps], answers, mean)

    result["knowledge_probe"]["sft_likelihood"] = pair_accuracy(pairs, sft_loglik)
    # PPO pays RM + sft_loglik_coef * mean log pi_SFT(y): best-of-n under that sum is its ceiling
    lik = torch.tensor([sft_loglik(prompts, c, mean=True) for c in cands])
    result["sft_likelihood"] = best_of(lik)
    result["sft_loglik_coef"] = args.sft_loglik_coef
    result["reward_models_plus_sft_loglik"] = {}
    for d in rm_dirs:
        rm = RewardModel.load(d, "float32", device="cpu")
        scores = torch.stack([rm.score([p["messages"] for p in prompts], c).float() for c in cands])
        name = str(Path(d).relative_to(ROOT) if Path(d).is_absolute() else d)
        result["reward_models"][name] = best_of(scores)
        result["reward_models_plus_sft_loglik"][name] = best_of(scores + args.sft_loglik_coef * lik)
        result["knowledge_probe"][name] = pair_accuracy(
            pairs, lambda ps, answers: rm.score([p["messages"] for p in ps], answers).tolist())
    for name, items in evals.items():
        if name not in ("sft", "base") and "world_sample_responses" in items:
            result["policies"][name] = summarise(world, prompts, items["world_sample_responses"], baseline)
    result["seconds"] = round(time.time() - t0, 1)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"expected win rate against SFT (T=1), {len(prompts)} held-out prompts:")
    tables = [("oracle (gold)", result["oracle_gold"]), ("SFT mean log-likelihood", result["sft_likelihood"]),
              *result["reward_models"].items(),
              *((f"{k} + {args.sft_loglik_coef} x SFT mean log-likelihood", v)
                for k, v in result["reward_models_plus_sft_loglik"].items())]
    for label, table in tables:
        print(f"  best-of-n by {label}: " + ", ".join(f"n={k.split('_')[-1]} {v['win_rate']:.3f}" for k, v in table.items()))
    for name, v in result["policies"].items():
        print(f"  policy {name}: {v['win_rate']:.3f} (gold {v['gold']:.3f})")
    print("knowledge probe, share of clean pairs ranked right (" +
          ", ".join(f"{k} {len(v)}" for k, v in pairs.items()) + "):")
    for name, acc in result["knowledge_probe"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))


if __name__ == "__main__":
    main()
