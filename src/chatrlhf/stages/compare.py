"""`chatrlhf compare`: the methods people weigh against PPO, on the same data, in one table.

    chatrlhf compare --methods sft,ppo,dpo,grpo,rloo,bon4,bon16,fewshot

Every method starts from the same SFT model and learns from the same comparisons (rm/comparisons.jsonl):

    ppo     RL against the RM, GAE with the critic          } the same RL stage (`chatrlhf ppo`), the same
    grpo    RL, group-normalised advantages, KL loss term   } reward, iterations and responses per rollout
    rloo    RL, leave-one-out baseline, KL in the reward    } batch; grpo/rloo sample compare.samples_per_prompt
    dpo     DPO on the comparisons themselves, reference SFT (no RM, no sampling)
    ipo     the same with IPO's loss (dpo.loss_type=ipo), on request: not in the default list
    bonN    best of N SFT samples under the RM, at inference (no training)
    fewshot the pre-trained model with a few demonstrations in its prompt (no RM, no comparisons)

The prerequisites (world, tokenizer, pretrain, sft, rm) are run when missing. Each trained method
writes a stage directory under compare/<method>/ (a finished one is reused). Then every method
answers the held-out eval prompts and the held-out labelers judge it against SFT at matched decoding:
greedy for each model (its best-of-N for bonN), and temperature-1 samples. The table
(compare/table.md and table.json) gives the win rate vs SFT with its bootstrap CI, the gold rubric's
parts, KL(method || SFT) on the method's own samples, training wall-clock, tokens generated, and
the labeler comparisons each method consumed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from chatrlhf.config import Config, PPOConfig
from chatrlhf.lm.distributed import is_main, on_main
from chatrlhf.lm.modeling import read_meta, stage_complete, write_meta

console = Console(stderr=True, quiet=not is_main())  # one process reports

RL_METHODS = {"ppo": "gae", "grpo": "grpo", "rloo": "rloo"}
DPO_METHODS = {"dpo": "sigmoid", "ipo": "ipo"}  # method -> dpo.loss_type
TRAINED = (*RL_METHODS, *DPO_METHODS)


def check_methods(methods: list[str]) -> list[str]:
    from chatrlhf.evaluate.models import is_method

    bad = [m for m in methods if m not in ("sft", *TRAINED) and not is_method(m)]
    if bad:
        raise ValueError(f"compare: unknown method(s) {bad}; known: sft, ppo, grpo, rloo, dpo, ipo, bonN (e.g. bon16), fewshot")
    return ["sft", *[m for m in methods if m != "sft"]]  # SFT is the baseline every win rate is against


def rl_config(cfg: Config, method: str) -> Config:
    """The RL stage's config for one estimator: everything else as configured, so the methods share
    reward, iterations, rollout batch (responses per iteration) and learning rate."""
    pc = cfg.ppo.model_dump()
    pc["advantage"]["estimator"] = RL_METHODS[method]
    if method != "ppo":
        pc["rollout"]["samples_per_prompt"] = cfg.compare.samples_per_prompt
    if not cfg.compare.rejection_sampling:
        pc["rejection_sampling"]["n"] = 0
    return cfg.model_copy(update={"ppo": PPOConfig.model_validate(pc)})


def prerequisites(cfg: Config) -> None:
    """world -> tokenizer -> pretrain -> sft -> rm, each run only when its stage is not complete."""
    from chatrlhf.stages.pretrain import run_pretrain, run_tokenizer
    from chatrlhf.stages.reward import run_rm
    from chatrlhf.stages.sft import run_sft
    from chatrlhf.world.generate import run_world

    for name, runner in (("world", run_world), ("tokenizer", run_tokenizer), ("pretrain", run_pretrain),
                         ("sft", run_sft), ("rm", run_rm)):
        if not stage_complete(cfg.stage_dir(name)):
            console.rule(f"[bold]{name}")
            runner(cfg)


def train_method(cfg: Config, method: str, out: Path) -> dict[str, Any]:
    """Train one method into `out` (reused when complete); returns its cost record."""
    if not stage_complete(out):
        console.rule(f"[bold]compare: {method}")
        t0 = time.time()
        if method in DPO_METHODS:
            from chatrlhf.stages.dpo import run_dpo

            dcfg = cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"loss_type": DPO_METHODS[method]})})
            run_dpo(dcfg, comparisons=cfg.stage_dir("rm") / "comparisons.jsonl", out_dir=out)
        else:
            from chatrlhf.stages.ppo import run_ppo

            run_ppo(rl_config(cfg, method), out_dir=out)
        write_meta(out, {**read_meta(out), "compare_train_seconds": time.time() - t0})
    return training_cost(cfg, method, out)


def training_cost(cfg: Config, method: str, out: Path) -> dict[str, Any]:
    """Wall-clock, tokens generated while training, and labeler comparisons used for model selection."""
    from chatrlhf.lm.training import read_metrics

    meta = read_meta(out)
    cost: dict[str, Any] = {"train_seconds": meta.get("compare_train_seconds")}
    if method in DPO_METHODS:
        return cost | {"train_tokens_generated": 0, "guard_judgements": 0}
    rc = rl_config(cfg, method).ppo
    rows = read_metrics(out)
    cost["train_tokens_generated"] = round(sum(r.get("response_len", 0.0) for r in rows) * rc.rollout.batch_size)
    cost["iterations"] = meta.get("iterations")
    # a policy that starts as SFT is known to score 0.5 and is not measured; a best-of-n start is, guard.window times
    evals = sum("guard_win_rate" in r for r in rows) + (rc.guard.window if rc.rejection_sampling.n > 1 else 0)
    n_guard = len(rows) and min(rc.guard.prompts, cfg.world.n_ppo_prompts // 4)
    cost["guard_judgements"] = evals * n_guard * rc.guard.labelers if rc.guard.early_stop == "held_out_comparisons" else 0
    cost["critic"] = (out / "value").exists()
    return cost


def kl_to_sft(cfg: Config, model_dir: Path, sft_dir: Path, prompts: list[dict]) -> float:
    """KL(pi || SFT) in nats per answer: the mean of sum_t log pi(y_t) - log pi_SFT(y_t) over the
    policy's own temperature-1 samples (the k1 estimator PPO logs)."""
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.rl.experience import evaluate_rollout, rollout

    policy, ref = load_causal_lm(model_dir, cfg.model.dtype), load_causal_lm(sft_dir, cfg.model.dtype)
    pc = PPOConfig.model_validate({**cfg.ppo.model_dump(), "advantage": {"estimator": "rloo"},
                                   "rollout": {"temperature": 1.0, "max_new_tokens": cfg.eval.max_new_tokens,
                                               "samples_per_prompt": 2, "batch_size": 2}})
    ro = rollout(policy, load_tokenizer(model_dir), prompts, pc, seed=cfg.run.seed + 4242)
    evaluate_rollout(ro, policy, ref, None, pc, 32)
    return float(((ro.logprobs - ro.ref_logprobs) * ro.mask).sum(1).mean())


def labeler_comparisons(cfg: Config) -> int:
    """Rankings by training labelers in the training split of rm/comparisons.jsonl: the budget the
    RM-based methods and DPO all spend."""
    from chatrlhf.lm.rankings import load_comparisons, split_by_prompt
    from chatrlhf.world.loader import held_out_labelers, load_world

    path = cfg.stage_dir("rm") / "comparisons.jsonl"
    if not path.is_file():
        return 0
    held = held_out_labelers(load_world(cfg))
    train, _ = split_by_prompt(load_comparisons(path, cfg.rm.allow_ties), cfg.rm.val_fraction, cfg.run.seed)
    return sum(1 for c in train for rk in c.get("rankings", []) if rk.get("labeler") not in held)


def run_compare(cfg: Config, methods: list[str] | None = None) -> dict[str, Any]:
    """Train what is missing, evaluate every method against SFT, write compare/table.{md,json}."""
    from chatrlhf.evaluate.methods import bon_kl_bound, count_generated_tokens
    from chatrlhf.evaluate.models import is_method
    from chatrlhf.evaluate.run import Context, compare, evaluate_model, load_any_handle

    methods = check_methods(list(methods or cfg.compare.methods))
    out = Path(cfg.run.out_dir) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    prerequisites(cfg)
    sft_dir, rm_dir = cfg.stage_dir("sft"), cfg.stage_dir("rm")
    costs: dict[str, dict[str, Any]] = {m: train_method(cfg, m, out / m) for m in methods if m in TRAINED}

    ecfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"sections": ["world"], "judge": str(rm_dir)})})
    ctx = Context(ecfg)
    if ctx.world is None:
        raise FileNotFoundError(f"compare: no world under {cfg.run.out_dir}; the comparison is judged on its eval prompts")
    results: dict[str, dict[str, Any]] = {}
    kl_prompts = ctx.prompts[: cfg.compare.kl_prompts]
    n_rankings = labeler_comparisons(cfg)
    for m in methods:
        path = str(out / m) if m in TRAINED else str(sft_dir if m == "sft" else cfg.stage_dir("pretrain")
                                                     if m == "fewshot" else sft_dir)
        console.print(f"[bold]compare[/bold]: evaluating {m} ({path})")
        t = time.time()
        h = load_any_handle(ctx, m, path)
        r = evaluate_model(ctx, h)
        r["eval_seconds"] = time.time() - t
        items = r["items"]
        gen_tokens = h.info.get("tokens_generated") if is_method(m) and m != "fewshot" else None
        if gen_tokens is None:
            gen_tokens = count_generated_tokens(h, items["world_greedy_responses"] + items["world_sample_responses"])
        cost = costs.get(m, {"train_seconds": 0.0, "train_tokens_generated": 0, "guard_judgements": 0})
        r["cost"] = {**cost, "eval_tokens_generated": gen_tokens,
                     "labeler_rankings": 0 if m in ("sft", "fewshot") else n_rankings}
        if m == "sft":
            r["kl_to_sft"] = 0.0
        elif m in TRAINED:
            r["kl_to_sft"] = kl_to_sft(cfg, out / m, sft_dir, kl_prompts)
        elif m.startswith("bon"):
            r["kl_to_sft"] = bon_kl_bound(h.info["n"])
            r["kl_is_bound"] = True
        else:
            r["kl_to_sft"] = None  # another model with another prompt: no KL to SFT to speak of
        results[m] = r
    comparisons = compare(ctx, results, "sft")
    table = build_table(methods, results, comparisons, ctx)
    meta = {"methods": methods, "n_eval_prompts": len(ctx.prompts), "judgements_per_pair": cfg.eval.judgements_per_pair,
            "rm_train_seconds": (read_meta(rm_dir).get("eval") or {}).get("train_seconds"),
            "world_seed": cfg.world.seed, "seed": cfg.run.seed}
    on_main(lambda: _write_table(out, table, meta))  # every rank holds the same table; one writes it
    return {"meta": meta, "rows": table}


def _write_table(out: Path, table: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    (out / "table.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=1))
    (out / "table.md").write_text(render_markdown(table, meta))
    write_meta(out, {"stage": "compare", "complete": True, **meta})
    console.print(render_markdown(table, meta))


def build_table(methods: list[str], results: dict[str, dict], comparisons: dict[str, dict], ctx) -> list[dict[str, Any]]:
    rows = []
    for m in methods:
        r, c = results[m], comparisons.get(m, {})
        met = r["metrics"]
        row = {"method": m,
               "win_rate_greedy": c.get("world_win_rate"), "win_rate_sampled": c.get("world_sample_win_rate"),
               "gold_greedy": met.get("world_greedy_gold"), "gold_sampled": met.get("world_sample_gold"),
               "fact_correct_greedy": met.get("world_greedy_fact_correct"),
               "hallucination_greedy": met.get("world_greedy_flag_hallucination"),
               "refusal_harmful_greedy": met.get("world_greedy_refusal_rate_harmful"),
               "likert_greedy": met.get("world_greedy_likert"), "rm_score_greedy": met.get("world_greedy_rm_score"),
               "kl_to_sft": r.get("kl_to_sft"), "kl_is_bound": r.get("kl_is_bound", False),
               "eval_seconds": r["eval_seconds"], **r["cost"]}
        rows.append(row)
    return rows


def _f(x: Any, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}" if isinstance(x, float) else str(x)


def _wr(w: dict | None) -> str:
    return "(baseline)" if w is None else f"{w['estimate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]"


def render_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = ("| method | win vs SFT, greedy [95% CI] | win vs SFT, T=1 [95% CI] | gold (greedy) | facts correct | "
            "hallucination | KL to SFT (nats) | train s | train tokens gen. | eval tokens gen. | labeler rankings + guard |")
    lines = [f"Held-out labelers judge each method against SFT on {meta['n_eval_prompts']} eval prompts "
             f"({meta['judgements_per_pair']} judgements per pair); world seed {meta['world_seed']}, run seed {meta['seed']}.",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        kl = _f(r["kl_to_sft"], 2) + (" (bound)" if r["kl_is_bound"] else "")
        lines.append(f"| {r['method']} | {_wr(r['win_rate_greedy'])} | {_wr(r['win_rate_sampled'])} | "
                     f"{_f(r['gold_greedy'])} | {_f(r['fact_correct_greedy'])} | {_f(r['hallucination_greedy'])} | {kl} | "
                     f"{_f(r['train_seconds'], 0)} | {r['train_tokens_generated']} | {r['eval_tokens_generated']} | "
                     f"{r['labeler_rankings']} + {r['guard_judgements']} |")
    lines += ["", "bonN: its greedy column is the best of N samples (the sampled column another best of N); KL is the "
              "log N - (N-1)/N bound. Train seconds exclude the RM (shared by ppo, grpo, rloo, bonN: "
              f"{_f(meta.get('rm_train_seconds'), 0)} s). Guard judgements are the training labelers' comparisons "
              "the RL stage's over-optimisation guard asked for."]
    return "\n".join(lines) + "\n"
