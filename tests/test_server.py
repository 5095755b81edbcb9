"""OpenAI-compatible server: the openai client works against it, limits answer 4xx naming the field,
the server keeps serving, concurrent and slow clients do not block each other."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from chatrlhf.config import ServeConfig
from chatrlhf.lm.engine import Engine
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
from chatrlhf.serve.server import create_app

LIMITS = ServeConfig(max_body_bytes=4000, max_messages=6, max_tokens=200, timeout_s=30.0, default_max_tokens=8)
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir))


@pytest.fixture()
def client(engine, tmp_path) -> Iterator[TestClient]:
    with TestClient(create_app(engine, LIMITS, "tiny", tmp_path / "convs")) as c:
        yield c


def serve_in_thread(app) -> tuple[str, callable]:
    """Run uvicorn on a free loopback port in a thread; returns (base_url, stop)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        th.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="module")
def live(engine, tmp_path_factory) -> Iterator[str]:
    url, stop = serve_in_thread(create_app(engine, LIMITS, "tiny", tmp_path_factory.mktemp("live_convs")))
    yield url
    stop()


def sse_events(text: str) -> list:
    out = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[6:]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"


def test_completion_and_stream_agree(client):
    body = {"messages": HELLO, "max_tokens": 12, "temperature": 0}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "chat.completion" and j["choices"][0]["message"]["role"] == "assistant"
    assert j["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < j["usage"]["completion_tokens"] <= 12
    r = client.post("/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    ev = sse_events(r.text)
    assert ev[-1] == "[DONE]" and ev[-2]["usage"] == j["usage"]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in ev[:-2])
    assert streamed == j["choices"][0]["message"]["content"]
    assert ev[-3]["choices"][0]["finish_reason"] == j["choices"][0]["finish_reason"]


@pytest.mark.parametrize("body,status,param", [
    ({"messages": HELLO * 7}, 400, "messages"),
    ({"messages": HELLO, "max_tokens": 201}, 400, "max_tokens"),
    ({"messages": HELLO, "max_completion_tokens": 500}, 400, "max_completion_tokens"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ({"messages": HELLO, "temperature": 9}, 400, "temperature"),
    ({"messages": HELLO, "n": 2}, 400, "n"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi " * 1400}]}, 413, "body"),
    ({"messages": [{"role": "user", "content": "Hello there " * 200}]}, 400, "messages"),  # over the 256-token context
])
def test_limits_answer_4xx_naming_the_field_and_server_keeps_serving(client, body, status, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code == 200


def test_invalid_json_and_chunked_oversized_body(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    big = iter([b'{"messages": [', b" " * 5000, b"]}"])  # no content-length: counted while reading
    r = client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"


def test_timeout_is_408_and_server_keeps_serving(engine):
    slow = LIMITS.model_copy(update={"timeout_s": 0.001})
    with TestClient(create_app(engine, slow, "tiny")) as c:
        r = c.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 200})
        assert r.status_code == 408 and r.json()["error"]["param"] == "timeout"
        r = c.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 200, "stream": True})
        ev = sse_events(r.text)  # headers went out already: the timeout arrives as an error event
        assert ev[-1] == "[DONE]" and ev[-2]["error"]["param"] == "timeout"
        assert c.get("/health").status_code == 200


def test_saved_conversations_load_as_sft_conversations(client, tmp_path):
    for stream in (False, True):  # seeded: an unseeded reply is sometimes empty, and an empty reply is no demonstration
        client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4, "stream": stream, "seed": 1})
    client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 999})  # refused: not saved
    path = tmp_path / "convs" / "conversations.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 2
    assert rows[0]["messages"][0] == HELLO[0] and rows[0]["messages"][-1]["role"] == "assistant"
    from chatrlhf.lm.conversations import load_conversations

    assert len(load_conversations(path)) == 2


def test_saving_is_off_by_default(engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with TestClient(create_app(engine, LIMITS, "tiny")) as c:
        c.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 3})
    assert not list(Path(tmp_path).rglob("*.jsonl"))


def test_openai_client(live):
    import openai

    client = openai.OpenAI(base_url=live + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=10, temperature=0)
    text = r.choices[0].message.content
    assert r.usage.completion_tokens > 0 and isinstance(text, str)
    chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1000)
    assert e.value.body["param"] == "max_tokens"


def test_concurrent_requests_are_all_served(live):
    import openai

    client = openai.OpenAI(base_url=live + "/v1", api_key="unused", max_retries=0)

    def ask(i: int) -> int:
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"Hello {i}"}],
                                           max_tokens=16, seed=i)
        return r.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(ask, range(8)))
    assert all(c > 0 for c in counts)


def test_a_slow_streaming_client_does_not_block_others(live):
    # greedy on the fixture model runs the full 200 tokens (no eos): a long generation to overlap with
    body = {"messages": HELLO, "max_tokens": 200, "stream": True, "temperature": 0}
    with httpx.Client(base_url=live, timeout=60) as slow, httpx.Client(base_url=live, timeout=60) as fast:
        with slow.stream("POST", "/v1/chat/completions", json=body) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")  # the slow client reads one event, then stalls
            r = fast.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
            assert r.status_code == 200
            # the short request was answered while the long one is still being decoded: it did not
            # queue behind it (a one-at-a-time server would only answer after all 200 tokens)
            still = fast.get("/health").json()["decoding"]
            rest = [x for x in lines if x]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert still >= 1
