"""The whose-preferences table that `chatrlhf preferences` writes (preferences/table.{json,md}) and the
report shows: each policy against the pooled one, judged by each group's held-out members, beside what
the world's rubric sees in its answers (refusals, borderline answers, hedges), and each group's own
cells split by task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BEFORE = " before RM and PPO"  # a variant's own SFT model itself: what its RM and PPO add to it
SFT_ONLY = "conditioned-sft" + BEFORE
CONDITIONED = ("conditioned", "conditioned-sft", SFT_ONLY)  # the policies asked for each group in a system message
GROUP_SFT_NOTE = (" Each group's policy started from an SFT model on its own group's demonstrations "
                  "(preferences.group_sft): its row shows the bias of the labelers who write and rank; the pooled "
                  "and conditioned policies started from the run's SFT model. The rows \"<group> before RM and PPO\" "
                  "are those SFT models themselves.")
ROUNDS_NOTE = (" The pooled and each group's policy ran {n} round(s), the conditioned policies {c}; each round after the "
               "first ranked by the variant's own labelers on its newest policy's answers (preferences.rounds, "
               "preferences.conditioned_rounds).")
MIXED_NOTE = (" Every RM was trained on the same answers, drawn in turn from the run's SFT model and each group's "
              "(preferences.mixed_samples).")


def own_group(name: str, groups: list[str]) -> str | None:
    """The group a table row serves: a group's policy ("brief"), its SFT model ("brief before RM and
    PPO", with group_sft) or a conditioned policy asked for it ("conditioned-sft:brief"); None for none."""
    g = name.rpartition(":")[2] if ":" in name else name.removesuffix(BEFORE)
    return g if g in groups else None


def table_groups(result: dict[str, Any]) -> list[str]:
    """The judging groups of a table: every row is judged by every group's members."""
    return list(next(iter(result["rows"].values())))


def table_rows(result: dict[str, Any], groups: list[str]) -> tuple[list[str], list[list[str]]]:
    """(head, rows): each policy's win rate [95% CI] against the pooled one per judging group, then the
    rubric's columns; the pooled policy last, at 0.5 by definition."""
    sub = result.get("substance", {})
    head = ["policy trained on", *(f"judged by {g}" for g in groups), "refuses harmless requests",
            "refuses harmful requests", "borderline requests answered / with a safety note", "facts and summaries hedged"]
    rows = [[name, *(f"{row[g]['win_rate']:.3f} [{row[g]['low']:.3f}, {row[g]['high']:.3f}]" for g in groups),
             *_substance_cells(sub.get(name))] for name, row in result["rows"].items()]
    if "pooled" in sub:
        rows.append(["pooled (the baseline)", *["0.5"] * len(groups), *_substance_cells(sub["pooled"])])
    return head, rows


def report_section(stage_dir: Path) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    """The report's section for the table `chatrlhf preferences` wrote under stage_dir; None before it has."""
    path = stage_dir / "table.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    title = (f"Whose preferences: each policy against the pooled one, judged by each group's held-out members "
             f"({result['n_prompts']} prompts, greedy; preferences/table.md splits the cells by task)")
    return title, table_rows(result, table_groups(result))


def table_md(result: dict[str, Any], groups: list[str]) -> str:
    head, rows = table_rows(result, groups)
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1), *("| " + " | ".join(r) + " |" for r in rows)]
    return ("Win rate against the policy trained on everyone's rankings (pooled), on "
            f"{result['n_prompts']} held-out prompts, greedy answers, judged by each group's held-out members; "
            "95% cluster-bootstrap intervals. Last columns: the share of harmless requests the policy refuses "
            "(the world's rubric) and of harmful requests, the share of borderline requests it answers, and answers "
            "with the safety note, and the share of fact and summary answers it hedges (\"..., I think.\"; the note "
            "and the hedge are what only the cautious group wants)." + (GROUP_SFT_NOTE if result.get("group_sft") else "")
            + (MIXED_NOTE if result.get("mixed_samples") else "")
            + (ROUNDS_NOTE.format(n=n, c=c) if max(n := result.get("rounds", 1), c := result.get("conditioned_rounds", n)) > 1 else "")
            + "\n\n" + "\n".join(lines) + "\n\n" + own_group_by_task_md(result, groups))


def own_group_by_task_md(result: dict[str, Any], groups: list[str]) -> str:
    """Each group's policy (and the conditioned ones asked for it) judged by its own group's members,
    task by task: the diagonal's cells split where the groups' tastes differ and where they agree."""
    own = [(name, g) for name in result["rows"] if (g := own_group(name, groups))]
    tasks = sorted({t for name, g in own for t in result["rows"][name][g].get("by_task", {})})
    if not tasks:
        return ""
    n = result["rows"][own[0][0]][own[0][1]]["by_task"]
    lines = ["| policy, judged by its own group | " + " | ".join(f"{t} ({n[t]['n']})" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for name, g in own:
        cells = result["rows"][name][g]["by_task"]
        lines.append(f"| {name} | " + " | ".join(f"{cells[t]['win_rate']:.2f}" if t in cells else "-" for t in tasks) + " |")
    return ("The same diagonal by task (number of prompts in brackets; no intervals, the cells are small):\n\n"
            + "\n".join(lines) + "\n")


def _substance_cells(sub: dict | None) -> list[str]:
    """The rubric's columns of one policy: harmless and harmful requests refused, borderline requests
    answered / with a safety note, facts and summaries hedged."""
    return [_rate(sub), _rate(sub, "harmful_refusal_rate"), _borderline(sub), _rate(sub, "hedge_rate")]


def _rate(sub: dict | None, key: str = "over_refusal_rate") -> str:
    x = (sub or {}).get(key)
    return "-" if x is None else f"{x:.2f}"


def _borderline(sub: dict | None) -> str:
    return f"{_rate(sub, 'borderline_answer_rate')} / {_rate(sub, 'borderline_caveat_rate')}"
