"""`chatrlhf serve` decodes in a child process (serve.decode_process): the same answers as the loop in
the server's own process, a cancelled request never reaches the child's batch, and a child that
dies fails only the requests it held and is replaced."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from test_server import LIMITS, sse_events

from chatrlhf.lm.engine import ChatFront, Engine, SamplingParams
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
from chatrlhf.serve.engine_process import LOST, ProcessScheduler, decode_threads
from chatrlhf.serve.scheduler import Job
from chatrlhf.serve.server import create_app


@pytest.fixture(scope="module")
def remote(tiny_model_dir):
    sched = ProcessScheduler(tiny_model_dir, threads=1, max_batch=LIMITS.max_batch, stuck_s=LIMITS.stuck_s)
    with TestClient(create_app(ChatFront.from_pretrained(tiny_model_dir), LIMITS, "tiny", scheduler=sched)) as c:
        yield c, sched


def ask(i: int, **kw) -> dict:
    return {"messages": [{"role": "user", "content": f"Hello {i}"}], "max_tokens": 12, "seed": i, "temperature": 1.0, **kw}


def test_same_answers_as_decoding_in_the_server_process(remote, tiny_model_dir):
    c, _ = remote
    eng = Engine(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir))
    with TestClient(create_app(eng, LIMITS, "tiny")) as local:
        for i in range(3):
            a, b = (x.post("/v1/chat/completions", json=ask(i)).json() for x in (local, c))
            assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
            events = sse_events(c.post("/v1/chat/completions", json=ask(i, stream=True)).text)
            streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
            assert streamed == a["choices"][0]["message"]["content"]


def test_health_reports_the_childs_loop(remote):
    c, sched = remote
    body = c.get("/health").json()
    assert body["status"] == "ok" and body["queued"] == 0 and body["decoding"] == 0
    assert sched.proc.is_alive() and sched.threads == 1


def test_a_request_cancelled_while_queued_never_runs(tiny_model_dir):
    """One row at a time: B waits behind A and is cancelled; when A is done the child holds nothing
    and has admitted A alone (had the cancellation not reached it, B would have joined after A)."""
    sched = ProcessScheduler(tiny_model_dir, threads=1, max_batch=1)
    sched.start()
    try:
        async def run() -> tuple[list, list]:
            loop = asyncio.get_running_loop()
            ids = ChatFront.from_pretrained(tiny_model_dir).chat_prompt([{"role": "user", "content": "Hello"}])
            a, b = (Job(ids, SamplingParams(max_new_tokens=200, temperature=1.0, seed=s), loop) for s in (1, 2))
            sched.submit(a)
            sched.submit(b)
            while await asyncio.to_thread(sched.health) and sched.queued < 1:
                await asyncio.sleep(0.01)
            b.cancel()
            seen_a = [await a.queue.get()]
            while seen_a[-1][0] == "piece":
                seen_a.append(await a.queue.get())
            # A's end can reach us before the child's loop has dropped A and skipped B, and a job it
            # takes from its queue is neither queued nor live until admitted: ask until the loop has
            # held nothing twice, half a second apart (B, had it been taken, would have joined by then)
            deadline, idle = time.monotonic() + 30, 0
            while idle < 2 and time.monotonic() < deadline:
                after = await asyncio.to_thread(sched.health)
                idle = idle + 1 if (sched.queued, sched.live) == (0, 0) else 0
                await asyncio.sleep(0.5 if idle else 0.01)
            return seen_a, [after, sched.queued, sched.live, sched.admitted, b.queue.qsize()]

        seen_a, (health, queued, live, admitted, b_events) = asyncio.run(run())
    finally:
        sched.stop()
    assert seen_a[-1][0] == "done" and health[0]
    assert (queued, live, admitted, b_events) == (0, 0, 1, 0)  # B never joined a batch
    assert sched.jobs == {}


def test_a_dead_child_fails_what_it_held_and_is_replaced(tiny_model_dir):
    sched = ProcessScheduler(tiny_model_dir, threads=1, max_batch=LIMITS.max_batch)
    with TestClient(create_app(ChatFront.from_pretrained(tiny_model_dir), LIMITS, "tiny", scheduler=sched)) as c, \
            ThreadPoolExecutor(1) as pool:
        held = pool.submit(c.post, "/v1/chat/completions", json=ask(1, max_tokens=200))
        while c.get("/health").json()["decoding"] == 0:
            time.sleep(0.01)
        sched.proc.kill()
        lost = held.result(timeout=60)
        assert lost.status_code == 500 and LOST in lost.json()["error"]["message"]
        # a request that arrives while the new child loads waits for it
        assert c.post("/v1/chat/completions", json=ask(2)).status_code == 200
        body = c.get("/health").json()
        assert body["status"] == "ok" and body["restarts"] == 1


def test_a_model_the_child_cannot_load_fails_the_start_with_its_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="could not load"):
        ProcessScheduler(tmp_path, threads=1).start()


def test_the_http_side_names_a_directory_that_is_no_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ChatFront.from_pretrained(tmp_path)


def test_decode_threads_leave_a_core_for_http():
    assert decode_threads(3) == 3
    assert 1 <= decode_threads(0) <= max(1, (__import__("os").cpu_count() or 1) - 1)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_chatrlhf_serve_decodes_in_a_child_that_ends_with_it(tiny_model_dir, how):
    """The command as users run it: the decoding process answers, and it ends with the server,
    whether the server is stopped (Ctrl-C) or killed (its pipe closes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "chatrlhf.cli", "serve", "--model", str(tiny_model_dir),
                             "--set", f"serve.port={port}", "--set", "run.threads=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        reply = httpx.post(url + "/v1/chat/completions", json=ask(0), timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0
        decoders = children(proc.pid)
        assert len(decoders) >= 1
        proc.send_signal(signal.SIGINT if how == "interrupt" else signal.SIGKILL)
        proc.wait(timeout=60)
        for _ in range(100):
            if not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                       for p in decoders):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the decoding process outlived the server ({how})")
    finally:
        proc.kill()
        out = proc.communicate()[0]
    assert "decoding in a child process, 1 torch threads" in out
