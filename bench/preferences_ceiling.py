"""How far can a policy lean to one labeler group on this world? An oracle bound for the
whose-preferences table (`chatrlhf preferences`).

    python bench/preferences_ceiling.py --run runs/prefs1234 [--model sft] [--n 8] [--written-only] [--json out.json]

From one model's samples (n at T=1 per held-out eval prompt, the preferences table's prompts), pick
for each training group the sample its *training* members like best on average (their noise-free
expected utility), and the sample all training members like best (the pooled pick). Each group's
held-out members then judge every group's pick against the pooled pick, as the table judges
policies (same prompts, judgements per pair and cluster-bootstrap intervals). The diagonal is what
a policy that had learnt its group's taste perfectly, choosing among what this model already says,
would win with its own group; off the diagonal, what the other groups make of it. A second table
judges the same picks against the pooled policy's greedy answers (`preferences/pooled/ppo`), the
baseline of the whose-preferences table. With --conditioned (a group-conditioned SFT model, e.g.
`--model preferences/conditioned-sft/sft`) each group picks among samples asked for it in its system
message. A third table bounds the world itself: the ideal answer as
each group writes it (its length, tone, safety note and hedge) against the ideal answer as a writer
drawn from every training group writes it (the demonstrations' mix), judged the same way; a fourth
against the short formal answer with no safety note or hedge, which is what the pooled policies
write: how far a group's taste is from the pooled one's.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chatrlhf.config import load_config  # noqa: E402
from chatrlhf.evaluate.models import generate, load_handle, prompt_text  # noqa: E402
from chatrlhf.stages.preferences import judged_by_groups as judged  # noqa: E402
from chatrlhf.world.groups import for_group  # noqa: E402
from chatrlhf.world.loader import require_world  # noqa: E402
from chatrlhf.world.writing import ideal  # noqa: E402


def pick(prompts: list[dict], samples: list[list[str]], labelers: list) -> list[str]:
    """Per prompt, the sample with the highest mean expected utility over `labelers`."""
    out = []
    for p, cands in zip(prompts, samples):
        scores = [statistics.mean(lab.expected_utility(p, c) for lab in labelers) for c in cands]
        out.append(cands[max(range(len(cands)), key=scores.__getitem__)])
    return out


def sample(cfg, h, texts: list[str], n: int) -> list[list[str]]:
    """n T=1 samples per prompt text (draw k with seed run.seed + 1000 k)."""
    draws = [generate(h, texts, cfg.eval.max_new_tokens, 1.0, cfg.run.seed + 1000 * k) for k in range(n)]
    return [[d[i] for d in draws] for i in range(len(texts))]


def table(title: str, rows: dict[str, dict], groups: list[str]) -> str:
    lines = [f"{title}", "", "| pick for | " + " | ".join(f"judged by {g}" for g in groups) + " |",
             "|---|" + "---|" * len(groups)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{row[g]['win_rate']:.3f} [{row[g]['low']:.3f}, {row[g]['high']:.3f}]" for g in groups) + " |")
    return "\n".join(lines)


def oracle_picks(a, cfg, world, prompts: list[dict], train: list) -> dict:
    """The first two tables: each group's oracle pick among the model's samples against the pooled
    pick, and against the pooled policy's greedy answers."""
    groups, seed, j = cfg.preferences.groups, cfg.run.seed, cfg.preferences.judgements
    h = load_handle(a.model, str(a.run / a.model), cfg.model.dtype)
    texts = [prompt_text(h, p["messages"]) for p in prompts]
    samples = sample(cfg, h, texts, a.n)
    pooled_pick = pick(prompts, samples, train)
    # with --conditioned each group picks among samples asked for it (its system message), as a
    # group-conditioned model would be asked; the pooled pick stays among the plain prompt's samples
    own = {g: sample(cfg, h, [prompt_text(h, for_group(p, g)["messages"]) for p in prompts], a.n)
           for g in groups} if a.conditioned else {g: samples for g in groups}
    picks = {g: pick(prompts, own[g], world.labelers(held_out=False, groups=[g])) for g in groups}
    differ = {g: sum(x != y for x, y in zip(picks[g], pooled_pick)) / len(prompts) for g in groups}
    vs_pick = {g: judged(world, prompts, picks[g], pooled_pick, groups, seed, j) for g in groups}
    out = {"run": str(a.run), "model": a.model, "conditioned": a.conditioned, "n": a.n, "n_prompts": len(prompts), "judgements": j,
           "share_differing_from_pooled_pick": differ, "vs_pooled_pick": vs_pick}
    print(table(f"Oracle best-of-{a.n} of {a.model} for each group against the pooled pick "
                f"({'each group among samples asked for it, ' if a.conditioned else 'same samples, '}"
                f"{len(prompts)} prompts, {j} judgements a pair, held-out members)", vs_pick, groups))
    print("share of prompts where the group's pick differs from the pooled pick:",
          ", ".join(f"{g} {v:.2f}" for g, v in differ.items()))
    pooled_policy = a.run / "preferences" / "pooled" / "ppo"
    if pooled_policy.is_dir():
        hp = load_handle("pooled", str(pooled_policy), cfg.model.dtype)
        greedy = generate(hp, [prompt_text(hp, p["messages"]) for p in prompts], cfg.eval.max_new_tokens, 0.0, seed)
        vs_policy = {g: judged(world, prompts, picks[g], greedy, groups, seed, j) for g in groups}
        vs_policy["pooled pick"] = judged(world, prompts, pooled_pick, greedy, groups, seed, j)
        out["vs_pooled_policy_greedy"] = vs_policy
        print()
        print(table("The same picks against the pooled policy's greedy answers (the whose-preferences baseline)",
                    vs_policy, groups))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run directory with world, sft (and preferences/pooled/ppo)")
    ap.add_argument("--model", default="sft", help="stage directory to sample from (relative to --run)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--conditioned", action="store_true",
                    help="the model is group-conditioned: sample each group's candidates with its system message")
    ap.add_argument("--written-only", action="store_true",
                    help="only the third table (the world's bound): needs the run's world, no model")
    ap.add_argument("--set", action="append", default=[], help="config override, as on the CLI")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    cfg = load_config(None, [f"run.out_dir={a.run}", *a.set])
    world = require_world(cfg, "bench/preferences_ceiling.py")
    pc, groups = cfg.preferences, cfg.preferences.groups
    prompts = world.prompts("eval")[: pc.eval_prompts]
    seed, j = cfg.run.seed, pc.judgements
    train = world.labelers(held_out=False, groups=list(groups))
    out = {"run": str(a.run), "n_prompts": len(prompts), "judgements": j} if a.written_only \
        else oracle_picks(a, cfg, world, prompts, train)
    rng = random.Random(seed)
    writers = {g: world.labelers(held_out=False, groups=[g]) for g in groups}
    mixed = [rng.choice(train).write(p, random.Random(f"{seed}-{i}"), world.facts) for i, p in enumerate(prompts)]
    written = {g: [writers[g][i % len(writers[g])].write(p, random.Random(f"{seed}-{i}"), world.facts)
                   for i, p in enumerate(prompts)] for g in groups}
    vs_written = {g: judged(world, prompts, written[g], mixed, groups, seed, j) for g in groups}
    out["written_vs_mixed_writer"] = vs_written
    print()
    print(table("Ideal answers as each group writes them against a writer drawn from every training group",
                vs_written, groups))
    # what the pooled policies write: the short formal answer with no safety note and no hedge
    plain = [ideal(p, random.Random(f"{seed}-{i}"), "concise", world.facts, tone="formal") for i, p in enumerate(prompts)]
    out["written_vs_plain_formal"] = {g: judged(world, prompts, written[g], plain, groups, seed, j) for g in groups}
    print()
    print(table("The same answers against the short formal answer with no safety note or hedge (what the pooled "
                "policies write)", out["written_vs_plain_formal"], groups))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
