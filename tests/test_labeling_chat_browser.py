"""Headless Chromium: a trainer chats with a tiny policy served by the labeling app, ranks the
alternatives for a random model turn of that chat (with a tie), and writes a both-sides
demonstration from the model's suggestion; the admin page shows the served model and the trainers.
Screenshots go to CHATRLHF_SHOTS when it is set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from test_labeling_browser import ARGS, CHROMIUM

from chatrlhf.labeling.loadtest import LocalServer

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (`make test` as root installs it: .ci/setup-test-deps)")


def test_trainer_chats_ranks_a_model_turn_and_writes_both_sides_from_a_suggestion(tmp_path, tiny_model_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("CHATRLHF_SHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with LocalServer(f"sqlite:///{tmp_path}/b.db") as srv:
        admin = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_token}"}, trust_env=False,
                             timeout=120)
        for body in ({"name": "talk", "kind": "chat", "settings": {"k": 4, "max_new_tokens": 8}},
                     {"name": "both", "kind": "both_sides", "settings": {"max_new_tokens": 8}}):
            admin.post("/api/admin/projects", json=body).raise_for_status()
        admin.post("/api/admin/policy", json={"model_dir": str(tiny_model_dir), "round": 2}).raise_for_status()
        admin.post("/api/admin/users", json={"name": "ana", "password": "ana-password", "group": "brief"}).raise_for_status()
        for project in ("talk", "both"):
            admin.post(f"/api/admin/projects/{project}/members", json={"labelers": ["ana"]}).raise_for_status()

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(srv.url + "/login")
            page.fill("#name", "ana")
            page.fill("#password", "ana-password")
            page.click("#submit")
            page.wait_for_selector("text=talk - Chat with the model")

            # 1. chat with the policy: two user turns, each answered by the model
            page.click("a[href='/chat/talk'] button")
            page.wait_for_selector("#policy:has-text('round 2')")
            for i, text in enumerate(("Hello! Who are you?", "Where does Zorbel Quint live?")):
                page.fill("#input", text)
                page.click("#send")
                page.wait_for_selector(f"#turn-{2 * i + 1}.model")
            assert page.locator(".msg.model").count() == 2 and page.locator(".msg.trainer").count() == 2
            page.screenshot(path=str(shots / "chat.png"))
            page.click("#finish")
            page.wait_for_selector("#done:has-text('ranking task for turn')")
            page.screenshot(path=str(shots / "chat_finished.png"))

            # 2. rank the original and its 3 alternatives, the last two tied
            assert admin.get("/api/admin/projects/talk-rank").json()["labelers"] == ["ana"]  # the chat's trainers rank
            page.goto(srv.url + "/label/talk-rank")
            page.wait_for_selector("#resp-3")
            for i in (2, 0, 3, 1):
                page.focus(f"#resp-{i}")
                page.keyboard.press("Enter")
            page.focus("#resp-1")
            page.keyboard.press("t")  # tie with the one above
            page.wait_for_selector("#status:has-text('ranking complete')")
            page.screenshot(path=str(shots / "chat_rank.png"))
            page.click("#submit")
            page.wait_for_selector("#done")

            # 3. both sides: the assistant turn starts as the model's suggestion; the trainer edits it
            page.goto(srv.url + "/chat/both")
            page.wait_for_selector("#next-role:has-text('user')")
            page.fill("#input", "What is the capital of Varnok?")
            page.click("#send")
            page.wait_for_selector("#suggestion-hint:visible")
            page.wait_for_selector("#next-role:has-text('assistant')")
            suggestion = page.input_value("#input")
            page.fill("#input", suggestion + " The capital of Varnok is Selmouth.")
            page.screenshot(path=str(shots / "both_sides.png"))
            page.click("#send")
            page.wait_for_selector("#turn-1.trainer")
            page.click("#finish")
            page.wait_for_selector("#done:has-text('Conversation finished')")

            admin_ctx = browser.new_context(viewport={"width": 1100, "height": 900})
            admin_ctx.add_cookies([{"name": "chatrlhf_token", "value": srv.admin_token, "url": srv.url}])
            apage = admin_ctx.new_page()
            apage.goto(srv.url + "/admin")
            apage.wait_for_selector("#policy:has-text('round 2')")
            apage.wait_for_selector("#trainers td:has-text('ana')")
            apage.screenshot(path=str(shots / "admin_chat.png"), full_page=True)
            browser.close()

        (rank,) = [json.loads(x) for x in admin.get("/api/admin/projects/talk-rank/export").text.splitlines()]
        assert rank["turn"] in (1, 3) and len(rank["responses"]) == 4
        assert rank["rankings"] == [{"labeler": "ana", "group": "brief", "ranks": [2, 3, 1, 3]}]  # her group, set by the admin
        (chat,) = [json.loads(x) for x in admin.get("/api/admin/projects/talk/export").text.splitlines()]
        assert rank["responses"][rank["original_index"]] == chat["messages"][rank["turn"]]["content"]
        (demo,) = [json.loads(x) for x in admin.get("/api/admin/projects/both/export").text.splitlines()]
        assert demo["suggestions"][1] == suggestion
        assert demo["messages"][1]["content"] == suggestion + " The capital of Varnok is Selmouth."
        assert demo["kept_suggestion"][1] is False and demo["edit_distance"][1] == len(" The capital of Varnok is Selmouth.")
