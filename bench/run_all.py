"""Run every bench/bench_*.py and print one table of their results.

    .venv/bin/python bench/run_all.py [--only pretrain rm ...] [--timeout 1800]

Contract for a benchmark: `bench/bench_<name>.py` runs with no arguments from the repository root
and writes one flat JSON object to `bench/results/<name>.json`. Scripts run one after another (a
benchmark must not share the CPU with another) in fresh interpreters; a failure is reported in the
table and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def discover(only: list[str] | None) -> list[Path]:
    scripts = sorted(BENCH.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    return scripts


def run_one(script: Path, timeout: float) -> dict:
    """Run a benchmark; returns its JSON result plus status and seconds."""
    name = script.stem.removeprefix("bench_")
    out = RESULTS / f"{name}.json"
    out.unlink(missing_ok=True)  # a stale result must not pass for a fresh one
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent, env=env, timeout=timeout,
                              capture_output=True, text=True)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        tail = proc.stderr.strip().splitlines()[-1:] if proc.returncode else []
    except subprocess.TimeoutExpired:
        status, tail = f"timeout {timeout:.0f}s", []
    result = json.loads(out.read_text()) if out.is_file() and status == "ok" else {}
    if status == "ok" and not result:
        status = f"no {out.relative_to(BENCH.parent)}"
    return {"name": name, "status": status, "seconds": round(time.time() - t0, 1), "error": " ".join(tail), **result}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    return str(v)


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="chatrlhf benchmarks")
    for col in ("bench", "status", "seconds", "results"):
        table.add_column(col)
    for r in rows:
        scalars = {k: v for k, v in r.items() if k not in ("name", "status", "seconds", "error", "bench")
                   and isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        text = ", ".join(f"{k}={_fmt(v)}" for k, v in scalars.items()) or r.get("error", "")
        table.add_row(r["name"], r["status"], _fmt(r["seconds"]), text)
    Console().print(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="benchmark names (bench_<name>.py) to run")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for script in discover(args.only):
        print(f"running {script.name} ...", flush=True)
        rows.append(run_one(script, args.timeout))
    print_table(rows)
    (RESULTS / "summary.json").write_text(json.dumps(rows, indent=2))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
