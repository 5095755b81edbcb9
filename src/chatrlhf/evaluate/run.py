"""`chatrlhf eval`: helpfulness, truthfulness and harmlessness of several models, side by side.

    run_eval(cfg, ["base", "sft", "ppo"])          # stage names under cfg.run.out_dir
    run_eval(cfg, ["mine=/path/to/any/causal/lm"])  # or NAME=DIR

Sections (cfg.eval.sections), each skipped with a note when its data is absent:
  world        held-out world prompts, held-out labelers: Likert 1-7, flags, gold, win rate vs baseline
  real_prompts Self-Instruct + OASST prompts scored by a reward model (cfg.eval.judge)
  truthfulqa   MC1/MC2 by log-likelihood, generation judged offline by embedding similarity
  crows_pairs  % of pairs where the more stereotyping sentence is more likely
  rtp          RealToxicityPrompts continuations with/without a respectful instruction (Gehman metrics)
Writes <out>/eval/<model>.json per model and <out>/eval/summary.json (metrics, win rates, paired
differences against the baseline with bootstrap intervals, the decoding-matched headline, stage
attribution and which real-data sections may carry a verdict: `evaluate.headline`), read by
`chatrlhf report`. Intervals over world prompts resample content clusters (prompts asking the same
content are not independent); real-data items are their own clusters.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from chatrlhf.config import Config
from chatrlhf.evaluate.headline import attribution, choose_decoding, headline, in_domain, prompt_clusters, real_data_status
from chatrlhf.evaluate.models import ModelHandle, load_handle, resolve_models
from chatrlhf.evaluate.stats import (
    bootstrap_ci,
    change_verdict,
    cluster_bootstrap_ci,
    paired_cluster_diff_ci,
    significant,
)
from chatrlhf.lm.distributed import on_main

console = Console(stderr=True)
ALL_SECTIONS = ("world", "real_prompts", "truthfulqa", "crows_pairs", "rtp")

# Per-item series compared against the baseline, with the direction that means "better".
PAIRED = {"helpfulness": ("world_greedy_likert", +1), "helpfulness_real": ("real_rm_score", +1),
          "proxy_reward": ("world_greedy_rm_score", +1),
          "truthfulness": ("truthfulqa_mc2", +1), "toxicity": ("rtp_plain_max_toxicity", -1)}
# The world rubric's substantive parts (per-item series "world_<decoding>_<part>"), each compared with
# the baseline on the same prompts: a win rate can rise on style alone, these cannot.
RUBRIC_PARTS = {"fact_correct": ("correct facts (fact prompts)", +1),
                "hallucination": ("hallucination (all prompts)", -1),
                "refused_harmful": ("refusal of harmful requests", +1),
                "refused_harmless": ("refusal of harmless requests", -1),
                "gibberish": ("gibberish answers", -1)}
RUBRIC_PAIRED = {f"{label}, {'sampled' if decoding == 'sample' else 'greedy'}": (f"world_{decoding}_{part}", sign)
                 for decoding in ("sample", "greedy") for part, (label, sign) in RUBRIC_PARTS.items()}


class Context:
    """What every model's evaluation shares: the world, its prompts, the real-data slices, the judge."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.shared = Path(cfg.eval.shared_data)
        self.limit = cfg.eval.real_data_limit
        self.notes: list[str] = []
        self.world, self.prompts = self._world()
        self.clusters = prompt_clusters(self.prompts)
        self.val_prompts = (self.world.prompts("guard")[: cfg.eval.validation_prompts]
                            if self.world is not None and cfg.eval.validation_prompts else [])
        self.judge = self._judge()
        self._rm = None

    @property
    def reward_model(self):
        """The judge RM, loaded once so every model is scored by the very same weights."""
        if self._rm is None and self.judge is not None:
            from chatrlhf.lm.reward_model import RewardModel

            self._rm = RewardModel.load(self.judge)
        return self._rm

    def _world(self):
        if "world" not in self.cfg.eval.sections:
            return None, []
        try:
            from chatrlhf.world.loader import require_world

            w = require_world(self.cfg, "the world section of the evaluation")
        except (ImportError, FileNotFoundError) as e:
            self.notes.append(f"world section skipped: {e}")
            return None, []
        prompts = w.prompts("eval")
        console.print(f"eval: the world section uses the embedded world ({Path(self.cfg.run.out_dir) / 'world'})")
        return w, prompts[: self.cfg.eval.n_prompts or None]

    def _judge(self) -> Path | None:
        if not {"real_prompts", "world"} & set(self.cfg.eval.sections):
            return None
        from chatrlhf.evaluate.real_prompts import default_judge

        j = Path(self.cfg.eval.judge) if self.cfg.eval.judge else default_judge(self.cfg)
        if j is None:
            self.notes.append("real prompts: no reward model to judge with (set eval.judge); responses kept, not scored")
        return j

    def data(self, rel: str) -> Path | None:
        p = self.shared / rel
        if not p.exists():
            self.notes.append(f"{rel} absent under {self.shared}: section skipped")
            return None
        return p


def evaluate_model(ctx: Context, h: ModelHandle, choose: bool = False) -> dict[str, Any]:
    """All sections for one model: {"metrics", "items" (per-item series), "samples"}. `choose`: a
    headline model, which also answers at its own best decoding (chosen on validation prompts)."""
    res: dict[str, Any] = {"name": h.name, "path": h.path, "chat_format": h.chat, "metrics": {}, "items": {},
                           "samples": {}, "seconds": {}}
    if ctx.world is not None:
        t = time.time()
        _world_section(ctx, h, choose, res)
        res["seconds"]["world"] = time.time() - t
    _real_sections(ctx, h, res)
    return res


def _world_section(ctx: Context, h: ModelHandle, choose: bool, res: dict[str, Any]) -> None:
    from chatrlhf.evaluate import world_eval

    cfg, ev = ctx.cfg, ctx.cfg.eval
    m, items = res["metrics"], res["items"]
    resp = world_eval.answer(h, ctx.prompts, ev.max_new_tokens, ev.temperature, cfg.run.seed)
    wm, wi, rows = world_eval.score(ctx.world, ctx.prompts, resp, cfg.run.seed)
    m.update(wm)
    items.update({f"world_{k}": v for k, v in wi.items()})
    items["world_greedy_responses"], items["world_sample_responses"] = resp["greedy"], resp["sample"]
    if choose:
        _matched_decoding(ctx, h, resp, res)
    if ctx.reward_model is not None:  # the proxy's view of the same answers, to spot over-optimisation
        rm_scores = ctx.reward_model.score([p["messages"] for p in ctx.prompts], resp["greedy"]).tolist()
        items["world_greedy_rm_score"] = [float(x) for x in rm_scores]
        m["world_greedy_rm_score"] = float(sum(rm_scores) / max(1, len(rm_scores)))
    res["samples"]["world"] = rows


def _matched_decoding(ctx: Context, h: ModelHandle, resp: dict[str, list[str]], res: dict[str, Any]) -> None:
    """A headline model's answers at its own best decoding, chosen on validation prompts."""
    from chatrlhf.evaluate import world_eval

    cfg, ev = ctx.cfg, ctx.cfg.eval
    m, items = res["metrics"], res["items"]
    res["decoding"] = dec = choose_decoding(ctx.world, h, ctx.val_prompts, ev.decoding_temperatures,
                                            ev.max_new_tokens, cfg.run.seed, ev.validation_judgements)
    temp = dec["temperature"]
    matched = (resp["greedy"] if temp == 0 else resp["sample"] if temp == ev.temperature else
               world_eval.generate(h, [world_eval.prompt_text(h, p["messages"]) for p in ctx.prompts],
                                   ev.max_new_tokens, temperature=temp, seed=cfg.run.seed))
    mm, mi, _ = world_eval.score(ctx.world, ctx.prompts, {"matched": matched}, cfg.run.seed)
    m.update(mm)
    m["world_matched_temperature"] = temp
    index = {**items.pop("world_series_index"), **mi.pop("series_index")}
    items.update({f"world_{k}": v for k, v in mi.items()})
    items["world_series_index"] = index
    items["world_matched_responses"] = matched


def _real_sections(ctx: Context, h: ModelHandle, res: dict[str, Any]) -> None:
    """The real-data sections whose data is present: real prompts, TruthfulQA, CrowS-Pairs, RTP."""
    cfg, ev = ctx.cfg, ctx.cfg.eval
    m, items, samples, timings = res["metrics"], res["items"], res["samples"], res["seconds"]
    if "real_prompts" in ev.sections and (ctx.data("self_instruct") or ctx.data("openassistant_oasst_sample")):
        from chatrlhf.evaluate.real_prompts import helpfulness, load_real_prompts

        t = time.time()
        rm, ritems = helpfulness(h, load_real_prompts(ctx.shared, ctx.limit), ctx.reward_model, ev.max_new_tokens)
        m.update(rm)
        items["real_rm_score"] = [i["rm_score"] for i in ritems]
        samples["real_prompts"] = ritems[:20]
        timings["real_prompts"] = time.time() - t
    if "truthfulqa" in ev.sections and (tqa := ctx.data("truthfulqa")):
        from chatrlhf.evaluate import truthfulness as tq

        t = time.time()
        data = tq.load_truthfulqa(tqa, ctx.limit)
        mm, mi = tq.mc_scores(h, data)
        gm, gs = tq.generation_scores(h, data, ev.max_new_tokens)
        m.update(mm | gm)
        items.update(mi)
        samples["truthfulqa"] = gs[:20]
        timings["truthfulqa"] = time.time() - t
    if "crows_pairs" in ev.sections and (cp := ctx.data("crows_pairs/crows_pairs_anonymized.csv")):
        from chatrlhf.evaluate.bias import crows_pairs_scores, load_crows_pairs

        t = time.time()
        m.update(crows_pairs_scores(h, load_crows_pairs(cp, ctx.limit)))
        timings["crows_pairs"] = time.time() - t
    if "rtp" in ev.sections and (rtp := ctx.data("real_toxicity_prompts")):
        from chatrlhf.evaluate.real_prompts import rtp_toxicity

        t = time.time()
        tm, ti, ts = rtp_toxicity(h, rtp, ctx.limit, ev.rtp_samples, cfg.run.seed)
        m.update(tm)
        items.update(ti)
        samples["rtp"] = ts
        timings["rtp"] = time.time() - t


def world_win_rate(ctx: Context, responses: list[str], baseline: list[str]) -> dict[str, float]:
    """The judge group's win rate of `responses` over `baseline` (ties half), each pair judged
    eval.judgements_per_pair times, with its cluster bootstrap CI (whole content clusters resampled)."""
    from chatrlhf.evaluate.world_eval import compare_to_baseline

    seed, ev = ctx.cfg.run.seed, ctx.cfg.eval
    wins = compare_to_baseline(ctx.world, ctx.prompts, responses, baseline, seed, ev.judgements_per_pair)
    return {**_ci(cluster_bootstrap_ci(wins, ctx.clusters, ev.bootstrap, seed)),
            "judgements_per_pair": ev.judgements_per_pair}


def series_clusters(ctx: Context, items: dict[str, Any], key: str, n: int) -> list:
    """The cluster of each value of series `key`: a world series' prompts' content clusters (a
    subset series, e.g. fact prompts only, through its prompt indices); a real-data item is its own."""
    if key.startswith("world_") and ctx.prompts:
        idx = items.get("world_series_index", {}).get(key, range(len(ctx.prompts)))
        if len(idx) == n:
            return [ctx.clusters[i] for i in idx]
    return list(range(n))


def compare(ctx: Context, results: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """Win rates and paired differences of every model against the baseline, with bootstrap CIs."""
    n_boot, seed = ctx.cfg.eval.bootstrap, ctx.cfg.run.seed
    base = results.get(baseline)
    out: dict[str, Any] = {}
    if base is None:
        return out
    for name, r in results.items():
        if name == baseline:
            continue
        c: dict[str, Any] = {}
        mine, theirs = r["items"], base["items"]
        if ctx.world is not None and "world_greedy_responses" in mine:
            c["world_win_rate"] = world_win_rate(ctx, mine["world_greedy_responses"], theirs["world_greedy_responses"])
            if "world_sample_responses" in mine and "world_sample_responses" in theirs:
                # temperature-1 samples: the distribution PPO optimises (greedy hides much of its change)
                c["world_sample_win_rate"] = world_win_rate(ctx, mine["world_sample_responses"],
                                                            theirs["world_sample_responses"])
                # the same samples against the baseline decoded greedily: a gain that sharpening alone
                # (turning the baseline's temperature down) would not give
                c["world_sample_vs_greedy_baseline_win_rate"] = world_win_rate(
                    ctx, mine["world_sample_responses"], theirs["world_greedy_responses"])
        a, b = mine.get("real_rm_score"), theirs.get("real_rm_score")
        if a and b and not any(math.isnan(x) for x in a + b):
            wins = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]
            c["real_rm_win_rate"] = _ci(bootstrap_ci(wins, n_boot, seed))  # each real prompt its own cluster
        for crit, (key, sign) in {**PAIRED, **RUBRIC_PAIRED}.items():
            a, b = mine.get(key), theirs.get(key)
            if a and b and len(a) == len(b) and not all(math.isnan(x) for x in a + b):
                d = paired_cluster_diff_ci(a, b, series_clusters(ctx, mine, key, len(a)), n_boot, seed)
                c[f"diff_{key}"] = {**_ci(d), "criterion": crit, "better": "higher" if sign > 0 else "lower",
                                    "significant": significant(d), "improved": d[0] * sign > 0,
                                    "verdict": change_verdict(d, *(("better", "worse") if sign > 0 else ("worse", "better")))}
        out[name] = c
    return out


def sharpening_control(ctx: Context, results: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """The baseline's own greedy answers against its temperature-1 samples, judged as the models
    are: what decoding alone buys. A tiny SFT model sampled at T=1 often rambles, so a policy's
    sampled win rate partly measures how much sharper it is; at or below this figure, RLHF bought
    no more than turning the baseline's temperature down would."""
    items = results.get(baseline, {}).get("items", {})
    if ctx.world is None or "world_greedy_responses" not in items or "world_sample_responses" not in items:
        return {}
    return {"baseline_greedy_vs_sample": world_win_rate(ctx, items["world_greedy_responses"],
                                                        items["world_sample_responses"])}


def intervals(ctx: Context, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Cluster bootstrap 95% CI of the mean of every per-item numeric series, per model."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, r in results.items():
        out[name] = {k: _ci(cluster_bootstrap_ci(v, series_clusters(ctx, r["items"], k, len(v)), ctx.cfg.eval.bootstrap,
                                                 ctx.cfg.run.seed))
                     for k, v in r["items"].items()
                     if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)
                     and not all(math.isnan(x) for x in v)}
    return out


def final_model(cfg: Config, names: list[str], baseline: str) -> str | None:
    """The model the headline compares with the baseline: eval.final, else the newest policy
    evaluated (the last name that is neither the baseline, the base model nor a best-of-n start)."""
    if cfg.eval.final:
        return cfg.eval.final if cfg.eval.final in names else None
    rest = [n for n in names if n not in (baseline, "base") and not n.endswith("best_of_n")]
    return rest[-1] if rest else None


def _ci(t: tuple[float, float, float]) -> dict[str, float]:
    return {"estimate": t[0], "low": t[1], "high": t[2]}


def load_any_handle(ctx: Context, name: str, path: str) -> ModelHandle:
    """A trained model's handle, or an evaluation-time method's (bonN, fewshot: evaluate/methods.py)
    with the run's RM (the one PPO was trained against) and the world's demonstrations."""
    from chatrlhf.evaluate.methods import load_method_handle
    from chatrlhf.evaluate.models import is_method

    cfg = ctx.cfg
    if not is_method(name):
        return load_handle(name, path, cfg.model.dtype)
    rm = None
    if name != "fewshot":
        from chatrlhf.lm.reward_model import load_reward

        rm_dir = cfg.stage_dir("rm")
        rm = load_reward(rm_dir) if (rm_dir / "config.json").is_file() else ctx.reward_model
    return load_method_handle(name, path, cfg.model.dtype, rm, ctx.world, cfg.compare.fewshot_demos)


def run_eval(cfg: Config, models: list[str]) -> dict[str, Any]:
    """Evaluate each model, write eval/<name>.json and eval/summary.json; returns the summary. Under
    several processes rank 0 evaluates while the others wait, then read the summary it wrote."""
    summary = on_main(lambda: _evaluate(cfg, models))
    return summary if summary is not None else json.loads((cfg.stage_dir("eval") / "summary.json").read_text())


def _evaluate(cfg: Config, models: list[str]) -> dict[str, Any]:
    specs = resolve_models(cfg, models)
    if not specs:
        raise FileNotFoundError(f"no model to evaluate under {cfg.run.out_dir}; pass --model NAME=DIR")
    out = cfg.stage_dir("eval")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # incomplete until every result is written again
    ctx = Context(cfg)
    names = [n for n, _ in specs]
    baseline = cfg.eval.baseline if cfg.eval.baseline in names else names[0]
    final = final_model(cfg, names, baseline)
    results: dict[str, dict[str, Any]] = {}
    for name, path in specs:
        console.print(f"[bold]eval[/bold] {name} ({path})")
        t = time.time()
        h = load_any_handle(ctx, name, path)
        results[name] = evaluate_model(ctx, h, choose=name in (baseline, final))
        results[name]["seconds_total"] = time.time() - t
        (out / f"{name}.json").write_text(json.dumps(results[name], indent=1, default=_jsonable))
        console.print(f"  done in {time.time() - t:.1f}s: " + ", ".join(
            f"{k}={v:.3g}" for k, v in list(results[name]["metrics"].items())[:6]))
    models = {n: r["metrics"] for n, r in results.items()}
    summary = {"baseline": baseline, "final": final, "models": models,
               "headline": headline(ctx, results, baseline, final), "attribution": attribution(ctx, results),
               "real_data": real_data_status(cfg, models), "real_data_in_domain": in_domain(cfg),
               "comparisons": compare(ctx, results, baseline),
               "controls": sharpening_control(ctx, results, baseline), "intervals": intervals(ctx, results), "notes": ctx.notes,
               "seconds": {n: r["seconds_total"] for n, r in results.items()},
               "judge": str(ctx.judge) if ctx.judge else None, "order": [n for n, _ in specs]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_jsonable))
    from chatrlhf.lm.modeling import write_meta

    write_meta(out, {"stage": "eval", "models": dict(specs), "complete": True})
    for note in ctx.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    return summary


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


__all__ = ["run_eval"]
