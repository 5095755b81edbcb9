"""Labeling app API tests, run on SQLite and on a real PostgreSQL (skipped when none is reachable:
`.ci/start-postgres` starts one; the URL comes from CHATRLHF_TEST_PG_URL)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from chatrlhf.labeling import db as labdb
from chatrlhf.labeling.app import create_app

PG_URL = os.environ.get("CHATRLHF_TEST_PG_URL", "postgresql://postgres@127.0.0.1/chatrlhf_test")
ADMIN = "test-admin-token"


def pg_available(url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=2):
            return None
    except Exception as e:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        return (f"PostgreSQL not reachable at {url}: {e} (`make test` as root installs and starts it: "
                ".ci/setup-test-deps; or set CHATRLHF_TEST_PG_URL)")


@contextmanager
def pg_database() -> Iterator[str]:
    """A database of our own on the test server (so parallel test runs never share tables), dropped
    afterwards; falls back to PG_URL itself when we may not create databases. Skips without PostgreSQL."""
    why = pg_available(PG_URL)
    if why:
        pytest.skip(why)
    import psycopg

    name = f"chatrlhf_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    base, _, _ = PG_URL.rpartition("/")
    try:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.Error:
        labdb.downgrade(PG_URL, "base")
        yield PG_URL
        return
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


TABLES = ("turns", "chats", "policies", "submissions", "claims", "items", "members", "projects", "tokens", "users")


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("labeling") / "template.db"
    labdb.migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="module")
def pg_schema():
    with pg_database() as url:
        labdb.migrate(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A migrated, empty database: a copy of a migrated SQLite file, or truncated PostgreSQL tables."""
    if request.param == "sqlite":
        path = tmp_path / "labels.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_schema")
    engine = labdb.make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    engine.dispose()
    return url


@pytest.fixture
def app(db_url):
    app = create_app(db_url, max_body_bytes=200_000, admin_token=ADMIN, migrate=False)
    yield app
    app.state.sessions.kw["bind"].dispose()


@pytest.fixture
def c(app):
    with TestClient(app) as client:  # one event loop for the whole test, not one per request
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


A = bearer(ADMIN)


def comparisons(n: int, k: int = 4) -> list[dict]:
    return [{"id": f"cmp-{i:06d}", "prompt_id": f"rm-{i:05d}", "task": "fact", "policy": "sft",
             "messages": [{"role": "user", "content": f"Where does person {i} live?"}],
             "responses": [f"answer {i}.{j}" for j in range(k)], "reference": {"gold": i}}
            for i in range(n)]


def setup_project(c: TestClient, name="p", kind="rank", per_item=1, records=None, labelers=("ana", "ben"),
                  passwords=False):
    r = c.post("/api/admin/projects", json={"name": name, "kind": kind, "labelers_per_item": per_item}, headers=A)
    assert r.status_code in (200, 201), r.text
    if records is not None:
        r = c.post(f"/api/admin/projects/{name}/items", json={"records": records}, headers=A)
        assert r.status_code == 200, r.text
    tokens = {}
    for lab in labelers:
        # scrypt costs ~50 ms per password: only the login test needs them
        body = {"name": lab, "password": f"{lab}-password"} if passwords else {"name": lab}
        r = c.post("/api/admin/users", json=body, headers=A)
        if r.status_code == 201:
            tokens[lab] = r.json()["token"]
        else:
            tokens[lab] = c.post(f"/api/admin/users/{lab}/token", headers=A).json()["token"]
    c.post(f"/api/admin/projects/{name}/members", json={"labelers": list(labelers)}, headers=A)
    return tokens


def next_item(c: TestClient, token: str, project="p") -> dict | None:
    r = c.post(f"/api/projects/{project}/next", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()["item"]


# --- schema ----------------------------------------------------------------------------------


def test_migrations_build_exactly_the_models_and_downgrade_cleanly(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    engine = labdb.make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), labdb.Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    labdb.downgrade(db_url, "base")
    assert not set(inspect(engine).get_table_names()) & {"users", "items", "submissions"}

    # 0001 -> 0002 keeps the data and backfills each item's answer count
    labdb.migrate(db_url, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (id, name, role, created_at) VALUES (1, 'ana', 'labeler', '2026-01-01'),"
                             " (2, 'ben', 'labeler', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO projects (id, name, kind, labelers_per_item, instructions, created_at)"
                             " VALUES (1, 'p', 'rank', 2, '', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO items (id, project_id, ext_id, payload, created_at) VALUES"
                             " (1, 1, 'a', '{}', '2026-01-01'), (2, 1, 'b', '{}', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO submissions (item_id, user_id, data, created_at) VALUES"
                             " (1, 1, '{}', '2026-01-01'), (1, 2, '{}', '2026-01-01')")
    labdb.migrate(db_url)
    with engine.connect() as conn:
        assert dict(conn.exec_driver_sql("SELECT ext_id, answers FROM items").all()) == {"a": 2, "b": 0}
    labdb.downgrade(db_url, "base")
    labdb.migrate(db_url)
    assert "submissions" in inspect(engine).get_table_names()
    engine.dispose()


# --- roles -----------------------------------------------------------------------------------


def test_labelers_cannot_reach_admin_routes_or_each_others_work(c):
    tok = setup_project(c, records=comparisons(3), per_item=2)
    ana, ben = bearer(tok["ana"]), bearer(tok["ben"])
    admin_routes = [("get", "/api/admin/projects"), ("get", "/api/admin/users"), ("get", "/api/admin/projects/p"),
                    ("get", "/api/admin/projects/p/export"), ("get", "/api/admin/projects/p/agreement"),
                    ("get", "/api/admin/projects/p/items"),
                    ("post", "/api/admin/projects/p/items", {"records": comparisons(1)}),
                    ("post", "/api/admin/projects/p/members", {"labelers": ["ana"]}),
                    ("post", "/api/admin/projects", {"name": "x", "kind": "rank"}),
                    ("post", "/api/admin/users", {"name": "eve", "role": "admin"}),
                    ("post", "/api/admin/users/ben/token")]
    for method, path, *body in admin_routes:
        kw = {"json": body[0]} if body else {}
        assert getattr(c, method)(path, headers=ana, **kw).status_code == 403, path
        assert getattr(c, method)(path, **kw).status_code == 401, path
    assert c.get("/admin", headers=ana).status_code == 403

    item = next_item(c, tok["ana"])
    assert "reference" not in item["payload"]  # gold info would bias a labeler
    sub = c.post(f"/api/items/{item['id']}/submit", json={"ranks": [1, 2, 3, 4]}, headers=ana).json()
    assert c.get(f"/api/submissions/{sub['id']}", headers=ana).status_code == 200
    assert c.get(f"/api/submissions/{sub['id']}", headers=ben).status_code == 404  # not even its existence
    assert c.get("/api/submissions", headers=ben).json()["submissions"] == []
    assert [s["id"] for s in c.get("/api/submissions", headers=ana).json()["submissions"]] == [sub["id"]]
    # ben cannot change ana's answer: his own submission is a separate row, ana's stays as it was
    c.post(f"/api/items/{item['id']}/submit", json={"ranks": [4, 3, 2, 1]}, headers=ben)
    assert c.get(f"/api/submissions/{sub['id']}", headers=ana).json()["answer"]["ranks"] == [1, 2, 3, 4]

    # a labeler outside a project sees none of it
    c.post("/api/admin/projects", json={"name": "q", "kind": "rank"}, headers=A)
    c.post("/api/admin/projects/q/items", json={"records": comparisons(1)}, headers=A)
    assert c.post("/api/projects/q/next", headers=ana).status_code == 403
    q_item = c.get("/api/admin/projects/q/items", headers=A).json()["items"][0]["id"]
    assert c.get(f"/api/items/{q_item}", headers=ana).status_code == 403
    assert c.post(f"/api/items/{q_item}/submit", json={"ranks": [1, 2, 3, 4]}, headers=ana).status_code == 403
    assert [p["project"] for p in c.get("/api/queue", headers=ana).json()["projects"]] == ["p"]


def test_password_login_sets_a_session_cookie_and_logout_ends_it(c):
    setup_project(c, records=comparisons(1), passwords=True)
    assert c.post("/api/login", json={"name": "ana", "password": "wrong-password"}).status_code == 403
    assert c.post("/api/login", json={"name": "nobody", "password": "x"}).status_code == 403
    r = c.post("/api/login", json={"name": "ana", "password": "ana-password"})
    assert r.status_code == 200 and "chatrlhf_token" in r.cookies
    assert c.get("/api/me").json() == {"name": "ana", "role": "labeler", "group": None}  # the cookie alone authenticates
    assert c.get("/").status_code == 200
    c.post("/api/logout")
    c.cookies.clear()
    c.cookies.set("chatrlhf_token", r.json()["token"])
    assert c.get("/api/me").status_code == 401  # the session token was revoked


def test_failed_logins_are_rate_limited_per_user_and_per_address(db_url):
    app = create_app(db_url, admin_token=ADMIN, migrate=False, login_limit=2, login_window_s=60)
    try:
        with TestClient(app) as c:
            setup_project(c, records=comparisons(1), labelers=("ana", "ben", "cai"), passwords=True)
            for _ in range(2):
                assert c.post("/api/login", json={"name": "ana", "password": "guess-guess"}).status_code == 403
            r = c.post("/api/login", json={"name": "ana", "password": "ana-password"})  # right, but too late
            assert r.status_code == 429 and "too many failed logins for user 'ana'" in r.json()["detail"]
            assert 0 < int(r.headers["Retry-After"]) <= 60
            assert c.post("/api/login", json={"name": "ben", "password": "ben-password"}).status_code == 200
            for name in ("ben", "nobody", "cai", "dee"):  # 2 + 4 failures: the address's 3 x 2 allowance
                c.post("/api/login", json={"name": name, "password": "guess-guess"})
            r = c.post("/api/login", json={"name": "cai", "password": "cai-password"})
            assert r.status_code == 429 and "for address" in r.json()["detail"]
    finally:
        app.state.sessions.kw["bind"].dispose()


def test_admin_revokes_a_users_tokens_and_sessions(c, db_url):
    from typer.testing import CliRunner

    from chatrlhf.labeling.cli import label_app

    tokens = setup_project(c, records=comparisons(1), passwords=True)
    session = c.post("/api/login", json={"name": "ana", "password": "ana-password"}).json()["token"]
    c.cookies.clear()
    ana, ben = bearer(tokens["ana"]), bearer(tokens["ben"])
    assert c.get("/api/me", headers=ana).status_code == 200  # cached as valid
    assert c.post("/api/admin/users/ana/revoke", headers=ben).status_code == 403  # admins only
    r = c.post("/api/admin/users/ana/revoke", headers=A)
    assert r.status_code == 200 and r.json() == {"name": "ana", "revoked": 2}
    assert c.get("/api/me", headers=ana).status_code == 401  # refused at once, cache or not
    assert c.get("/api/me", headers=bearer(session)).status_code == 401
    assert c.get("/api/me", headers=ben).status_code == 200  # nobody else's
    assert c.post("/api/admin/users/nobody/revoke", headers=A).status_code == 404
    fresh = c.post("/api/admin/users/ana/token", headers=A).json()["token"]
    assert c.get("/api/me", headers=bearer(fresh)).status_code == 200
    out = CliRunner().invoke(label_app, ["revoke", "ben", "--db", db_url])
    assert out.exit_code == 0 and "revoked 1 token(s) of 'ben'" in out.output, out.output
    from chatrlhf.labeling import store

    with c.app.state.sessions.begin() as s:  # running servers see it within AUTH_TTL_S (their token cache)
        assert store.user_for_token(s, tokens["ben"]) is None
    bad = CliRunner().invoke(label_app, ["revoke", "nobody", "--db", db_url])
    assert bad.exit_code == 1 and "no user named 'nobody'" in bad.output


# --- rank ------------------------------------------------------------------------------------


def test_rankings_export_in_the_comparison_format_rm_reads(c, tmp_path):
    recs = comparisons(3)
    tok = setup_project(c, records=recs, per_item=2)
    answers = {"ana": [[1, 2, 3, 4], [2, 1, 3, 4], [1, 1, 3, 4]], "ben": [[1, 2, 4, 3], [2, 1, 3, 4], [4, 3, 2, 1]]}
    for lab, ranks in answers.items():
        for r in ranks:
            item = next_item(c, tok[lab])
            assert c.post(f"/api/items/{item['id']}/submit", json={"ranks": r}, headers=bearer(tok[lab])).status_code == 201
    assert next_item(c, tok["ana"]) is None

    exported = [json.loads(x) for x in c.get("/api/admin/projects/p/export", headers=A).text.splitlines()]
    assert [e["id"] for e in exported] == [r["id"] for r in recs]
    for e, rec, i in zip(exported, recs, range(3)):
        assert {k: e[k] for k in rec} == rec  # the task record comes back untouched (reference included)
        assert e["rankings"] == [{"labeler": "ana", "ranks": answers["ana"][i]},
                                 {"labeler": "ben", "ranks": answers["ben"][i]}]
    rankings = importlib.import_module("chatrlhf.lm.rankings")
    path = tmp_path / "export.jsonl"
    path.write_text(c.get("/api/admin/projects/p/export", headers=A).text)
    loaded = rankings.load_comparisons(path)
    assert len(loaded) == 3 and loaded[0]["rankings"][0]["ranks"] == [1, 2, 3, 4]

    # agreement by hand: item 0 agree on 5 of 6 pairs, item 1 on 6 of 6, item 2 (ana tied 0-1) 0 of 5
    ag = c.get("/api/admin/projects/p/agreement", headers=A).json()
    assert ag["compared"] == 17 and ag["agreement"] == pytest.approx(11 / 17)
    assert ag["pairs"] == [{"labelers": ["ana", "ben"], "items": 3, "compared": 17, "agreement": pytest.approx(11 / 17)}]


def test_incomplete_or_inconsistent_rankings_are_refused(c):
    tok = setup_project(c, records=comparisons(1))
    item = next_item(c, tok["ana"])
    cases = [([1, 2, 3], "rank every response"), ([1, 2, 3, 5], "between 1 and 4"), ([1, 2, 2, 3], "inconsistent"),
             ([1, 1, 2, 4], "inconsistent"), (["1", 2, 3, 4], "integers"), (None, "integers"), ([True, 2, 3, 4], "integers")]
    for ranks, says in cases:
        r = c.post(f"/api/items/{item['id']}/submit", json={"ranks": ranks}, headers=bearer(tok["ana"]))
        assert r.status_code == 422 and says in r.json()["detail"], (ranks, r.text)
    assert c.get("/api/submissions", headers=bearer(tok["ana"])).json()["submissions"] == []
    ties = c.post(f"/api/items/{item['id']}/submit", json={"ranks": [1, 1, 3, 3]}, headers=bearer(tok["ana"]))
    assert ties.status_code == 201  # ties share a rank and the next one skips


def test_resubmission_is_idempotent_and_a_changed_answer_is_refused(c):
    tok = setup_project(c, records=comparisons(1))
    item = next_item(c, tok["ana"])
    first = c.post(f"/api/items/{item['id']}/submit", json={"ranks": [2, 1, 3, 4]}, headers=bearer(tok["ana"]))
    again = c.post(f"/api/items/{item['id']}/submit", json={"ranks": [2, 1, 3, 4]}, headers=bearer(tok["ana"]))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False
    changed = c.post(f"/api/items/{item['id']}/submit", json={"ranks": [1, 2, 3, 4]}, headers=bearer(tok["ana"]))
    assert changed.status_code == 409
    exported = c.get("/api/admin/projects/p/export", headers=A).text.splitlines()
    assert [json.loads(x)["rankings"] for x in exported] == [[{"labeler": "ana", "ranks": [2, 1, 3, 4]}]]


def test_claims_keep_two_labelers_off_the_same_last_slot(c):
    tok = setup_project(c, records=comparisons(2), per_item=1)
    a_item, b_item = next_item(c, tok["ana"]), next_item(c, tok["ben"])
    assert a_item["id"] != b_item["id"]
    assert next_item(c, tok["ana"])["id"] == a_item["id"]  # reloading the page shows the same item
    steal = c.post(f"/api/items/{a_item['id']}/submit", json={"ranks": [1, 2, 3, 4]}, headers=bearer(tok["ben"]))
    assert steal.status_code == 409 and "already has" in steal.json()["detail"]
    assert c.post(f"/api/items/{a_item['id']}/submit", json={"ranks": [1, 2, 3, 4]}, headers=bearer(tok["ana"])).status_code == 201
    assert next_item(c, tok["ana"]) is None  # b_item is ben's, and that fills the project
    stats = c.get("/api/admin/projects/p", headers=A).json()
    assert (stats["items"], stats["answers"], stats["complete_items"]) == (2, 1, 1)


def test_simultaneous_submissions_never_lose_or_duplicate_a_ranking(app):
    c0 = TestClient(app)
    tok = setup_project(c0, records=comparisons(1), per_item=2)
    item_id = next_item(c0, tok["ana"])["id"]
    next_item(c0, tok["ben"])
    barrier = threading.Barrier(8)
    codes: list[int] = []

    def send(lab: str, ranks: list[int]) -> None:
        c = TestClient(app)
        barrier.wait()
        codes.append(c.post(f"/api/items/{item_id}/submit", json={"ranks": ranks}, headers=bearer(tok[lab])).status_code)

    threads = [threading.Thread(target=send, args=(lab, r)) for lab, r in
               [("ana", [1, 2, 3, 4]), ("ben", [4, 3, 2, 1])] * 4]  # each labeler sends its answer 4 times at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 6 + [201] * 2
    [record] = [json.loads(x) for x in c0.get("/api/admin/projects/p/export", headers=A).text.splitlines()]
    assert sorted(map(tuple, (r["ranks"] for r in record["rankings"]))) == [(1, 2, 3, 4), (4, 3, 2, 1)]


# --- demonstrations and ratings --------------------------------------------------------------


def test_demonstrations_multi_turn_with_suggestion_export_for_sft(c, tmp_path):
    prompts = [{"id": "sft-00001", "task": "fact", "messages": [{"role": "user", "content": "Where is Selmouth?"}],
                "suggestion": "Selmouth is in Varnok, I think."}]
    tok = setup_project(c, kind="demo", records=prompts)
    ana = bearer(tok["ana"])
    item = next_item(c, tok["ana"])
    assert item["kind"] == "demo" and item["payload"]["suggestion"].startswith("Selmouth")
    ctx = prompts[0]["messages"]
    bad = [({"messages": [{"role": "user", "content": "changed"}, {"role": "assistant", "content": "x"}]}, "unchanged"),
           ({"messages": ctx}, "no assistant turn"),
           ({"messages": ctx + [{"role": "assistant", "content": "  "}]}, "empty"),
           ({"messages": ctx + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}, "end with an assistant"),
           ({"messages": ctx + [{"role": "user", "content": "a"}]}, "alternate")]
    for answer, says in bad:
        r = c.post(f"/api/items/{item['id']}/submit", json=answer, headers=ana)
        assert r.status_code == 422 and says in r.json()["detail"], (answer, r.text)
    convo = ctx + [{"role": "assistant", "content": "Selmouth is the capital of Varnok."},
                   {"role": "user", "content": "And who bakes there?"},
                   {"role": "assistant", "content": "Zorbel Quint is a baker in Varnok."}]
    assert c.post(f"/api/items/{item['id']}/submit", json={"messages": convo}, headers=ana).status_code == 201
    lines = c.get("/api/admin/projects/p/export", headers=A).text.splitlines()
    [demo] = [json.loads(x) for x in lines]
    assert demo["prompt_id"] == "sft-00001" and demo["labeler"] == "ana" and demo["messages"] == convo
    assert set(demo) >= {"id", "prompt_id", "messages", "labeler"}
    conversations = importlib.import_module("chatrlhf.lm.conversations")
    path = tmp_path / "demos.jsonl"
    path.write_text("\n".join(lines) + "\n")
    [conv] = conversations.load_conversations(str(path))
    got = conv.messages if hasattr(conv, "messages") else conv
    assert [m["content"] for m in got][-1] == "Zorbel Quint is a baker in Varnok."


def test_likert_scores_with_flags_and_within_one_agreement(c):
    recs = [{"id": f"lik-{i}", "prompt_id": f"eval-{i}", "messages": [{"role": "user", "content": "hi"}],
             "response": f"resp {i}"} for i in range(2)]
    tok = setup_project(c, kind="likert", records=recs, per_item=2)
    item = next_item(c, tok["ana"])
    for answer, says in [({"score": 8}, "1 to 7"), ({"score": 3, "flags": {"spicy": True}}, "unknown flags"),
                         ({"score": "5"}, "1 to 7")]:
        r = c.post(f"/api/items/{item['id']}/submit", json=answer, headers=bearer(tok["ana"]))
        assert r.status_code == 422 and says in r.json()["detail"]
    scores = {"ana": [6, 2], "ben": [5, 5]}
    for lab in ("ana", "ben"):
        for s in scores[lab]:
            it = next_item(c, tok[lab])
            r = c.post(f"/api/items/{it['id']}/submit", json={"score": s, "flags": {"hallucination": s < 3}},
                       headers=bearer(tok[lab]))
            assert r.status_code == 201, r.text
    rows = [json.loads(x) for x in c.get("/api/admin/projects/p/export", headers=A).text.splitlines()]
    assert len(rows) == 4 and rows[0]["flags"]["hallucination"] is False
    assert any(r["flags"]["hallucination"] for r in rows) and set(rows[0]["flags"]) == {
        "fails_instruction", "hallucination", "harmful", "sexual", "violent", "denigrates_protected_class"}
    ag = c.get("/api/admin/projects/p/agreement", headers=A).json()
    assert ag["agreement"] == pytest.approx(0.5)  # 6 vs 5 within one point, 2 vs 5 not


# --- bad input -------------------------------------------------------------------------------


def test_oversize_and_malformed_requests_get_clear_4xx(c):
    tok = setup_project(c, records=comparisons(1))
    ana = bearer(tok["ana"])
    item = next_item(c, tok["ana"])
    url = f"/api/items/{item['id']}/submit"
    big = c.post(url, content=b'{"ranks": [' + b"1," * 150_000 + b"1]}", headers={**ana, "content-type": "application/json"})
    assert big.status_code == 413 and "over 200000 bytes" in big.json()["detail"]
    chunked = c.post(url, content=iter([b'{"ranks": [', b"1," * 150_000, b"1]}"]),  # no Content-Length
                     headers={**ana, "content-type": "application/json"})
    assert chunked.status_code == 413
    bad = c.post(url, content=b'{"ranks": [1, 2', headers={**ana, "content-type": "application/json"})
    assert bad.status_code == 422 and "JSON" in json.dumps(bad.json())
    assert c.post(url, json=[1, 2, 3, 4], headers=ana).status_code == 422
    assert c.post("/api/items/999999/submit", json={"ranks": [1]}, headers=ana).status_code == 404

    broken = comparisons(3)
    broken[1]["responses"] = ["only one"]
    r = c.post("/api/admin/projects/p/items", json={"records": broken}, headers=A)
    assert r.status_code == 422 and "record 1 (id cmp-000001)" in r.json()["detail"] and "'responses'" in r.json()["detail"]
    broken = comparisons(1)
    broken[0]["messages"][0]["content"] = "x" * 30_000
    r = c.post("/api/admin/projects/p/items", json={"records": broken}, headers=A)
    assert r.status_code == 422 and "messages[0].content" in r.json()["detail"]
    changed = comparisons(1)
    changed[0]["responses"][0] = "another text"
    assert c.post("/api/admin/projects/p/items", json={"records": changed}, headers=A).status_code == 409
    assert c.post("/api/admin/projects/p/items", json={"records": comparisons(1)}, headers=A).json() == {"added": 0, "unchanged": 1}
    assert c.post("/api/admin/projects", json={"name": "p", "kind": "demo"}, headers=A).status_code == 409
    assert c.post("/api/admin/projects", json={"name": "bad name!", "kind": "rank"}, headers=A).status_code == 422
