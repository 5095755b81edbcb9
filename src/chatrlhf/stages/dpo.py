"""`chatrlhf dpo`: direct preference optimisation from the SFT model on the RM's comparisons.

The same comparisons the RM learns from (`rm.data` with `rm.columns`, or rm/comparisons.jsonl, sampled
and ranked here when missing; or `dpo.data`), the same prompt split and the same pair weighting;
reference = SFT.
With dpo.rounds > 1, iterated (online) DPO: each further round samples rm.k answers from the newest
policy for fresh PPO prompts, the training labelers rank them, and DPO continues on them from the
newest policy, still against SFT (as the RLHF rounds do for PPO). Writes a stage directory that
`from_pretrained` loads, with eval.json (held-out preference accuracy before and after).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rich.console import Console

from chatrlhf.config import Config
from chatrlhf.lm.distributed import gather, init_processes, is_main, on_main, require_whole_model, share
from chatrlhf.lm.lora import save_merged
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer, save_stage, stage_complete
from chatrlhf.lm.rankings import load_comparisons, split_by_prompt, write_comparisons
from chatrlhf.lm.training import make_accelerator
from chatrlhf.rl.dpo import train_dpo
from chatrlhf.world.loader import held_out_labelers, load_world

console = Console(stderr=True, quiet=not is_main())  # one process reports


def comparisons_path(cfg: Config) -> str | Path:
    """The comparisons DPO learns from: dpo.data, else the RM's (rm.data, else the RM stage's file, made if missing)."""
    if cfg.dpo.data or cfg.rm.data:
        return cfg.dpo.data or cfg.rm.data
    path = cfg.stage_dir("rm") / "comparisons.jsonl"
    if not path.is_file():
        from chatrlhf.stages.sampling import run_sample

        run_sample(cfg, policy=cfg.stage_dir("sft"), out=path)  # InstructGPT ranks samples of the SFT model
    return path


def online_prompts(world, cfg: Config, r: int) -> list[dict]:
    """Round r's fresh prompts: the PPO pool without the guard's held-out tail, a new slice per round."""
    pool = world.prompts("ppo")
    pool = pool[: len(pool) - min(cfg.ppo.guard.prompts, len(pool) // 4)]
    n = min(cfg.iterate.prompts_per_round, len(pool))
    start = ((r - 2) * n) % max(1, len(pool))
    return [pool[(start + i) % len(pool)] for i in range(n)]


def online_comparisons(cfg: Config, world, policy, tok, r: int, out: Path) -> list[dict]:
    """rm.k answers per fresh prompt from the newest policy, ranked by the training labelers."""
    from chatrlhf.lm.engine import Engine
    from chatrlhf.stages.sampling import label_with_world, sample_responses

    prompts = online_prompts(world, cfg, r)
    engine = Engine(policy, tok, max_batch=cfg.rm.sample_batch)
    mine = share(len(prompts))  # each rank samples its share; all of them come back to every rank
    samples = gather(sample_responses(engine, [p["messages"] for p in prompts[mine]], cfg.rm.k, cfg, offset=mine.start))
    comparisons = [{"id": f"dpo-r{r}-{i + 1:06d}", "prompt_id": p["id"], "task": p.get("task"), "split": "train",
                    "messages": p["messages"], "responses": s, "reference": p.get("reference"), "rankings": []}
                   for i, (p, s) in enumerate(zip(prompts, samples))]
    label_with_world(world, comparisons, cfg, random.Random(cfg.run.seed * 1000 + r))
    on_main(lambda: write_comparisons(comparisons, out))  # every rank holds the same comparisons; one writes them
    return comparisons


def run_dpo(cfg: Config, comparisons: str | Path | list[dict] | None = None, policy_dir: str | Path | None = None,
            ref_dir: str | Path | None = None, out_dir: str | Path | None = None) -> Path:
    """DPO from `policy_dir` (default sft/) against `ref_dir` (default sft/) on `comparisons`
    (default: comparisons_path); writes the policy to `out_dir` (default dpo/)."""
    dc = cfg.dpo
    out = Path(out_dir or cfg.stage_dir("dpo"))
    if stage_complete(out):
        console.print(f"[dim]dpo: {out} complete, skipped[/dim]")
        return out
    init_processes(cfg.run.device)
    out.mkdir(parents=True, exist_ok=True)
    policy_dir, ref_dir = Path(policy_dir or cfg.stage_dir("sft")), Path(ref_dir or cfg.stage_dir("sft"))
    source = comparisons if comparisons is not None else comparisons_path(cfg)
    world = load_world(cfg)
    held_out = held_out_labelers(world)
    data = load_comparisons(source, cfg.rm.allow_ties, cfg.rm.columns, cfg.rm.split)  # read as the RM reads its data
    train, val = split_by_prompt(data, dc.val_fraction, cfg.run.seed)
    tok = load_tokenizer(policy_dir)
    acc = make_accelerator(cfg.run.seed, device=cfg.run.device)  # seeded before LoRA draws its A matrices
    if dc.rounds > 1:
        require_whole_model(acc, "online DPO (dpo.rounds > 1)")
    policy = load_causal_lm(policy_dir, cfg.model.dtype)
    if dc.lora.enabled:
        from chatrlhf.lm.lora import trainable_params, wrap_lora

        policy = wrap_lora(policy, dc.lora)
        console.print("dpo: LoRA, {:,}/{:,} trainable params".format(*trainable_params(policy)))
    # a LoRA policy that starts from the reference scores it with its adapters off: no second model
    ref = None if dc.lora.enabled and ref_dir.resolve() == policy_dir.resolve() else load_causal_lm(ref_dir, cfg.model.dtype)
    res = train_dpo(policy, ref, tok, train, val, dc, out, acc, seed=cfg.run.seed, held_out=held_out,
                    tensorboard=cfg.run.tensorboard)
    policy = res.pop("model")
    rounds: list[dict[str, Any]] = [{"round": 1, **{k: v for k, v in res.items() if k != "last"}}]
    for r in range(2, dc.rounds + 1):
        if world is None:
            raise ValueError("dpo.rounds > 1 needs the run's world: its labelers rank the fresh samples")
        fresh = online_comparisons(cfg, world, policy, tok, r, out / f"round_{r}" / "comparisons.jsonl")
        res = train_dpo(policy, ref, tok, fresh, val, dc, out / f"round_{r}", make_accelerator(cfg.run.seed + r, device=cfg.run.device),
                        seed=cfg.run.seed + r, held_out=held_out, tensorboard=cfg.run.tensorboard)
        policy = res.pop("model")
        rounds.append({"round": r, **{k: v for k, v in res.items() if k != "last"}})
    final = rounds[-1]
    metrics = {"rounds": rounds, "before": rounds[0]["before"], "after": final["after"],
               "train_seconds": sum(r["train_seconds"] + r["reference_seconds"] for r in rounds),
               "tokens_generated": 0 if dc.rounds == 1 else None}
    on_main(lambda: (out / "eval.json").write_text(json.dumps(metrics, indent=2)))
    a, b = metrics["after"], metrics["before"]
    if a:
        console.print(f"[bold]dpo[/bold]: held-out preference accuracy {b['acc_held_out_prompts']:.3f} -> "
                      f"{a['acc_held_out_prompts']:.3f} (held-out prompts), {b['acc_held_out_labelers']:.3f} -> "
                      f"{a['acc_held_out_labelers']:.3f} (held-out labelers)")
    meta = {"stage": "dpo", "policy_init": str(policy_dir), "reference": str(ref_dir),
            "comparisons": str(source) if not isinstance(source, list) else "<memory>",
            "beta": dc.beta, "eval": metrics, "config": dc.model_dump(mode="json"),
            "lora": dc.lora.model_dump() if dc.lora.enabled else None}
    on_main(lambda: save_merged(policy, tok, out, meta) if dc.lora.merge else save_stage(policy, tok, out, meta))
    return out  # every rank holds the same weights; one saves them (LoRA: merged, the adapter in dpo/adapter/)
