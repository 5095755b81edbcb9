"""Server throughput and latency vs `model.generate` called directly, in one run.

    .venv/bin/python bench/bench_server.py [--model DIR] [--clients 1 4 16] [--requests 32] [--max-tokens 32]

Starts `chatrlhf serve` as a subprocess on a free loopback port, then for each concurrency level
runs that many clients (each sending non-streamed requests back to back, `--requests` in all) and
reports completion tokens/s and p50/p95 request latency. The baseline answers the same requests
with `model.generate` directly: one at a time (what a naive server does) and as one padded batch
per wave of clients (the best a static batch can do). Writes bench/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import PROMPTS, bench_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def summary(latencies: list[float], tokens: int, wall: float) -> dict:
    return {"requests": len(latencies), "completion_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "p50_latency_s": pct(latencies, 0.5),
            "p95_latency_s": pct(latencies, 0.95)}


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


# --- the server side ------------------------------------------------------------------------


def start_server(model_dir: Path, max_tokens: int, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "chatrlhf.cli", "serve", "--model", str(model_dir), "--set", "serve.host=127.0.0.1",
           "--set", f"serve.port={port}", "--set", f"serve.max_tokens={max(max_tokens, 16)}",
           "--set", "serve.max_batch=16", "--set", "serve.timeout_s=300", "--set", f"run.threads={threads}"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up in 120 s")


async def run_clients(url: str, clients: int, total: int, max_tokens: int) -> dict:
    """`clients` concurrent loops sharing `total` requests; latency per request, tokens from usage."""
    latencies: list[float] = []
    tokens = 0
    todo = iter(range(total))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in todo:
            body = {"messages": messages(i), "max_tokens": max_tokens, "temperature": 1.0, "seed": i}
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/chat/completions", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await client_warmup(http, url)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return summary(latencies, tokens, wall)


async def client_warmup(http: httpx.AsyncClient, url: str) -> None:
    await http.post(url + "/v1/chat/completions", json={"messages": messages(0), "max_tokens": 4})


# --- the baseline ---------------------------------------------------------------------------


def direct_generate(model, tok, total: int, max_tokens: int, wave: int) -> dict:
    """model.generate on the same requests, `wave` at a time in one left-padded batch."""
    ids = [tok(tok.apply_chat_template(messages(i), add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"] for i in range(total)]
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for lo in range(0, total, wave):
        enc = tok.pad({"input_ids": ids[lo: lo + wave]}, return_tensors="pt", padding_side="left")
        s = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=1.0, max_new_tokens=max_tokens, top_k=0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        dt = time.perf_counter() - s
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            latencies.append(dt)  # every request of the wave waits for the whole batch
    return summary(latencies, tokens, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Model dir (default: the run's newest policy, else a random Llama).")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=32, help="Requests per concurrency level.")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for server and baseline alike (0 = auto: 1 on a busy CPU).")
    args = ap.parse_args(argv)
    from chatrlhf.lm.training import configure_threads

    args.threads = configure_threads(args.threads)

    model, tok, source = bench_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else Path(source) if Path(source).is_dir() else None
        if model_dir is None:  # the random model has to be on disk for the server process
            from chatrlhf.lm.modeling import save_stage

            model_dir = save_stage(model, tok, Path(tmp) / "model", {"stage": "bench"})
        proc, url = start_server(model_dir, args.max_tokens, args.threads)
        try:
            served = {}
            for c in args.clients:
                served[str(c)] = asyncio.run(run_clients(url, c, args.requests, args.max_tokens))
                print(f"server   {c:2d} clients: {served[str(c)]}", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    direct = {"sequential": direct_generate(model, tok, args.requests, args.max_tokens, 1),
              "batch_16": direct_generate(model, tok, args.requests, args.max_tokens, 16)}
    for k, v in direct.items():
        print(f"generate {k}: {v}", file=sys.stderr)
    # one flat object (bench/run_all.py contract): <who>_<metric>
    result = {"model": source, "max_tokens": args.max_tokens, "requests_per_level": args.requests,
              "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "threads": args.threads}
    for c, r in served.items():
        result.update({f"server_c{c}_tokens_per_s": r["tokens_per_s"], f"server_c{c}_p50_s": r["p50_latency_s"],
                       f"server_c{c}_p95_s": r["p95_latency_s"]})
    for k, r in direct.items():
        result.update({f"generate_{k}_tokens_per_s": r["tokens_per_s"], f"generate_{k}_p50_s": r["p50_latency_s"],
                       f"generate_{k}_p95_s": r["p95_latency_s"]})
    result["note"] = ("loopback HTTP to `chatrlhf serve`, non-streamed, temperature 1; c<N> = N concurrent clients; "
                      "generate_batch_16 = model.generate on padded batches of 16 (each request waits for its batch)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
