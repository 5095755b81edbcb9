"""A local labeling server in a subprocess, and a bounded loopback load test against it.

    with LocalServer("sqlite:///runs/lt.db") as srv:
        print(load_test(srv.url, srv.admin_token, n_rankings=2000, n_labelers=20))

Each simulated labeler is a thread with its own bearer token doing next -> submit until the queue is
empty; the test then counts what the export holds. Loopback only, bounded by n_rankings.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from chatrlhf.labeling.client import LabelingClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`chatrlhf label serve` on 127.0.0.1 in a child process; kill() simulates a crash (SIGKILL)."""

    def __init__(self, db: str, port: int | None = None, admin_token: str | None = None, start_timeout: float = 60.0):
        self.db, self.port = db, port or free_port()
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        env = {**os.environ, "CHATRLHF_LABEL_ADMIN_TOKEN": self.admin_token, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "chatrlhf.cli", "label", "serve", "--db", self.db,
                                      "--host", "127.0.0.1", "--port", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"labeling server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/login", timeout=1.0, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"labeling server did not answer on {self.url} within {self.start_timeout}s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def load_test(url: str, admin_token: str, n_rankings: int = 2000, n_labelers: int = 20, k: int = 4,
              project: str = "loadtest") -> dict[str, Any]:
    """n_labelers threads rank n_rankings comparisons (one labeler each) as fast as they can."""
    client = LabelingClient(url, admin_token)
    records = [{"id": f"lt-{i:06d}", "prompt_id": f"rm-{i:06d}", "task": "open",
                "messages": [{"role": "user", "content": f"Question {i}?"}],
                "responses": [f"Answer {i}.{j}" for j in range(k)]} for i in range(n_rankings)]
    client.push_comparisons(project, records, labelers_per_item=1)
    tokens = {f"lt{j:02d}": client.add_labeler(f"lt{j:02d}") for j in range(n_labelers)}
    client.assign(project, list(tokens))
    requests, errors = [0], []
    lock = threading.Lock()

    def work(token: str, seed: int) -> None:
        ranks = list(range(1, k + 1))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60, trust_env=False) as h:
            n = 0
            while True:
                r = h.post(f"/api/projects/{project}/next")
                n += 1
                item = r.json()["item"] if r.status_code == 200 else None
                if r.status_code != 200:
                    errors.append(f"next: {r.status_code} {r.text[:200]}")
                if item is None:
                    break
                ranks = ranks[1:] + ranks[:1]
                r = h.post(f"/api/items/{item['id']}/submit", json={"ranks": ranks})
                n += 1
                if r.status_code not in (200, 201):
                    errors.append(f"submit: {r.status_code} {r.text[:200]}")
        with lock:
            requests[0] += n

    threads = [threading.Thread(target=work, args=(t, j)) for j, t in enumerate(tokens.values())]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    exported = client.pull_rankings(project)
    rows = sum(len(r["rankings"]) for r in exported)
    return {"rankings_expected": n_rankings, "rows": rows, "items_ranked": len(exported),
            "items_ranked_twice": sum(1 for r in exported if len(r["rankings"]) > 1),
            "labelers": n_labelers, "requests": requests[0], "seconds": round(seconds, 3),
            "requests_per_s": round(requests[0] / seconds, 1), "rankings_per_s": round(rows / seconds, 1),
            "errors": errors[:5], "n_errors": len(errors)}
