"""One bad request costs nothing else: every field is checked at the boundary, a poison request
fails alone, a dead decoding loop is restarted, /health says when the loop is dead or stuck, and
every error has OpenAI's {"error": {...}} shape."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from test_server import HELLO, LIMITS, serve_in_thread, sse_events

from chatrlhf.lm.engine import DecodeBatch, Engine, SamplingParams
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
from chatrlhf.serve.scheduler import Job, Scheduler
from chatrlhf.serve.server import create_app


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir))


@pytest.fixture(scope="module")
def live(engine, tmp_path_factory):
    app = create_app(engine, LIMITS, "tiny")
    url, stop = serve_in_thread(app)
    yield url, app.state.scheduler
    stop()


def is_openai_error(resp: httpx.Response) -> bool:
    err = resp.json().get("error")
    return isinstance(err, dict) and set(err) == {"message", "type", "param", "code"} and bool(err["message"])


def normal(i: int, stream: bool = False) -> dict:
    return {"messages": [{"role": "user", "content": f"Hello {i}"}], "max_tokens": 24, "seed": i, "stream": stream}


def test_poison_seed_is_refused_and_nothing_else_fails(live):
    url, sched = live
    with httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(6) as pool:
        long = [pool.submit(c.post, "/v1/chat/completions",
                            json={**normal(i), "max_tokens": 150, "temperature": 1.0, "seed": None}) for i in range(5)]
        while sched.live == 0:  # the long requests are generating
            time.sleep(0.01)
        bad = c.post("/v1/chat/completions", json={**normal(99), "seed": 2**64})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "seed" and is_openai_error(bad)
        assert all(f.result().status_code == 200 for f in long)
        assert c.post("/v1/chat/completions", json=normal(7)).status_code == 200
        assert c.get("/health").status_code == 200 and sched.restarts == 0


def test_a_job_the_sampler_refuses_fails_alone_inside_the_loop(live):
    """Past the boundary (a job built by other code), a bad seed still ends only its own request."""
    url, sched = live
    eng = sched.eng
    prompt = eng.chat_prompt(HELLO)

    async def run() -> list[tuple[str, object]]:
        loop = asyncio.get_running_loop()
        jobs = [Job(prompt, SamplingParams(max_new_tokens=40, seed=s), loop, stream=False) for s in (1, 2**64, 3)]
        for j in jobs:
            sched.submit(j)
        out = []
        for j in jobs:
            kind, value = await asyncio.wait_for(j.queue.get(), 30)
            while kind == "piece":
                kind, value = await asyncio.wait_for(j.queue.get(), 30)
            out.append((kind, value))
        return out

    results = asyncio.run(run())
    assert [k for k, _ in results] == ["done", "error", "done"]
    assert "seed" in results[1][1]


FUZZ_VALUES = [None, True, False, 0, -1, 1, 2, 7, 2**31, 2**63 - 1, 2**63, 2**64, -(2**64), 10**30, 0.0, 0.5, 1.5,
               -0.5, 1e308, -1e308, float("nan"), float("inf"), "", "7", "hello", "x" * 300, "\u0000\ud7ff\U0001f600",
               [], [1, 2], ["stop"], ["a", "b", "c", "d", "e"], {}, {"include_usage": True}, {"a": {"b": [None]}}]
FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "seed",
          "n", "stream", "stream_options", "logprobs", "user"]
MESSAGES = [[], None, "hi", [{"role": "user"}], [{"role": "user", "content": None}], [{"content": "hi"}],
            [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}, 7]}],
            [{"role": "tool", "content": "x"}], [{"role": "user", "content": 5}], HELLO * 3, [[]]]


EDGES = [-(2**63) - 1, -(2**63), -1, 0, 1, 2**31 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**40]


def fuzz_body(rng: random.Random) -> bytes:
    """A mostly valid request with one to three fields set to random or extreme values (integer
    edges half the time: an out-of-range number is the likeliest value to pass a type check)."""
    body: dict = {"messages": HELLO, "max_tokens": 8}
    for field in rng.sample(FIELDS, rng.randint(1, 3)):
        if field == "messages":
            body[field] = rng.choice(MESSAGES + FUZZ_VALUES)
        else:
            body[field] = rng.choice(EDGES) if rng.random() < 0.5 else rng.choice(FUZZ_VALUES)
    return json.dumps(body).encode()  # NaN and Infinity as Python writes them: not strict JSON, still parsed


def test_fuzzed_fields_mixed_with_normal_traffic(live):
    url, sched = live
    rng = random.Random(1234)
    bodies = [fuzz_body(rng) for _ in range(200)]
    extra = [b"", b"{", b"[]", b"null", b'{"messages": {}}', b"\xff\xfe", b'{"messages": [' * 50]

    c = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=8))

    def fuzz(body: bytes) -> httpx.Response:
        return c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})

    def ok(i: int) -> httpx.Response:
        return c.post("/v1/chat/completions", json=normal(i, stream=i % 3 == 0))

    with c, ThreadPoolExecutor(8) as pool:
        mixed = [pool.submit(fuzz, b) for b in bodies + extra]
        normals = [pool.submit(ok, i) for i in range(40)]
        fuzzed = [f.result() for f in mixed]
        served = [f.result() for f in normals]
    for r in served:
        assert r.status_code == 200, r.text
        if r.headers["content-type"].startswith("text/event-stream"):
            assert sse_events(r.text)[-1] == "[DONE]"
        else:
            assert r.json()["choices"][0]["message"]["role"] == "assistant"
    codes = {}
    for body, r in zip(bodies + extra, fuzzed):
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400, 413), (body[:200], r.status_code, r.text[:300])
        if r.status_code != 200:
            assert is_openai_error(r), (body[:200], r.text[:300])
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert sse_events(r.text)[-1] == "[DONE]"
    assert codes.get(400, 0) > 20 and codes.get(200, 0) > 5, codes  # the fuzz reached both sides of the checks
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/health").status_code == 200
    assert sched.restarts == 0


def test_errors_outside_the_api_use_the_openai_shape(engine):
    with TestClient(create_app(engine, LIMITS, "tiny")) as c:
        for r in (c.get("/v1/nope"), c.get("/v1/chat/completions"), c.post("/v1/models"),
                  c.post("/v1/chat/completions", content=b"{}", headers={"content-length": "x1"})):
            assert r.status_code in (400, 404, 405) and is_openai_error(r), r.text


class _Die(BaseException):
    """Escapes the loop's own error handling, as a bug in it would."""


def test_dead_loop_is_unhealthy_then_restarted_by_the_supervisor(engine, monkeypatch):
    real_supervise, real_loop = Scheduler._supervise, Scheduler._loop
    monkeypatch.setattr(Scheduler, "_supervise", lambda self: None)  # started by hand below
    killed = threading.Event()

    def dying_loop(self):
        if not killed.is_set():
            killed.set()
            raise _Die("decoder crashed")
        return real_loop(self)

    monkeypatch.setattr(Scheduler, "_loop", dying_loop)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the crash is the point, not noise
    with TestClient(create_app(engine, LIMITS, "tiny")) as c:
        sched = c.app.state.scheduler
        sched.thread.join(5)
        r = c.get("/health")
        assert r.status_code == 503 and "dead" in r.json()["error"]["message"] and is_openai_error(r)
        threading.Thread(target=real_supervise, args=(sched,), daemon=True).start()
        for _ in range(100):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert c.get("/health").json()["restarts"] == 1
        assert c.post("/v1/chat/completions", json=normal(1)).status_code == 200


def test_a_failing_step_fails_its_rows_and_the_loop_keeps_serving(engine, monkeypatch):
    real_step, failed = DecodeBatch.step, threading.Event()

    def flaky(self):
        if not failed.is_set():
            failed.set()
            raise RuntimeError("device fell over")
        return real_step(self)

    monkeypatch.setattr(DecodeBatch, "step", flaky)
    with TestClient(create_app(engine, LIMITS, "tiny")) as c:
        r = c.post("/v1/chat/completions", json=normal(1))
        assert r.status_code == 500 and "device fell over" in r.json()["error"]["message"] and is_openai_error(r)
        assert c.post("/v1/chat/completions", json=normal(2)).status_code == 200
        assert c.get("/health").status_code == 200


def test_stuck_loop_is_unhealthy_while_it_is_stuck(engine, monkeypatch):
    real_step, stalled = DecodeBatch.step, threading.Event()

    def stall(self):
        if not stalled.is_set():
            stalled.set()
            time.sleep(1.5)
        return real_step(self)

    monkeypatch.setattr(DecodeBatch, "step", stall)
    cfg = LIMITS.model_copy(update={"stuck_s": 0.3})
    with TestClient(create_app(engine, cfg, "tiny")) as c:
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(c.post, "/v1/chat/completions", json=normal(1))
            stalled.wait(10)
            time.sleep(0.6)
            r = c.get("/health")
            assert r.status_code == 503 and "has not finished a step" in r.json()["error"]["message"]
            assert reply.result().status_code == 200
        assert c.get("/health").status_code == 200


def test_an_error_escaping_the_loop_restarts_it_and_pending_requests_are_served(engine, monkeypatch):
    real_take, raised = Scheduler._take, threading.Event()

    def broken_once(self, room):
        jobs = real_take(self, room)
        if jobs and not raised.is_set():
            raised.set()
            self.pending.extendleft(reversed(jobs))  # still queued: the restarted loop takes them
            raise RuntimeError("bug in the scheduler")
        return jobs

    monkeypatch.setattr(Scheduler, "_take", broken_once)
    with TestClient(create_app(engine, LIMITS, "tiny")) as c:
        assert c.post("/v1/chat/completions", json=normal(1)).status_code == 200  # waited in the queue
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["restarts"] == 1
        assert "bug in the scheduler" in c.app.state.scheduler.last_error


def test_a_request_wakes_the_idle_loop_though_the_supervisor_waits_too(engine):
    """submit() must wake the decoding loop, not the supervisor's periodic wait. The idle loop's own
    timer is set far past the request timeout, so a reply means submit woke it."""
    app = create_app(engine, LIMITS.model_copy(update={"timeout_s": 10.0}), "tiny")
    app.state.scheduler.idle_s = 3600.0
    with TestClient(app) as c:
        for i in range(10):  # back to back: each arrives while the loop has just gone idle again
            assert c.post("/v1/chat/completions", json={**normal(i), "max_tokens": 2}).status_code == 200


def test_a_batch_that_never_empties_keeps_no_finished_answers(live):
    """Under steady load the server's DecodeBatch runs on and on: the rows it finished keep no
    tokens or text, only the live ones do."""
    url, sched = live
    with httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(4) as pool:
        long = pool.submit(c.post, "/v1/chat/completions", json={**normal(0), "max_tokens": 150, "temperature": 1.0,
                                                                   "seed": 3})
        while sched.live == 0:
            time.sleep(0.01)
        batch = sched.batch
        replies = list(pool.map(lambda i: c.post("/v1/chat/completions", json=normal(i)), range(1, 9)))
        assert all(r.status_code == 200 and r.json()["choices"][0]["message"]["content"] for r in replies)
        still = long.result()
    assert still.status_code == 200
    assert batch is sched.batch or batch.done  # the short requests joined the long one's batch
    finished = [r for r in range(len(batch.reason)) if batch.reason[r] is not None]
    assert len(finished) >= 5 and all(not batch.tokens[r] and not batch.text[r] for r in finished)
    with pytest.raises(ValueError, match="still decoding"):
        b = DecodeBatch(sched.eng, [[5, 6]], [SamplingParams(max_new_tokens=4)])
        b.release(0)
