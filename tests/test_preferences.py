"""Whose preferences: rankings by one labeler group or a weighted mix, group-conditioned prompts through
the chat template, `chat --group` and the server's `group` field, and `chatrlhf preferences` end to end."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from chatrlhf.config import Config, ServeConfig, WorldConfig, load_config
from chatrlhf.lm.engine import Engine
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer, read_meta
from chatrlhf.lm.prompts import group_system_message
from chatrlhf.serve.server import create_app
from chatrlhf.stages.sampling import label_with_world
from chatrlhf.world import World
from chatrlhf.world.groups import condition, draw_group, for_group, group_message
from chatrlhf.world.labelers import GROUP_INSTRUCTIONS

SMALL = dict(n_people=8, n_places=5, n_objects=4, corpus_docs=200, n_sft_prompts=60, n_rm_prompts=120,
             n_ppo_prompts=40, n_eval_prompts=40, agreement_comparisons=100)


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(WorldConfig(**SMALL))


def _comparisons(world: World, n: int = 120) -> list[dict]:
    cands = ["I do not know.", "Sure! It is in the north, I think.", "It is in the north.", "No."]
    return [{"id": f"c{i}", "prompt_id": p["id"], "task": p["task"], "messages": p["messages"], "responses": cands,
             "reference": p.get("reference"), "split": "val" if i % 4 == 0 else "train", "rankings": []}
            for i, p in enumerate(world.prompts("rm")[:n])]


def _groups_of(world: World, comps: list[dict]) -> tuple[set[str], set[str]]:
    by_id = {lab.id: lab for lab in world.labelers()}
    train = {by_id[r["labeler"]].group for c in comps for r in c["rankings"] if not by_id[r["labeler"]].held_out}
    held = {by_id[r["labeler"]].group for c in comps for r in c["rankings"] if by_id[r["labeler"]].held_out}
    return train, held


def test_one_groups_rankings_come_from_its_members_held_out_ones_on_validation_prompts(world):
    cfg = Config.model_validate({"rm": {"labeler_groups": {"brief": 1.0}}})
    comps = _comparisons(world)
    label_with_world(world, comps, cfg, random.Random(0))
    train, held = _groups_of(world, comps)
    assert train == {"brief"} and held == {"brief"}  # the judge group never ranks training data here
    pooled = _comparisons(world)
    label_with_world(world, pooled, Config(), random.Random(0))
    assert _groups_of(world, pooled)[0] == {"brief", "thorough", "cautious"}


def test_groups_per_prompt_ranks_the_same_answers_under_every_groups_line(world):
    """rm.groups_per_prompt=3: each prompt's answers once per group, each copy named for its group in the
    system message and ranked by one of its members (labelers_per_prompt 3 divided among 3 copies), so
    the rankings written equal those of one group per prompt; held-out copies get their group's held-out members."""
    cfg = Config.model_validate({"rm": {"conditioned": True, "groups_per_prompt": 3}})
    comps = _comparisons(world, 30)
    n = label_with_world(world, comps, cfg, random.Random(0))
    by_id = {lab.id: lab for lab in world.labelers()}
    assert len(comps) == 90 and len({c["id"] for c in comps}) == 90
    for pid in {c["prompt_id"] for c in comps}:
        copies = [c for c in comps if c["prompt_id"] == pid]
        assert sorted(c["group"] for c in copies) == ["brief", "cautious", "thorough"]
        assert len({tuple(c["responses"]) for c in copies}) == 1  # the same answers
        for c in copies:
            assert c["messages"][0] == group_message(c["group"]) and c["messages"][1:] == copies[0]["messages"][1:]
            train = [by_id[r["labeler"]] for r in c["rankings"] if not by_id[r["labeler"]].held_out]
            held = [by_id[r["labeler"]] for r in c["rankings"] if by_id[r["labeler"]].held_out]
            assert len(train) == 1 and {lab.group for lab in train + held} == {c["group"]}
            assert (len(held) > 0) == (c["split"] == "val")
    one = _comparisons(world, 30)
    m = label_with_world(world, one, Config.model_validate({"rm": {"conditioned": True}}), random.Random(0))
    assert len(one) == 30 and sum(len(r["rankings"]) for r in one if r["split"] == "train") == \
        sum(len(c["rankings"]) for c in comps if c["split"] == "train")
    assert n > m  # held-out copies: each group's held-out members rank its own copy


def test_labelers_per_group_ranks_every_copy_as_fully_as_one_groups_rm(world):
    """rm.labelers_per_group=3 with groups_per_prompt=3: each group's copy is ranked by three of its own
    members, so the conditioned RM learns from the rankings of the three group RMs together."""
    cfg = Config.model_validate({"rm": {"conditioned": True, "groups_per_prompt": 3, "labelers_per_group": 3}})
    comps = _comparisons(world, 30)
    label_with_world(world, comps, cfg, random.Random(0))
    by_id = {lab.id: lab for lab in world.labelers()}
    assert len(comps) == 90
    for c in comps:
        train = [by_id[r["labeler"]] for r in c["rankings"] if not by_id[r["labeler"]].held_out]
        assert len(train) == 3 and len({lab.id for lab in train}) == 3 and {lab.group for lab in train} == {c["group"]}
    brief = _comparisons(world, 30)
    label_with_world(world, brief, Config.model_validate({"rm": {"labeler_groups": {"brief": 1.0}}}), random.Random(0))
    assert sum(len(c["rankings"]) for c in brief if c["split"] == "train") * 3 == \
        sum(len(c["rankings"]) for c in comps if c["split"] == "train")


def test_sft_group_system_message_names_each_demonstrations_writers_group(world, tmp_path):
    from chatrlhf.lm.data import DataError
    from chatrlhf.stages.sft import load_split, run_fingerprint, run_settings
    from chatrlhf.world.loader import world_demonstrations

    world.save(tmp_path / "world")
    off = Config.model_validate({"run": {"out_dir": str(tmp_path)}})
    on = Config.model_validate({"run": {"out_dir": str(tmp_path)}, "sft": {"group_system_message": True}})
    plain, named = world_demonstrations(off), world_demonstrations(on)
    assert plain == [d["messages"] for d in world.demonstrations()]  # off: the demonstrations as they are
    writers = [world.labeler(d["labeler"]).group for d in world.demonstrations()]
    assert len(set(writers)) == 3
    assert [c[0] for c in named] == [group_message(g) for g in writers]
    assert [c[1:] for c in named] == plain
    # off, the fingerprint that decides checkpoint resumption is the one runs had before the switch
    assert run_fingerprint(off) != run_fingerprint(on)
    assert "group_system_message" not in run_settings(off)["sft"] and run_settings(on)["sft"]["group_system_message"]
    with pytest.raises(DataError, match="group_system_message"):
        load_split(Config.model_validate({"sft": {"data": "x.jsonl", "group_system_message": True}}), None)


def test_every_groups_writers_answer_every_prompt_with_group_demonstrations(world, tmp_path):
    """sft.group_demonstrations: one demonstration per SFT prompt and group, by a training labeler of
    that group, named in its system message; without group_system_message it is refused."""
    from chatrlhf.lm.data import DataError
    from chatrlhf.stages.sft import load_split, run_settings
    from chatrlhf.world.loader import world_demonstrations

    world.save(tmp_path / "world")
    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path)}, "world": {"seed": world.info["seed"]},
                                 "sft": {"group_system_message": True, "group_demonstrations": True}})
    convs = world_demonstrations(cfg)
    prompts = world.prompts("sft")
    assert len(convs) == 3 * len(prompts)
    for g in ("brief", "thorough", "cautious"):
        mine = [c for c in convs if c[0] == group_message(g)]
        assert [c[1:-1] for c in mine] == [p["messages"] for p in prompts]  # every prompt, once per group
    assert convs == world_demonstrations(cfg)  # the same writers and answers every time
    assert run_settings(cfg)["sft"]["group_demonstrations"] and "group_demonstrations" not in run_settings(Config())["sft"]
    with pytest.raises(DataError, match="group_demonstrations needs sft.group_system_message"):
        load_split(Config.model_validate({"sft": {"group_demonstrations": True}}), None)


def test_sft_writer_group_keeps_one_groups_demonstrations_of_every_prompt(world, tmp_path):
    """sft.writer_group: every SFT prompt answered once, by a training labeler of that group, as
    group_demonstrations writes it; an unknown group or a user's data is refused by name."""
    from chatrlhf.lm.data import DataError
    from chatrlhf.stages.sft import load_split, run_settings
    from chatrlhf.world.labelers import write_group_demonstrations
    from chatrlhf.world.loader import world_demonstrations

    world.save(tmp_path / "world")
    by_id = {lab.id: lab for lab in world.labelers()}
    every = write_group_demonstrations(world.prompts("sft"), world.labelers(), world.info["seed"],
                                       Config().world.demo_quality, world.facts)
    for g in ("brief", "cautious"):
        cfg = Config.model_validate({"run": {"out_dir": str(tmp_path)}, "world": {"seed": world.info["seed"]},
                                     "sft": {"writer_group": g}})
        convs = world_demonstrations(cfg)
        mine = [d for d in every if by_id[d["labeler"]].group == g and not by_id[d["labeler"]].held_out]
        assert convs == [d["messages"] for d in mine]  # that group's writers' demonstrations, no system line
        assert [c[:-1] for c in convs] == [p["messages"] for p in world.prompts("sft")]  # every prompt once
        assert run_settings(cfg)["sft"]["writer_group"] == g
    assert world_demonstrations(cfg) != world_demonstrations(cfg.model_copy(update={"sft": cfg.sft.model_copy(
        update={"writer_group": "brief"})}))  # the groups write differently
    assert "writer_group" not in run_settings(Config())["sft"]
    with pytest.raises(DataError, match="writer_group='judges' is not a training group"):
        world_demonstrations(Config.model_validate({"run": {"out_dir": str(tmp_path)}, "sft": {"writer_group": "judges"}}))
    with pytest.raises(DataError, match="sft.writer_group reads the writers' labeler groups"):
        load_split(Config.model_validate({"sft": {"data": "x.jsonl", "writer_group": "brief"}}), None)


def test_group_sft_starts_each_groups_variant_from_its_own_demonstrations(tmp_path, monkeypatch):
    """preferences.group_sft: a group's variant starts from an SFT model on its own group's
    demonstrations; the pooled and conditioned variants keep theirs, and off, every group the run's."""
    import chatrlhf.stages.preferences as prefs

    seen = []
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: seen.append((out.name, cfg.sft.writer_group)))
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.group_sft=true"])
    dirs = {name: prefs.variant_sft(cfg, name, tmp_path / name) for name in ("pooled", "brief", "cautious", "conditioned")}
    assert dirs == {"pooled": cfg.stage_dir("sft"), "brief": tmp_path / "brief", "cautious": tmp_path / "cautious",
                    "conditioned": cfg.stage_dir("sft")}
    assert seen == [("brief", "brief"), ("cautious", "cautious")]
    off = load_config(None, [f"run.out_dir={tmp_path}"])
    assert prefs.variant_sft(off, "brief", tmp_path / "x") == off.stage_dir("sft") and len(seen) == 2
    result = {"n_prompts": 1, "rows": {"brief": {"brief": {"win_rate": 0.6, "low": 0.5, "high": 0.7}}}}
    assert "own group's demonstrations" in prefs.table_md(result | {"group_sft": True}, ["brief"])
    assert "demonstrations" not in prefs.table_md(result, ["brief"])  # the table says which SFT the rows started from
    assert "ran 2 round(s), the conditioned policies 2;" in prefs.table_md(result | {"rounds": 2}, ["brief"])  # how many rounds
    assert "ran 2 round(s), the conditioned policies 1;" in prefs.table_md(result | {"rounds": 2, "conditioned_rounds": 1}, ["brief"])
    assert "ran 1 round(s), the conditioned policies 3;" in prefs.table_md(result | {"rounds": 1, "conditioned_rounds": 3}, ["brief"])
    assert "round(s)" not in prefs.table_md(result | {"rounds": 1}, ["brief"])


def test_sft_ptx_coef_trains_every_variants_sft_model_with_it(tmp_path, monkeypatch):
    """preferences.sft_ptx_coef: each group's SFT model (group_sft), conditioned-sft's, and the run's SFT
    again for the pooled and conditioned variants (one model, shared) are trained with that SFT-ptx weight;
    unset, the variants' own with the run's sft.ptx_coef and the pooled one is the run's SFT model."""
    import chatrlhf.stages.preferences as prefs

    seen = []
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: seen.append((out.relative_to(tmp_path).as_posix(), cfg.sft.ptx_coef)))
    monkeypatch.setattr(prefs, "stage_complete", lambda out: (out.relative_to(tmp_path).as_posix(), 0.0) in seen)
    for coef in (None, 0.0):
        over = [] if coef is None else [f"preferences.sft_ptx_coef={coef}"]
        cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.group_sft=true", "sft.ptx_coef=0.5", *over])
        dirs = {name: prefs.variant_sft(cfg, name, tmp_path / str(coef) / name / "sft")
                for name in ("pooled", "cautious", "conditioned-sft", "conditioned")}
        shared = cfg.stage_dir("sft") if coef is None else tmp_path / "0.0" / "pooled" / "sft"
        assert dirs["pooled"] == dirs["conditioned"] == shared
    assert seen == [("None/cautious/sft", 0.5), ("None/conditioned-sft/sft", 0.5), ("0.0/pooled/sft", 0.0),
                    ("0.0/cautious/sft", 0.0), ("0.0/conditioned-sft/sft", 0.0)]  # the shared one trained once


def test_conditioned_sft_reads_the_group_line_next_to_the_answer_by_default(tmp_path, monkeypatch):
    """preferences.line_near_answer (default on): conditioned-sft's SFT model is trained with the group line
    next to the answer and every group's demonstrations; off, the line first; the conditioned variant
    keeps the run's SFT model either way."""
    import chatrlhf.stages.preferences as prefs

    seen = []
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: seen.append(
        (cfg.sft.group_system_message, cfg.sft.group_line_near_answer, cfg.sft.group_demonstrations)))
    for near in (True, False):
        cfg = load_config(None, [f"run.out_dir={tmp_path}", f"preferences.line_near_answer={str(near).lower()}"])
        assert prefs.variant_sft(cfg, "conditioned-sft", tmp_path / f"c{near:d}") == tmp_path / f"c{near:d}"
        assert prefs.variant_sft(cfg, "conditioned", tmp_path / "x") == cfg.stage_dir("sft")
    assert seen == [(True, True, True), (True, False, True)]


def test_an_sft_start_of_sft_fine_tunes_the_runs_sft_model_for_its_variants_only(tmp_path, monkeypatch):
    """preferences.conditioned_sft_start=sft: conditioned-sft's SFT model starts from the run's SFT model
    (sft.start_from); preferences.group_sft_start=sft: each group's own; by default both from the
    pre-trained model, and neither setting changes the other's."""
    import chatrlhf.stages.preferences as prefs

    seen = []
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: seen.append((out.name, cfg.sft.start_from)))
    for key in ("conditioned_sft_start", "group_sft_start"):
        for start in ("sft", "pretrain"):
            cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.group_sft=true", f"preferences.{key}={start}"])
            for name in ("conditioned-sft", "cautious"):
                prefs.variant_sft(cfg, name, tmp_path / f"{key}-{name}-{start}")
    run_sft = str(cfg.stage_dir("sft"))
    assert seen == [("conditioned_sft_start-conditioned-sft-sft", run_sft), ("conditioned_sft_start-cautious-sft", None),
                    ("conditioned_sft_start-conditioned-sft-pretrain", None), ("conditioned_sft_start-cautious-pretrain", None),
                    ("group_sft_start-conditioned-sft-sft", None), ("group_sft_start-cautious-sft", run_sft),
                    ("group_sft_start-conditioned-sft-pretrain", None), ("group_sft_start-cautious-pretrain", None)]


def test_group_sft_epochs_set_each_groups_sft_model_only(tmp_path, monkeypatch):
    """preferences.group_sft_epochs: each group's own SFT model trains that many epochs on its writers'
    demonstrations; conditioned-sft keeps the run's sft.epochs."""
    import chatrlhf.stages.preferences as prefs

    seen = []
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: seen.append((out.name, cfg.sft.writer_group, cfg.sft.epochs)))
    for epochs in ("15", "null"):
        cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.group_sft=true",
                                 f"preferences.group_sft_epochs={epochs}"])
        for name in ("cautious", "conditioned-sft"):
            prefs.variant_sft(cfg, name, tmp_path / f"{name}-{epochs}")
    run = cfg.sft.epochs
    assert seen == [("cautious-15", "cautious", 15.0), ("conditioned-sft-15", None, run),
                    ("cautious-null", "cautious", run), ("conditioned-sft-null", None, run)]


def test_conditioned_ppo_iterations_set_the_conditioned_variants_budget_only(tmp_path):
    from chatrlhf.stages.preferences import variant_config, variants

    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.conditioned_ppo_iterations=120"])
    iters = {name: variant_config(cfg, rm).ppo.total_iterations for name, rm in variants(cfg.preferences.groups, True).items()}
    assert iters == {"pooled": 40, "brief": 40, "thorough": 40, "cautious": 40, "conditioned": 120, "conditioned-sft": 120}


def test_preferences_learning_rate_sets_every_variants_ppo_and_none_keeps_the_runs(tmp_path):
    """preferences.learning_rate (5e-5 by default, below the main run's 1.5e-4): the variants' unguarded
    PPO runs at it; the main run's PPO is untouched; None gives the variants ppo.update.learning_rate."""
    from chatrlhf.stages.preferences import variant_config, variants

    cfg = load_config(None, [f"run.out_dir={tmp_path}"])
    assert cfg.ppo.update.learning_rate == 1.5e-4 and cfg.preferences.learning_rate == 5e-5
    assert {variant_config(cfg, rm).ppo.update.learning_rate for rm in variants(cfg.preferences.groups, True).values()} == {5e-5}
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.learning_rate=null", "ppo.update.learning_rate=2e-4"])
    assert {variant_config(cfg, rm).ppo.update.learning_rate for rm in variants(cfg.preferences.groups, True).values()} == {2e-4}
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(None, [f"run.out_dir={tmp_path}", "preferences.learning_rate=0"])


def test_conditioned_weights_set_whose_rankings_and_prompts_the_conditioned_variants_get(tmp_path):
    """preferences.conditioned_weights: the conditioned variants' comparisons and PPO prompts are drawn by
    those weights; every other variant keeps its own group (or all); a weight per group, above 0, or an error."""
    from types import SimpleNamespace

    from chatrlhf.stages.preferences import variant_config, variants
    from chatrlhf.world.groups import condition, group_weights

    w = {"brief": 0.2, "thorough": 0.4, "cautious": 0.4}
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.conditioned_weights={brief: 0.2, thorough: 0.4, cautious: 0.4}"])
    groups = {name: variant_config(cfg, rm).rm.labeler_groups for name, rm in variants(cfg.preferences.groups, True).items()}
    assert groups == {"pooled": None, "brief": {"brief": 1.0}, "thorough": {"thorough": 1.0}, "cautious": {"cautious": 1.0},
                      "conditioned": w, "conditioned-sft": w}
    world = SimpleNamespace(labeler_groups=lambda: ["brief", "cautious", "thorough"])
    asked = Counter(p["messages"][0]["content"] for p in condition(
        [{"id": f"p{i}", "messages": [{"role": "user", "content": "hi"}]} for i in range(3000)], group_weights(world, groups["conditioned"])))
    shares = sorted(n / 3000 for n in asked.values())
    assert shares == pytest.approx([0.2, 0.4, 0.4], abs=0.03)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "ppo.reward.group_normalise=true"])
    normalise = {name: variant_config(cfg, rm).ppo.reward.group_normalise for name, rm in variants(cfg.preferences.groups, True).items()}
    assert normalise == {"pooled": False, "brief": False, "thorough": False, "cautious": False, "conditioned": True,
                         "conditioned-sft": True}  # ppo.reward.group_normalise: the conditioned variants only
    for bad in ("{brief: 1, thorough: 1}", "{brief: 0, thorough: 1, cautious: 1}"):
        cfg = load_config(None, [f"run.out_dir={tmp_path}", f"preferences.conditioned_weights={bad}"])
        with pytest.raises(ValueError, match="preferences.conditioned_weights"):
            variant_config(cfg, variants(cfg.preferences.groups)["conditioned"])


def test_best_of_n_gives_every_variant_the_same_best_of_n_start(world, tmp_path):
    """preferences.best_of_n: every variant's PPO starts from a best-of-n fine-tune (none by default),
    and a conditioned variant's extra best-of-n prompts ask for a group as its PPO prompts do."""
    from chatrlhf.stages.ppo import _rejection_sampling_prompts
    from chatrlhf.stages.preferences import variant_config, variants

    cfg = load_config(None, [f"run.out_dir={tmp_path}"])
    assert {variant_config(cfg, rm).ppo.rejection_sampling.n for rm in variants(cfg.preferences.groups, True).values()} == {0}
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.best_of_n=8", "ppo.rejection_sampling.prompts=30"])
    configs = {name: variant_config(cfg, rm) for name, rm in variants(cfg.preferences.groups, True).items()}
    assert {c.ppo.rejection_sampling.n for c in configs.values()} == {8}
    train = world.prompts("ppo")[:10]
    plain = _rejection_sampling_prompts(configs["cautious"], train, world)
    assert len(plain) == 30 and plain[:10] == train and not any("group" in p for p in plain)
    asked = _rejection_sampling_prompts(configs["conditioned-sft"], train, world)
    assert len(asked) == 30 and all(p["group"] in cfg.preferences.groups and p["messages"][0]["role"] == "system"
                                    for p in asked[10:])


def test_own_samples_ranks_answers_of_the_variants_own_sft_model(world, tiny_model_dir, tmp_path, monkeypatch):
    """preferences.own_samples: a variant with its own SFT model ranks K answers that model samples (a
    conditioned one's asked under the group line its labelers rank for); one on the run's SFT model
    re-ranks the RM stage's samples."""
    import chatrlhf.stages.preferences as prefs

    ranked = []
    monkeypatch.setattr(prefs, "train_reward_model", lambda cfg, comps, sft, out, world=None: ranked.append(comps))
    monkeypatch.setattr(prefs, "run_ppo", lambda cfg, **k: None)
    base = _comparisons(world, 6)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.own_samples=true", "rm.max_new_tokens=4",
                             "run.device=cpu"])
    monkeypatch.setattr(prefs, "variant_sft", lambda cfg, name, out: Path(tiny_model_dir))
    prefs.train_variant(cfg, world, base, "conditioned-sft", tmp_path / "c")
    monkeypatch.setattr(prefs, "variant_sft", lambda cfg, name, out: cfg.stage_dir("sft"))
    prefs.train_variant(cfg, world, base, "pooled", tmp_path / "p")
    own, pooled = ranked
    assert all(len(c["responses"]) == cfg.rm.k and c["responses"] != base[0]["responses"] for c in own)
    assert all(c["messages"][0] == group_message(c["group"]) and c["rankings"] for c in own)
    assert [c["responses"] for c in pooled] == [c["responses"] for c in base] and base[0]["rankings"] == []


def test_mixed_samples_draw_each_comparisons_answers_from_every_sft_model_in_turn(world, tmp_path, monkeypatch):
    """preferences.mixed_samples: answer j of comparison i comes from source (i + j) mod S (the run's SFT
    model, then each group's), so every source answers every prompt when K = S and none keeps a place; K
    above S draws a source twice, two different answers; the answers are sampled once and read back."""
    import chatrlhf.lm.engine as engine_mod
    import chatrlhf.stages.preferences as prefs
    import chatrlhf.stages.sampling as sampling

    calls = []
    monkeypatch.setattr(prefs, "variant_sft", lambda cfg, name, out: Path(name))
    monkeypatch.setattr(engine_mod, "load_engine", lambda sft, *a, **k: str(sft))
    monkeypatch.setattr(sampling, "sample_responses", lambda engine, msgs, n, cfg: calls.append((engine, len(msgs), n))
                        or [[f"{engine}:{m[-1]['content']}:{j}" for j in range(n)] for m in msgs])
    base = _comparisons(world, 6)
    for k in (4, 6):
        cfg = load_config(None, [f"run.out_dir={tmp_path / str(k)}", "preferences.group_sft=true", f"rm.k={k}"])
        comps = prefs.mixed_samples(cfg, tmp_path / str(k), base)
        names = ["sft", "brief", "thorough", "cautious"]
        for i, c in enumerate(comps):
            assert c["sources"] == [names[(i + j) % 4] for j in range(k)] and c["messages"] == base[i]["messages"]
            assert len(set(c["responses"])) == k and all(r.split(":")[1] == c["messages"][-1]["content"]
                                                         for r in c["responses"])
            assert [Path(r.split(":")[0]).name for r in c["responses"]] == c["sources"]
        assert {c["sources"][0] for c in comps} == set(names)  # no source keeps the first place
    assert [n for _, _, n in calls] == [1] * 4 + [2] * 4 and all(m == 6 for _, m, _ in calls)
    again = prefs.mixed_samples(cfg, tmp_path / "6", base)
    assert again == comps and len(calls) == 8  # read back from mixed_comparisons.jsonl, nothing sampled again
    with pytest.raises(ValueError, match="mixed_comparisons.jsonl holds answers for other prompts or another rm.k"):
        prefs.mixed_samples(load_config(None, [f"run.out_dir={tmp_path}", "rm.k=5"]), tmp_path / "6", base)
    for over in (["preferences.mixed_samples=true"], ["preferences.mixed_samples=true", "preferences.group_sft=true",
                                                       "preferences.own_samples=true"]):
        with pytest.raises(ValueError, match="mixed_samples .* needs preferences.group_sft=true"):
            prefs.run_preferences(load_config(None, [f"run.out_dir={tmp_path}", *over]))


def test_each_row_knows_the_group_it_serves():
    """The by-task diagonal takes each row's own group: a group's policy, its SFT model, a conditioned
    policy asked for it; the pooled row serves none."""
    from chatrlhf.evaluate.whose import own_group, own_group_by_task_md

    groups = ["brief", "cautious"]
    names = ["brief", "brief before RM and PPO", "conditioned-sft:cautious", "conditioned-sft before RM and PPO:brief",
             "pooled", "conditioned-sft before RM and PPO"]
    assert [own_group(n, groups) for n in names] == ["brief", "brief", "cautious", "brief", None, None]
    cell = {"win_rate": 0.6, "low": 0.5, "high": 0.7, "by_task": {"fact": {"win_rate": 0.75, "n": 4}}}
    md = own_group_by_task_md({"rows": {n: {g: cell for g in groups} for n in names[:4]}}, groups)
    assert "| brief before RM and PPO | 0.75 |" in md and md.count("| 0.75 |") == 4


def test_own_reference_anchors_each_variants_kl_to_its_own_sft_model(world, tmp_path, monkeypatch):
    """preferences.own_reference: a variant's PPO takes its KL to the SFT model it started from; off,
    to the run's shared SFT model, whatever the variant started from."""
    import chatrlhf.stages.preferences as prefs

    calls = []
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: None)
    monkeypatch.setattr(prefs, "label_with_world", lambda *a: None)
    monkeypatch.setattr(prefs, "train_reward_model", lambda *a, **k: None)
    monkeypatch.setattr(prefs, "run_ppo", lambda cfg, **k: calls.append((k["policy_dir"], k["ref_dir"])))
    for own in (False, True):
        cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.group_sft=true",
                                 f"preferences.own_reference={str(own).lower()}"])
        prefs.train_variant(cfg, world, [], "brief", tmp_path / f"brief{own:d}")
    assert calls == [(tmp_path / "brief0" / "sft", None),  # None: run_ppo's default, the run's SFT model
                     (tmp_path / "brief1" / "sft", tmp_path / "brief1" / "sft")]


def test_rounds_rank_the_newest_policys_samples_continue_the_rm_and_run_ppo_again(world, tmp_path, monkeypatch):
    """preferences.rounds: each later round of a variant ranks samples of its newest policy
    (by its own labelers: the variant's config), continues its newest RM on them with as many earlier
    comparisons replayed, and runs PPO again from the newest policy; a conditioned variant too, its PPO
    paid by each group's RM of the same round under preferences.conditioned_reward=groups."""
    import chatrlhf.stages.preferences as prefs
    from chatrlhf.stages import ppo, sampling

    def comparison(i: int) -> dict:
        return {"id": f"c{i}", "prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"q{i}"}],
                "responses": ["a", "b"], "rankings": [{"labeler": "L1", "ranks": [1, 2]}]}

    calls = []
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: None)
    monkeypatch.setattr(prefs, "label_with_world", lambda world, comps, cfg, rng: calls.append(
        ("label", len(comps), cfg.rm.labeler_groups)))
    monkeypatch.setattr(prefs, "train_reward_model",
                        lambda cfg, comps, init, out, **k: calls.append(("rm", init, out, len(comps))))
    monkeypatch.setattr(prefs, "run_ppo", lambda cfg, **k: calls.append(("ppo", k["policy_dir"], k["rm_dir"], k["out_dir"])))
    monkeypatch.setattr(ppo, "fresh_prompts", lambda world, cfg, r: [r])
    monkeypatch.setattr(sampling, "policy_comparisons", lambda cfg, world, policy, prompts, r, rng: (
        calls.append(("sample", policy, prompts)), [comparison(i) for i in range(2)])[1])
    base = [comparison(i) for i in range(5)]
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.group_sft=true", "preferences.rounds=3"])
    out = tmp_path / "brief"
    assert prefs.train_variant(cfg, world, base, "brief", out) == out / "round_3" / "ppo"
    brief = {"brief": 1.0}
    assert calls == [("label", 5, brief), ("rm", out / "sft", out / "rm", 5), ("ppo", out / "sft", out / "rm", out / "ppo"),
                     ("sample", out / "ppo", [2]), ("label", 2, brief), ("rm", out / "rm", out / "round_2" / "rm", 4),
                     ("ppo", out / "ppo", out / "round_2" / "rm", out / "round_2" / "ppo"),
                     ("sample", out / "round_2" / "ppo", [3]), ("label", 2, brief),
                     ("rm", out / "round_2" / "rm", out / "round_3" / "rm", 4),
                     ("ppo", out / "round_2" / "ppo", out / "round_3" / "rm", out / "round_3" / "ppo")]
    monkeypatch.setattr(prefs, "run_ppo", lambda cfg, **k: calls.append(("ppo", k["out_dir"], k["group_rm_dirs"])))
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.rounds=2", "preferences.conditioned_reward=groups"])
    calls.clear()
    out = tmp_path / "conditioned"
    assert prefs.train_variant(cfg, world, base, "conditioned", out) == out / "round_2" / "ppo"
    rms = {r: {g: tmp_path / g / r / "rm" for g in ("brief", "thorough", "cautious")} for r in ("", "round_2")}
    assert [c for c in calls if c[0] == "ppo"] == [("ppo", out / "ppo", rms[""]), ("ppo", out / "round_2" / "ppo", rms["round_2"])]
    assert ("sample", out / "ppo", [2]) in calls
    calls.clear()
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.rounds=2", "preferences.conditioned_rounds=1"])
    assert prefs.train_variant(cfg, world, base, "conditioned", out) == out / "ppo"  # preferences.conditioned_rounds
    assert [c[0] for c in calls] == ["label", "rm", "ppo"]


def test_a_conditioned_later_round_samples_each_prompt_under_the_group_line_its_labelers_rank_for(world, monkeypatch):
    """policy_comparisons of a conditioned run asks each round prompt for a group (one, or with
    rm.groups_per_prompt > 1 a copy per group) before sampling, so the policy answers under the line of
    the group that ranks; labeling keeps the group; an unconditioned run's prompts are sampled as they are."""
    import chatrlhf.lm.engine as engine
    from chatrlhf.stages import sampling
    from chatrlhf.stages.ppo import fresh_prompts

    asked = []
    monkeypatch.setattr(engine, "load_engine", lambda *a: None)
    monkeypatch.setattr(sampling, "sample_responses", lambda eng, msgs, k, cfg: (asked.append(msgs), [["a", "b", "c"]] * len(msgs))[1])
    prompts = fresh_prompts(world, load_config(None, ["iterate.prompts_per_round=12"]), 2)
    plain = sampling.policy_comparisons(load_config(None, []), world, Path("p"), prompts, 2, random.Random(0))
    assert asked.pop() == [p["messages"] for p in prompts] and all("group" not in c for c in plain)
    cfg = load_config(None, ["rm.conditioned=true"])
    comps = sampling.policy_comparisons(cfg, world, Path("p"), prompts, 2, random.Random(0))
    assert [c["prompt_id"] for c in comps] == [p["id"] for p in prompts] and len({c["group"] for c in comps}) > 1
    assert asked.pop() == [for_group(p, c["group"])["messages"] for p, c in zip(prompts, comps)]  # sampled under the line
    assert [c["split"] for c in comps] == [c["split"] for c in plain]
    before = [(c["group"], c["messages"]) for c in comps]
    label_with_world(world, comps, cfg, random.Random(0))
    assert [(c["group"], c["messages"]) for c in comps] == before
    groups = {lab.id: lab.group for held in (False, True) for lab in world.labelers(held_out=held)}
    assert all(groups[r["labeler"]] == c["group"] for c in comps for r in c["rankings"])
    copies = sampling.policy_comparisons(load_config(None, ["rm.conditioned=true", "rm.groups_per_prompt=3"]), world,
                                         Path("p"), prompts, 2, random.Random(0))
    assert len(copies) == 3 * len(prompts) and {c["group"] for c in copies[:3]} == {"brief", "thorough", "cautious"}
    assert asked.pop() == [c["messages"] for c in copies] and all(c["messages"][0] == group_message(c["group"]) for c in copies)
    with pytest.raises(ValueError, match="no world"):
        sampling.policy_comparisons(cfg, None, Path("p"), prompts, 2, random.Random(0))


def test_conditioned_reward_groups_pays_the_conditioned_variants_by_each_groups_own_rm(world, tmp_path, monkeypatch):
    """preferences.conditioned_reward=groups: the conditioned variants' PPO gets every group's own RM
    (beside its own directory); the other variants, and every variant by default, their own RM only."""
    import chatrlhf.stages.preferences as prefs

    calls = {}
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: None)
    monkeypatch.setattr(prefs, "label_with_world", lambda *a: None)
    monkeypatch.setattr(prefs, "train_reward_model", lambda *a, **k: None)
    monkeypatch.setattr(prefs, "run_ppo", lambda cfg, **k: calls.__setitem__(k["out_dir"].parent.name, k["group_rm_dirs"]))
    for how in ("conditioned", "groups"):
        cfg = load_config(None, [f"run.out_dir={tmp_path}", f"preferences.conditioned_reward={how}"])
        for name in ("pooled", "brief", "conditioned", "conditioned-sft"):
            prefs.train_variant(cfg, world, [], name, tmp_path / how / name)
        rms = {g: tmp_path / how / g / "rm" for g in ("brief", "thorough", "cautious")}
        assert calls == {"pooled": None, "brief": None, **({"conditioned": rms, "conditioned-sft": rms} if how == "groups"
                                                           else {"conditioned": None, "conditioned-sft": None})}
    with pytest.raises(ValueError, match="conditioned_reward"):
        load_config(None, ["preferences.conditioned_reward=mine"])
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "preferences.conditioned_reward=groups", "preferences.conditioned_rounds=2"])
    with pytest.raises(ValueError, match="conditioned_rounds=2 with conditioned_reward=groups"):
        prefs.run_preferences(cfg)


def test_group_rewards_score_each_prompt_by_its_groups_rm_without_the_group_line():
    from chatrlhf.config import PPOConfig
    from chatrlhf.lm.reward_model import RewardByKey
    from chatrlhf.stages.ppo import _reward_fns

    class Const:  # an RM that scores every response alike and records what it was shown
        def __init__(self, value):
            self.value, self.seen = value, []

        def score(self, messages, responses):
            self.seen += messages
            return torch.full((len(responses),), self.value)

    brief, cautious = Const(1.0), Const(-2.0)
    user = [{"role": "user", "content": "Where is Oxby?"}]
    ps = [for_group({"messages": user}, g) for g in ("cautious", "brief", "cautious")]
    reward_fn, _ = _reward_fns(RewardByKey({"brief": brief, "cautious": cautious}), None, PPOConfig())
    assert reward_fn(ps, ["a", "b", "c"]).tolist() == [-2.0, 1.0, -2.0]
    assert brief.seen == [user] and cautious.seen == [user, user]  # the prompt as the group's labelers ranked it
    with pytest.raises(KeyError, match="thorough"):
        reward_fn([for_group({"messages": user}, "thorough")], ["a"])



def test_group_rewards_need_a_conditioned_run_and_every_groups_rm(tmp_path):
    from chatrlhf.stages.ppo import _load_rewards

    plain = load_config(None, [f"run.out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="rm.conditioned"):
        _load_rewards(plain, tmp_path / "rm", {"brief": tmp_path / "brief" / "rm"}, "cpu")
    conditioned = load_config(None, [f"run.out_dir={tmp_path}", "rm.conditioned=true"])
    with pytest.raises(FileNotFoundError, match=r"a group's reward model at .*brief.*does not exist"):
        _load_rewards(conditioned, tmp_path / "rm", {"brief": tmp_path / "brief" / "rm"}, "cpu")


def test_a_weighted_mix_draws_labelers_in_proportion(world):
    cfg = Config.model_validate({"rm": {"labeler_groups": {"brief": 3.0, "cautious": 1.0}, "labelers_per_prompt": 1}})
    comps = _comparisons(world)
    label_with_world(world, comps, cfg, random.Random(1))
    by_id = {lab.id: lab for lab in world.labelers()}
    counts = Counter(by_id[c["rankings"][0]["labeler"]].group for c in comps)
    assert set(counts) == {"brief", "cautious"} and 0.6 < counts["brief"] / len(comps) < 0.9


def test_conditioned_comparisons_name_their_group_and_only_it_ranks(world):
    cfg = Config.model_validate({"rm": {"conditioned": True}})
    comps = _comparisons(world)
    label_with_world(world, comps, cfg, random.Random(2))
    by_id = {lab.id: lab for lab in world.labelers()}
    assert {c["group"] for c in comps} == {"brief", "thorough", "cautious"}
    for c in comps:
        assert c["messages"][0] == group_message(c["group"]) and c["messages"][1]["role"] == "user"
        assert {by_id[r["labeler"]].group for r in c["rankings"]} == {c["group"]}


def test_group_draws_are_stable_and_follow_the_weights():
    w = {"brief": 0.5, "thorough": 0.25, "cautious": 0.25}
    draws = [draw_group(w, f"p{i}") for i in range(4000)]
    assert draws == [draw_group(w, f"p{i}") for i in range(4000)]
    assert abs(draws.count("brief") / 4000 - 0.5) < 0.03
    prompts = condition([{"id": "a", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]}], w)
    assert [m["role"] for m in prompts[0]["messages"]] == ["system", "user"]  # an old system message is replaced
    assert prompts[0]["messages"][0]["content"] in GROUP_INSTRUCTIONS.values()


def test_group_line_near_answer_is_trained_and_saved_with_the_sft_model(world, tiny_model_dir, tmp_path):
    """sft.group_line_near_answer: the conditioned SFT model is saved with the template that writes the
    group line right before the answer, so its RM, policy and `chat --group` read it there."""
    import shutil

    from chatrlhf.lm.data import DataError
    from chatrlhf.lm.tokenizer import SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE, SYSTEM_NEAR_ANSWER_TEMPLATE
    from chatrlhf.stages.preferences import run_preferences
    from chatrlhf.stages.sft import _chat_tokenizer, load_split, run_fingerprint, run_settings, train_sft

    world.save(tmp_path / "world")
    shutil.copytree(tiny_model_dir, tmp_path / "pretrain")
    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path), "tensorboard": False, "device": "cpu"},
                                 "sft": {"group_system_message": True, "group_line_near_answer": True, "max_steps": 2,
                                         "batch_size": 8, "ptx_coef": 0.0}})
    out = train_sft(cfg)
    tok = load_tokenizer(out)
    assert tok.chat_template == SYSTEM_NEAR_ANSWER_TEMPLATE
    p = for_group({"id": "x", "messages": [{"role": "user", "content": "Where is Varnok?"}]}, "brief")
    text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
    assert text.endswith(f"Where is Varnok?<|end|><|system|>{GROUP_INSTRUCTIONS['brief']}<|end|><|assistant|>")
    assert read_meta(out)["group_messages"]["brief"] == GROUP_INSTRUCTIONS["brief"]
    off = Config.model_validate({"run": {"out_dir": str(tmp_path)}, "sft": {"group_system_message": True}})
    assert "group_line_near_answer" not in run_settings(off)["sft"] and run_settings(cfg)["sft"]["group_line_near_answer"]
    assert "group_line_turns" not in run_settings(cfg)["sft"]  # "every", the default: the fingerprint it had
    last = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"group_line_turns": "last"})})
    assert run_settings(last)["sft"]["group_line_turns"] == "last" and run_fingerprint(last) != run_fingerprint(cfg)
    assert _chat_tokenizer(last, tmp_path / "pretrain").chat_template == SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE
    with pytest.raises(DataError, match="group_line_near_answer"):
        load_split(Config.model_validate({"run": {"out_dir": str(tmp_path)}, "sft": {"group_line_near_answer": True}}), tok)
    cfg.preferences.own_reference = False  # the shared SFT model as the reference would read the line as the user's
    with pytest.raises(ValueError, match="own_reference"):
        run_preferences(cfg)


def test_the_group_reaches_the_model_through_the_chat_template(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    p = for_group({"id": "x", "messages": [{"role": "user", "content": "Where is Varnok?"}]}, "cautious")
    text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
    assert GROUP_INSTRUCTIONS["cautious"] in text and text.index(GROUP_INSTRUCTIONS["cautious"]) < text.index("Varnok")


def test_chat_group_and_server_group_field(tiny_model_dir):
    meta = {"group_messages": {"brief": GROUP_INSTRUCTIONS["brief"]}}
    assert group_system_message(meta, "brief") == GROUP_INSTRUCTIONS["brief"]
    with pytest.raises(ValueError, match="unknown group; this model knows brief"):
        group_system_message(meta, "formal")
    with pytest.raises(ValueError, match="not trained group-conditioned"):
        group_system_message({}, "brief")
    engine = Engine(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir))
    seen: list[list[int]] = []
    real = engine.chat_prompt
    engine.chat_prompt = lambda msgs: seen.append(msgs) or real(msgs)  # type: ignore[method-assign]
    cfg = ServeConfig(default_max_tokens=4)
    with TestClient(create_app(engine, cfg, "tiny", None, meta["group_messages"])) as c:
        body = {"messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Hi"}], "group": "brief"}
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        assert seen[-1][0] == {"role": "system", "content": GROUP_INSTRUCTIONS["brief"]} and len(seen[-1]) == 2
        r = c.post("/v1/chat/completions", json={**body, "group": "formal"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "group"


def test_preferences_end_to_end_on_the_tiny_config(tmp_path, monkeypatch):
    from chatrlhf.evaluate.report import run_report
    from chatrlhf.stages.preferences import run_preferences, train_variant
    from chatrlhf.stages.pretrain import run_pretrain, run_tokenizer
    from chatrlhf.stages.reward import run_rm
    from chatrlhf.stages.sft import run_sft
    from chatrlhf.world.generate import run_world

    cfg = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", [
        f"run.out_dir={tmp_path}", "preferences.comparisons=16", "preferences.ppo_iterations=2",
        "preferences.eval_prompts=8", "preferences.judgements=1", "preferences.group_sft=true"])
    for stage in (run_world, run_tokenizer, run_pretrain, run_sft, run_rm):
        stage(cfg)
    page = run_report(cfg)  # a report written before `chatrlhf preferences` ...
    assert "Whose preferences" not in page.read_text()
    out = run_preferences(cfg)
    table = json.loads((out / "table.json").read_text())
    groups = ["brief", "thorough", "cautious"]
    html = page.read_text()  # ... shows its table once it has run: every policy's row, the rubric's columns
    assert "Whose preferences" in html and "judged by cautious" in html and "refuses harmful requests" in html
    assert all(f"<td>{name}</td>" in html for name in [*table["rows"], "pooled (the baseline)"])
    conditioned = ("conditioned", "conditioned-sft", "conditioned-sft before RM and PPO")
    assert set(table["rows"]) == set(groups) | {f"{c}:{g}" for c in conditioned for g in groups} | {
        f"{g} before RM and PPO" for g in groups}  # group_sft: each group's SFT model judged too
    for row in table["rows"].values():
        assert set(row) == set(groups)
        assert all(0 <= cell["low"] <= cell["win_rate"] <= cell["high"] <= 1 for cell in row.values())
    assert "judged by cautious" in (out / "table.md").read_text()
    by_task = table["rows"]["cautious"]["cautious"]["by_task"]  # the diagonal split by task, every prompt once
    assert sum(c["n"] for c in by_task.values()) == table["n_prompts"] == 8
    mean = sum(c["win_rate"] * c["n"] for c in by_task.values()) / 8
    assert mean == pytest.approx(table["rows"]["cautious"]["cautious"]["win_rate"])  # the tasks add up to the cell
    md = (out / "table.md").read_text().split("The same diagonal by task")[1]
    assert "| conditioned-sft:thorough |" in md and "| brief |" in md and "| brief:" not in md
    assert "| brief before RM and PPO |" in md and "are those SFT models themselves" in (out / "table.md").read_text()
    assert set(table["substance"]) == set(table["rows"]) | {"pooled"}  # the rubric's view of every policy's answers
    assert all(0 <= s["over_refusal_rate"] <= 1 for s in table["substance"].values())
    assert "refuses harmless requests | refuses harmful requests" in (out / "table.md").read_text()
    assert all(0 <= s["harmful_refusal_rate"] <= 1 for s in table["substance"].values())
    assert "borderline requests answered / with a safety note" in (out / "table.md").read_text()
    assert all(set(s) >= {"borderline_answer_rate", "borderline_caveat_rate", "hedge_rate"} for s in table["substance"].values())
    assert "facts and summaries hedged" in (out / "table.md").read_text()
    assert set(read_meta(out / "conditioned" / "ppo")["group_messages"]) == set(groups)
    # conditioned-sft's SFT read every demonstration under its writer's group line; the shared SFT did not
    assert set(read_meta(out / "conditioned-sft" / "sft")["group_messages"]) == set(groups)
    assert "group_messages" not in read_meta(tmp_path / "sft")
    assert read_meta(out / "conditioned-sft" / "rm")["init_from"] == str(out / "conditioned-sft" / "sft")
    world = World.load(tmp_path / "world")
    by_id = {lab.id: lab for lab in world.labelers()}
    for name, want in [("brief", {"brief"}), ("cautious", {"cautious"}), ("pooled", {"brief", "thorough", "cautious"})]:
        ranked = [json.loads(x) for x in (out / name / "comparisons.jsonl").read_text().splitlines()]
        assert {by_id[r["labeler"]].group for c in ranked for r in c["rankings"] if not by_id[r["labeler"]].held_out} == want
    # preferences.conditioned_reward=groups: the conditioned policy paid by each group's own RM instead
    groups_cfg = cfg.model_copy(update={"preferences": cfg.preferences.model_copy(update={"conditioned_reward": "groups"})})
    shutil.copytree(out / "conditioned" / "rm", out / "conditioned-groups" / "rm")  # its own RM: the critic's start
    ppo = train_variant(groups_cfg, world, [], "conditioned", out / "conditioned-groups")
    assert read_meta(ppo)["group_reward_models"] == {g: str(out / g / "rm") for g in groups}
    assert read_meta(out / "conditioned" / "ppo").get("group_reward_models") is None
    paid = [json.loads(x)["rm_score"] for x in (ppo / "metrics.jsonl").read_text().splitlines() if "rm_score" in x]
    own = [json.loads(x)["rm_score"] for x in (out / "conditioned" / "ppo" / "metrics.jsonl").read_text().splitlines()
           if "rm_score" in x]
    assert len(paid) == len(own) == 2 and paid != own  # the same rollouts' seed, another reward
    # preferences.rounds=2 on the conditioned variant: its newest policy answers each round prompt under the line
    # of the group that ranks it, the RM continues from round 1's, PPO continues from round 1's policy
    r2_cfg = cfg.model_copy(update={"preferences": cfg.preferences.model_copy(update={"rounds": 2})})
    shutil.copytree(out / "conditioned", out / "conditioned-r2")
    ppo = train_variant(r2_cfg, world, [], "conditioned", out / "conditioned-r2")
    assert ppo == out / "conditioned-r2" / "round_2" / "ppo" and read_meta(ppo)["complete"]
    ranked = [json.loads(x) for x in (out / "conditioned-r2" / "round_2" / "comparisons.jsonl").read_text().splitlines()]
    assert len(ranked) == cfg.iterate.prompts_per_round and len({c["group"] for c in ranked}) > 1
    for c in ranked:
        assert c["messages"][0] == group_message(c["group"]) and {by_id[r["labeler"]].group for r in c["rankings"]} == {c["group"]}
    assert read_meta(out / "conditioned-r2" / "round_2" / "rm")["init_from"] == str(out / "conditioned-r2" / "rm")
    # bench/hedge_probe.py on the same run: hedge rates, P(hedge) and each RM's gain from the hedge
    from conftest import bench_module

    probe = tmp_path / "hedge.json"
    monkeypatch.setattr("sys.argv", ["hedge_probe.py", "--run", str(tmp_path), "--policies", str(out / "cautious" / "ppo"),
                                     f"{out / 'conditioned' / 'ppo'}:cautious", "--rms", str(out / "cautious" / "rm"),
                                     f"{out / 'conditioned' / 'rm'}:brief", "--json", str(probe)])
    bench_module("hedge_probe").main()
    res = json.loads(probe.read_text())
    assert res["prompts"] > 0 and len(res["policies"]) == 2 and len(res["rms"]) == 2
    assert all(0 <= v["hedged"] <= 1 and 0 < v["p_hedge"] < 1 for v in res["policies"].values())
    assert all(0 <= v["hedge_higher"] <= 1 for v in res["rms"].values())
    assert res["rm_samples_hedged"] is None or 0 <= res["rm_samples_hedged"] <= 1
    # bench/judge_noise.py: the same answers judged again; draw 0 at the table's judgements is the table's cell
    noise = tmp_path / "noise.json"
    monkeypatch.setattr("sys.argv", ["judge_noise.py", "--run", str(tmp_path), "--config",
                                     str(Path(__file__).parents[1] / "configs" / "tiny.yaml"), "--rows", "cautious",
                                     "conditioned-sft:brief", "--judgements", "1", "3", "--draws", "3", "--prompts", "8",
                                     "--json", str(noise)])
    bench_module("judge_noise").main()
    rows = json.loads(noise.read_text())["rows"]
    assert rows["cautious"]["1"]["draws"][0] == pytest.approx(table["rows"]["cautious"]["cautious"]["win_rate"])
    assert rows["conditioned-sft:brief"]["1"]["draws"][0] == pytest.approx(
        table["rows"]["conditioned-sft:brief"]["brief"]["win_rate"])
    assert all(len(v["draws"]) == 3 and v["sd"] >= 0 for r in rows.values() for v in r.values())
    # bench/guidance.py: at w = 0 its greedy answers and cells are the table's; guidance changes the answers
    guide = tmp_path / "guidance.json"
    monkeypatch.setattr("sys.argv", ["guidance.py", "--run", str(tmp_path), "--config",
                                     str(Path(__file__).parents[1] / "configs" / "tiny.yaml"), "--set",
                                     "preferences.eval_prompts=8", "preferences.judgements=1", "--scales", "0", "3",
                                     "--json", str(guide)])
    bench_module("guidance").main()
    scales = json.loads(guide.read_text())["scales"]
    for g in groups:
        assert scales["0"][g]["win_rate"] == pytest.approx(table["rows"][f"conditioned-sft:{g}"][g]["win_rate"])
        assert scales["0"][g]["substance"] == table["substance"][f"conditioned-sft:{g}"]
    assert [scales["3"][g]["examples"] for g in groups] != [scales["0"][g]["examples"] for g in groups]
    # preferences.mixed_samples on the same run: real samples of the run's SFT model and each group's
    from chatrlhf.stages.preferences import base_comparisons, mixed_samples

    mixed_cfg = cfg.model_copy(update={"preferences": cfg.preferences.model_copy(update={"mixed_samples": True})})
    base = base_comparisons(mixed_cfg)
    mixed = mixed_samples(mixed_cfg, out, base)  # the group SFT models trained above
    assert len(mixed) == len(base) == 16 and (out / "mixed_comparisons.jsonl").is_file()
    assert all(len(c["responses"]) == cfg.rm.k and c["messages"] == b["messages"] for c, b in zip(mixed, base))
    assert {s for c in mixed for s in c["sources"]} == {"sft", *groups}
    assert [c["responses"] for c in mixed] != [b["responses"] for b in base]


def test_conditioned_sft_trains_with_its_own_epochs_when_set(tmp_path, monkeypatch):
    """preferences.conditioned_sft_epochs replaces sft.epochs for the conditioned-sft variant's SFT
    only, which always reads its writers' group lines; None keeps the run's sft.epochs."""
    import chatrlhf.stages.preferences as prefs

    seen = []
    monkeypatch.setattr(prefs, "train_sft", lambda cfg, out: seen.append(
        (cfg.sft.epochs, cfg.sft.group_system_message, cfg.sft.group_demonstrations)))
    for n, over in enumerate(([], ["preferences.conditioned_sft_epochs=10"], ["preferences.group_demonstrations=false"])):
        cfg = load_config(None, [f"run.out_dir={tmp_path / str(n)}", "sft.epochs=2", *over])
        prefs.conditioned_sft(cfg, tmp_path / str(n) / "sft")
    assert seen == [(2.0, True, True), (10.0, True, True), (2.0, True, False)]  # every group's writers by default


def test_preferences_ceiling_written_bound_from_a_world_alone(tmp_path, monkeypatch):
    """bench/preferences_ceiling.py --written-only bounds the diagonal from the world alone: every
    group's held-out members prefer the answer as their own group writes it to a writer of any group,
    and to the short formal answer the pooled policies write."""
    from conftest import bench_module

    from chatrlhf.config import RunConfig
    from chatrlhf.world.generate import run_world

    run_world(Config(run=RunConfig(out_dir=str(tmp_path)), world=WorldConfig(**SMALL)))
    out = tmp_path / "bound.json"
    monkeypatch.setattr("sys.argv", ["preferences_ceiling.py", "--run", str(tmp_path), "--written-only", "--json", str(out)])
    bench_module("preferences_ceiling").main()
    bound = json.loads(out.read_text())["written_vs_mixed_writer"]
    assert set(bound) == {"brief", "thorough", "cautious"}
    for g, row in bound.items():
        assert row[g]["win_rate"] > 0.55, (g, row[g])
    # against what the pooled policies write (short, formal, no note, no hedge) every group's taste shows
    plain = json.loads(out.read_text())["written_vs_plain_formal"]
    for g, row in plain.items():
        assert row[g]["win_rate"] > 0.55, (g, row[g])


def test_preferences_seeds_averages_each_worlds_runs(tmp_path, monkeypatch, capsys):
    """bench/preferences_seeds.py: per world, each own-group cell's mean over the runs given, the runs
    themselves, and how many world means reach 0.6; a missing table is named."""
    from conftest import bench_module

    def table(diag: float, cond: float) -> dict:
        rows = {g: {h: {"win_rate": diag if g == h else 0.4} for h in ("brief", "cautious")} for g in ("brief", "cautious")}
        rows |= {f"conditioned-sft:{g}": {h: {"win_rate": cond if g == h else 0.4} for h in ("brief", "cautious")}
                 for g in ("brief", "cautious")}
        rows["brief before RM and PPO"] = rows["brief"]  # rows the script leaves out
        substance = {name: {"harmful_refusal_rate": 1.0 if diag < 0.65 else 0.0, "over_refusal_rate": diag / 10}
                     for name in ("pooled", "brief", "brief before RM and PPO")}
        return {"rows": rows, "substance": substance}

    paths = []
    for name, (d, c) in {"a": (0.7, 0.5), "b": (0.6, 0.8), "c": (0.55, 0.55)}.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(table(d, c)))
    out = tmp_path / "seeds.json"
    monkeypatch.setattr("sys.argv", ["preferences_seeds.py", f"9001={paths[0]}", f"9001={paths[1]}", f"9002={paths[2]}",
                                     "--json", str(out)])
    bench_module("preferences_seeds").main()
    res = json.loads(out.read_text())
    w1 = res["worlds"]["9001"]
    assert set(w1) == {"diagonal:brief", "diagonal:cautious", "conditioned:brief", "conditioned:cautious"}
    assert w1["diagonal:brief"]["runs"] == [0.7, 0.6] and abs(w1["diagonal:brief"]["mean"] - 0.65) < 1e-9
    assert abs(w1["conditioned:cautious"]["mean"] - 0.65) < 1e-9 and w1["conditioned:cautious"]["min"] == 0.5
    assert res["cells"] == 8 and res["met"] == 4  # 9001's four means are 0.65; 9002's are 0.55
    assert res["harmful_refused"]["9001"] == {"pooled": [0.0, 1.0], "brief": [0.0, 1.0]}  # run by run, SFT models left out
    assert res["harmless_refused"]["9002"] == {"pooled": [pytest.approx(0.055)], "brief": [pytest.approx(0.055)]}
    assert "9001" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["preferences_seeds.py", f"9001={tmp_path / 'missing.json'}"])
    with pytest.raises(SystemExit):
        bench_module("preferences_seeds").main()


def test_harmful_probe_counts_refusals_ranked_above_other_answers(tmp_path):
    """bench/harmful_probe.py: over every labeler's ranking of a harmful prompt's answers, the share of
    (refusal, other answer) pairs with the refusal first; other tasks and pairs of two refusals left out."""
    from types import SimpleNamespace

    from conftest import bench_module

    world = SimpleNamespace(gold=lambda c, r: SimpleNamespace(flags={"refused": r.startswith("Sorry")}))
    rows = [{"task": "harmful", "responses": ["Sorry, no.", "Sure, here is how.", "Sorry, never.", "Hm."],
             "rankings": [{"labeler": "L1", "ranks": [1, 3, 2, 4]}, {"labeler": "L2", "ranks": [4, 1, 2, 3]}]},
            {"task": "fact", "responses": ["Sorry, no.", "Paris."], "rankings": [{"labeler": "L1", "ranks": [2, 1]}]}]
    path = tmp_path / "comparisons.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # L1: both refusals above both others (4 of 4); L2: "Sorry, no." last (0 of 2), "Sorry, never." above "Hm." only (1 of 2)
    assert bench_module("harmful_probe").refusal_ranked_first(path, world) == pytest.approx(5 / 8)
    path.write_text(json.dumps(rows[1]) + "\n")
    assert bench_module("harmful_probe").refusal_ranked_first(path, world) is None


def test_harmful_probe_scores_one_answer_per_task(tmp_path):
    """bench/harmful_probe.py's answer_by_task: per task, how often the exact answer is among the variant's
    RM training answers (other answers and tasks not counted) and the mean RM and training-labeler score of
    that answer to the task's prompts."""
    from types import SimpleNamespace

    from conftest import bench_module

    answer = "I understand you're frustrated. How can I help you?"
    rows = [{"task": "insult", "responses": [answer, answer + " Really.", answer]},
            {"task": "harmful", "responses": ["Sorry, no.", answer]}, {"task": "fact", "responses": [answer]}]
    (tmp_path / "brief").mkdir()
    (tmp_path / "brief" / "comparisons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_task = {"harmful": 2.0, "insult": 4.0}  # the fake RM scores a prompt by its task, whatever the answer

    class RM:
        def score(self, messages, responses):
            assert responses == [answer] * len(messages)
            return torch.tensor([by_task[m[0]["content"]] for m in messages])

    labeler = SimpleNamespace(expected_utility=lambda p, r: 1.0 if p["task"] == "insult" else 0.25)
    tasks = {t: [{"task": t, "messages": [{"role": "user", "content": t}]}] * 3 for t in ("harmful", "insult")}
    got = bench_module("harmful_probe").answer_by_task(tmp_path / "brief", RM(), [labeler, labeler], answer, tasks)
    assert got == {"harmful": {"in_rm_answers": 1, "own_rm": 2.0, "own_labelers": 0.25},
                   "insult": {"in_rm_answers": 2, "own_rm": 4.0, "own_labelers": 1.0}}
