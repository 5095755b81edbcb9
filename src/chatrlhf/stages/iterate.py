"""`chatrlhf iterate`: iterated RLHF, the loop that made ChatGPT.

Round 1 is the first RM (rm/) and PPO from SFT (ppo/). Each later round r:

    1. sample K responses per *fresh* prompt from the newest policy        (collect_comparisons)
    2. have them ranked: simulated labelers, or the labeling app's queue
       (or, when iterate.labeling_project is a chat project of the app, 1-2 are the trainers' chats
       with the served policy and their ranked turns: labeling/loop.py)
    3. add them to the RM's data and continue (or retrain) the RM         rounds/round_r/rm/
    4. PPO again from the newest policy, still KL-anchored to SFT          rounds/round_r/ppo/

Per round we record what changed (RM accuracy, reward, gold, KL) in rounds/summary.json. A round
whose ppo/meta.json says complete is skipped, so an interrupted run resumes round by round.
By default exactly `iterate.rounds` rounds run, so the same seed gives the same rounds on any
machine. Optionally (`iterate.max_rounds` > `iterate.rounds`, under `chatrlhf run` only), later rounds
start only while the run fits in `iterate.budget_minutes`; the round count then depends on the
machine's speed, and rounds/meta.json says why the last one was or was not started.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from chatrlhf.config import Config
from chatrlhf.layout import round_dir, round_paths
from chatrlhf.lm.distributed import is_main, on_main
from chatrlhf.lm.modeling import read_meta, stage_complete, write_meta

console = Console(stderr=True, quiet=not is_main())  # one process speaks for all


# --- 1-2. comparisons from the newest policy ---------------------------------------------------


def collect_comparisons(cfg: Config, world, policy_dir: Path, prompts: list[dict], out: Path, r: int) -> Path:
    """K samples per prompt from `policy_dir`, ranked, written as a comparison file."""
    from chatrlhf.lm.rankings import write_comparisons
    from chatrlhf.stages.sampling import label_with_world, policy_comparisons

    rng = random.Random(cfg.run.seed * 1000 + r)
    comparisons = policy_comparisons(cfg, world, policy_dir, prompts, r, rng)
    if cfg.iterate.source == "labeling_app":
        comparisons = rank_in_labeling_app(cfg, comparisons, r)
    else:
        label_with_world(world, comparisons, cfg, rng)
    on_main(lambda: write_comparisons(comparisons, out))  # every rank holds the same comparisons; one writes them
    return out


def rank_in_labeling_app(cfg: Config, comparisons: list[dict], r: int) -> list[dict]:
    """Push the comparisons to the labeling app's queue and wait until people have ranked them."""
    from chatrlhf.labeling.client import LabelingClient

    it = cfg.iterate
    token = os.environ.get("CHATRLHF_LABEL_TOKEN")
    if not it.labeling_url or not token:
        raise ValueError("iterate.source = labeling_app needs iterate.labeling_url and the admin token in "
                         "the CHATRLHF_LABEL_TOKEN environment variable")
    project = f"{it.labeling_project or 'chatrlhf'}-round-{r}"
    client = LabelingClient(it.labeling_url, token)
    client.push_comparisons(project, comparisons, labelers_per_item=cfg.rm.labelers_per_prompt)
    console.print(f"iterate: {len(comparisons)} comparisons queued in {it.labeling_url} project {project}; waiting")
    client.wait_complete(project)
    return client.pull_rankings(project, group=it.labeling_group)


# --- 3-4. RM update and PPO --------------------------------------------------------------------


def all_comparisons(cfg: Config, upto: int) -> list[dict]:
    """The RM's data after round `upto`: round 1's comparisons plus every later round's."""
    from chatrlhf.lm.rankings import load_comparisons

    files = [cfg.stage_dir("rm") / "comparisons.jsonl"]
    files += [round_dir(cfg, r) / "comparisons.jsonl" for r in range(2, upto + 1)]
    data: list[dict] = []
    if cfg.rm.data:  # round 1's RM was trained on the user's comparisons
        data += load_comparisons(cfg.rm.data, cfg.rm.allow_ties, cfg.rm.columns, cfg.rm.split)
    for f in files:
        if f.is_file():
            data += load_comparisons(f, cfg.rm.allow_ties)
    return data


def round_rm_data(cfg: Config, r: int) -> list[dict]:
    """The RM's data in round r. retrain: every comparison so far. continue: this round's fresh
    comparisons plus as many earlier ones (stages.reward.with_replay): the RM learns the newest policy's
    mistakes (the exploits PPO found) from half its data instead of a sliver, without forgetting the rest."""
    from chatrlhf.lm.rankings import load_comparisons
    from chatrlhf.stages.reward import with_replay

    fresh = load_comparisons(round_dir(cfg, r) / "comparisons.jsonl", cfg.rm.allow_ties)
    older = all_comparisons(cfg, r - 1)
    if cfg.iterate.rm_mode == "retrain":
        return older + fresh
    return with_replay(fresh, older, cfg.run.seed * 1000 + r)


def run_round(cfg: Config, world, r: int) -> Path:
    """Round r >= 2: comparisons -> RM -> PPO. Returns the new policy dir. The round's own seconds
    (summed over resumed invocations) go to round_r/seconds.json, which the time budget reads."""
    from chatrlhf.stages.ppo import fresh_prompts, run_ppo
    from chatrlhf.stages.reward import member_dir, reward_complete, train_reward_ensemble

    d = round_dir(cfg, r)
    d.mkdir(parents=True, exist_ok=True)
    prev_rm, prev_policy = round_paths(cfg, r - 1)
    rm_dir, ppo_dir = round_paths(cfg, r)
    if stage_complete(ppo_dir):
        return ppo_dir
    t0, before = time.time(), round_seconds(cfg, r) or 0.0
    cmp_file = d / "comparisons.jsonl"
    chats = None
    if cfg.iterate.source == "labeling_app":  # a chat project: the trainers' chats with the policy feed the round
        from chatrlhf.labeling import loop

        chats = loop.chat_project(cfg)
    if not cmp_file.is_file() and chats is not None:
        loop.collect_chat_round(cfg, prev_policy, d, r)
    elif not cmp_file.is_file():
        collect_comparisons(cfg, world, prev_policy, fresh_prompts(world, cfg, r), cmp_file, r)
    if not reward_complete(rm_dir, cfg.rm.ensemble):
        def init(m: int) -> Path:  # continue: each ensemble member from its own last round (a new one from member 0)
            if cfg.iterate.rm_mode != "continue":
                return cfg.stage_dir(cfg.rm.init_from)
            return member_dir(prev_rm, m) if stage_complete(member_dir(prev_rm, m)) else prev_rm

        train_reward_ensemble(cfg, round_rm_data(cfg, r), init, rm_dir, world=world, keep_done=True)
    run_ppo(cfg, policy_dir=prev_policy, rm_dir=rm_dir, out_dir=ppo_dir, ref_dir=cfg.stage_dir("sft"))
    if chats is not None:  # the trainers talk to the new policy from now on, for round r + 1
        loop.serve_policy(cfg, ppo_dir, r + 1)
    seconds = json.dumps({"seconds": round(before + time.time() - t0, 1)})
    on_main(lambda: (d / "seconds.json").write_text(seconds))  # every rank then reads rank 0's time
    return ppo_dir


def round_seconds(cfg: Config, r: int) -> float | None:
    """Seconds round r took, when known (round 1: the `ppo` stage's time in pipeline.json)."""
    f = round_dir(cfg, r) / "seconds.json" if r > 1 else Path(cfg.run.out_dir) / "pipeline.json"
    if not f.is_file():
        return None
    data = json.loads(f.read_text())
    return data["seconds"] if r > 1 else data.get("stages", {}).get("ppo")


def another_round_fits(cfg: Config, r: int, elapsed_s: float) -> tuple[bool, str]:
    """Round r beyond iterate.rounds runs when the run's stage time so far plus the last round's time
    (the best forecast of this one's) stays within iterate.budget_minutes. A round already begun
    (an interrupted run) is finished regardless."""
    if round_dir(cfg, r).is_dir():
        return True, f"round {r}: resuming it"
    last = round_seconds(cfg, r - 1)
    if last is None:
        return False, f"no round {r}: round {r - 1}'s time is unknown, so the budget cannot be judged"
    forecast, budget = elapsed_s + last, 60 * cfg.iterate.budget_minutes
    verdict = "fits" if forecast <= budget else "would not fit"
    return forecast <= budget, (f"round {r} {verdict} in iterate.budget_minutes={cfg.iterate.budget_minutes:g}: "
                                f"{elapsed_s:.0f} s so far + {last:.0f} s (round {r - 1}) = {forecast:.0f} s of {budget:.0f}")


def round_record(cfg: Config, r: int) -> dict[str, Any]:
    rm_dir, ppo_dir = round_paths(cfg, r)
    rm_eval = read_meta(rm_dir).get("eval", {})
    ppo, bon = read_meta(ppo_dir), read_meta(ppo_dir / "best_of_n")
    return {"round": r, "rm_acc_held_out_prompts": rm_eval.get("acc_held_out_prompts"),
            "rm_acc_held_out_labelers": rm_eval.get("acc_held_out_labelers"),
            "rm_train_comparisons": rm_eval.get("train_comparisons"),
            "reward": ppo.get("reward"), "gold": ppo.get("gold"), "kl": ppo.get("kl"),
            "ppo_iterations": ppo.get("iterations"), "selected_iteration": ppo.get("selected_iteration"),
            "guard_win_rate": ppo.get("guard_win_rate"), "best_of_n_gold_mean": bon.get("gold_mean"),
            "best_of_n_gold_best": bon.get("gold_best"), "seconds": round_seconds(cfg, r), "policy": str(ppo_dir)}


def run_iterate(cfg: Config, elapsed_s: float | None = None) -> Path:
    """Rounds 2..iterate.rounds (round 1 must exist: `chatrlhf rm` and `chatrlhf ppo`), then, given the
    run's stage seconds before the rounds (`chatrlhf run` passes them), more rounds up to
    iterate.max_rounds while they fit in iterate.budget_minutes. Returns the newest policy."""
    from chatrlhf.world.loader import load_world

    if not stage_complete(round_paths(cfg, 1)[1]):
        raise FileNotFoundError(f"iterate: round 1 is missing ({cfg.stage_dir('ppo')} is not a complete stage); "
                                "run `chatrlhf rm` and `chatrlhf ppo` first, or `chatrlhf run`")
    world = load_world(cfg)
    if world is None and cfg.iterate.source == "simulated":
        raise FileNotFoundError(f"iterate: iterate.source=simulated ranks the fresh samples with the embedded world's "
                                f"labelers, and there is no world at {cfg.stage_dir('world')}; with your own data "
                                "set iterate.source=labeling_app (people rank them in `chatrlhf label serve`)")
    newest = round_paths(cfg, 1)[1]
    records = [round_record(cfg, 1)]
    last_round = cfg.iterate.rounds if elapsed_s is None else max(cfg.iterate.rounds, cfg.iterate.max_rounds)
    budget_note = None
    for r in range(2, last_round + 1):
        if r > cfg.iterate.rounds:
            fits, budget_note = another_round_fits(cfg, r, elapsed_s + sum(round_seconds(cfg, k) or 0.0 for k in range(2, r)))
            console.print(f"[dim]{budget_note}[/dim]")
            if not fits:
                break
        newest = run_round(cfg, world, r)
        records.append(round_record(cfg, r))
        _print_round(records[-1])
    out = cfg.stage_dir("rounds")

    def write() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(records, indent=2))
        write_meta(out, {"stage": "rounds", "rounds": len(records), "rounds_fixed": cfg.iterate.rounds,
                         "policy": str(newest), "budget": budget_note, "complete": True})

    on_main(write)
    return newest


def _print_round(rec: dict[str, Any]) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    console.print(f"[bold]round {rec['round']}[/bold]: RM acc {fmt(rec['rm_acc_held_out_prompts'])}, "
                  f"reward {fmt(rec['reward'])}, gold {fmt(rec['gold'])}, KL {fmt(rec['kl'])}")
