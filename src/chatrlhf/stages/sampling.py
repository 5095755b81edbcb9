"""`chatrlhf sample`: K responses per prompt from a policy, written as a comparison task file.

    run_sample(cfg)                                    # world RM prompts, SFT policy, simulated labelers
    run_sample(cfg, conversations="chats.jsonl")       # ChatGPT-style: alternatives for a saved chat turn

The file (docs/ARCHITECTURE.md, "Comparison file") is what the simulated labelers and the labeling
app fill. With the world, about a `val_fraction` share of prompts is marked `"split": "val"` (held-out
prompts, whole content clusters: they ask nothing a training prompt asks); these are also ranked by
the held-out labelers, whose rankings are never trained on and give the "held-out labelers"
accuracy and their own agreement rate (the ceiling of any RM).

From conversations (the chat's saved transcripts or any conversation file): one model-written
message is picked at random per conversation, and K - 1 alternatives are sampled given the turns
before it; the original stays among the K responses (`original_index`), as in ChatGPT's comparison
data collection.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from chatrlhf.config import Config
from chatrlhf.lm.distributed import barrier, gather, init_processes, is_main, share
from chatrlhf.lm.rankings import assign_splits, to_competition, write_comparisons
from chatrlhf.lm.training import progress_bar

log = logging.getLogger(__name__)


# --- prompts --------------------------------------------------------------------------------


def world_prompts(world, n: int) -> list[dict[str, Any]]:
    prompts = world.prompts("rm")
    return prompts[:n] if n else prompts


def conversation_prompts(convs: list[list[dict]], rng: random.Random, n: int = 0) -> list[dict[str, Any]]:
    """For each conversation, a random assistant turn: its context and the original text."""
    out = []
    for ci, conv in enumerate(convs):
        turns = [i for i, m in enumerate(conv) if m["role"] == "assistant" and i > 0]
        if not turns:
            continue
        t = rng.choice(turns)
        out.append({"id": f"conv-{ci:05d}-t{t}", "task": None, "messages": conv[:t], "original": conv[t]["content"]})
    return out[:n] if n else out


def sample_responses(engine, message_lists: list[list[dict]], k: int, cfg: Config, offset: int = 0) -> list[list[str]]:
    """K samples per conversation at cfg.rm.temperature, in chunks under a progress bar. A chunk is
    k times the engine's batch, so continuous batching keeps the batch full for most of it. `offset`:
    the position of the first conversation in the whole list (a rank's share), which seeds its chunks."""
    from chatrlhf.lm.engine import SamplingParams

    chunk_prompts = max(1, engine.max_batch)
    out: list[list[str]] = []
    with progress_bar("sample") as bar:
        task = bar.add_task("sample", total=len(message_lists), info=f"K={k}")
        for lo in range(0, len(message_lists), chunk_prompts):
            chunk = message_lists[lo: lo + chunk_prompts]
            params = SamplingParams(max_new_tokens=cfg.rm.max_new_tokens, temperature=cfg.rm.temperature,
                                    seed=cfg.run.seed * 100_003 + (offset + lo) * k)
            gens = engine.generate_chat(chunk, params, n=k)
            out += [[g.text for g in gens[i * k: (i + 1) * k]] for i in range(len(chunk))]
            bar.update(task, advance=len(chunk))
    return out


def policy_comparisons(cfg: Config, world, policy_dir: Path, prompts: list[dict], r: int, rng: random.Random) -> list[dict]:
    """Round r's comparisons, not yet ranked: rm.k samples per prompt from `policy_dir`, about
    rm.val_fraction of the prompts held out (`rng` draws which); with rm.conditioned each asked for
    its group(s) first (asked_for_groups), so the policy answers under the line of the group that ranks."""
    from chatrlhf.lm.engine import load_engine

    splits = assign_splits(prompts, cfg.rm.val_fraction, rng)
    comps = [{"id": f"cmp-r{r}-{i + 1:06d}", "prompt_id": p["id"], "task": p.get("task"), "policy": f"round_{r - 1}",
              "split": s, "messages": p["messages"], "reference": p.get("reference"), "rankings": []}
             for i, (p, s) in enumerate(zip(prompts, splits))]
    if cfg.rm.conditioned:
        comps = asked_for_groups(world, comps, cfg)
    engine = load_engine(policy_dir, cfg.model.dtype, cfg.run.device, cfg.rm.sample_batch)
    for c, responses in zip(comps, sample_responses(engine, [c["messages"] for c in comps], cfg.rm.k, cfg)):
        c["responses"] = responses
    return comps


def asked_for_groups(world, comps: list[dict], cfg: Config) -> list[dict]:
    """rm.conditioned: each comparison asked for its group before its answers are sampled, one drawn by
    rm.labeler_groups' weights as label_with_world draws it, or with rm.groups_per_prompt > 1 one copy
    per group asked (group_copies); each copy's messages carry its group's line."""
    from chatrlhf.world.groups import group_weights

    if world is None:
        raise ValueError("rm.conditioned asks each comparison for one of the embedded world's labeler groups; "
                         "this run has no world")
    if cfg.rm.groups_per_prompt > 1:
        comps = group_copies(world, comps, cfg)
    weights = group_weights(world, cfg.rm.labeler_groups)
    for c in comps:
        ask_group(c, weights, cfg.run.seed)
    return comps


# --- labeling -------------------------------------------------------------------------------


def label_with_world(world, comparisons: list[dict], cfg: Config, rng: random.Random) -> int:
    """Simulated labelers rank each comparison: labelers_per_prompt training labelers, plus up to
    cfg.rm.val_labelers held-out labelers on held-out ("val") prompts. With rm.labeler_groups only
    those groups rank (held-out prompts: their held-out members); with rm.conditioned each comparison
    is ranked by one group and names it in a system message; with rm.groups_per_prompt > 1 as well,
    `comparisons` grows to one copy per group asked (`group_copies`). Returns rankings written."""
    from chatrlhf.world.loader import labeler_id

    if cfg.rm.conditioned and cfg.rm.groups_per_prompt > 1:
        comparisons[:] = group_copies(world, comparisons, cfg)
    pick = _labeler_picker(world, cfg, rng)
    n = 0
    for c in comparisons:
        if c.get("reference") is None and c.get("task") is None:
            continue  # no gold for a free conversation: left for human labelers (labeling app)
        prompt = {"id": c["prompt_id"], "task": c.get("task"), "messages": c["messages"], "reference": c.get("reference")}
        labs = pick(c)
        for lab in labs:
            ranks = to_competition(list(lab.rank(prompt, c["responses"], rng)))
            c["rankings"].append({"labeler": labeler_id(lab), "ranks": ranks})
            n += 1
    return n


def _labeler_picker(world, cfg: Config, rng: random.Random):
    """comparison -> the labelers who rank it (and, conditioned, the comparison names its group)."""
    from chatrlhf.world.groups import group_weights

    rc = cfg.rm
    if rc.labeler_groups is None and not rc.conditioned:  # everyone pooled, judges among the held-out
        train_labs, held_labs = list(world.labelers(held_out=False)), list(world.labelers(held_out=True))
        if not train_labs:
            raise ValueError("world has no training labelers to rank the samples")
        return lambda c: (rng.sample(train_labs, min(rc.labelers_per_prompt, len(train_labs)))
                          + (rng.sample(held_labs, min(rc.val_labelers, len(held_labs))) if c.get("split") == "val" else []))
    weights = group_weights(world, rc.labeler_groups)

    def pick(c: dict) -> list:
        if rc.conditioned:
            ask_group(c, weights, cfg.run.seed)
        groups = [c["group"]] if rc.conditioned else list(weights)
        mix = [(lab, w) for lab, w in world.labeler_mix({g: weights[g] for g in groups})]
        labs = _weighted_sample(mix, min(c.get("n_labelers", rc.labelers_per_prompt), len(mix)), rng)
        if c.get("split") == "val":
            held = world.labelers(held_out=True, groups=groups)
            labs += rng.sample(held, min(rc.val_labelers, len(held)))
        return labs
    return pick


def ask_group(c: dict, weights: dict[str, float], seed: int) -> None:
    """A conditioned comparison asked for its group in a system message: the group it names (a
    group_copies copy), else one drawn for its prompt by the weights, the same on every call."""
    from chatrlhf.world.groups import draw_group, for_group

    group = c.get("group") or draw_group(weights, c["prompt_id"], seed)
    c["messages"], c["group"] = for_group(c, group)["messages"], group


def group_copies(world, comparisons: list[dict], cfg: Config) -> list[dict]:
    """rm.groups_per_prompt > 1: each comparison once per group it is asked for (rm.groups_per_prompt
    groups drawn without replacement by labeler_groups' weights, the same for a prompt on every call;
    every group when it reaches their number), each copy naming its group and carrying its share of
    labelers_per_prompt (`n_labelers`, at least one) or rm.labelers_per_group. A copy that already names a
    group is kept as it is."""
    from chatrlhf.world.groups import group_weights

    weights = group_weights(world, cfg.rm.labeler_groups)
    n = min(cfg.rm.groups_per_prompt, len(weights))
    out = []
    for c in comparisons:
        if c.get("group"):
            out.append(c)
            continue
        rng = random.Random(f"{cfg.run.seed}:{c['prompt_id']}")
        chosen = _weighted_sample(sorted(weights.items()), n, rng)
        for i, g in enumerate(chosen):
            labs = cfg.rm.labelers_per_group or max(1, cfg.rm.labelers_per_prompt // n + (i < cfg.rm.labelers_per_prompt % n))
            out.append({**c, "id": f"{c.get('id', c['prompt_id'])}/{g}", "group": g, "n_labelers": labs,
                        "rankings": list(c.get("rankings", []))})
    return out


def _weighted_sample(items: list[tuple[Any, float]], k: int, rng: random.Random) -> list:
    """k distinct items drawn without replacement, each draw in proportion to the weights left."""
    pool, out = list(items), []
    for _ in range(k):
        total = sum(w for _, w in pool)
        u, acc = rng.random() * total, 0.0
        for i, (x, w) in enumerate(pool):
            acc += w
            if u < acc or i == len(pool) - 1:
                out.append(x)
                pool.pop(i)
                break
    return out


def written_answers(world, prompts: list[dict], splits: list[str], cfg: Config) -> dict[int, tuple[int, dict]]:
    """rm.written_answers: prompt index -> (where the written answer goes among the K samples, the
    demonstration a training labeler wrote for it), for that share of the training prompts. Its own
    random stream, so the rest of the stage draws what it drew without it."""
    from chatrlhf.world.labelers import write_demonstrations

    fraction = cfg.rm.written_answers
    if not fraction:
        return {}
    rng = random.Random(f"{cfg.run.seed}-written")
    chosen = [i for i, split in enumerate(splits) if split == "train" and rng.random() < fraction]
    writers = [lab for lab, _ in world.labeler_mix(cfg.rm.labeler_groups)]  # those whose rankings the RM learns
    demos = write_demonstrations([prompts[i] for i in chosen], writers, cfg.run.seed, cfg.world.demo_quality, world.facts)
    return {i: (rng.randrange(cfg.rm.k + 1), d) for i, d in zip(chosen, demos)}


def refusal_answers(prompts: list[dict], splits: list[str], cfg: Config) -> dict[int, tuple[int, str]]:
    """rm.refusal_answers: prompt index -> (where a refusal goes among the answers, the refusal), for that
    share of the training prompts that are not harmful requests. Its own random stream."""
    from chatrlhf.world.writing import flawed

    fraction = cfg.rm.refusal_answers
    if not fraction:
        return {}
    rng = random.Random(f"{cfg.run.seed}-refusal")
    chosen = [i for i, (p, split) in enumerate(zip(prompts, splits))
              if rng.random() < fraction and split == "train" and p.get("task") != "harmful"]
    return {i: (rng.randrange(cfg.rm.k + 1), flawed(prompts[i], "over_refusal", rng)) for i in chosen}


def add_answers(c: dict, written: tuple[int, dict] | None, refusal: tuple[int, str] | None) -> None:
    """Put a labeler's own answer (`written_answers`) and a refusal (`refusal_answers`) among a
    comparison's responses, each at its drawn place, and record where they are."""
    if written is not None:
        at, demo = written
        c["responses"].insert(at, demo["messages"][-1]["content"])
        c["written_index"], c["writer"] = at, demo["labeler"]
    if refusal is not None:
        at, text = refusal
        c["responses"].insert(at, text)
        c["refusal_index"] = at
        if c.get("written_index") is not None and c["written_index"] >= at:
            c["written_index"] += 1


# --- stage entry point ----------------------------------------------------------------------


def default_policy(cfg: Config) -> Path:
    """The newest policy of the run (latest round's PPO, ppo/, sft/, pretrain/)."""
    from chatrlhf.layout import resolve_model

    return resolve_model(cfg, None)


def run_sample(cfg: Config, policy: str | Path | None = None, out: str | Path | None = None,
               conversations: str | Path | None = None, label: bool = True) -> Path:
    """Write `out` (default <rm>/comparisons.jsonl): K responses per prompt from `policy`, ranked
    by the simulated labelers when `label` and the world knows the prompts."""
    from chatrlhf.lm.engine import load_engine
    from chatrlhf.world.loader import load_world

    k = cfg.rm.k
    if k < 2:
        raise ValueError(f"rm.k = {k}: ranking needs at least 2 responses per prompt")
    policy_dir = Path(policy) if policy else default_policy(cfg)
    out = Path(out) if out else cfg.stage_dir("rm") / "comparisons.jsonl"
    rng = random.Random(cfg.run.seed)
    init_processes(cfg.run.device)  # before the engine picks its device
    world = load_world(cfg)
    if conversations:
        from chatrlhf.lm.conversations import load_conversations

        prompts = conversation_prompts(load_conversations(str(conversations)), rng, cfg.rm.n_prompts)
        if not prompts:
            raise ValueError(f"{conversations}: no conversation has a model-written message to sample alternatives for")
    elif world is not None:
        prompts = world_prompts(world, cfg.rm.n_prompts)
    else:
        raise FileNotFoundError(f"no world at {cfg.stage_dir('world')}: run `chatrlhf world` or pass --conversations")
    splits = assign_splits(prompts, cfg.rm.val_fraction, rng)
    engine = load_engine(policy_dir, cfg.model.dtype, cfg.run.device, cfg.rm.sample_batch)
    n_new = k - 1 if conversations else k
    mine = share(len(prompts))  # each rank samples its share of the prompts; all of them come back to every rank
    samples = gather(sample_responses(engine, [p["messages"] for p in prompts[mine]], n_new, cfg, offset=mine.start))
    written = written_answers(world, prompts, splits, cfg) if world is not None and not conversations else {}
    refusals = refusal_answers(prompts, splits, cfg) if world is not None and not conversations else {}
    comparisons = []
    for i, (p, resp, split) in enumerate(zip(prompts, samples, splits)):
        c: dict[str, Any] = {"id": f"cmp-{i + 1:06d}", "prompt_id": p["id"], "task": p.get("task"),
                             "policy": policy_dir.name, "split": split, "messages": p["messages"],
                             "responses": list(resp), "rankings": []}
        if "original" in p:
            at = rng.randrange(k)
            c["responses"] = [*resp[:at], p["original"], *resp[at:]]
            c["original_index"] = at
        add_answers(c, written.get(i), refusals.get(i))
        if p.get("reference") is not None:
            c["reference"] = p["reference"]
        comparisons.append(c)
    if label and world is not None:
        n = label_with_world(world, comparisons, cfg, rng)
        log.info("%d rankings by simulated labelers", n)
    if is_main():
        write_comparisons(comparisons, out)
    barrier()
    return out
