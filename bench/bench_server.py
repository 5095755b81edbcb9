"""Server throughput and latency against the engine it serves, side by side in one run.

    .venv/bin/python bench/bench_server.py [--model DIR] [--clients 1 4 16] [--requests 256] [--max-tokens 32] [--repeats 3]

Request i is prompt i mod 6 of the engine bench as a one-message chat, seed i, temperature 1,
`--max-tokens`. Starts `chatrlhf serve` as a subprocess on a free loopback port (it decodes in a
child process of its own, with every core but one unless `--threads` says); each repeat then
answers the same requests, in turn, with
- the server at each concurrency level: that many clients, each sending non-streamed requests back
  to back over its own kept-alive loopback HTTP connection; and at 16 clients the same server decoding
  in its HTTP process (`serve.decode_process=false`, on the baselines' threads: `server_in_process_c16`);
- `Engine.generate` (the fast path the server decodes with) on waves of 16 requests, one call per
  wave (`engine_batch_16`), the same on one torch thread (`engine_batch_16_one_thread`: the server's
  decoding process leaves a core to HTTP), and one request at a time (`engine_batch_1`);
- the server's decoding without HTTP (`engine_joined_one_at_a_time`): one `DecodeBatch` of up to 16
  rows where each request joins alone as soon as a slot frees, as the server's requests do.
  A request's seed fixes its sample (to float rounding: `requests_differing_joined_vs_waves` counts
  the requests whose tokens differ between joining alone and decoding in waves);
- `model.generate` on left-padded waves of 16 (`generate_batch_16`);
- one client of a third server that decodes a lone conversation through the compiled one-row step
  (`serve.compile=true`, compiling into an empty cache on its first request: `server_compiled_c1`),
  against `server_c1`.
A figure is the median over repeats of completion tokens/s and p50/p95 latency (a wave's requests
all wait for the wave); the ratio server_c16 / engine_batch_16 is the median of the per-repeat
ratios. Writes bench/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
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

from chatrlhf.lm.engine import DecodeBatch, Engine, SamplingParams  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WAVE = 16


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(latencies: list[float], tokens: int, wall: float) -> dict:
    return {"tokens": tokens, "tokens_per_s": tokens / wall, "p50_s": pct(latencies, 0.5), "p95_s": pct(latencies, 0.95)}


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


# --- the server -----------------------------------------------------------------------------


def start_server(model_dir: Path, max_tokens: int, threads: int, log, *extra: str) -> tuple[subprocess.Popen, str]:
    """`chatrlhf serve` on a free loopback port; `threads` > 0 sets its decoding threads (0: the
    server's own choice, every core but one); `extra`: more --set overrides."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "chatrlhf.cli", "serve", "--model", str(model_dir), "--set", "serve.host=127.0.0.1",
           "--set", f"serve.port={port}", "--set", f"serve.max_tokens={max(max_tokens, 16)}",
           "--set", f"serve.max_batch={WAVE}", "--set", "serve.timeout_s=300", "--set", f"run.threads={threads}",
           *[a for o in extra for a in ("--set", o)]]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    # the access log goes to a file: a pipe nobody reads fills up and stalls the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up in 120 s")


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict) -> dict:
    """One HTTP/1.1 request on a kept-alive connection. The load generator is a few lines of asyncio
    rather than an HTTP client library: it shares the machine's cores with the server, and httpx
    spent ~1 ms of CPU per request where this spends ~0.2 ms."""
    data = json.dumps(body).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    reply = json.loads(await reader.readexactly(int(headers["content-length"])))
    if head[0].split()[1] != "200":
        raise RuntimeError(f"{head[0]}: {reply}")
    return reply


async def run_clients(url: str, clients: int, total: int, max_tokens: int) -> dict:
    """`clients` concurrent connections sharing `total` requests; latency per request, tokens from usage."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    tokens = 0
    todo = iter(range(total))

    async def client(conn) -> None:
        nonlocal tokens
        for i in todo:
            body = {"messages": messages(i), "max_tokens": max_tokens, "temperature": 1.0, "seed": i}
            t0 = time.perf_counter()
            reply = await post(*conn, body)
            latencies.append(time.perf_counter() - t0)
            tokens += reply["usage"]["completion_tokens"]

    conns = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]
    await post(*conns[0], {"messages": messages(0), "max_tokens": 4})
    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    wall = time.perf_counter() - t0
    for _, writer in conns:
        writer.close()
    return summary(latencies, tokens, wall)


# --- the baselines, in this process ----------------------------------------------------------


def engine_waves(eng: Engine, ids: list[list[int]], max_tokens: int, wave: int, samples: list | None = None) -> dict:
    """Engine.generate on `wave` requests per call; row j of a wave starting at request lo has seed
    lo + j, the seed the server's request lo + j asks for. `samples` collects each request's tokens."""
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for lo in range(0, len(ids), wave):
        s = time.perf_counter()
        gens = eng.generate(ids[lo: lo + wave], SamplingParams(max_new_tokens=max_tokens, temperature=1.0, seed=lo))
        latencies += [time.perf_counter() - s] * len(gens)
        tokens += sum(len(g.token_ids) for g in gens)
        if samples is not None:
            samples += [g.token_ids for g in gens]
    return summary(latencies, tokens, time.perf_counter() - t0)


def joined_one_at_a_time(eng: Engine, ids: list[list[int]], max_tokens: int, wave: int,
                         samples: list | None = None) -> dict:
    """The server's decoding without HTTP: each request joins the running batch alone as soon as a
    slot frees (prefilled inside a decode step beside the running rows). `samples` collects each
    request's tokens."""
    params = lambda i: SamplingParams(max_new_tokens=max_tokens, temperature=1.0, seed=i)  # noqa: E731
    t0 = time.perf_counter()
    batch = DecodeBatch(eng, ids[:wave], [params(i) for i in range(wave)])
    row, nxt = list(range(wave)), wave
    start, latencies = dict.fromkeys(row, t0), []
    while nxt < len(ids) or not batch.done:
        running = batch.active.tolist()
        batch.step()
        now = time.perf_counter()
        latencies += [now - start.pop(r) for r in running if batch.reason[r] is not None and r in start]
        while nxt < len(ids) and len(batch.active) + len(batch.waiting) < wave:
            row += batch.join([ids[nxt]], [params(nxt)])
            start[row[-1]] = now
            nxt += 1
    wall = time.perf_counter() - t0
    if samples is not None:
        samples += [batch.tokens[r] for r in row]
    return summary(latencies, sum(len(batch.tokens[r]) for r in row), wall)


def generate_waves(model, tok, ids: list[list[int]], max_tokens: int, wave: int) -> dict:
    """model.generate on the same prompts, `wave` at a time in one left-padded batch."""
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for lo in range(0, len(ids), wave):
        enc = tok.pad({"input_ids": ids[lo: lo + wave]}, return_tensors="pt", padding_side="left")
        s = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=1.0, max_new_tokens=max_tokens, top_k=0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        dt = time.perf_counter() - s
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            latencies.append(dt)
    return summary(latencies, tokens, time.perf_counter() - t0)


# --- the run --------------------------------------------------------------------------------


def run_repeats(args, model, tok, url: str, url_in_process: str, url_compiled: str) -> list[dict[str, dict]]:
    eng = Engine(model, tok, max_batch=WAVE)
    ids = [eng.chat_prompt(messages(i)) for i in range(args.requests)]  # what the server's chat_prompt makes
    runs = []
    waves: list[list[int]] = []  # each request's tokens, from the first repeat
    joined: list[list[int]] = []
    for rep in range(args.repeats):
        keep = rep == 0
        got = {f"server_c{c}": asyncio.run(run_clients(url, c, args.requests, args.max_tokens)) for c in args.clients}
        got["server_in_process_c16"] = asyncio.run(run_clients(url_in_process, 16, args.requests, args.max_tokens))
        got["server_compiled_c1"] = asyncio.run(run_clients(url_compiled, 1, args.requests, args.max_tokens))
        got["engine_batch_16"] = engine_waves(eng, ids, args.max_tokens, WAVE, waves if keep else None)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what the server's decoding process has on this machine when it has 1 thread
        got["engine_batch_16_one_thread"] = engine_waves(eng, ids, args.max_tokens, WAVE)
        torch.set_num_threads(threads)
        got["engine_batch_1"] = engine_waves(eng, ids, args.max_tokens, 1)
        got["engine_joined_one_at_a_time"] = joined_one_at_a_time(eng, ids, args.max_tokens, WAVE,
                                                                   joined if keep else None)
        got["generate_batch_16"] = generate_waves(model, tok, ids, args.max_tokens, WAVE)
        print(f"repeat {rep}: " + ", ".join(f"{k} {v['tokens_per_s']:.0f} tok/s p95 {v['p95_s']:.3f}"
                                            for k, v in got.items()), file=sys.stderr, flush=True)
        runs.append(got)
    args.differing = [i for i, (a, b) in enumerate(zip(waves, joined)) if a != b]
    return runs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Model dir (default: the run's newest policy, else a random Llama).")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=256, help="Requests per figure and repeat.")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for the server's decoding and the baselines alike (0 = auto: the baselines "
                         "take every core, 1 on a busy CPU; the server its own default, every core but one).")
    args = ap.parse_args(argv)
    from chatrlhf.lm.training import configure_threads

    server_threads = args.threads
    args.threads = configure_threads(args.threads)
    model, tok, source = bench_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else Path(source) if Path(source).is_dir() else None
        if model_dir is None:  # the random model has to be on disk for the server process
            from chatrlhf.lm.modeling import save_stage

            model_dir = save_stage(model, tok, Path(tmp) / "model", {"stage": "bench"})
        with open(Path(tmp) / "server.log", "w") as log, open(Path(tmp) / "server_in_process.log", "w") as log2, \
                open(Path(tmp) / "server_compiled.log", "w") as log3:
            proc, url = start_server(model_dir, args.max_tokens, server_threads, log)
            # the same server decoding in its HTTP process (serve.decode_process=false), on the baselines' threads
            proc2, url2 = start_server(model_dir, args.max_tokens, args.threads, log2, "serve.decode_process=false")
            os.environ["CHATRLHF_CACHE"] = str(Path(tmp) / "cache")  # the compiled server starts cold
            proc3, url3 = start_server(model_dir, args.max_tokens, server_threads, log3, "serve.compile=true")
            try:
                runs = run_repeats(args, model, tok, url, url2, url3)
            finally:
                for p in (proc, proc2, proc3):
                    p.terminate()
                    p.wait(timeout=30)
            said = re.search(r"decoding in ([^)]*)\)", Path(log.name).read_text())
            args.server_decoding = said.group(1) if said else "unknown"
    result = report(args, source, runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server.json").write_text(json.dumps(result, indent=2))
    return result


def report(args, source: str, runs: list[dict[str, dict]]) -> dict:
    """One flat object (bench/run_all.py contract): <who>_<metric>, medians over repeats."""
    result = {"model": source, "max_tokens": args.max_tokens, "requests": args.requests, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "threads": args.threads,
              "server_decoding": args.server_decoding}
    for who in runs[0]:
        for metric, digits in (("tokens_per_s", 1), ("p50_s", 3), ("p95_s", 3)):
            result[f"{who}_{metric}"] = round(statistics.median(r[who][metric] for r in runs), digits)
    for who, base in (("server_c16", "engine_batch_16"), ("server_c16", "engine_batch_16_one_thread"),
                      ("server_in_process_c16", "engine_batch_16"), ("server_compiled_c1", "server_c1")):
        ratios = [r[who]["tokens_per_s"] / r[base]["tokens_per_s"] for r in runs if who in r and base in r]
        if ratios:
            result.update({f"{who}_over_{base}": round(statistics.median(ratios), 3),
                           f"{who}_over_{base}_min": round(min(ratios), 3), f"{who}_over_{base}_max": round(max(ratios), 3)})
    joined = [r["engine_joined_one_at_a_time"]["tokens_per_s"] / r["engine_batch_16"]["tokens_per_s"] for r in runs]
    result.update({"joined_one_at_a_time_over_engine_batch_16": round(statistics.median(joined), 3),
                   "joined_one_at_a_time_over_engine_batch_16_min": round(min(joined), 3),
                   "joined_one_at_a_time_over_engine_batch_16_max": round(max(joined), 3)})
    # the seeds fix every sample, to float rounding: a request that joins a running batch is prefilled
    # inside a decode step, and a draw within rounding of a boundary between two tokens can fall either way
    result["server_token_totals_minus_engine"] = sorted({r[k]["tokens"] - r["engine_batch_16"]["tokens"]
                                                         for r in runs for k in r if k.startswith(("server", "engine"))})
    result["requests_differing_joined_vs_waves"] = len(args.differing)
    result["note"] = ("loopback HTTP to `chatrlhf serve`, non-streamed, temperature 1; server_c<N> = N concurrent "
                      "clients; engine_batch_<N> = Engine.generate on N requests per call, generate_batch_16 = "
                      "model.generate on padded batches of 16 (a wave's requests wait for the whole wave)")
    return result


if __name__ == "__main__":
    main()
