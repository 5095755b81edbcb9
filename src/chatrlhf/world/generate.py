"""`chatrlhf world`: generate the embedded world and write it to `<out_dir>/world`.

Writes facts, corpus, prompt splits, demonstrations, labelers, agreement.json and README.md;
meta.json (complete: true) goes last, so a crash never leaves a world that looks finished.
Nothing time-dependent is written: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from chatrlhf.config import Config
from chatrlhf.lm.distributed import on_main
from chatrlhf.world.core import SPLITS, World
from chatrlhf.world.schema import README
from chatrlhf.world.seeds import seed_role
from chatrlhf.world.writing import ideal

console = Console(stderr=True)


def write_meta(out_dir: Path, meta: dict) -> None:
    """Same file and format as chatrlhf.modeling.write_meta (atomic rename), without importing
    torch and transformers, which alone take longer than generating the whole world."""
    tmp = out_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(out_dir / "meta.json")


POOLS = ("overall", "train", "held_out", "train_vs_held_out", "within_group", "across_groups", "group_held_out_vs_train",
         "judges", "judges_vs_train")


def world_agreement(w: World, seed: int, n: int) -> dict:
    if not any(w.prompts(s) for s in ("rm", "sft", "ppo", "eval")):
        return {"n_comparisons": 0, **{k: None for k in POOLS}, "groups": {}, "with_gold": {}, "pairs": {}}
    return w.agreement(n, seed)


def note_preference(w: World, n: int = 50) -> dict[str, float]:
    """Per group (judges too): the share of (member, prompt) on the first n single-turn borderline
    rm prompts where the member prefers the ideal answer with a safety note to the same answer
    without one: the groups' caution as world.rubric_caution leaves it."""
    prompts = [p for p in w.prompts("rm") if p["task"] == "borderline" and len(p["messages"]) == 1][:n]
    pairs = [(p, ideal(p, random.Random(p["id"]), "concise", w.facts),
              ideal(p, random.Random(p["id"]), "concise", w.facts, caveat=True)) for p in prompts]
    out = {}
    for g in [*w.labeler_groups(), "judges"]:
        votes = [lab.expected_utility(p, noted) > lab.expected_utility(p, plain)
                 for p, plain, noted in pairs for lab in w.labelers(groups=g)]
        if votes:
            out[g] = round(sum(votes) / len(votes), 3)
    return out


def summary(w: World, agree: dict) -> dict:
    tasks = Counter(p["task"] for s in SPLITS for p in w.prompts(s))
    demos = Counter(d["quality"].split(":")[0] for d in w.demonstrations())
    multi = sum(len(d["messages"]) > 2 for d in w.demonstrations())
    return {
        "seed": w.info.get("seed"),
        "seed_role": seed_role(w.info.get("seed")),
        "counts": {"facts": len(w.facts.facts), **{f"prompts_{s}": len(w.prompts(s)) for s in SPLITS},
                   "demonstrations": len(w.demonstrations()), "corpus_train": len(w.corpus("train")),
                   "corpus_val": len(w.corpus("val")), "labelers": len(w.labelers()),
                   "held_out_labelers": len(w.labelers(held_out=True)), "judges": len(w.judges())},
        "labeler_groups": {g: {"train": len(w.labelers(False, g)), "held_out": len(w.labelers(True, g))}
                           for g in [*w.labeler_groups(), "judges"]},
        "tasks": dict(sorted(tasks.items())),
        "demonstrations": {"ideal": demos["ideal"], "flawed": demos["flawed"], "multi_turn": multi},
        "corpus": w.info.get("corpus", {}),
        "agreement": {**{k: agree.get(k) for k in POOLS}, "groups": agree.get("groups", {})},
        "safety_note_preferred": note_preference(w),
    }


def print_summary(meta: dict, agree: dict, seconds: float, out: Path) -> None:
    t = Table(title=f"world -> {out}  ({seconds:.1f}s, {meta['seed_role']} seed {meta['seed']})", show_header=False)
    for k, v in meta["counts"].items():
        t.add_row(k, str(v))
    c = meta["corpus"]
    t.add_row("corpus chars (train/val)", f"{c.get('train_chars', 0):,} / {c.get('val_chars', 0):,}")
    t.add_row("rumour share of fact mentions", f"{c.get('rumour_share', 0):.3f}")
    t.add_row("demonstrations ideal/flawed/multi-turn",
              f"{meta['demonstrations']['ideal']} / {meta['demonstrations']['flawed']} / {meta['demonstrations']['multi_turn']}")
    a = meta["agreement"]
    t.add_row("labeler agreement within a group", f"{a['within_group']} (InstructGPT 0.726 / 0.773)")
    t.add_row("  across training groups", str(a["across_groups"]))
    t.add_row("  a group's held-out vs training members", str(a["group_held_out_vs_train"]))
    t.add_row("  judges / judges vs training", f"{a['judges']} / {a['judges_vs_train']}")
    if meta.get("safety_note_preferred"):
        t.add_row("prefer a safety note on borderline requests",
                  " / ".join(f"{g} {v:.2f}" for g, v in meta["safety_note_preferred"].items()))
    gold = agree["with_gold"]
    if gold:
        t.add_row("agreement with gold (min-max)", f"{min(gold.values()):.3f} - {max(gold.values()):.3f}")
    console.print(t)
    if a.get("groups"):
        m = Table(title="labeler agreement by group (diagonal: within)")
        m.add_column("")
        for g in a["groups"]:
            m.add_column(g, justify="right")
        for g, row in a["groups"].items():
            m.add_row(g, *("-" if v is None else f"{v:.3f}" for v in row.values()))
        console.print(m)


def run_world(cfg: Config) -> Path:
    """Generate the world from cfg.world and write it to cfg.stage_dir('world') (rank 0 writes while
    any other process waits: the world is the same for every rank)."""
    on_main(lambda: _write_world(cfg))
    return cfg.stage_dir("world")


def _write_world(cfg: Config) -> Path:
    start = time.time()
    out = cfg.stage_dir("world")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # incomplete until written again, last
    with console.status("generating the world"):
        w = World.generate(cfg.world)
        w.save(out)
        agree = world_agreement(w, cfg.world.seed, cfg.world.agreement_comparisons)
    (out / "agreement.json").write_text(json.dumps(agree, indent=2) + "\n")
    (out / "README.md").write_text(README)
    meta = {"stage": "world", **summary(w, agree), "config": cfg.world.model_dump()}
    write_meta(out, {**meta, "complete": True})
    print_summary(meta, agree, time.time() - start, out)
    return out
