"""How much does a model want the cautious group's hedge ("..., I think.")? On a run's held-out fact and
summary prompts (the first preferences.eval_prompts eval prompts, as `chatrlhf preferences` judges):

- each policy's greedy answers, the share that hedge, and the probability it gives the hedge over the plain
  full stop where its claim ends (mean over answers; above 0.5 on an answer, greedy decoding hedges it),
  and the share of its facts stated right (the rubric's `fact_correct`);
- each reward model's score gain when the first policy's answers are hedged against the same answers
  plain (mean, and the share of answers where the hedge scores higher);
- the share of the RM stage's sampled facts and summaries that hedge (the first preferences.comparisons
  of `rm/comparisons.jsonl`, the answers every variant's labelers rank).

    python bench/hedge_probe.py --run runs/X --policies runs/X/preferences/conditioned-sft/ppo:cautious \
        runs/X/preferences/cautious/ppo --rms runs/X/preferences/cautious/rm runs/X/preferences/conditioned-sft/rm:cautious \
        [--json out.json]

A `:GROUP` suffix asks under that group's line (a conditioned model); without one, the prompt as asked.
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

from chatrlhf.config import Config  # noqa: E402
from chatrlhf.evaluate.models import generate, load_handle, prompt_text  # noqa: E402
from chatrlhf.lm.rankings import load_comparisons  # noqa: E402
from chatrlhf.lm.reward_model import load_reward  # noqa: E402
from chatrlhf.world import World  # noqa: E402
from chatrlhf.world.gold import HEDGED_TASKS, has_hedge, substantive_metrics  # noqa: E402
from chatrlhf.world.groups import for_group  # noqa: E402
from chatrlhf.world.vocab import HEDGE  # noqa: E402

TAIL = f", {HEDGE}."


def plain_and_hedged(answer: str) -> tuple[str, str]:
    """The answer without the hedge and with it at its end (a claim's answer is one sentence)."""
    plain = answer.replace(TAIL, ".").rstrip()
    return plain, (plain[:-1] if plain.endswith(".") else plain) + TAIL


def asked(prompts: list[dict], spec: str) -> tuple[str, list[dict]]:
    path, _, group = spec.partition(":")
    return path, [for_group(p, group) for p in prompts] if group else prompts


@torch.no_grad()
def hedge_probability(h, prompts: list[dict], answers: list[str]) -> float:
    """Mean over answers of P(hedge) / (P(hedge) + P(full stop)) where the claim ends."""
    probs = []
    for p, a in zip(prompts, answers):
        plain, hedged = plain_and_hedged(a)
        head = prompt_text(h, p["messages"]) + " "  # the prompt as generate() continues it
        n0 = len(h.tokenizer(head + plain[:-1], add_special_tokens=False).input_ids)
        logps = []
        for text in (hedged, plain):
            ids = h.tokenizer(head + text, add_special_tokens=False, return_tensors="pt").input_ids
            lp = h.model(ids).logits[0].log_softmax(-1)
            logps.append(sum(lp[i - 1, ids[0, i]].item() for i in range(n0, ids.shape[1])))
        probs.append(1 / (1 + torch.exp(torch.tensor(logps[1] - logps[0])).item()))
    return statistics.fmean(probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="the run directory (its world)")
    ap.add_argument("--policies", nargs="+", required=True, help="POLICY_DIR[:GROUP]; the first one's answers go to the RMs")
    ap.add_argument("--rms", nargs="*", default=[], help="RM_DIR[:GROUP]")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = Config.model_validate({"run": {"out_dir": str(args.run)}})
    world = World.load(args.run / "world")
    prompts = [p for p in world.prompts("eval")[: cfg.preferences.eval_prompts] if p["task"] in HEDGED_TASKS]
    if not prompts:
        ap.error(f"{args.run / 'world'}: no fact or summary prompt among the first {cfg.preferences.eval_prompts} eval prompts")
    out: dict = {"prompts": len(prompts), "policies": {}, "rms": {}}
    first: list[str] = []
    for spec in args.policies:
        path, qs = asked(prompts, spec)
        h = load_handle(Path(path).name, path, cfg.model.dtype)
        said = generate(h, [prompt_text(h, p["messages"]) for p in qs], cfg.eval.max_new_tokens, 0.0, cfg.run.seed)
        first = first or said
        facts = substantive_metrics(qs, [world.gold(p, a) for p, a in zip(qs, said)])["fact_correct"]
        out["policies"][spec] = v = {"hedged": statistics.fmean(has_hedge(a.lower()) for a in said),
                                     "p_hedge": hedge_probability(h, qs, said), "facts_right": facts}
        print(f"{spec}: hedges {v['hedged']:.2f} of its answers, P(hedge) {v['p_hedge']:.2f}, facts right {'-' if facts is None else f'{facts:.2f}'}")
    samples = [r for c in load_comparisons(args.run / "rm" / "comparisons.jsonl", True)[: cfg.preferences.comparisons]
               if c["task"] in HEDGED_TASKS for r in c["responses"]]
    out["rm_samples_hedged"] = statistics.fmean(has_hedge(r.lower()) for r in samples) if samples else None
    if samples:
        print(f"the RM stage's samples hedge {out['rm_samples_hedged']:.2f} of their {len(samples)} facts and summaries")
    pairs = [plain_and_hedged(a) for a in first]
    for spec in args.rms:
        path, qs = asked(prompts, spec)
        rm = load_reward(path)
        msgs = [p["messages"] for p in qs]
        gain = (rm.score(msgs, [h for _, h in pairs]) - rm.score(msgs, [p for p, _ in pairs])).tolist()
        out["rms"][spec] = {"gain": statistics.fmean(gain), "hedge_higher": statistics.fmean(g > 0 for g in gain)}
        print(f"{spec}: the hedge adds {out['rms'][spec]['gain']:+.3f} (higher on {out['rms'][spec]['hedge_higher']:.2f} of answers)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
