"""The chat loop in the labeling app, through its API on SQLite and PostgreSQL: chat with the served
policy, both sides from suggestions, rank one model turn, what an admin watches, and the errors."""

# ruff: noqa: F811  (pytest fixtures imported from test_labeling are test parameters here)
from __future__ import annotations

import json
import threading
import time

import pytest
from test_labeling import A, app, bearer, c, db_url, pg_schema, setup_project, sqlite_template  # noqa: F401  (the API suite's fixtures)

from chatrlhf.labeling.chats import edit_distance
from chatrlhf.labeling.loadtest import free_port
from chatrlhf.lm.conversations import load_conversations
from chatrlhf.lm.rankings import load_comparisons


def serve_policy(c, model_dir, round=2):
    r = c.post("/api/admin/policy", json={"model_dir": str(model_dir), "round": round}, headers=A)
    assert r.status_code == 201, r.text
    return r.json()["policy"]


def chat_project(c, name="talk", kind="chat", labelers=("ana", "ben"), **settings):
    r = c.post("/api/admin/projects", json={"name": name, "kind": kind, "settings": settings}, headers=A)
    assert r.status_code == 201, r.text
    return setup_project(c, name=name, kind=kind, labelers=labelers)


def say(c, token, chat_id, content, role="user", **kw):
    return c.post(f"/api/chats/{chat_id}/messages", json={"role": role, "content": content, **kw},
                  headers=bearer(token))


def test_chat_then_rank_one_model_turn_with_auth(c, tiny_model_dir, tmp_path):
    tok = chat_project(c, k=4)
    ana, ben = bearer(tok["ana"]), bearer(tok["ben"])
    # no policy yet: a clear conflict, and the user turn stays
    chat = c.post("/api/projects/talk/chats", headers=ana).json()
    r = say(c, tok["ana"], chat["id"], "Hello there")
    assert r.status_code == 409 and "no model is served" in r.json()["detail"]
    policy = serve_policy(c, tiny_model_dir, round=2)
    assert c.get("/api/admin/policy", headers=A).json()["policy"]["id"] == policy["id"]
    assert say(c, tok["ana"], chat["id"], "again?").status_code == 409  # the first message still waits for its reply
    r = c.post(f"/api/chats/{chat['id']}/reply", headers=ana)
    assert r.status_code == 201, r.text
    r = say(c, tok["ana"], chat["id"], "Where does Zorbel Quint live?", meta={"prompt_id": "rm-00001", "task": "fact"})
    assert r.status_code == 201, r.text
    msgs = r.json()["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert [m["by_model"] for m in msgs] == [False, True, False, True]
    assert r.json()["round"] is None  # started before any policy was served

    # auth: only ana writes in her chat; ben cannot see it; no token, no chat; a chat project is not an item queue
    assert say(c, tok["ben"], chat["id"], "hi").status_code == 404
    assert c.get(f"/api/chats/{chat['id']}", headers=ben).status_code == 404
    assert c.get(f"/api/chats/{chat['id']}").status_code == 401
    assert c.post("/api/projects/talk/chats").status_code == 401
    assert say(c, tok["ana"], chat["id"], "I write for the model", role="assistant").status_code == 422
    c.post("/api/admin/users", json={"name": "eve"}, headers=A)
    eve = bearer(c.post("/api/admin/users/eve/token", headers=A).json()["token"])
    assert c.post("/api/projects/talk/chats", headers=eve).status_code == 403  # not a trainer of this project
    for method, path in (("get", "/api/admin/policy"), ("post", "/api/admin/policy"), ("get", "/api/admin/watch"),
                         ("get", "/api/admin/chats")):
        assert getattr(c, method)(path, headers=ana, **({"json": {}} if method == "post" else {})).status_code == 403

    # bad ranking requests: not finished yet, then out of range, a user turn, K outside 2-9
    assert c.post(f"/api/chats/{chat['id']}/rank-turn", json={}, headers=ana).status_code == 409
    c.post("/api/admin/projects", json={"name": "talk", "kind": "chat", "settings": {"k": 4, "auto_rank": False}}, headers=A)
    r = c.post(f"/api/chats/{chat['id']}/finish", headers=ana)
    assert r.status_code == 200 and r.json()["rank_item"] is None and r.json()["chat"]["status"] == "finished"
    assert say(c, tok["ana"], chat["id"], "more").status_code == 409  # finished chats take no more turns
    bad = [({"turn": 7}, f"out of range: chat {chat['id']} has 4 turns"), ({"turn": -1}, "out of range"),
           ({"turn": 2}, "written by the trainer, not the model; model-written turns: [1, 3]"),
           ({"k": 1}, "'k' must be an integer from 2 to 9"), ({"k": 10}, "from 2 to 9")]
    for body, why in bad:
        r = c.post(f"/api/chats/{chat['id']}/rank-turn", json=body, headers=ana)
        assert r.status_code == 422 and why in r.json()["detail"], (body, r.text)
    assert c.post(f"/api/chats/{chat['id']}/rank-turn", json={"turn": 3}, headers=ben).status_code == 404
    r = c.post(f"/api/chats/{chat['id']}/rank-turn", json={"turn": 3, "k": 5}, headers=ana)
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["project"], got["turn"], got["k"]) == ("talk-rank", 3, 5)
    assert c.post(f"/api/chats/{chat['id']}/rank-turn", json={"turn": 1}, headers=ana).status_code == 409  # one per chat

    # ben ranks it (ties allowed), without seeing which response was the original
    setup_project(c, name="talk-rank", kind="rank", labelers=("ben",))
    item = c.post("/api/projects/talk-rank/next", headers=ben).json()["item"]
    assert "original_index" not in item["payload"] and item["payload"]["messages"] == [m for m in (
        {"role": x["role"], "content": x["content"]} for x in msgs[:3])]
    r = c.post(f"/api/items/{item['id']}/submit", json={"ranks": [1, 1, 3, 4, 4]}, headers=ben)
    assert r.status_code == 201, r.text

    exported = [json.loads(x) for x in c.get("/api/admin/projects/talk-rank/export", headers=A).text.splitlines()]
    (rec,) = exported
    assert rec["responses"][rec["original_index"]] == msgs[3]["content"]
    assert (rec["prompt_id"], rec["task"], rec["turn"], rec["chat_id"]) == ("rm-00001", "fact", 3, chat["id"])
    assert rec["rankings"] == [{"labeler": "ben", "ranks": [1, 1, 3, 4, 4]}]
    (tmp_path / "cmp.jsonl").write_text(json.dumps(rec) + "\n")
    assert load_comparisons(tmp_path / "cmp.jsonl")[0]["responses"] == rec["responses"]  # what `chatrlhf rm` reads

    convs = c.get("/api/admin/projects/talk/export", headers=A).text
    (tmp_path / "chats.jsonl").write_text(convs)
    expected = [{"role": m["role"], "content": m["content"]} for m in msgs]
    while not expected[-1]["content"].strip():  # an empty reply (the tiny model may end at once) teaches SFT nothing
        expected = expected[:-2]
    assert load_conversations(tmp_path / "chats.jsonl") == [expected]


def test_a_finished_chat_queues_a_random_model_turn_shuffled_with_k_minus_1_alternatives(c, tiny_model_dir):
    tok = chat_project(c, k=6, rank_project="pick", max_new_tokens=8)
    serve_policy(c, tiny_model_dir, round=3)
    picked = set()
    for i in range(4):
        chat = c.post("/api/projects/talk/chats", headers=bearer(tok["ana"])).json()
        assert chat["round"] == 3 and chat["policy"]["round"] == 3
        for q in ("one", "two", "three"):
            assert say(c, tok["ana"], chat["id"], f"{q} {i}").status_code == 201
        r = c.post(f"/api/chats/{chat['id']}/finish", headers=bearer(tok["ana"]))
        assert r.status_code == 200 and r.json()["rank_error"] is None, r.text
        item = r.json()["rank_item"]
        assert item["project"] == "pick" and item["k"] == 6 and item["turn"] in (1, 3, 5)
        picked.add(item["turn"])
    items = c.get("/api/admin/projects/pick/items", headers=A).json()["items"]
    assert len(items) == 4 and all(i["payload"]["round"] == 3 for i in items)
    assert len({i["payload"]["original_index"] for i in items} | picked) > 1  # not always the same place
    assert len(c.get("/api/admin/projects/pick/export?all=true&round=3", headers=A).text.splitlines()) == 4
    assert c.get("/api/admin/projects/pick/export?all=true&round=2", headers=A).text == ""

    # a chat with no model turn cannot be finished or ranked; K outside 2-9 is refused at project creation
    chat = c.post("/api/projects/talk/chats", headers=bearer(tok["ana"])).json()
    r = c.post(f"/api/chats/{chat['id']}/finish", headers=bearer(tok["ana"]))
    assert r.status_code == 422 and "no assistant turn" in r.json()["detail"]
    for k in (1, 10, "4"):
        r = c.post("/api/admin/projects", json={"name": "bad", "kind": "chat", "settings": {"k": k}}, headers=A)
        assert r.status_code == 422 and "'settings.k' must be an integer from 2 to 9" in r.json()["detail"]
    r = c.post("/api/admin/projects", json={"name": "bad", "kind": "rank", "settings": {"k": 4}}, headers=A)
    assert r.status_code == 422


def test_both_sides_keeps_suggestion_and_final_text_and_the_watch_report_counts_them(c, tiny_model_dir, tmp_path,
                                                                                      monkeypatch):
    from chatrlhf.labeling import policy

    offered = iter(["I am an assistant.", "Varnok's capital is Selmo."])
    monkeypatch.setattr(policy.LocalBackend, "complete", lambda self, messages, n=1, **kw: [next(offered)])
    tok = chat_project(c, name="both", kind="both_sides", max_new_tokens=8)
    c.post("/api/admin/users", json={"name": "cy", "group": "brief"}, headers=A)
    serve_policy(c, tiny_model_dir, round=2)
    ana = bearer(tok["ana"])
    chat = c.post("/api/projects/both/chats", headers=ana).json()
    assert say(c, tok["ana"], chat["id"], "answer first", role="assistant").status_code == 422  # starts with a user turn
    assert c.post(f"/api/chats/{chat['id']}/suggest", headers=ana).status_code == 409  # nothing to suggest for yet
    assert say(c, tok["ana"], chat["id"], "Hi, who are you?").status_code == 201
    s1 = c.post(f"/api/chats/{chat['id']}/suggest", headers=ana).json()["suggestion"]
    assert c.get(f"/api/chats/{chat['id']}", headers=ana).json()["pending_suggestion"] == s1
    r = say(c, tok["ana"], chat["id"], s1, role="assistant")
    assert r.status_code == 201, r.text  # kept as suggested
    assert say(c, tok["ana"], chat["id"], "And the capital of Varnok?").status_code == 201
    s2 = c.post(f"/api/chats/{chat['id']}/suggest", headers=ana).json()["suggestion"]
    assert say(c, tok["ana"], chat["id"], "Selmouth.", role="assistant").status_code == 201  # rewritten
    assert say(c, tok["ana"], chat["id"], "Thanks").status_code == 201
    assert say(c, tok["ana"], chat["id"], "You are welcome.", role="assistant").status_code == 201  # no suggestion asked
    r = c.post(f"/api/chats/{chat['id']}/finish", headers=ana)
    assert r.status_code == 200 and r.json()["rank_item"] is None  # trainer-written turns are not ranked
    assert c.post(f"/api/chats/{chat['id']}/rank-turn", json={}, headers=ana).status_code == 422  # no model turn

    (rec,) = [json.loads(x) for x in c.get("/api/admin/projects/both/export", headers=A).text.splitlines()]
    assert rec["suggestions"] == [None, s1, None, s2, None, None]
    assert (s1, s2) == ("I am an assistant.", "Varnok's capital is Selmo.")
    assert rec["kept_suggestion"] == [None, True, None, False, None, None]
    assert rec["edit_distance"][1] == 0 and rec["edit_distance"][3] == edit_distance(s2, "Selmouth.") > 0
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3
    assert rec["messages"][3] == {"role": "assistant", "content": "Selmouth."} and rec["round"] == 2
    (tmp_path / "demos.jsonl").write_text(json.dumps(rec) + "\n")
    assert len(load_conversations(tmp_path / "demos.jsonl")[0]) == 6  # what `chatrlhf sft` reads

    w = c.get("/api/admin/watch", headers=A).json()
    ana_row = next(t for t in w["trainers"] if t["name"] == "ana")
    assert ana_row["suggestions"] == 2 and ana_row["kept_unchanged"] == 0.5 and ana_row["chats"] == 1
    assert ana_row["median_seconds_per_chat"] is not None
    assert [g["group"] for g in w["groups"]] == ["brief"]


def test_watch_report_agreement_per_trainer_and_group_and_time_per_task(c):
    from test_labeling import comparisons

    for name, group in (("ana", "g1"), ("ben", "g1"), ("cy", "g2")):
        assert c.post("/api/admin/users", json={"name": name, "group": group}, headers=A).status_code == 201
    tok = setup_project(c, records=comparisons(3), per_item=3, labelers=("ana", "ben", "cy"))
    answers = {"ana": [1, 2, 3, 4], "ben": [1, 2, 4, 3], "cy": [4, 3, 2, 1]}
    for lab, ranks in answers.items():
        for _ in range(3):
            item = c.post("/api/projects/p/next", headers=bearer(tok[lab])).json()["item"]
            assert c.post(f"/api/items/{item['id']}/submit", json={"ranks": ranks}, headers=bearer(tok[lab])).status_code == 201
    w = c.get("/api/admin/watch", headers=A).json()
    rows = {t["name"]: t for t in w["trainers"]}
    assert rows["ana"]["agreement"] == pytest.approx((5 + 0) / 12)  # 5/6 with ben, 0/6 with cy, per item
    assert rows["ana"]["tasks"] == 3 and rows["ana"]["median_seconds_per_task"] >= 0
    g = {x["group"]: x for x in w["groups"]}
    assert g["g1"]["agreement_within"] == pytest.approx(5 / 6) and g["g1"]["members"] == ["ana", "ben"]
    assert g["g1"]["agreement_across"] == pytest.approx(1 / 12)  # ben vs cy agree on the 3-4 pair only
    exported = [json.loads(x) for x in c.get("/api/admin/projects/p/export", headers=A).text.splitlines()]
    assert set(exported[0]["seconds"]) == {"ana", "ben", "cy"}


def test_a_labeler_declares_a_group_and_exports_and_the_watch_report_follow_it(c):
    from test_labeling import comparisons

    tok = setup_project(c, records=comparisons(2), per_item=3, labelers=("ana", "ben", "cy"))
    assert c.get("/api/me", headers=bearer(tok["ana"])).json()["group"] is None  # optional: nobody has to say
    for name, group in (("ana", "brief"), ("ben", "cautious")):
        r = c.put("/api/me", json={"group": group}, headers=bearer(tok[name]))
        assert r.status_code == 200 and r.json() == {"name": name, "role": "labeler", "group": group}
        assert c.get("/api/me", headers=bearer(tok[name])).json()["group"] == group  # not the cached profile
    assert c.put("/api/me", json={"group": ""}, headers=bearer(tok["cy"])).status_code == 422
    for lab in ("ana", "ben", "cy"):
        for _ in range(2):
            item = c.post("/api/projects/p/next", headers=bearer(tok[lab])).json()["item"]
            assert c.post(f"/api/items/{item['id']}/submit", json={"ranks": [1, 2, 3, 4]},
                          headers=bearer(tok[lab])).status_code == 201

    def export(**params) -> list[dict]:
        r = c.get("/api/admin/projects/p/export", params=params, headers=A)
        return [json.loads(x) for x in r.text.splitlines()]

    every = export()
    assert [{(x["labeler"], x.get("group")) for x in rec["rankings"]} for rec in every] == \
        [{("ana", "brief"), ("ben", "cautious"), ("cy", None)}] * 2  # cy said no group: no key
    brief = export(group="brief")
    assert [[x["labeler"] for x in rec["rankings"]] for rec in brief] == [["ana"], ["ana"]]
    assert export(group="thorough") == []  # nobody of the group ranked anything
    w = c.get("/api/admin/watch", headers=A).json()
    assert {g["group"]: g["members"] for g in w["groups"]} == {"brief": ["ana"], "cautious": ["ben"]}
    assert c.put("/api/me", json={"group": None}, headers=bearer(tok["ana"])).json()["group"] is None
    assert all("group" not in x for rec in export() for x in rec["rankings"] if x["labeler"] == "ana")


def test_an_unreachable_model_endpoint_is_a_clear_error_and_nothing_is_lost(c, tiny_model_dir):
    tok = chat_project(c)
    ana = bearer(tok["ana"])
    dead = f"http://127.0.0.1:{free_port()}"
    r = c.post("/api/admin/policy", json={"url": dead}, headers=A)
    assert r.status_code == 422 and "unreachable" in r.json()["detail"]
    assert c.post("/api/admin/policy", json={"url": dead, "model_dir": "x"}, headers=A).status_code == 422
    r = c.post("/api/admin/policy", json={"model_dir": "/nonexistent/model"}, headers=A)
    assert r.status_code == 422 and "no config.json" in r.json()["detail"]
    serve_policy(c, tiny_model_dir)
    chat = c.post("/api/projects/talk/chats", headers=ana).json()
    assert say(c, tok["ana"], chat["id"], "first").status_code == 201
    assert c.post("/api/admin/policy", json={"url": dead, "check": False}, headers=A).status_code == 201
    r = say(c, tok["ana"], chat["id"], "second")
    assert r.status_code == 502
    assert "unreachable" in r.json()["detail"] and "saved" in r.json()["detail"] and dead in r.json()["detail"]
    kept = c.get(f"/api/chats/{chat['id']}", headers=ana).json()["messages"]
    assert [m["content"] for m in kept][::2] == ["first", "second"] and len(kept) == 3
    r = c.post(f"/api/chats/{chat['id']}/finish", headers=ana)
    assert r.status_code == 200 and r.json()["chat"]["status"] == "finished"
    # the one model turn was written by the local model, which samples its alternatives
    assert r.json()["rank_item"]["turn"] == 1 and r.json()["rank_error"] is None


def test_any_openai_compatible_endpoint_serves_the_chat(c, tiny_model_dir):
    uvicorn = pytest.importorskip("uvicorn")
    from chatrlhf.config import ServeConfig
    from chatrlhf.lm.engine import load_engine
    from chatrlhf.serve.server import create_app as serve_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(serve_app(load_engine(tiny_model_dir, device="cpu"), ServeConfig(), "tiny"),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        tok = chat_project(c, k=3, max_new_tokens=8)
        r = c.post("/api/admin/policy", json={"url": f"http://127.0.0.1:{port}/v1", "model": "tiny", "round": 2}, headers=A)
        assert r.status_code == 201, r.text
        chat = c.post("/api/projects/talk/chats", headers=bearer(tok["ana"])).json()
        assert say(c, tok["ana"], chat["id"], "Hello").status_code == 201
        r = c.post(f"/api/chats/{chat['id']}/finish", headers=bearer(tok["ana"]))
        assert r.json()["rank_item"]["k"] == 3, r.text
        chat = c.post("/api/projects/talk/chats", headers=bearer(tok["ana"])).json()
        assert say(c, tok["ana"], chat["id"], "Hello again").status_code == 201
    finally:
        server.should_exit = True
        thread.join(10)
    # the endpoint is gone: the chat still finishes, the ranking task says why it is missing
    r = c.post(f"/api/chats/{chat['id']}/finish", headers=bearer(tok["ana"]))
    assert r.status_code == 200 and r.json()["chat"]["status"] == "finished" and r.json()["rank_item"] is None
    assert "unreachable" in r.json()["rank_error"] and "rank-turn" in r.json()["rank_error"]
    r = c.post(f"/api/chats/{chat['id']}/rank-turn", json={}, headers=bearer(tok["ana"]))
    assert r.status_code == 502 and f"127.0.0.1:{port}" in r.json()["detail"]
    assert len(c.get(f"/api/chats/{chat['id']}", headers=bearer(tok["ana"])).json()["messages"]) == 2


def test_cli_serves_a_policy_and_prints_the_watch_report(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from chatrlhf.labeling.cli import label_app

    db = f"sqlite:///{tmp_path}/cli.db"
    run = CliRunner().invoke
    assert json.loads(run(label_app, ["policy", "--db", db]).stdout) is None
    r = run(label_app, ["policy", "--db", db, "--model", "/nonexistent"])
    assert r.exit_code == 1 and "no config.json" in r.output
    r = run(label_app, ["policy", "--db", db, "--model", str(tiny_model_dir), "--round", "4"])
    assert r.exit_code == 0 and json.loads(r.stdout)["round"] == 4
    assert json.loads(run(label_app, ["policy", "--db", db]).stdout)["target"] == str(tiny_model_dir.resolve())
    assert run(label_app, ["create-user", "ana", "--db", db, "--group", "brief"]).exit_code == 0
    report = json.loads(run(label_app, ["watch", "--db", db]).stdout)
    assert report["trainers"][0]["name"] == "ana" and report["trainers"][0]["group"] == "brief"


def test_model_text_is_stored_without_nul_and_two_racing_messages_keep_one_order(c, tiny_model_dir, monkeypatch):
    from chatrlhf.labeling import policy

    monkeypatch.setattr(policy.LocalBackend, "complete", lambda self, messages, n=1, **kw: ["a\x00b\rc\r\nd"] * n)
    tok = chat_project(c)
    serve_policy(c, tiny_model_dir)
    chat = c.post("/api/projects/talk/chats", headers=bearer(tok["ana"])).json()
    r = say(c, tok["ana"], chat["id"], "hi\x00 there")
    assert r.status_code == 201, r.text  # PostgreSQL text cannot hold NUL
    # line breaks as a browser's text box submits them, so what a trainer sees is what is stored
    assert [m["content"] for m in r.json()["messages"]] == ["hi there", "ab\nc\nd"]

    codes: list[int] = []
    barrier = threading.Barrier(2)

    def send(text):
        barrier.wait()
        codes.append(say(c, tok["ana"], chat["id"], text).status_code)

    threads = [threading.Thread(target=send, args=(t,)) for t in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    msgs = c.get(f"/api/chats/{chat['id']}", headers=bearer(tok["ana"])).json()["messages"]
    assert [m["position"] for m in msgs] == list(range(len(msgs)))
    assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)  # never two user turns in a row
    assert min(codes) == 201 and len(msgs) in (4, 6)


def test_migration_0003_keeps_existing_data_and_downgrades(db_url):
    from sqlalchemy import inspect

    from chatrlhf.labeling import db as labdb

    labdb.downgrade(db_url, "0002")
    engine = labdb.make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (id, name, role, created_at) VALUES (1, 'ana', 'labeler', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO projects (id, name, kind, labelers_per_item, instructions, created_at)"
                             " VALUES (1, 'p', 'rank', 1, '', '2026-01-01')")
    labdb.migrate(db_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name, group_name FROM users").all() == [("ana", None)]
        assert conn.exec_driver_sql("SELECT name, settings FROM projects").all() == [("p", None)]
    assert {"policies", "chats", "turns"} <= set(inspect(engine).get_table_names())
    labdb.downgrade(db_url, "0002")
    assert not {"policies", "chats", "turns"} & set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name FROM users").all() == [("ana",)]
    labdb.migrate(db_url)
    engine.dispose()
