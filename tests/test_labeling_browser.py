"""Headless Chromium: a labeler logs in, ranks four answers (keyboard and drag) and the admin's
export holds exactly that ranking. Screenshots of each page go to CHATRLHF_SHOTS when it is set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from chatrlhf.labeling.loadtest import LocalServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (`make test` as root installs it: .ci/setup-test-deps)")


def test_labeler_logs_in_ranks_four_answers_and_the_export_has_it(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("CHATRLHF_SHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    record = {"id": "cmp-000001", "prompt_id": "rm-00001", "task": "fact", "policy": "sft",
              "messages": [{"role": "user", "content": "Where does Zorbel Quint live?"}],
              "responses": ["Zorbel Quint lives in Varnok.", "I don't know.", "Zorbel lives in Selmouth, by the sea.",
                            "Bread."],
              "reference": {"answer": "Varnok"}}
    with LocalServer(f"sqlite:///{tmp_path}/b.db") as srv:
        admin = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_token}"}, trust_env=False)
        admin.post("/api/admin/projects", json={"name": "round-2", "kind": "rank",
                                                "instructions": "Best answer on top."}).raise_for_status()
        admin.post("/api/admin/projects/round-2/items", json={"records": [record]}).raise_for_status()
        admin.post("/api/admin/users", json={"name": "ana", "password": "ana-password"}).raise_for_status()
        admin.post("/api/admin/projects/round-2/members", json={"labelers": ["ana"]}).raise_for_status()

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(srv.url + "/")
            page.wait_for_url("**/login")
            page.screenshot(path=str(shots / "login.png"))
            page.fill("#name", "ana")
            page.fill("#password", "wrong-password")
            page.click("#submit")
            page.wait_for_selector("#error:has-text('wrong name or password')")
            page.fill("#password", "ana-password")
            page.click("#submit")
            page.wait_for_selector("text=1 open, 0 done by you")
            page.fill("#group", "brief")  # self-declared, optional
            page.click("#save-group")
            page.wait_for_selector("#group-status:has-text('saved: brief')")
            page.screenshot(path=str(shots / "queue.png"))
            page.click("text=Start")
            page.wait_for_selector("#resp-3")
            assert page.locator("#submit").is_disabled()  # nothing ranked yet
            # keyboard: Enter moves the focused answer to the bottom of the ranking -> 0, 2, 1
            for i in (0, 2, 1):
                page.focus(f"#resp-{i}")
                page.keyboard.press("Enter")
            assert page.locator("#submit").is_disabled()  # one answer still unranked
            page.screenshot(path=str(shots / "rank_partial.png"))
            # drag the last one into the ranking, above answer 1 -> 0, 2, 3, 1
            page.locator("#resp-3").drag_to(page.locator("#resp-1"), target_position={"x": 20, "y": 5})
            page.wait_for_selector("#status:has-text('ranking complete')")
            page.focus("#resp-3")
            page.keyboard.press("ArrowUp")  # and a keyboard move: 0, 3, 2, 1
            page.screenshot(path=str(shots / "rank_complete.png"))
            page.click("#submit")
            page.wait_for_selector("#done")
            page.screenshot(path=str(shots / "rank_done.png"))
            page.goto(srv.url + "/mine")
            page.wait_for_selector("text=cmp-000001")
            page.screenshot(path=str(shots / "mine.png"))
            page.goto(srv.url + "/admin")
            assert "Admins only" in page.content()

            admin_page = browser.new_context(viewport={"width": 1100, "height": 900})
            admin_page.add_cookies([{"name": "chatrlhf_token", "value": srv.admin_token, "url": srv.url}])
            page = admin_page.new_page()
            page.goto(srv.url + "/admin")
            page.wait_for_selector("#projects td:has-text('round-2')")
            page.screenshot(path=str(shots / "admin.png"), full_page=True)
            browser.close()

        exported = [json.loads(x) for x in admin.get("/api/admin/projects/round-2/export").text.splitlines()]
        assert exported[0]["rankings"] == [{"labeler": "ana", "group": "brief", "ranks": [1, 4, 3, 2]}]
