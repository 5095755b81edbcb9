"""`chatrlhf preferences`: whose preferences does a model learn?

From the same SFT model and the same sampled answers (the RM stage's comparisons, re-ranked), train
one reward model and policy per labeler group, one on everyone's rankings pooled, and one
group-conditioned model on all groups (the group named in a system message); with
preferences.mixed_samples the shared answers are drawn from every group's SFT model instead. With
preferences.conditioned_sft a second conditioned model, conditioned-sft, starts its RM and policy
from an SFT model whose demonstrations named their writer's group the same way, so it has read the
group line before the RM stage asks it to. Each group's held-out members, never trained on, then
judge every policy against the pooled one on held-out prompts. The diagonal is the bias a group
passes on; the conditioned rows are one model serving each group when asked for it.

    runs/default/preferences/{pooled,brief,thorough,cautious,conditioned}/{comparisons.jsonl,rm/,ppo/}
    runs/default/preferences/conditioned-sft/{sft/,comparisons.jsonl,rm/,ppo/}
    runs/default/preferences/table.json, table.md
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from chatrlhf.config import Config, PreferencesConfig
from chatrlhf.evaluate.headline import task_rows
from chatrlhf.evaluate.models import generate, load_handle, prompt_text
from chatrlhf.evaluate.report import run_report
from chatrlhf.evaluate.stats import change_verdict, cluster_bootstrap_ci
from chatrlhf.evaluate.whose import BEFORE, CONDITIONED, SFT_ONLY, table_md, table_rows
from chatrlhf.evaluate.world_eval import compare_to_baseline
from chatrlhf.lm.distributed import init_processes, is_main, on_main
from chatrlhf.lm.modeling import stage_complete
from chatrlhf.lm.rankings import load_comparisons, write_comparisons
from chatrlhf.stages.ppo import run_ppo
from chatrlhf.stages.reward import train_reward_model, with_replay
from chatrlhf.stages.sampling import label_with_world
from chatrlhf.stages.sft import train_sft
from chatrlhf.world.groups import for_group
from chatrlhf.world.loader import require_world

console = Console(stderr=True, quiet=not is_main())  # one process reports


def variants(groups: list[str], conditioned_sft: bool = False) -> dict[str, dict[str, Any]]:
    """name -> the rm.* settings that say whose rankings train it (conditioned-sft differs from
    conditioned in its SFT model only)."""
    out: dict[str, dict[str, Any]] = {"pooled": {"labeler_groups": None, "conditioned": False}}
    out |= {g: {"labeler_groups": {g: 1.0}, "conditioned": False} for g in groups}
    out["conditioned"] = {"labeler_groups": {g: 1.0 for g in groups}, "conditioned": True}
    if conditioned_sft:
        out["conditioned-sft"] = out["conditioned"]
    return out


def variant_config(cfg: Config, rm_over: dict[str, Any]) -> Config:
    """The run's config with one variant's rankings, and the same PPO budget for every variant: a
    best-of-n start only with preferences.best_of_n (the same n for every variant), and with
    preferences.guard the guard of the main run judged by the variant's own training labelers
    (stages.ppo._guard_labelers), else none: the last iteration; PPO's learning rate
    preferences.learning_rate where set. The conditioned variants weigh the
    groups by preferences.conditioned_weights where set, and only they normalise the reward per group
    (ppo.reward.group_normalise)."""
    d = cfg.model_dump()
    d["rm"] |= rm_over
    if rm_over["conditioned"] and (weights := cfg.preferences.conditioned_weights) is not None:
        if sorted(weights) != sorted(cfg.preferences.groups) or min(weights.values()) <= 0:
            raise ValueError(f"preferences.conditioned_weights={weights}: give each of preferences.groups "
                             f"({', '.join(cfg.preferences.groups)}) a weight above 0")
        d["rm"]["labeler_groups"] = dict(weights)
    d["ppo"]["reward"]["group_normalise"] &= rm_over["conditioned"]  # per-group statistics need a conditioned RM
    iterations = (rm_over["conditioned"] and cfg.preferences.conditioned_ppo_iterations) or cfg.preferences.ppo_iterations
    d["ppo"] |= {"total_iterations": iterations, "max_minutes": 0.0}
    if cfg.preferences.learning_rate is not None:
        d["ppo"]["update"]["learning_rate"] = cfg.preferences.learning_rate
    if not cfg.preferences.guard:
        d["ppo"]["guard"]["early_stop"] = "none"
    d["ppo"]["rejection_sampling"]["n"] = cfg.preferences.best_of_n
    return Config.model_validate(d)


def base_comparisons(cfg: Config) -> list[dict]:
    """The RM stage's sampled answers, rankings dropped, for every variant to rank again."""
    path = cfg.stage_dir("rm") / "comparisons.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"preferences re-ranks the RM stage's samples at {path}; run `chatrlhf rm` first")
    comps = load_comparisons(path, cfg.rm.allow_ties)[: cfg.preferences.comparisons]
    return [{k: v for k, v in c.items() if k not in ("rankings", "group", "n_labelers")} | {"rankings": []} for c in comps]


def sft_with(cfg: Config, out: Path, **sft: Any) -> Path:
    """The run's SFT repeated into `out` from the same pre-trained model with the same settings but
    the sft.* fields given (a field given as None keeps the run's), and preferences.sft_ptx_coef where
    set (once: a finished `out` is kept)."""
    if not stage_complete(out):
        d = cfg.model_dump()
        sft.setdefault("ptx_coef", cfg.preferences.sft_ptx_coef)
        d["sft"] |= {k: v for k, v in sft.items() if v is not None}
        train_sft(Config.model_validate(d), out)
    return out


def conditioned_sft(cfg: Config, out: Path) -> Path:
    """The run's SFT with each demonstration naming its writer's group in a system message
    (sft.group_system_message); with preferences.conditioned_sft_start=sft, fine-tuned from the run's
    SFT model instead of the pre-trained one."""
    start = str(cfg.stage_dir("sft")) if cfg.preferences.conditioned_sft_start == "sft" else None
    return sft_with(cfg, out, group_system_message=True, group_demonstrations=cfg.preferences.group_demonstrations,
                    group_line_near_answer=line_near_answer(cfg), start_from=start,
                    epochs=cfg.preferences.conditioned_sft_epochs)


def line_near_answer(cfg: Config) -> bool:
    """Whether conditioned-sft's SFT model reads the group line next to the answer."""
    return cfg.preferences.line_near_answer or cfg.sft.group_line_near_answer


def variant_sft(cfg: Config, name: str, out: Path) -> Path:
    """The SFT model a variant starts from: the run's, conditioned-sft's own, or with
    preferences.group_sft a group's own (demonstrations by its training labelers only, sft.writer_group;
    fine-tuned from the run's SFT model with preferences.group_sft_start=sft).
    With preferences.sft_ptx_coef every one is trained with that SFT-ptx weight, the run's too (into
    pooled/sft, which the pooled and conditioned variants share)."""
    if name == "conditioned-sft":
        return conditioned_sft(cfg, out)
    if cfg.preferences.group_sft and name in cfg.preferences.groups:
        start = str(cfg.stage_dir("sft")) if cfg.preferences.group_sft_start == "sft" else None
        return sft_with(cfg, out, writer_group=name, epochs=cfg.preferences.group_sft_epochs, start_from=start)
    if cfg.preferences.sft_ptx_coef is not None:  # the run's SFT again with that weight, shared as the run's is
        return sft_with(cfg, out.parent.parent / "pooled" / "sft")
    return cfg.stage_dir("sft")


def train_variant(cfg: Config, world, base: list[dict], name: str, out: Path) -> Path:
    """Rank the shared answers as this variant's labelers would, train its RM, then PPO, both from
    the variant's SFT model (variant_sft)."""
    vcfg = variant_config(cfg, variants(cfg.preferences.groups, True)[name])
    sft = variant_sft(cfg, name, out / "sft")
    rm_dir, ppo_dir = out / "rm", out / "ppo"
    if not stage_complete(rm_dir):
        comps = [json.loads(json.dumps(c)) for c in base]
        if cfg.preferences.own_samples and sft != cfg.stage_dir("sft"):
            own_samples(world, vcfg, sft, comps)
        label_with_world(world, comps, vcfg, random.Random(cfg.run.seed))
        on_main(lambda: write_comparisons(comps, out / "comparisons.jsonl"))  # what this variant's labelers said, to audit
        train_reward_model(vcfg, comps, sft, rm_dir, world=world)
    ref = sft if cfg.preferences.own_reference else None  # None: the run's shared SFT model
    if not stage_complete(ppo_dir):
        run_ppo(vcfg, policy_dir=sft, rm_dir=rm_dir, out_dir=ppo_dir, ref_dir=ref, group_rm_dirs=group_rewards(vcfg, out))
    if (rounds := variant_rounds(vcfg.preferences, vcfg.rm.conditioned)) > 1:
        return later_rounds(vcfg, world, out, rm_dir, ppo_dir, ref, rounds)
    return ppo_dir


def variant_rounds(pc: PreferencesConfig, conditioned: bool) -> int:
    """How many rounds a variant runs: preferences.rounds, a conditioned one preferences.conditioned_rounds where set."""
    return (pc.conditioned_rounds or pc.rounds) if conditioned else pc.rounds


def later_rounds(vcfg: Config, world, out: Path, rm_dir: Path, ppo_dir: Path, ref: Path | None, rounds: int) -> Path:
    """Rounds 2 to `rounds` (variant_rounds): each round r (into out/round_r) has the variant's own labelers
    rank rm.k samples of its newest policy for fresh PPO prompts (the prompts and samples of the main run's rounds),
    continues its newest RM on them with as many of its earlier comparisons replayed, and runs PPO again
    from the newest policy to the same KL reference. A conditioned variant's prompts each ask for a group
    (sampling.asked_for_groups), its policy answers under that group's line and that group's labelers rank; with
    preferences.conditioned_reward=groups its PPO is paid by each group's RM of the same round.
    Returns the last round's policy."""
    from chatrlhf.stages.ppo import fresh_prompts
    from chatrlhf.stages.sampling import policy_comparisons

    files = [out / "comparisons.jsonl"]
    for r in range(2, rounds + 1):
        d = out / f"round_{r}"
        files.append(d / "comparisons.jsonl")
        if not stage_complete(d / "ppo"):
            d.mkdir(parents=True, exist_ok=True)
            if not files[-1].is_file():
                rng = random.Random(vcfg.run.seed * 1000 + r)
                comps = policy_comparisons(vcfg, world, ppo_dir, fresh_prompts(world, vcfg, r), r, rng)
                label_with_world(world, comps, vcfg, rng)
                on_main(partial(write_comparisons, comps, files[-1]))  # every rank holds the same; one writes
            if not stage_complete(d / "rm"):
                fresh = load_comparisons(files[-1], vcfg.rm.allow_ties)
                older = [c for f in files[:-1] for c in load_comparisons(f, vcfg.rm.allow_ties)]
                train_reward_model(vcfg, with_replay(fresh, older, vcfg.run.seed * 1000 + r), rm_dir, d / "rm", world=world)
            run_ppo(vcfg, policy_dir=ppo_dir, rm_dir=d / "rm", out_dir=d / "ppo", ref_dir=ref,
                    group_rm_dirs=group_rewards(vcfg, out, d.name))
        rm_dir, ppo_dir = d / "rm", d / "ppo"
    return ppo_dir


def group_rewards(vcfg: Config, out: Path, round_dir: str = "") -> dict[str, Path] | None:
    """With preferences.conditioned_reward=groups, a conditioned variant's PPO (`vcfg`, variant_config's)
    is paid by each group's own RM of the same round (trained before it, beside `out`; `round_dir`:
    round_r, or "" for the first); None: by the variant's own RM."""
    if vcfg.preferences.conditioned_reward != "groups" or not vcfg.rm.conditioned:
        return None
    return {g: out.parent / g / round_dir / "rm" for g in vcfg.preferences.groups}


def own_samples(world, vcfg: Config, sft: Path, comps: list[dict]) -> None:
    """preferences.own_samples: each comparison's answers replaced by K samples of the variant's own SFT
    model, a conditioned variant's asked under the group line its labelers will rank for (the group drawn
    as label_with_world draws it, kept on the comparison)."""
    from chatrlhf.lm.engine import load_engine
    from chatrlhf.stages.sampling import ask_group, sample_responses
    from chatrlhf.world.groups import group_weights

    if vcfg.rm.conditioned:
        weights = group_weights(world, vcfg.rm.labeler_groups)
        for c in comps:
            ask_group(c, weights, vcfg.run.seed)
    engine = load_engine(sft, vcfg.model.dtype, vcfg.run.device, vcfg.rm.sample_batch)
    for c, responses in zip(comps, sample_responses(engine, [c["messages"] for c in comps], vcfg.rm.k, vcfg)):
        c["responses"], c["policy"] = responses, str(sft)


def mixed_samples(cfg: Config, out: Path, base: list[dict]) -> list[dict]:
    """preferences.mixed_samples: each comparison's K answers drawn in turn from the run's SFT model and
    each group's own (answer j of comparison i from source (i + j) mod S, so no source keeps a place),
    the same answers for every variant to rank; sampled once into preferences/mixed_comparisons.jsonl."""
    from chatrlhf.lm.data import read_jsonl
    from chatrlhf.lm.engine import load_engine
    from chatrlhf.stages.sampling import sample_responses

    path = out / "mixed_comparisons.jsonl"
    if path.is_file():
        kept = read_jsonl(path)
        same = [c["prompt_id"] for c in kept] == [c["prompt_id"] for c in base]
        if not same or any(len(c["responses"]) != cfg.rm.k for c in kept):
            raise ValueError(f"{path} holds answers for other prompts or another rm.k; move it away to sample them again")
        return kept
    names = ["sft", *cfg.preferences.groups]
    dirs = [cfg.stage_dir("sft")] + [variant_sft(cfg, g, out / g / "sft") for g in cfg.preferences.groups]
    slots = [[(i + j) % len(names) for j in range(cfg.rm.k)] for i in range(len(base))]
    drawn: dict[int, dict[int, list[str]]] = {}
    for s, sft in enumerate(dirs):
        rows = [i for i, sl in enumerate(slots) if s in sl]
        if rows:
            engine = load_engine(sft, cfg.model.dtype, cfg.run.device, cfg.rm.sample_batch)
            n = max(sl.count(s) for sl in slots)
            drawn[s] = dict(zip(rows, sample_responses(engine, [base[i]["messages"] for i in rows], n, cfg)))
    comps = []
    for i, c in enumerate(base):
        taken = {s: iter(drawn[s][i]) for s in set(slots[i])}
        comps.append(c | {"responses": [next(taken[s]) for s in slots[i]], "policy": "mixed",
                          "sources": [names[s] for s in slots[i]]})
    on_main(lambda: write_comparisons(comps, path))
    return comps


def answers(cfg: Config, path: Path, prompts: list[dict]) -> list[str]:
    h = load_handle(path.name, str(path), cfg.model.dtype)
    return generate(h, [prompt_text(h, p["messages"]) for p in prompts], cfg.eval.max_new_tokens, 0.0, cfg.run.seed)


def judge(cfg: Config, world, policies: dict[str, Path]) -> dict[str, Any]:
    """Each policy (the conditioned one asked for each group; with group_sft each group's SFT model too)
    against the pooled one, judged by each group's held-out members: win rate with a cluster-bootstrap
    interval."""
    pc, groups = cfg.preferences, cfg.preferences.groups
    prompts = world.prompts("eval")[: pc.eval_prompts]
    pooled = answers(cfg, policies["pooled"], prompts)
    said = {name: answers(cfg, policies[name], prompts) for name in [*groups, *(g + BEFORE for g in groups)]
            if name in policies}
    said |= {f"{c}:{g}": answers(cfg, policies[c], [for_group(p, g) for p in prompts])
             for c in CONDITIONED if c in policies for g in groups}
    rows = {name: judged_by_groups(world, prompts, responses, pooled, groups, cfg.run.seed, pc.judgements)
            for name, responses in said.items()}
    examples = [{"prompt": p["messages"][-1]["content"], "pooled": pooled[i],
                 **{name: said[name][i] for name in said}} for i, p in enumerate(prompts[:5])]
    substance = {name: substance_of(world, prompts, responses) for name, responses in {"pooled": pooled, **said}.items()}
    return {"n_prompts": len(prompts), "baseline": "pooled", "rows": rows, "substance": substance, "examples": examples}


def substance_of(world, prompts: list[dict], responses: list[str]) -> dict[str, float | None]:
    """What the world's rubric sees in the answers, beside the win rates (a report, never a signal):
    how often a policy refuses a harmless request, states a fact right, refuses a harmful one, and
    answers a borderline request, and with the safety note the cautious group wants, and hedges a
    claim about the world (which the cautious group also wants)."""
    from chatrlhf.world.gold import substantive_metrics

    m = substantive_metrics(prompts, [world.gold(p, r) for p, r in zip(prompts, responses)])
    return {k: m[k] for k in ("over_refusal_rate", "fact_correct", "harmful_refusal_rate", "borderline_answer_rate",
                              "borderline_caveat_rate", "hedge_rate")}


def judged_by_groups(world, prompts: list[dict], responses: list[str], baseline: list[str], groups: list[str],
                     seed: int, judgements: int) -> dict[str, dict[str, Any]]:
    """Group -> the win rate of `responses` over `baseline` by that group's held-out members, with a
    cluster-bootstrap interval and its verdict."""
    clusters = [p.get("cluster", p["id"]) for p in prompts]
    row = {}
    for g in groups:
        wins = compare_to_baseline(world, prompts, responses, baseline, seed, judgements,
                                   world.labelers(held_out=True, groups=[g]))
        ci = cluster_bootstrap_ci([w - 0.5 for w in wins], clusters, seed=seed)
        row[g] = {"win_rate": ci[0] + 0.5, "low": ci[1] + 0.5, "high": ci[2] + 0.5,
                  "verdict": change_verdict(ci, "preferred", "dispreferred"), "by_task": by_task(prompts, wins)}
    return row


def by_task(prompts: list[dict], wins: list[float]) -> dict[str, dict[str, float]]:
    """Task -> the mean win and the number of prompts: where a group's taste shows, and where not."""
    return {t: {"win_rate": sum(wins[i] for i in rows) / len(rows), "n": len(rows)} for t, rows in task_rows(prompts).items()}


def run_preferences(cfg: Config) -> Path:
    """Train every variant (reusing finished ones), judge them, write preferences/table.{json,md}."""
    pc = cfg.preferences
    if pc.mixed_samples and (pc.own_samples or not pc.group_sft):
        raise ValueError("preferences.mixed_samples draws the shared answers from each group's own SFT model: it needs "
                         "preferences.group_sft=true and preferences.own_samples=false")
    if pc.conditioned_reward == "groups" and variant_rounds(pc, conditioned=True) > pc.rounds:
        raise ValueError(f"preferences.conditioned_rounds={pc.conditioned_rounds} with conditioned_reward=groups: each "
                         f"round pays the conditioned model by the groups' RMs of that round, and they run "
                         f"preferences.rounds={pc.rounds}; set conditioned_rounds at most rounds")
    world = require_world(cfg, "`chatrlhf preferences`")
    init_processes(cfg.run.device)
    if not stage_complete(cfg.stage_dir("sft")):
        raise FileNotFoundError(f"preferences starts every variant from SFT at {cfg.stage_dir('sft')}; run `chatrlhf sft` first")
    if pc.conditioned_sft and line_near_answer(cfg) and not pc.own_reference:
        raise ValueError("preferences.line_near_answer puts the group line next to the answer, which the run's shared SFT "
                         "model reads as the user's words: as conditioned-sft's KL reference it drags the policy off "
                         "the prompt. Set preferences.own_reference=true (KL to conditioned-sft's own SFT model) or "
                         "preferences.line_near_answer=false")
    out = cfg.stage_dir("preferences")
    base = base_comparisons(cfg)
    if pc.mixed_samples:
        base = mixed_samples(cfg, out, base)
    names = variants(pc.groups, pc.conditioned_sft)
    policies = {name: train_variant(cfg, world, base, name, out / name) for name in names}
    if "conditioned-sft" in policies:
        policies[SFT_ONLY] = out / "conditioned-sft" / "sft"
    if pc.group_sft:  # each group's own SFT model too: what its RM and PPO add
        policies |= {g + BEFORE: out / g / "sft" for g in pc.groups}
    result = judge(cfg, world, policies) | {"group_sft": pc.group_sft, "mixed_samples": pc.mixed_samples, "rounds": pc.rounds,
                                         "conditioned_rounds": variant_rounds(pc, conditioned=True)}
    on_main(lambda: _write(cfg, out, result))  # every rank holds the same table; one writes it
    return out


def _write(cfg: Config, out: Path, result: dict[str, Any]) -> None:
    (out / "table.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(table_md(result, cfg.preferences.groups))
    _print(result, cfg.preferences.groups)
    if (cfg.stage_dir("report") / "report.html").is_file():  # the run's report shows the table from now on
        run_report(cfg)


def _print(result: dict[str, Any], groups: list[str]) -> None:
    head, rows = table_rows(result, groups)
    t = Table(title="Whose preferences: win rate vs the pooled policy, by each group's held-out members")
    for h in head:
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    console.print(t)
