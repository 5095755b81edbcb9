"""The web chat page in headless Chromium: it streams a reply, keeps the conversation, shows errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chatrlhf.config import ServeConfig
from chatrlhf.lm.engine import Engine
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
from chatrlhf.serve.server import create_app
from tests.test_server import serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page_url(tiny_model_dir, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (`make test` as root installs it: .ci/setup-test-deps)")
    pytest.importorskip("playwright")
    eng = Engine(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir))
    saved = tmp_path_factory.mktemp("web_convs")
    url, stop = serve_in_thread(create_app(eng, ServeConfig(max_tokens=64, default_max_tokens=16), "tiny", saved))
    yield url, saved
    stop()


@pytest.fixture()
def page(page_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                   args=ARGS, headless=True, viewport={"width": 900, "height": 700})
        try:
            pg = ctx.new_page()
            pg.set_default_timeout(60_000)
            pg.goto(page_url[0] + "/")
            yield pg
        finally:
            ctx.close()


def _send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_chat_page_streams_keeps_conversation_and_shows_errors(page, page_url, tmp_path):
    page.wait_for_function("document.querySelector('#model').textContent.includes('tiny')")
    page.click("#settings summary")
    page.fill("#temperature", "1.5")  # a random model at low temperature may answer only special tokens
    _send(page, "What is the capital of Varnok?")
    page.wait_for_selector(".msg.assistant:not(.streaming)")
    page.wait_for_function("!document.querySelector('#send').disabled")

    _send(page, "And who lives there?")  # the follow-up goes out with the whole conversation
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length == 2 && !document.querySelector('#send').disabled")
    assert page.locator(".msg.user").count() == 2
    saved = (page_url[1] / "conversations.jsonl").read_text().splitlines()
    last = json.loads(saved[-1])["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant"]
    assert last[0]["content"] == "What is the capital of Varnok?"
    shown = [page.locator(".msg.assistant .content").nth(i).inner_text().strip() for i in (0, 1)]
    assert shown == [last[1]["content"].strip(), last[3]["content"].strip()]  # the streamed text is the reply
    assert any(shown), "both replies were empty"

    page.reload()  # the conversation survives a reload
    page.wait_for_selector(".msg.user")
    assert page.locator(".msg").count() == 4

    page.click("#settings summary")  # closed again after the reload
    assert page.input_value("#temperature") == "1.5"  # settings survive it too
    page.fill("#max-tokens", "5000")  # over the server's limit: the page shows the server's error
    _send(page, "Tell me more.")
    page.wait_for_selector("#error:not([hidden])")
    err = page.inner_text("#error")
    assert "400" in err and "max_tokens" in err
    assert page.input_value("#input") == "Tell me more."  # kept for a retry
    assert page.locator(".msg").count() == 4
    shots = Path(os.environ.get("CHATRLHF_SCREENSHOTS", tmp_path))  # set it to keep the PNG and look at it
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "web_chat.png"), full_page=True)
    assert (shots / "web_chat.png").stat().st_size > 10_000

    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
