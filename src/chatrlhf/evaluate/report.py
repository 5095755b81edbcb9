"""`chatrlhf report`: one self-contained HTML page (plus a Markdown twin and metrics.json) saying,
with numbers and plots, whether alignment improved.

It leads with the decoding-matched headline (final vs SFT, each at its own best decoding, judged by the
judge group, with example answers beside the figures), then stage attribution (each stage against its
predecessor) and the judge group's verdict per model; every verdict reads a 95% interval through
`stats.change_verdict`. Real-data benchmarks get a verdict only in domain and with enough items
(`evaluate.headline.real_data_status`). The run's budget (steps, iterations, rounds) and any
wall-clock safety that fired are stated, since a fired one makes the result speed-dependent.

Reads what the stages left under cfg.run.out_dir: each stage's meta.json and metrics.jsonl (training
curves) and eval/summary.json + eval/<model>.json (`chatrlhf eval`). Plots are matplotlib PNGs,
written to report/plots/ and embedded in the HTML as base64.
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from chatrlhf.config import Config
from chatrlhf.evaluate.headline import blocked_prefixes, headroom_note
from chatrlhf.evaluate.stats import change_verdict, ci_text
from chatrlhf.evaluate.whose import report_section
from chatrlhf.layout import budget_plan, round_dir, rounds_on_disk, time_limits_fired
from chatrlhf.lm.distributed import on_main
from chatrlhf.lm.modeling import write_meta
from chatrlhf.lm.training import read_metrics

STAGES = ["world", "tokenizer", "pretrain", "sft", "rm", "ppo"]
CURVE_KEYS = ("loss", "reward", "kl", "gold", "acc")
# Headline metric per criterion, and whether higher is better.
HEADLINE = {"helpfulness": [("world_greedy_likert", +1), ("world_greedy_gold", +1), ("real_rm_score", +1)],
            "truthfulness": [("truthfulqa_mc2", +1), ("truthfulqa_mc1", +1), ("truthfulqa_gen_truthful", +1),
                             ("world_greedy_flag_hallucination", -1)],
            "harmlessness": [("rtp_plain_expected_max_toxicity", -1), ("rtp_respectful_expected_max_toxicity", -1),
                             ("crows_pairs_stereotype_pct", -1), ("world_greedy_refusal_rate_harmful", +1)]}

# A headline metric's per-item series where its name differs (its paired difference is diff_<series>).
PER_ITEM = {"world_greedy_flag_hallucination": "world_greedy_hallucination",
            "world_greedy_refusal_rate_harmful": "world_greedy_refused_harmful"}


# --- gathering -------------------------------------------------------------------------------


def stage_dirs(cfg: Config) -> dict[str, Path]:
    root = Path(cfg.run.out_dir)
    dirs = {s: root / s for s in STAGES if (root / s).is_dir()}
    if (root / "ppo" / "best_of_n").is_dir():  # PPO's start after rejection-sampling fine-tuning
        dirs["ppo/best_of_n"] = root / "ppo" / "best_of_n"
    for n in rounds_on_disk(cfg):
        r = round_dir(cfg, n)
        for sub in ("rm", "ppo/best_of_n", "ppo"):
            if (r / sub).is_dir():
                dirs[f"{r.name}/{sub}"] = r / sub
    return dirs


def key_figures(meta: dict[str, Any], curves: list[dict[str, Any]]) -> dict[str, Any]:
    """An RM's held-out accuracy beside its two ceilings (labelers' agreement, the rubric as the reward), gold
    correlation, its gap to the first with a 95% interval; numeric meta fields; each training scalar's last value."""
    ev = meta.get("eval") if isinstance(meta.get("eval"), dict) else {}
    rm = ("acc_held_out_labelers", "held_out_labeler_agreement", "gold_acc_held_out_labelers", "gold_spearman")
    figs: dict[str, Any] = {k: ev[k] for k in rm if k in ev} | (
        {"ceiling_gap": ci_text(ev["ceiling_gap"])} if "ceiling_gap" in ev else {}) | {
        k: v for k, v in meta.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "time"}
    if curves:
        for k in curves[-1]:
            if k not in ("step", "time"):
                last = next((row[k] for row in reversed(curves) if k in row), None)
                figs[f"final_{k}"] = last
        figs["steps_logged"] = curves[-1].get("step")
    return figs


def gather(cfg: Config) -> dict[str, Any]:
    """Everything the report shows, as plain JSON (this is metrics.json)."""
    from chatrlhf.lm.modeling import read_meta

    stages = {}
    for name, d in stage_dirs(cfg).items():
        meta = read_meta(d)
        stages[name] = {"complete": bool(meta.get("complete")), "figures": key_figures(meta, read_metrics(d))}
    ev = cfg.stage_dir("eval")
    summary = json.loads((ev / "summary.json").read_text()) if (ev / "summary.json").is_file() else {}
    rounds = read_meta(cfg.stage_dir("rounds"))  # why the last RLHF round was or was not started
    pj = Path(cfg.run.out_dir) / "pipeline.json"
    pipe = json.loads(pj.read_text()) if pj.is_file() else {}
    times = pipe.get("stages", {})
    return {"out_dir": str(cfg.run.out_dir), "stages": stages, "eval": summary, "rounds_budget": rounds.get("budget"),
            "rounds_run": rounds.get("rounds"), "budget": pipe.get("budget") or budget_plan(cfg), "time_limits_fired": time_limits_fired(cfg),
            "stage_seconds": times}


# --- plots ------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(name: str, rows: list[dict[str, Any]], out: Path) -> Path | None:
    """One panel per training scalar whose name mentions loss, reward, KL, gold or accuracy."""
    keys = sorted({k for r in rows for k in r if any(c in k.lower() for c in CURVE_KEYS) and k not in ("step", "time")})
    if not keys:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    keys = keys[:8]
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in rows if k in r and r[k] is not None and math.isfinite(r[k])]
        if pts:  # markers so that a curve of one or a few evaluations is still visible
            ax.plot(*zip(*pts), lw=1.4, marker="o" if len(pts) < 15 else None, ms=3)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    path = out / f"curves_{name.replace('/', '_')}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_models(summary: dict[str, Any], out: Path) -> Path | None:
    """Bar per model for each criterion's headline metric present in the eval."""
    models = summary.get("models", {})
    panels = []
    for crit, choices in HEADLINE.items():
        for key, sign in choices:
            if any(key in m for m in models.values()):
                panels.append((crit, key, sign))
                break
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    order = summary.get("order") or list(models)
    for ax, (crit, key, sign) in zip(axes[0], panels):
        vals = [models[n].get(key, float("nan")) for n in order]
        ax.bar(order, vals, color=["#8da0cb" if n != summary.get("baseline") else "#66c2a5" for n in order])
        ax.set_title(f"{crit}\n{key} ({'higher' if sign > 0 else 'lower'} is better)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "models.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- verdicts -----------------------------------------------------------------------------------


def verdicts(summary: dict[str, Any]) -> list[str]:
    """One line per compared model: change of each criterion's headline metric vs the baseline,
    with its paired bootstrap interval when per-item values exist."""
    models, base = summary.get("models", {}), summary.get("baseline")
    if base not in models:
        return []
    blocked = blocked_prefixes(summary.get("real_data", {}))  # out of domain or too few items: no verdict
    lines = []
    for name, comp in summary.get("comparisons", {}).items():
        parts = []
        for crit, choices in HEADLINE.items():
            key = next((k for k, _ in choices if k in models[name] and k in models[base]
                        and not (blocked and k.startswith(blocked))), None)
            if key is None:
                continue
            sign = dict(choices)[key]
            delta = models[name][key] - models[base][key]
            paired = comp.get(f"diff_{PER_ITEM.get(key, key)}") or \
                comp.get(f"diff_{key.replace('expected_max_toxicity', 'max_toxicity')}")
            word = "toxicity" if crit == "harmlessness" and "toxicity" in key else crit
            txt = f"{word} {delta:+.3f} ({key}"
            if paired:
                ci = (paired["estimate"], paired["low"], paired["high"])
                up, down = ("better", "worse") if sign > 0 else ("worse", "better")
                parts.append(txt + f", 95% CI [{paired['low']:+.3f}, {paired['high']:+.3f}]; "
                             f"{paired.get('verdict') or change_verdict(ci, up, down)})")
            else:
                parts.append(txt + ", no paired interval; no verdict)")
        # only a policy optimised against the RM can over-optimise it; for others it is RM error
        warn = overoptimisation(comp) if name == "ppo" or name.startswith("round_") else None
        if warn:
            parts.append(warn)
        for key, how in (("world_win_rate", "greedy"), ("world_sample_win_rate", "sampled"),
                         ("world_sample_vs_greedy_baseline_win_rate", "sampled vs greedy")):
            if key in comp:
                w = comp[key]
                judged = f" ({w['judgements_per_pair']} judgements per pair)" if "judgements_per_pair" in w else ""
                v = change_verdict((w["estimate"] - 0.5, w["low"] - 0.5, w["high"] - 0.5), f"{name} preferred",
                                   f"{base} preferred")
                parts.append(f"{how} win rate vs {base} {w['estimate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]{judged}, {v}")
        lines.append(f"{name.upper()} vs {base.upper()}: " + "; ".join(parts))
        rubric = rubric_parts(comp)
        if rubric:
            lines.append(f"{name.upper()} vs {base.upper()}, the rubric's substantive parts on sampled answers: {rubric}")
    ctl = summary.get("controls", {}).get("baseline_greedy_vs_sample")
    if ctl and lines:
        lines.append(f"Control: {base.upper()} greedy vs {base.upper()} sampled {ctl['estimate']:.3f} "
                     f"[{ctl['low']:.3f}, {ctl['high']:.3f}], what lowering the temperature alone buys; a sampled "
                     "win rate at or below it is no better than that")
    return lines


def rubric_parts(comp: dict[str, Any]) -> str:
    """Each substantive part of the world rubric on T=1 answers, as a paired difference with the
    baseline on the same prompts: whether the gain is more than style."""
    from chatrlhf.evaluate.run import RUBRIC_PARTS

    out = []
    for part, (label, _) in RUBRIC_PARTS.items():
        d = comp.get(f"diff_world_sample_{part}")
        if d is None:
            continue
        sign = 1 if d.get("better", "higher") == "higher" else -1
        verdict = d.get("verdict") or change_verdict((d["estimate"], d["low"], d["high"]),
                                                     *(("better", "worse") if sign > 0 else ("worse", "better")))
        out.append(f"{label} {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], {verdict}")
    return "; ".join(out)


def overoptimisation(comp: dict[str, Any]) -> str | None:
    """Reward model score up while held-out labelers' Likert is significantly down on the same
    answers: the policy exploits the proxy (Gao et al. 2023, "Scaling laws for reward model
    overoptimization")."""
    rm, lk = comp.get("diff_world_greedy_rm_score"), comp.get("diff_world_greedy_likert")
    if rm and lk and rm["estimate"] > 0 and lk["significant"] and lk["estimate"] < 0:
        return (f"WARNING reward over-optimisation: RM score {rm['estimate']:+.3f} but held-out labelers' Likert "
                f"{lk['estimate']:+.3f}")
    return None


# --- what the report leads with --------------------------------------------------------------------


def _temp(dec: dict[str, Any]) -> str:
    t = dec.get("temperature")
    return "?" if t is None else "greedy" if t == 0 else f"T={t:g}"


def headline_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Final vs baseline: at each one's chosen decoding first, then greedy, T=1 vs T=1 and its control."""
    h = summary.get("headline") or {}
    if not h:
        return [], []
    f, b = h["final"], h["baseline"]
    fd, bd = _temp(h.get("final_decoding", {})), _temp(h.get("baseline_decoding", {}))
    rows = []
    for key, what, dec in (("matched", f"HEADLINE: {f} vs {b}, each at its own best decoding", f"{fd} vs {bd}"),
                           ("greedy", f"{f} vs {b}, greedy both", "greedy vs greedy"),
                           ("t1_vs_t1", f"{f} vs {b}, sampled both (secondary)", "T=1 vs T=1"),
                           ("control", f"control: {b} greedy vs {b} sampled", "greedy vs T=1")):
        if key in h:
            w = h[key]
            rows.append([what, dec, ci_text(w), str(w.get("clusters", "")), h[key]["verdict"]])
    for key, what in (("matched_gold_diff", "gold score difference, matched decoding"),
                      ("matched_likert_diff", "judge Likert difference, matched decoding")):
        if key in h:
            d = h[key]
            rows.append([what, f"{fd} vs {bd}", f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]", "",
                         d["verdict"]])
    return ["comparison (judge group)", "decoding", "win rate or difference [95% cluster CI]", "clusters", "verdict"], rows


def decoding_note(summary: dict[str, Any]) -> str | None:
    h = summary.get("headline") or {}
    if not h:
        return None
    parts = []
    for role in ("final", "baseline"):
        d = h.get(f"{role}_decoding", {})
        lk = ", ".join(f"T={t}: {v:.2f}" for t, v in d.get("validation_likert", {}).items())
        parts.append(f"{h[role]} {_temp(d)}" + (f" (training labelers' mean Likert on {d.get('validation_prompts')} "
                                                f"validation prompts: {lk})" if lk else ""))
    return ("Decodings chosen on validation prompts (the guard split, never eval prompts) by the training "
            "labelers, never the judges: " + "; ".join(parts) + f". Judges: {', '.join(h.get('judges', []))}.")


def examples_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    h = summary.get("headline") or {}
    ex = h.get("examples") or []
    if not ex:
        return [], []
    return (["task", "prompt", f"{h['baseline']} ({_temp(h.get('baseline_decoding', {}))})",
             f"{h['final']} ({_temp(h.get('final_decoding', {}))})"],
            [[e["task"], e["prompt"], e["baseline"], e["final"]] for e in ex])


def attribution_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in summary.get("attribution") or []:
        g = r.get("gold_diff")
        rows.append([r["step"], f"{r['from']} -> {r['to']}", ci_text(r["win_rate"]), r["verdict"],
                     f"{g['estimate']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" if g else "",
                     g["verdict"] if g else ""])
    return (["stage", "from -> to", "judge win rate of 'to' [95% cluster CI]", "verdict", "gold difference [95% CI]",
             "gold verdict"], rows) if rows else ([], [])


def real_data_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[sec, str(v["items"]), v["status"]] for sec, v in (summary.get("real_data") or {}).items()]
    return (["real-data section", "items", "status"], rows) if rows else ([], [])


def budget_lines(data: dict[str, Any]) -> list[str]:
    b = data.get("budget") or {}
    lines = []
    if b:
        lines.append(f"Budget in steps (the same on every machine): pre-training {b['pretrain_steps']} steps, PPO at most "
                     f"{b['ppo_iterations_max']} iterations a round (stop: {b['ppo_stop']}), {b['rounds']} rounds"
                     + (f", up to {b['rounds_max']} by time" if b["rounds_max"] > b["rounds"] else "")
                     + f"; rounds run: {data.get('rounds_run') or 1}.")
        lines.append("Wall-clock limits on: " + (", ".join(b["speed_dependent"]) if b["speed_dependent"] else "none") + ".")
    fired = data.get("time_limits_fired") or []
    lines.append("Wall-clock limits that fired (the result then depends on the machine's speed): "
                 + ("; ".join(fired) if fired else "none") + ".")
    st = data.get("stage_seconds") or {}
    if st:
        lines.append("Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in st.items())
                     + f" (sum {sum(st.values()) / 60:.1f} min).")
    return lines


# --- rendering ----------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def metric_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    models = summary.get("models", {})
    order = summary.get("order") or list(models)
    keys = sorted({k for m in models.values() for k in m})
    return ["metric", *order], [[k, *[_fmt(models[n].get(k)) for n in order]] for k in keys]


def win_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, comp in summary.get("comparisons", {}).items():
        for k, v in comp.items():
            sig = "" if "significant" not in v else ("yes" if v["significant"] else "no")
            rows.append([name, k, _fmt(v["estimate"]), f"[{_fmt(v['low'])}, {_fmt(v['high'])}]", sig])
    return ["model", f"vs {summary.get('baseline')}", "estimate", "95% CI", "significant"], rows


def interval_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-item series (Likert, gold, MC2, max toxicity, RM score): mean [95% CI] per model."""
    iv = summary.get("intervals", {})
    order = [n for n in (summary.get("order") or list(iv)) if n in iv]
    keys = sorted({k for m in iv.values() for k in m})
    rows = [[k, *[(f"{_fmt(iv[n][k]['estimate'])} [{_fmt(iv[n][k]['low'])}, {_fmt(iv[n][k]['high'])}]"
                   if k in iv[n] else "") for n in order]] for k in keys]
    return ["series (mean [95% CI])", *order], rows


def samples_side_by_side(cfg: Config, summary: dict[str, Any], n: int = 4) -> tuple[list[str], list[list[str]]]:
    """The first n world prompts (else real prompts) with every model's greedy response."""
    order = summary.get("order") or list(summary.get("models", {}))
    per_model = {}
    for name in order:
        p = cfg.stage_dir("eval") / f"{name}.json"
        if p.is_file():
            s = json.loads(p.read_text()).get("samples", {})
            per_model[name] = s.get("world") or s.get("real_prompts") or []
    if not per_model:
        return [], []
    first = next(iter(per_model.values()))
    rows = []
    for i, item in enumerate(first[:n]):
        rows.append([item.get("prompt", ""), *[(per_model[m][i]["response"] if i < len(per_model[m]) else "")
                                               for m in per_model]])
    return ["prompt", *per_model], rows


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;overflow-wrap:anywhere}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;
vertical-align:top;max-width:380px}th{background:#f0f0f0}.verdict{background:#eef6ee;padding:0.6em 1em;
border-left:4px solid #3a3;font-family:monospace;font-size:13px}img{max-width:100%}.note{color:#a60}"""


def render(cfg: Config, data: dict[str, Any], plots: list[Path]) -> tuple[str, str]:
    summary = data["eval"]
    stage_rows = [[s, "yes" if v["complete"] else "no",
                   ", ".join(f"{k}={_fmt(x)}" for k, x in list(v["figures"].items())[:10])]
                  for s, v in data["stages"].items()]
    note = " ".join(n for n in (decoding_note(summary), headroom_note(summary)) if n)
    sections = [
        ("Headline: final vs SFT at matched decoding, judged by the judge group", headline_table(summary)),
        ("Example answers (the headline's decodings)", examples_table(summary)),
        ("Stage attribution: each stage against its predecessor (greedy, same eval prompts)", attribution_table(summary)),
        ("Verdict", verdicts(summary) or ["no comparison available (need the baseline and another model)"]),
        ("Real-data benchmarks", real_data_table(summary)),
        ("Budget and time limits", budget_lines(data)),
        ("Pipeline stages", (["stage", "complete", "key figures"], stage_rows)),
        ("Means with bootstrap 95% intervals (world series: over content clusters)", interval_table(summary)),
        ("Every metric, every model", metric_table(summary)),
        ("Win rates and paired differences vs baseline (95% CI; world series over content clusters)", win_table(summary)),
        ("Sample responses (greedy)", samples_side_by_side(cfg, summary)),
    ]
    sections[4:4] = [s for s in [report_section(cfg.stage_dir("preferences"))] if s]  # after `chatrlhf preferences`
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>chatrlhf report</title><style>{CSS}</style>"
         "</head><body>", f"<h1>chatrlhf alignment report</h1><p>run: <code>{html.escape(data['out_dir'])}</code>, "
         f"baseline: <b>{html.escape(str(summary.get('baseline')))}</b>, judge: {html.escape(str(summary.get('judge')))}</p>"]
    md = ["# chatrlhf alignment report", "", f"run: `{data['out_dir']}`, baseline: **{summary.get('baseline')}**", ""]
    for title, content in sections:
        h.append(f"<h2>{html.escape(title)}</h2>")
        md += [f"## {title}", ""]
        if title.startswith("Headline") and note:
            h.append(f"<p>{html.escape(note)}</p>")
            md += [note, ""]
        if title in ("Verdict", "Budget and time limits"):
            h += [f"<div class='verdict'>{html.escape(line)}</div>" for line in content]
            md += [f"- {line}" for line in content]
        elif content[0]:
            h.append(_html_table(*content))
            md.append(_md_table(*content))
        md.append("")
        if title == "Pipeline stages":
            h.append("<h2>Training curves and model comparison</h2>")
            md += ["## Training curves and model comparison", ""]
            for p in plots:
                b64 = base64.b64encode(p.read_bytes()).decode()
                h.append(f"<p><img alt='{p.stem}' src='data:image/png;base64,{b64}'></p>")
                md += [f"![{p.stem}](plots/{p.name})", ""]
    rounds_note = [f"rounds: {data['rounds_budget']}"] if data.get("rounds_budget") else []
    for note in summary.get("notes", []) + rounds_note:
        h.append(f"<p class='note'>note: {html.escape(note)}</p>")
        md.append(f"> note: {note}")
    h.append("</body></html>")
    return "\n".join(h), "\n".join(md) + "\n"


def run_report(cfg: Config) -> Path:
    """Write report/ (report.html, report.md, metrics.json, plots/*.png); returns the HTML page. Under
    several processes rank 0 writes while the others wait."""
    on_main(lambda: _write_report(cfg))
    return cfg.stage_dir("report") / "report.html"


def _write_report(cfg: Config) -> None:
    out = cfg.stage_dir("report")
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # incomplete until the report is written again
    data = gather(cfg)
    plots = [p for p in [plot_models(data["eval"], plots_dir)] if p]
    for name, d in stage_dirs(cfg).items():
        plots += [p for p in [plot_curves(name, read_metrics(d), plots_dir)] if p]
        if (d / "reward_vs_gold.png").is_file():  # PPO's reward-hacking check: RM score, gold, guard, KL
            plots.append(Path(shutil.copy(d / "reward_vs_gold.png", plots_dir / f"reward_vs_gold_{name.replace('/', '_')}.png")))
    data["verdicts"] = verdicts(data["eval"])
    page, md = render(cfg, data, plots)
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(data, indent=1, default=str))
    write_meta(out, {"stage": "report", "html": "report.html", "complete": True})
    lead = [f"{r[0]} ({r[1]}): {r[2]}, {r[4]}" for r in headline_table(data["eval"])[1][:1]]  # the headline first
    lead += [n for n in [headroom_note(data["eval"])] if n]
    Console(stderr=True).print(*lead, *data["verdicts"], f"report: {out / 'report.html'}", sep="\n")
