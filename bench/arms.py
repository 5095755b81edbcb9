"""Arms of an ablation side by side: for each arm (a run directory pattern with {S} for the world seed),
the decoding-matched headline and PPO's round 1 over its start per world, their means, and on how many
worlds the arm is ahead of the first arm (the baseline), read from finished runs as
`bench/test_worlds.py` reads them.

    python bench/arms.py --worlds 1234 1235 1236 1237 --arm default=runs/d{S} --arm k3=runs/hk{S} \
        [--arm ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_worlds import _json, read_run  # noqa: E402


def arm_figures(pattern: str, worlds: list[str]) -> dict[str, Any]:
    """Per world: the headline, PPO over its start (round 1 against its predecessor) and round 1's kept
    policy (iteration, KL to SFT); None where the run has not finished."""
    rows = {}
    for s in worlds:
        out = Path(pattern.format(S=s))
        rec = read_run(out)
        ppo = next((r for r in rec.get("attribution", []) if r.get("to") == "ppo"), {})
        meta = _json(out / "ppo" / "meta.json")
        rows[s] = {"run": str(out), "headline": (rec.get("matched") or {}).get("estimate"),
                   "headline_ci": [(rec.get("matched") or {}).get(k) for k in ("low", "high")],
                   "ppo_over_start": (ppo.get("win_rate") or {}).get("estimate"),
                   "kept_iteration": meta.get("selected_iteration"), "iterations": meta.get("iterations"),
                   "kept_kl": meta.get("kl")}
    return rows


def _mean(rows: dict[str, Any], key: str) -> float | None:
    vals = [r[key] for r in rows.values() if r[key] is not None]
    return statistics.mean(vals) if len(vals) == len(rows) else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", nargs="+", required=True)
    ap.add_argument("--arm", action="append", required=True, help="NAME=PATTERN, {S} standing for the world seed")
    ap.add_argument("--json")
    a = ap.parse_args()
    arms = {name: arm_figures(pattern, a.worlds) for name, pattern in (x.split("=", 1) for x in a.arm)}
    base = next(iter(arms.values()))
    out: dict[str, Any] = {}
    for name, rows in arms.items():
        ahead = sum(1 for s in a.worlds if None not in (rows[s]["headline"], base[s]["headline"])
                    and rows[s]["headline"] > base[s]["headline"])
        out[name] = {"worlds": rows, "headline_mean": _mean(rows, "headline"),
                     "ppo_over_start_mean": _mean(rows, "ppo_over_start"), "ahead_of_baseline": ahead}
        heads = " / ".join(_fmt(rows[s]["headline"]) for s in a.worlds)
        gains = " / ".join(_fmt(rows[s]["ppo_over_start"]) for s in a.worlds)
        kept = " / ".join(f"{rows[s]['kept_iteration']} of {rows[s]['iterations']}" for s in a.worlds)
        print(f"{name:12s} headline {heads} (mean {_fmt(out[name]['headline_mean'])}, ahead on {ahead})  "
              f"PPO over its start {gains} (mean {_fmt(out[name]['ppo_over_start_mean'])})  round 1 kept {kept}")
    if a.json:
        Path(a.json).write_text(json.dumps({"worlds": a.worlds, "arms": out}, indent=2))


if __name__ == "__main__":
    main()
