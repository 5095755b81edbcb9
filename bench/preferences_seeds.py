"""The whose-preferences targets over several runs of each world: every run's own-group cells, each
world's mean over its runs and the spread, from the tables `chatrlhf preferences` writes.

    python bench/preferences_seeds.py 9001=runs/a/preferences/table.json 9001=runs/b/preferences/table.json \
      9002=... [--json out.json]

Each argument is WORLD=TABLE (a `preferences/table.json`, or a copy of one in bench/results). For each
group G, two cells per run: G's own policy judged by G's held-out members against the pooled policy
(the diagonal), and the conditioned policy asked for G (conditioned-sft, else conditioned) judged the
same way. A world's cell meets the issue's bar when its mean over the runs is at least 0.6. Then the share
of harmful requests each trained policy refuses, run by run, and of harmless ones, run by run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from chatrlhf.evaluate.whose import BEFORE, table_groups  # noqa: E402

BAR = 0.6


def own_cells(table: dict) -> dict[str, float]:
    """{"diagonal:G": win rate, "conditioned:G": win rate} for every group of one table."""
    rows = table["rows"]
    groups = table_groups(table)
    cond = "conditioned-sft" if any(k.startswith("conditioned-sft:") for k in rows) else "conditioned"
    cells = {f"diagonal:{g}": rows[g][g]["win_rate"] for g in groups}
    cells |= {f"conditioned:{g}": rows[f"{cond}:{g}"][g]["win_rate"] for g in groups if f"{cond}:{g}" in rows}
    return cells


def refused(table: dict, key: str = "harmful_refusal_rate") -> dict[str, float]:
    """The share of harmful requests (key over_refusal_rate: of harmless ones) each trained policy
    refuses (the rubric's view, `substance`), the pooled one included; the SFT models before RM and
    PPO left out."""
    return {name: s[key] for name, s in table.get("substance", {}).items() if BEFORE not in name and s.get(key) is not None}


def summarise(pairs: list[tuple[str, Path]]) -> dict:
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    rates: dict[str, dict[str, list[dict[str, float]]]] = {"harmful_refused": defaultdict(list), "harmless_refused": defaultdict(list)}
    for world, path in pairs:
        table = json.loads(path.read_text())
        runs[world].append(own_cells(table))
        rates["harmful_refused"][world].append(refused(table))
        rates["harmless_refused"][world].append(refused(table, "over_refusal_rate"))
    out: dict = {"worlds": {}, "bar": BAR}
    for world, tables in runs.items():
        cells = {}
        for cell in tables[0]:
            values = [t[cell] for t in tables if cell in t]
            cells[cell] = {"runs": values, "mean": statistics.fmean(values), "min": min(values), "max": max(values)}
        out["worlds"][world] = cells
        for name, by_world in rates.items():
            out.setdefault(name, {})[world] = {p: [r.get(p) for r in by_world[world]] for p in by_world[world][0]}
    every = [c["mean"] for w in out["worlds"].values() for c in w.values()]
    out["met"] = sum(m >= BAR for m in every)
    out["cells"] = len(every)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="+", help="WORLD=path/to/table.json, one per run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pairs = []
    for arg in args.tables:
        world, sep, path = arg.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"{arg!r}: give WORLD=TABLE, TABLE an existing preferences table.json")
        pairs.append((world, Path(path)))
    res = summarise(pairs)
    cells = list(next(iter(res["worlds"].values())))
    print("| cell | " + " | ".join(res["worlds"]) + " |")
    print("|---|" + "---|" * len(res["worlds"]))
    for cell in cells:
        shown = []
        for world in res["worlds"].values():
            c = world.get(cell)
            shown.append("" if c is None else f"{c['mean']:.3f} ({' / '.join(f'{v:.3f}' for v in c['runs'])})")
        print(f"| {cell} | " + " | ".join(shown) + " |")
    print(f"world means at {BAR} or more: {res['met']} of {res['cells']}")
    for name, what in (("harmful_refused", "harmful"), ("harmless_refused", "harmless")):
        print(f"\n{what} requests refused, run by run:")
        for world, policies in res[name].items():
            print(f"{world}: " + "; ".join(f"{p} {' / '.join('-' if v is None else f'{v:.2f}' for v in vals)}"
                                           for p, vals in policies.items()))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
