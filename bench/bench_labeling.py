"""Labeling app load test: 20 concurrent labelers submit 2,000 rankings; exactly 2,000 rows must remain.

    .venv/bin/python bench/bench_labeling.py [--rankings 2000] [--labelers 20] [--db sqlite|postgresql|both]

Starts `chatrlhf label serve` as a subprocess on a free loopback port (one uvicorn worker) for each
database, runs `chatrlhf.labeling.loadtest.load_test` (each labeler a thread: claim next -> submit,
until the queue is empty), then counts the exported rankings. Reports requests/s and rankings/s
and writes bench/results/labeling.json. Loopback only; PostgreSQL is skipped when unreachable
(`.ci/start-postgres` starts one; CHATRLHF_TEST_PG_URL overrides the URL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from chatrlhf.labeling import db as labdb
from chatrlhf.labeling.loadtest import LocalServer, load_test

RESULTS = Path(__file__).resolve().parent / "results"
PG_URL = os.environ.get("CHATRLHF_TEST_PG_URL", "postgresql://postgres@127.0.0.1/chatrlhf_test")


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(db: str, label: str, rankings: int, labelers: int) -> dict:
    with LocalServer(db) as srv:
        cpu0 = server_cpu_seconds(srv.proc.pid)
        got = load_test(srv.url, srv.admin_token, n_rankings=rankings, n_labelers=labelers, project="bench")
        got["server_cpu_s"] = round(server_cpu_seconds(srv.proc.pid) - cpu0, 2)
    got["db"] = label
    got["exact"] = got["rows"] == rankings and got["items_ranked_twice"] == 0 and got["n_errors"] == 0
    print(f"{label:10s} rows={got['rows']}/{rankings} exact={got['exact']} requests={got['requests']} "
          f"{got['requests_per_s']} req/s, {got['rankings_per_s']} rankings/s in {got['seconds']} s "
          f"(server CPU {got['server_cpu_s']} s)", flush=True)
    return got


def pg_ready() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=2):
            return True
    except Exception:  # noqa: BLE001
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rankings", type=int, default=2000)
    ap.add_argument("--labelers", type=int, default=20)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    args = ap.parse_args()
    runs = []
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            runs.append(run_one(f"sqlite:///{d}/bench.db", "sqlite", args.rankings, args.labelers))
    if args.db in ("postgresql", "both"):
        if pg_ready():
            labdb.downgrade(PG_URL, "base")  # a fresh schema; the server migrates it at start
            runs.append(run_one(PG_URL, "postgresql", args.rankings, args.labelers))
        else:
            print(f"postgresql: not reachable at {PG_URL}; skipped", flush=True)
    result = {"bench": "labeling", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                          "load_avg_at_end": os.getloadavg()},
              "rankings": args.rankings, "labelers": args.labelers, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "labeling.json").write_text(json.dumps(result, indent=2))
    if not all(r["exact"] for r in runs):
        sys.exit("labeling bench: rows did not match the rankings submitted")


if __name__ == "__main__":
    main()
