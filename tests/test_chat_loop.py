"""End to end, offline: simulated trainers run one RLHF round through the labeling app on the tiny
config (chat with the served policy -> rank one of its turns -> RM -> PPO), and the app then serves
the round's new policy."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from chatrlhf.config import load_config
from chatrlhf.labeling.client import LabelingClient
from chatrlhf.labeling.loadtest import LocalServer
from chatrlhf.lm.conversations import load_conversations
from chatrlhf.lm.modeling import read_meta
from chatrlhf.lm.rankings import load_comparisons

pytest.importorskip("fastapi")


def test_one_round_of_chat_rank_rm_ppo_through_the_app_and_the_app_serves_the_new_policy(tmp_path, monkeypatch):
    from chatrlhf import pipeline
    from chatrlhf.layout import round_paths
    from chatrlhf.stages.iterate import run_round
    from chatrlhf.world.loader import load_world

    with LocalServer(f"sqlite:///{tmp_path}/labels.db") as srv:
        monkeypatch.setenv("CHATRLHF_LABEL_TOKEN", srv.admin_token)
        cfg = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml",
                          [f"run.out_dir={tmp_path / 'run'}", "iterate.source=labeling_app", f"iterate.labeling_url={srv.url}",
                           "iterate.labeling_project=talk", "iterate.prompts_per_round=4"])
        for name, _, runner in pipeline.STAGES[: [n for n, _, _ in pipeline.STAGES].index("rounds")]:
            runner(cfg)  # round 1: world ... rm, ppo
        world = load_world(cfg)
        round1 = round_paths(cfg, 1)[1]

        client = LabelingClient(srv.url, srv.admin_token)
        client.create_chat_project("talk", k=4, rank_project="talk-rank", rank_labelers_per_item=2, max_new_tokens=16)
        client.create_chat_project("both", kind="both_sides", max_new_tokens=16)
        trainers = world.labelers(held_out=False)[:3]
        prompts = world.prompts("rm")

        def team():  # people would do this in the browser, once the app serves the round's policy
            while (client.policy() or {}).get("round") != 2:
                time.sleep(0.1)
            client.simulate_chats("talk", trainers, world, prompts[:8], prompts_per_chat=2)
            client.simulate_both_sides("both", trainers, world, prompts[8:14])
            client.attach_simulated("talk-rank", trainers, world)

        errors: list[BaseException] = []
        worker = threading.Thread(target=lambda: _catch(team, errors), daemon=True)
        worker.start()
        newest = run_round(cfg, world, 2)
        worker.join(60)
        assert not errors, errors

        d = newest.parent
        comparisons = load_comparisons(d / "comparisons.jsonl")
        assert len(comparisons) == 4
        for c in comparisons:
            assert c["round"] == 2 and len(c["responses"]) == 4 and 0 <= c["original_index"] < 4
            assert len(c["rankings"]) == 2 and c["policy"] == str(round1.resolve())
            assert c["split"] in ("train", "val") and c["prompt_id"].startswith("rm-")
        assert read_meta(round_paths(cfg, 2)[0])["complete"] and read_meta(newest)["complete"]
        demos = load_conversations(d / "demonstrations.jsonl")
        assert len(demos) >= 1 and all(conv[-1]["role"] == "assistant" for conv in demos)
        watch = json.loads((d / "watch.json").read_text())
        assert {t["name"] for t in watch["trainers"]} >= {lab.id for lab in trainers}
        assert any(t["agreement"] is not None for t in watch["trainers"])
        assert all(t["suggestions"] >= 1 for t in watch["trainers"] if t["name"] in {lab.id for lab in trainers})

        # the round's new policy is the one the app serves, tagged for round 3
        served = client.policy()
        assert (served["target"], served["round"]) == (str(newest.resolve()), 3)
        token = client.add_labeler(trainers[0].id)
        with client._http(token) as http:
            chat = client._one_chat(http, "talk", prompts[-1:])["chat"]
        assert chat["round"] == 3 and chat["policy"]["target"] == str(newest.resolve())
        assert chat["messages"][-1]["by_model"]


def _catch(fn, errors):
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)
