"""The labeling app as a real server (`chatrlhf label serve` in a subprocess) on SQLite and PostgreSQL:
a small load test, a crash mid-write, the Python client with simulated labelers, and the CLI."""

from __future__ import annotations

import importlib
import json
import random
import threading
import time

import httpx
import pytest
from test_labeling import comparisons, pg_database

from chatrlhf.labeling import db as labdb
from chatrlhf.labeling.client import LabelingClient, LabelingError
from chatrlhf.labeling.loadtest import LocalServer, load_test


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    if request.param == "sqlite":
        with LocalServer(f"sqlite:///{tmp_path_factory.mktemp('srv')}/labels.db") as srv:
            yield srv
        return
    with pg_database() as url, LocalServer(url) as srv:  # the server migrates the new database
        yield srv


def test_20_labelers_submitting_200_rankings_leave_exactly_200_rows(server):
    got = load_test(server.url, server.admin_token, n_rankings=200, n_labelers=20, project="lt200")
    assert got["n_errors"] == 0, got["errors"]
    assert (got["rows"], got["items_ranked"], got["items_ranked_twice"]) == (200, 200, 0)
    assert got["requests"] >= 2 * 200 and got["requests_per_s"] > 0


class FakeLabeler:
    """Ranks by the gold order hidden in `reference` (which labeler pages never show), plus a bias."""

    def __init__(self, id: str, flip: bool = False):
        self.id, self.flip = id, flip

    def rank(self, prompt, responses, rng):
        gold = prompt["reference"]["order"]
        order = gold[::-1] if self.flip else gold
        return [order.index(i) + 1 for i in range(len(responses))]

    def likert(self, prompt, response, rng):
        return 7 - len(response) % 3, {"hallucination": "made up" in response, "toxic": True, "refused": False}


def test_client_push_attach_pull_with_simulated_labelers(server):
    client = LabelingClient(server.url, server.admin_token)
    recs = comparisons(6)
    for i, r in enumerate(recs):
        r["reference"] = {"order": random.Random(i).sample(range(4), 4)}
    assert client.push_comparisons("sim", recs, labelers_per_item=2) == {"added": 6, "unchanged": 0}
    assert client.push_comparisons("sim", recs, labelers_per_item=2) == {"added": 0, "unchanged": 6}
    labs = [FakeLabeler("S1"), FakeLabeler("S2"), FakeLabeler("S3", flip=True)]
    counts = client.attach_simulated("sim", labs, world=None, seed=1)
    assert sum(counts.values()) == 12  # 6 items x 2 labelers, no more, no less
    pulled = client.pull_rankings("sim")
    assert [p["id"] for p in pulled] == [r["id"] for r in recs]
    for rec in pulled:
        assert len(rec["rankings"]) == 2 and len({r["labeler"] for r in rec["rankings"]}) == 2
        for r in rec["rankings"]:
            lab = next(lb for lb in labs if lb.id == r["labeler"])
            assert r["ranks"] == lab.rank(rec, rec["responses"], None)
    with pytest.raises(LabelingError, match="not a labeler"):
        client.attach_simulated("sim", [FakeLabeler("admin")])  # a simulated labeler never gets admin powers
    # people and simulated labelers share the queue: a person added later finds it empty
    token = client.add_labeler("late-person")
    client.assign("sim", ["late-person"])
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, trust_env=False) as h:
        assert h.post("/api/projects/sim/next").json()["item"] is None

    client.create_project("sim-likert", "likert", labelers_per_item=1)
    client.push_items("sim-likert", [{"id": "l1", "messages": [{"role": "user", "content": "hi"}], "response": "made up"}])
    client.attach_simulated("sim-likert", labs[:1])
    [row] = client.export("sim-likert")
    assert row["score"] == 7 - len("made up") % 3
    assert row["flags"]["hallucination"] and row["flags"]["harmful"] and not row["flags"]["sexual"]


def test_simulated_labelers_keep_their_group_and_iterate_pulls_one_groups_rankings(server, monkeypatch):
    from chatrlhf.config import Config
    from chatrlhf.stages import iterate

    client = LabelingClient(server.url, server.admin_token)
    recs = comparisons(3)
    for i, r in enumerate(recs):
        r["reference"] = {"order": random.Random(i).sample(range(4), 4)}
    client.push_comparisons("grp", recs, labelers_per_item=2)
    labs = [FakeLabeler("G1"), FakeLabeler("G2", flip=True)]
    labs[0].group, labs[1].group = "brief", "cautious"
    client.attach_simulated("grp", labs, seed=1)
    assert {(x["labeler"], x["group"]) for rec in client.pull_rankings("grp") for x in rec["rankings"]} == \
        {("G1", "brief"), ("G2", "cautious")}
    # iterate from the app with iterate.labeling_group: what the RM gets is that group's rankings only
    monkeypatch.setenv("CHATRLHF_LABEL_TOKEN", server.admin_token)
    monkeypatch.setattr(LabelingClient, "wait_complete", lambda self, project: {})
    cfg = Config.model_validate({"iterate": {"source": "labeling_app", "labeling_url": server.url,
                                             "labeling_project": "grp-it", "labeling_group": "cautious"},
                                 "rm": {"labelers_per_prompt": 2}})
    client.push_comparisons("grp-it-round-2", recs, labelers_per_item=2)
    client.attach_simulated("grp-it-round-2", labs, seed=1)
    got = iterate.rank_in_labeling_app(cfg, recs, 2)
    assert len(got) == 3 and all([x["labeler"] for x in rec["rankings"]] == ["G2"] for rec in got)


def test_client_with_the_world_simulated_labelers(server, tmp_path, monkeypatch):
    if server.db.startswith("postgresql"):
        pytest.skip("about the world's labeler API, not the database: SQLite covers it")
    world_mod = importlib.import_module("chatrlhf.world")
    from chatrlhf.config import WorldConfig

    try:
        world = world_mod.World.generate(WorldConfig(corpus_docs=20, n_sft_prompts=4, n_rm_prompts=4, n_ppo_prompts=4,
                                                     n_eval_prompts=4, n_labelers=3, n_held_out_labelers=1))
    except Exception as e:  # noqa: BLE001 - the world module is being written in parallel
        pytest.skip(f"world generator not usable: {e}")
    prompts = world.prompts("rm")
    recs = [{"id": f"w-{i}", "prompt_id": p["id"], "task": p["task"], "messages": p["messages"],
             "responses": ["I do not know.", "Hello!", "It is in the north.", "No."], "reference": p.get("reference", {})}
            for i, p in enumerate(prompts)]
    client = LabelingClient(server.url, server.admin_token)
    client.push_comparisons("world-sim", recs)
    client.attach_simulated("world-sim", world.labelers(held_out=False), world)
    pulled = client.pull_rankings("world-sim")
    assert len(pulled) == len(recs) and all(len(r["rankings"]) == 1 for r in pulled)

    # the same through `chatrlhf label simulate`, with the world loaded from a run directory
    from typer.testing import CliRunner

    from chatrlhf.labeling.cli import label_app

    world.save(tmp_path / "world")
    client.push_comparisons("world-cli", [{**r, "id": "c" + r["id"]} for r in recs], labelers_per_item=2)
    monkeypatch.setenv("CHATRLHF_LABEL_TOKEN", server.admin_token)
    ids = [lab.id for lab in world.labelers(held_out=False)][:2]
    r = CliRunner().invoke(label_app, ["simulate", "world-cli", "--url", server.url, "--labelers", ",".join(ids),
                                       "--set", f"run.out_dir={tmp_path}"])
    assert r.exit_code == 0, r.output
    assert sum(json.loads(r.output.strip().splitlines()[-1]).values()) == 2 * len(recs)
    assert all({x["labeler"] for x in rec["rankings"]} == set(ids) for rec in client.pull_rankings("world-cli"))


def test_a_crash_mid_write_loses_nothing_acknowledged(tmp_path):
    # SQLite only: durability there rests on our settings (WAL, synchronous=FULL, commit before the
    # answer); on PostgreSQL it is the server's own WAL, and the commit-before-answer code is shared.
    db = f"sqlite:///{tmp_path}/labels.db"
    srv = LocalServer(db).start()
    try:
        client = LabelingClient(srv.url, srv.admin_token, timeout=10)
        client.push_comparisons("crash", comparisons(150))
        token = client.add_labeler("ana")
        client.assign("crash", ["ana"])
        acked: list[str] = []

        def label_until_the_server_dies() -> None:
            with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                              trust_env=False) as h:
                try:
                    while True:
                        item = h.post("/api/projects/crash/next").json()["item"]
                        r = h.post(f"/api/items/{item['id']}/submit", json={"ranks": [1, 2, 3, 4]})
                        if r.status_code in (200, 201):
                            acked.append(item["ext_id"])
                except (httpx.HTTPError, ValueError, TypeError):
                    return  # the server is gone

        worker = threading.Thread(target=label_until_the_server_dies)
        worker.start()
        deadline = time.monotonic() + 60
        while len(acked) < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        srv.kill()  # SIGKILL while the labeler is still submitting
        worker.join(30)
        assert len(acked) >= 25
        from chatrlhf.labeling import store

        with labdb.open_db(db).begin() as s:  # what a restarted server would read
            ranked = {r["id"] for r in store.export(s, store.get_project(s, "crash"))}
        assert set(acked) <= ranked, f"lost acknowledged rankings: {sorted(set(acked) - ranked)[:5]}"
        assert len(ranked) <= len(acked) + 1  # at most the one in flight when it died
    finally:
        srv.stop()


def test_cli_imports_assigns_and_exports(tmp_path):
    from typer.testing import CliRunner

    from chatrlhf.labeling import store
    from chatrlhf.labeling.cli import label_app

    db = f"sqlite:///{tmp_path}/cli.db"
    tasks = tmp_path / "cmp.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in comparisons(3)))
    run = CliRunner().invoke
    r = run(label_app, ["import", str(tasks), "--project", "cli", "--db", db])
    assert r.exit_code == 0 and "3 added" in r.output, r.output
    r = run(label_app, ["create-user", "ana", "--password", "ana-password", "--db", db])
    assert r.exit_code == 0 and r.output.strip().startswith("lbl_")
    assert run(label_app, ["assign", "cli", "ana", "--db", db]).exit_code == 0
    with labdb.open_db(db).begin() as s:
        ana = store.get_user(s, "ana")
        item = store.next_item(s, ana, "cli", claim_minutes=5)
        store.submit(s, ana, item.id, {"ranks": [4, 3, 2, 1]})
    out = tmp_path / "out.jsonl"
    assert run(label_app, ["export", "cli", "--out", str(out), "--db", db]).exit_code == 0
    [rec] = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["rankings"] == [{"labeler": "ana", "ranks": [4, 3, 2, 1]}]
    r = run(label_app, ["agreement", "cli", "--db", db])
    assert r.exit_code == 0 and json.loads(r.output)["kind"] == "rank"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(comparisons(1)[0]) + "\n\n" + '{"id": "x", "messages": [], "responses": ["a", "b"]}\n')
    r = run(label_app, ["import", str(bad), "--project", "cli2", "--db", db])
    assert r.exit_code == 1 and "line 3 (id x)" in r.output and "'messages'" in r.output
    bad.write_text('{"id": 1\n')
    r = run(label_app, ["import", str(bad), "--project", "cli2", "--db", db])
    assert r.exit_code != 0 and f"{bad}:1" in str(r.exception or r.output)


def test_iterate_takes_its_rankings_from_the_app_queue(server, monkeypatch):
    iterate = importlib.import_module("chatrlhf.stages.iterate")
    from chatrlhf.config import load_config

    cfg = load_config(None, ["iterate.source=labeling_app", f"iterate.labeling_url={server.url}",
                             "iterate.labeling_project=itest", "rm.labelers_per_prompt=2"])
    monkeypatch.setenv("CHATRLHF_LABEL_TOKEN", server.admin_token)
    recs = comparisons(4)
    for i, r in enumerate(recs):
        r.update(reference={"order": [3, 2, 1, 0]}, split="train", rankings=[])
    stop = threading.Event()
    client = LabelingClient(server.url, server.admin_token)
    labs = [FakeLabeler("W1"), FakeLabeler("W2", flip=True)]
    watcher = threading.Thread(target=client.watch_simulated, args=("itest-round-*", labs),
                               kwargs={"poll_s": 0.2, "stop": stop}, daemon=True)
    watcher.start()
    try:
        ranked = iterate.rank_in_labeling_app(cfg, recs, 2)
    finally:
        stop.set()
        watcher.join(30)
    assert [r["id"] for r in ranked] == [r["id"] for r in recs]
    for rec in ranked:
        assert rec["split"] == "train" and rec["reference"] == {"order": [3, 2, 1, 0]}
        assert {r["labeler"]: r["ranks"] for r in rec["rankings"]} == {"W1": [4, 3, 2, 1], "W2": [1, 2, 3, 4]}
    importlib.import_module("chatrlhf.lm.rankings").load_comparisons(ranked)  # what the RM reads


@pytest.mark.slow
def test_tiny_iterate_end_to_end_with_the_world_labelers_in_the_app(tmp_path, monkeypatch):
    """`chatrlhf iterate` round 2 ranked through the app by the world's labelers as API clients."""
    from pathlib import Path

    from chatrlhf import pipeline
    from chatrlhf.config import load_config
    from chatrlhf.lm.modeling import read_meta
    from chatrlhf.stages.iterate import run_iterate
    from chatrlhf.world import World

    tiny = Path(__file__).parents[1] / "configs" / "tiny.yaml"
    base = load_config(tiny, [f"run.out_dir={tmp_path}"])
    for name, _, runner in pipeline.STAGES:  # round 1: world .. ppo
        if name == "rounds":
            break
        runner(base)
    with LocalServer(f"sqlite:///{tmp_path}/labels.db") as srv:
        monkeypatch.setenv("CHATRLHF_LABEL_TOKEN", srv.admin_token)
        cfg = load_config(tiny, [f"run.out_dir={tmp_path}", "iterate.rounds=2", "iterate.source=labeling_app",
                                 f"iterate.labeling_url={srv.url}", "iterate.labeling_project=e2e"])
        world = World.load(cfg.stage_dir("world"))
        stop = threading.Event()
        client = LabelingClient(srv.url, srv.admin_token)
        watcher = threading.Thread(target=client.watch_simulated, args=("e2e-round-*", world.labelers(held_out=False), world),
                                   kwargs={"poll_s": 0.5, "stop": stop}, daemon=True)
        watcher.start()
        try:
            run_iterate(cfg)
        finally:
            stop.set()
            watcher.join(60)
        pulled = client.pull_rankings("e2e-round-2")
    cmp_file = tmp_path / "rounds" / "round_2" / "comparisons.jsonl"
    written = [json.loads(x) for x in cmp_file.read_text().splitlines()]
    assert len(written) == len(pulled) > 0 and all(r["rankings"] for r in written)
    assert {r["rankings"][0]["labeler"] for r in written} <= {lab.id for lab in world.labelers(held_out=False)}
    assert read_meta(tmp_path / "rounds" / "round_2" / "ppo").get("complete")
