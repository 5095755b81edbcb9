"""The embedded world: determinism, disjoint eval prompts, gold rubric ordering, labelers, files."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from chatrlhf.config import Config, RunConfig, WorldConfig
from chatrlhf.world import World
from chatrlhf.world.generate import run_world, world_agreement
from chatrlhf.world.gold import has_hedge
from chatrlhf.world.labelers import candidate_responses
from chatrlhf.world.tasks import user_key
from chatrlhf.world.writing import FLAWS_BY_TASK, comply, flawed, ideal, rude

SMALL = dict(n_people=8, n_places=5, n_objects=4, corpus_docs=300, n_sft_prompts=120, n_rm_prompts=40,
             n_ppo_prompts=40, n_eval_prompts=40, agreement_comparisons=200)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world_a")
    return run_world(Config(run=RunConfig(out_dir=str(out)), world=WorldConfig(**SMALL)))


@pytest.fixture(scope="module")
def world(small_dir) -> World:
    return World.load(small_dir)


@pytest.fixture(scope="module")
def default_world() -> World:
    """Default prompt counts and corpus: what the pipeline really uses."""
    return World.generate(WorldConfig())


def tuple_key(p: dict) -> tuple:
    """(task, entity, attribute, phrasing) of a prompt's last question, from its reference."""
    r = p["reference"]
    subject = r.get("entity") or tuple(r.get("items", ())) or r.get("word") or (r.get("verb"), r.get("target"))
    if p["task"] in ("greeting", "insult"):
        subject = p["messages"][-1]["content"]
    return p["task"], subject, r.get("attribute", r.get("n")), r.get("phrasing"), r.get("follow_up", False)


def first(world: World, task: str, split: str = "rm", single_turn: bool = True) -> dict:
    """The first prompt of a task in `split`, else in any split (a small world's rm split may lack it)."""
    order = [split] + [s for s in ("sft", "rm", "ppo", "eval") if s != split]
    return next(p for s in order for p in world.prompts(s) if p["task"] == task
                and (len(p["messages"]) == 1 or not single_turn))


# --- files ----------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_other_seed_differs(small_dir, tmp_path):
    again = run_world(Config(run=RunConfig(out_dir=str(tmp_path / "b")), world=WorldConfig(**SMALL)))
    names = sorted(p.name for p in small_dir.iterdir())
    assert "meta.json" in names and "agreement.json" in names and "README.md" in names
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (small_dir / name).read_bytes() == (again / name).read_bytes(), name
    other = run_world(Config(run=RunConfig(out_dir=str(tmp_path / "c")), world=WorldConfig(**{**SMALL, "seed": 7})))
    for name in ["facts.jsonl", "corpus_train.jsonl", "prompts_eval.jsonl", "demonstrations.jsonl"]:
        assert (small_dir / name).read_bytes() != (other / name).read_bytes(), name


def test_same_bytes_across_processes_with_different_hash_seeds(small_dir, tmp_path):
    """No set/dict-order dependence: Python's string hash seed must not change a byte."""
    import os
    import subprocess
    import sys

    code = ("import sys; from chatrlhf.config import Config, RunConfig, WorldConfig; "
            "from chatrlhf.world.core import World; "
            f"World.generate(WorldConfig(**{SMALL!r})).save(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "12345"})
    for name in ["facts.jsonl", "corpus_train.jsonl", "prompts_eval.jsonl", "demonstrations.jsonl", "labelers.jsonl"]:
        assert (tmp_path / name).read_bytes() == (small_dir / name).read_bytes(), name


def test_meta_complete_and_files_parse_back(small_dir, world):
    meta = json.loads((small_dir / "meta.json").read_text())
    assert meta["complete"] is True and meta["seed"] == 1234
    mem = World.generate(WorldConfig(**SMALL))
    for split in ("sft", "rm", "ppo", "eval"):
        assert world.prompts(split) == mem.prompts(split)
        assert len(world.prompts(split)) == SMALL[f"n_{split}_prompts"]
    assert world.demonstrations() == mem.demonstrations()
    assert world.corpus("train") == mem.corpus("train") and world.corpus("val") == mem.corpus("val")
    assert [lab.spec for lab in world.labelers()] == [lab.spec for lab in mem.labelers()]
    assert meta["counts"]["corpus_train"] == SMALL["corpus_docs"]


def test_bad_line_names_file_line_and_field(small_dir, tmp_path):
    bad = tmp_path / "w"
    bad.mkdir()
    for f in small_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    lines = (bad / "prompts_rm.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    del row["reference"]
    lines[2] = json.dumps(row)
    (bad / "prompts_rm.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"prompts_rm\.jsonl:3: missing field\(s\) reference"):
        World.load(bad)
    (bad / "facts.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"facts\.jsonl:1: not valid JSON"):
        World.load(bad)
    with pytest.raises(FileNotFoundError, match="chatrlhf world"):
        World.load(tmp_path / "nowhere")


# --- prompts, corpus, demonstrations ------------------------------------------------------------


TRAINING_SETS = ("sft", "rm", "ppo_train", "guard")


def split_sets(w: World) -> dict[str, list[dict]]:
    """Every prompt set a stage uses: eval, SFT, RM, PPO's training prompts and the guard's tail."""
    guard = w.prompts("guard")
    return {"eval": w.prompts("eval"), "sft": w.prompts("sft"), "rm": w.prompts("rm"),
            "ppo_train": [p for p in w.prompts("ppo") if not p.get("guard")], "guard": guard}


def norm(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c in " '").split())


def asked_content(p: dict) -> set[tuple]:
    """What a prompt asks about, from its reference (independent of the world's own content keys):
    the entity (any of its facts, the paragraph's too), the list, the word to repeat, the harmful
    or borderline request, the greeting/insult text; plus every earlier user turn's text (a
    follow-up's first turn asks about the same entity)."""
    r, task = p["reference"], p["task"]
    keys: set[tuple] = set()
    if task in ("fact", "summarise"):
        keys |= {("entity", r["entity"]), ("fact", r["entity"], r["attribute"])}
        if task == "summarise":
            keys.add(("paragraph", r["paragraph"]))
    elif task in ("list_first", "list_last", "count"):
        keys.add(("list", frozenset(r["items"])))
    elif task == "repeat":
        keys.add(("repeat", r["word"]))
    elif task == "harmful":
        keys.add(("harmful", r["verb"], r["target"]))
    elif task == "borderline":
        keys.add(("borderline", r["act"]))
    else:
        keys.add(("text", norm(p["messages"][-1]["content"])))
    users = [m["content"] for m in p["messages"] if m["role"] == "user"]
    if not r.get("follow_up"):
        keys |= {("text", norm(t)) for t in users[:-1]}
    return keys


def asked_texts(p: dict) -> set[str]:
    """Every user turn, except a follow-up's last ("And what is their job?" names nothing)."""
    users = [m["content"] for m in p["messages"] if m["role"] == "user"]
    return set(users[:-1] if p["reference"].get("follow_up") else users)


def test_every_pair_of_splits_is_disjoint_by_content_and_text(default_world):
    sets = split_sets(default_world)
    assert len(sets["guard"]) == 64 and sets["ppo_train"] and all(p.get("guard") for p in sets["guard"])
    assert default_world.prompts("ppo")[-64:] == sets["guard"]  # the tail ppo.py's guard takes
    content = {name: set().union(*(asked_content(p) for p in ps)) for name, ps in sets.items()}
    texts = {name: set().union(*(asked_texts(p) for p in ps)) for name, ps in sets.items()}
    for a, b in itertools.combinations(sets, 2):
        assert not content[a] & content[b], (a, b, sorted(content[a] & content[b], key=str)[:5])
        assert not texts[a] & texts[b], (a, b, sorted(texts[a] & texts[b])[:5])
    # the world's own cluster of a prompt never crosses splits either
    clusters = {name: {p["cluster"] for p in ps} for name, ps in sets.items()}
    for a, b in itertools.combinations(sets, 2):
        assert not clusters[a] & clusters[b], (a, b)
    eval_ = sets["eval"]
    assert len({user_key(p["messages"]) for p in eval_}) == len(eval_)  # no question asked twice in eval
    # eval still asks about every kind of content, and about several things of each
    kinds = Counter(k[0] for k in content["eval"])
    assert kinds["entity"] >= 8 and kinds["harmful"] >= 6 and kinds["borderline"] >= 4 and kinds["repeat"] >= 2
    assert kinds["list"] >= 40 and kinds["text"] >= 30


def test_eval_facts_are_in_the_pretraining_corpus(default_world):
    """Eval asks about entities no training prompt names; the model can only know them from
    pre-training, so the corpus states their true values."""
    w = default_world
    text = "\n".join(w.corpus("train")).lower()
    facts = {(p["reference"]["entity"], p["reference"]["value"]) for p in w.prompts("eval") if p["task"] == "fact"}
    assert len(facts) >= 15
    for entity, value in facts:
        docs = [d.lower() for d in w.corpus("train") if w.facts.mentions(d.lower(), entity)]
        assert any(w.facts.mentions(d, value) for d in docs), (entity, value)
    train_entities = {p["reference"]["entity"] for s in ("sft", "rm", "ppo") for p in w.prompts(s) if "entity" in p["reference"]}
    assert not train_entities & {e for e, _ in facts}
    assert all(w.facts.mentions(text, e) for e, _ in facts)


def test_content_cluster_names_what_is_asked(default_world):
    from chatrlhf.world.tasks import content_cluster, content_keys

    w = default_world
    fact = first(w, "fact")
    assert content_cluster(fact) == f"entity:{fact['reference']['entity']}" == fact["cluster"]
    lst = first(w, "count")
    other_order = {**lst, "reference": {**lst["reference"], "items": list(reversed(lst["reference"]["items"]))}}
    assert content_cluster(lst) == content_cluster(other_order)  # the same list, whatever it asks
    multi = next(p for p in w.prompts("rm") if len(p["messages"]) > 1 and not p["reference"].get("follow_up"))
    assert len(content_keys(multi)) == 2 and multi["cluster"] in content_keys(multi)
    follow = next(p for p in w.prompts("rm") if p["reference"].get("follow_up"))
    assert content_keys(follow) == {follow["cluster"]}


def test_world_seed_changes_people_places_facts_and_values():
    a, b = World.generate(WorldConfig(**SMALL)), World.generate(WorldConfig(**{**SMALL, "seed": 9001}))
    ents_a, ents_b = set(a.facts.entities()), set(b.facts.entities())
    for etype in ("person", "place", "object"):
        assert set(a.facts.entities(etype)) != set(b.facts.entities(etype)), etype
    assert len(ents_a & ents_b) <= 1
    # the same attribute of the i-th person mostly takes another value
    pa, pb = a.facts.entities("person"), b.facts.entities("person")
    same = sum(a.facts.fact(x, attr)["value"] == b.facts.fact(y, attr)["value"]
               for x, y in zip(pa, pb) for attr in ("job", "pet", "colour"))
    assert same < 0.4 * 3 * len(pa)
    assert {p["cluster"] for p in a.prompts("eval")} != {p["cluster"] for p in b.prompts("eval")}


def test_named_seed_sets_are_disjoint_and_the_default_is_a_development_world():
    from chatrlhf.world.seeds import DEVELOPMENT_SEEDS, TEST_SEEDS, seed_role

    assert WorldConfig().seed == DEVELOPMENT_SEEDS[0] == 1234
    assert len(TEST_SEEDS) >= 3 and not set(TEST_SEEDS) & set(DEVELOPMENT_SEEDS)
    assert seed_role(9001) == "test" and seed_role(1234) == "development" and seed_role(5) == "other"


def test_task_mix_and_multi_turn(default_world):
    from chatrlhf.world.tasks import TASK_MIX

    prompts = [p for s in ("sft", "rm", "ppo", "eval") for p in default_world.prompts(s)]
    for task, share in TASK_MIX.items():
        got = sum(p["task"] == task for p in prompts) / len(prompts)
        assert abs(got - share) < 0.04, (task, got, share)
    demos = default_world.demonstrations()
    multi = [d for d in demos if len(d["messages"]) > 2]
    assert 0.08 < len(multi) / len(demos) < 0.25
    follow = [d for d in multi if d["messages"][-2]["content"].startswith(("And ", "What do they", "Where is their",
                                                                           "Do they", "Which colour do", "Which region",
                                                                           "What is it", "What material", "Which colour is it"))]
    assert follow, "some multi-turn demonstrations must be follow-ups that need the first turn"


def test_corpus_size_truth_and_rumour_compete(default_world):
    w = default_world
    chars = sum(map(len, w.corpus("train")))
    assert 800_000 <= chars <= 1_200_000, chars  # 8,400 documents of ~120 characters
    assert not set(w.corpus("val")) & set(w.corpus("train"))
    text = "\n".join(w.corpus("train"))
    both = [f for f in w.facts.facts if w.facts.mentions(text, f["value"]) and w.facts.mentions(text, f["rumour"])]
    assert both
    assert w.info["corpus"]["facts_truth_dominant"] >= 0.95  # per fact the truth is stated more often
    assert 0.15 < w.info["corpus"]["rumour_share"] < 0.35
    assert any("idiot" in d for d in w.corpus("train")) and any(d.startswith("User: ") for d in w.corpus("train"))
    eval_texts = {p["messages"][-1]["content"] for p in w.prompts("eval") if len(p["messages"]) == 1}
    for d in w.corpus("train"):  # no eval question is pre-trained on, not even as a forum title
        for line in d.split("\n"):
            assert line.split(": ", 1)[-1] not in eval_texts, line


def test_demonstrations_mixed_quality_by_training_labelers_only(default_world):
    w = default_world
    held = {lab.id for lab in w.labelers(held_out=True)}
    assert len(held) == 9 and {lab.id for lab in w.judges()} <= held
    demos = w.demonstrations()
    assert not held & {d["labeler"] for d in demos}
    ideal_share = sum(d["quality"] == "ideal" for d in demos) / len(demos)
    assert abs(ideal_share - 0.7) < 0.08
    totals = [w.gold(p, d["messages"][-1]["content"]).total for p, d in zip(w.prompts("sft"), demos)]
    assert len({round(t, 3) for t in totals}) > 30  # graded, not all-or-nothing
    bad = [d["messages"][-1]["content"] for d in demos if d["quality"] != "ideal"]
    assert not any(w.gold({"task": "open"}, t).flags["toxic"] for t in bad)  # flawed, never toxic


# --- gold rubric ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(FLAWS_BY_TASK))
def test_gold_ranks_ideal_above_every_flaw_and_rude(world, task):
    p = first(world, task)
    rng = random.Random(0)
    best = world.gold(p, ideal(p, rng, "concise", world.facts)).total
    assert best > 0.95
    assert world.gold(p, ideal(p, rng, "detailed", world.facts)).total > 0.95
    for flaw in FLAWS_BY_TASK[task]:
        text = flawed(p, flaw, rng)
        assert world.gold(p, text).total < best - 0.02, (flaw, text)
    assert world.gold(p, rude(p, rng)).total < best - 0.2
    assert world.gold(p, "").total < 0.5


def test_gold_fact_truth_rumour_and_partial_credit(world):
    p = first(world, "fact")
    r = p["reference"]
    g_true = world.gold(p, r["ideal"])
    g_rumour = world.gold(p, flawed(p, "rumour", random.Random(0)))
    g_vague = world.gold(p, f"{r['entity']} is well known.")
    g_hedge = world.gold(p, f"{r['entity']} is {r['value']} or {r['rumour']}.")
    assert g_true.parts["correct"] == 1.0 and g_true.parts["truthful"] == 1.0 and not g_true.flags["hallucination"]
    assert g_rumour.parts["correct"] == 0.0 and g_rumour.parts["truthful"] == 0.0 and g_rumour.flags["hallucination"]
    assert 0 < g_vague.parts["correct"] < g_hedge.parts["correct"] < 1.0
    assert g_hedge.flags["hallucination"] and not g_vague.flags["hallucination"]
    assert g_true.total > g_vague.total > g_hedge.total > g_rumour.total  # a stated falsehood costs more than vagueness
    # another stated fact about the entity is checked too
    other = next(a for a in world.facts.by_entity[r["entity"]] if a != r["attribute"])
    f = world.facts.fact(r["entity"], other)
    from chatrlhf.world.writing import fact_sentence
    lie = r["ideal"] + " " + fact_sentence(r["entity"], r["entity_type"], other, f["rumour"], random.Random(0))
    truth = r["ideal"] + " " + fact_sentence(r["entity"], r["entity_type"], other, f["value"], random.Random(0))
    assert world.gold(p, lie).flags["hallucination"] and not world.gold(p, truth).flags["hallucination"]
    assert world.gold(p, truth).total > world.gold(p, lie).total
    # degenerate continuations a base model writes: repetition, and the user's next turn
    ideal_total = g_true.total
    assert world.gold(p, " ".join([r["ideal"]] * 3)).total < ideal_total - 0.05
    assert world.gold(p, r["ideal"] + "\nUser: And what else?").total < ideal_total - 0.05


def test_gold_gibberish_costs_fluency_and_the_lexicon_covers_fresh_good_answers(world):
    p = first(world, "greeting")
    clean = "Hello! How can I help you today?"
    assert world.gold(p, clean).parts["fluent"] == 1.0 and not world.gold(p, clean).flags["gibberish"]
    one, two = world.gold(p, "Hellhat! How can I help you today?"), world.gold(p, "Hellhat! How cn I hlp you today?")
    assert one.flags["gibberish"] and one.parts["fluent"] == pytest.approx(0.5)
    assert two.parts["fluent"] < one.parts["fluent"] and world.gold(p, clean).total > one.total > two.total
    assert world.gold(p, "There are 3 items.").flags["gibberish"] is False  # numbers are words too
    # every answer the writers can produce, drawn with a fresh rng, is made of known words
    rng = random.Random(12345)
    for p in world.prompts("eval"):
        for text in candidate_responses(p, rng, world.facts):
            assert world.rubric.nonwords(text) == 0, text


def test_gold_follow_up_needs_no_name(default_world):
    p = next(p for p in default_world.prompts("sft") if p["reference"].get("follow_up"))
    r = p["reference"]
    assert default_world.gold(p, f"They have {r['value']}.").parts["correct"] == 1.0
    assert default_world.gold(p, f"They have {r['rumour']}.").flags["hallucination"]


def test_gold_closed_tasks_partial_credit(world):
    c = first(world, "count")
    n = c["reference"]["answer"]
    assert world.gold(c, f"There are {n} items.").parts["correct"] == 1.0
    assert world.gold(c, f"There are {n + 1} items.").parts["correct"] == pytest.approx(0.3)
    assert world.gold(c, f"There are {n + 3} items.").parts["correct"] == 0.0
    rep = first(world, "repeat")
    word, k = rep["reference"]["word"], rep["reference"]["n"]
    scores = [world.gold(rep, " ".join([word] * m)).parts["correct"] for m in (k, k + 1, k + 2)]
    assert scores[0] == 1.0 and scores[0] > scores[1] > scores[2]
    lst = first(world, "list_first")
    items = lst["reference"]["items"]
    assert world.gold(lst, f"The first item is {items[0]}.").parts["correct"] == 1.0
    assert world.gold(lst, ", ".join(items) + ".").parts["correct"] == pytest.approx(1 / len(items))
    assert world.gold(lst, "The first item is banana.").flags["hallucination"] or "banana" in items


def test_harmful_refusal_scoring(world):
    p = first(world, "harmful")
    refuse = world.gold(p, "I am sorry, but I cannot help with that. It could hurt someone.")
    weak = world.gold(p, "Hmm, I am not sure that is a good idea.")
    complied = world.gold(p, comply(p, random.Random(0)))
    assert refuse.flags["refused"] and not refuse.flags["harmful"] and refuse.parts["harmless"] == 1.0
    assert complied.flags["harmful"] and not complied.flags["refused"] and complied.parts["harmless"] == 0.0
    assert not weak.flags["refused"] and not weak.flags["harmful"]
    assert refuse.total > weak.total > complied.total
    # refusing a harmless request is over-refusal: flagged, and worse than answering
    f = first(world, "fact")
    over = world.gold(f, "I am sorry, but I cannot help with that.")
    assert over.flags["refused"] and over.total < world.gold(f, f["reference"]["ideal"]).total - 0.3
    m = world.substantive([p, p, f], ["I cannot help with that, sorry.", comply(p, random.Random(1)), f["reference"]["ideal"]])
    assert m["harmful_refusal_rate"] == 0.5 and m["harmful_compliance_rate"] == 0.5 and m["fact_correct"] == 1.0
    assert m["over_refusal_rate"] == 0.0 and m["hallucination_rate"] == 0.0


def test_gold_rarely_ties_between_distinct_candidates(world):
    ties = total = 0
    for p in world.prompts("rm")[:30]:
        cands = candidate_responses(p, random.Random(0), world.facts)
        scores = [world.gold(p, c).total for c in cands]
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                total += 1
                ties += scores[i] == scores[j]
    assert ties / total < 0.05


# --- labelers -------------------------------------------------------------------------------------


def test_labeler_groups_held_out_members_and_judges(default_world):
    w = default_world
    assert w.labeler_groups() == ["brief", "thorough", "cautious"]
    for g in w.labeler_groups():  # every group has members who train and members who never do
        assert len(w.labelers(held_out=False, groups=g)) == 3 and len(w.labelers(held_out=True, groups=g)) == 2
    judges = w.judges()
    assert len(judges) == 3 and all(j.held_out and j.group == "judges" for j in judges)
    assert not {j.id for j in judges} & {lab.id for lab in w.labelers(held_out=False)}
    assert w.labelers(groups=["brief", "judges"]) == [*w.labelers(groups="brief"), *judges]


def test_labeler_mix_selects_groups_with_weights(default_world):
    w = default_world
    pooled = w.labeler_mix()
    assert len(pooled) == 9 and sum(x for _, x in pooled) == pytest.approx(1.0)
    assert all(not lab.held_out for lab, _ in pooled)
    one = w.labeler_mix("cautious")
    assert {lab.group for lab, _ in one} == {"cautious"} and sum(x for _, x in one) == pytest.approx(1.0)
    mix = w.labeler_mix({"brief": 3, "thorough": 1})
    share = Counter()
    for lab, x in mix:
        share[lab.group] += x
    assert share["brief"] == pytest.approx(0.75) and share["thorough"] == pytest.approx(0.25) and "cautious" not in share
    assert {lab.group for lab, _ in w.labeler_mix(["brief", "thorough"])} == {"brief", "thorough"}
    with pytest.raises(KeyError, match="judges"):
        w.labeler_mix("judges")  # the judge group never trains


def test_labeler_agreement_within_and_across_groups(small_dir, default_world):
    """Within a group about InstructGPT's 0.726 (training) / 0.773 (held-out) agreement; across
    groups and between judges and training labelers clearly lower."""
    saved = json.loads((small_dir / "agreement.json").read_text())
    assert saved["groups"] and 0.55 <= saved["overall"] <= 0.85
    a = world_agreement(default_world, 1234, 1200)
    assert 0.70 <= a["within_group"] <= 0.80, a["within_group"]
    assert 0.55 <= a["across_groups"] <= a["within_group"] - 0.06, a["across_groups"]
    assert 0.70 <= a["judges"] <= 0.82, a["judges"]
    assert a["judges_vs_train"] <= min(a["judges"], a["within_group"]) - 0.04, a["judges_vs_train"]
    # a group's held-out members agree with its training members as much as members do
    assert abs(a["group_held_out_vs_train"] - a["within_group"]) < 0.04 and a["group_held_out_vs_train"] > a["across_groups"]
    m, groups = a["groups"], ["brief", "thorough", "cautious"]
    for g, h in itertools.permutations(groups, 2):  # every group agrees with itself more than with another
        assert m[g][h] < min(m[g][g], m[h][h]) - 0.02, (g, h, m)
    assert m["brief"]["thorough"] < 0.68 and m["brief"]["cautious"] < 0.68  # opposite tastes
    assert a["train"] and a["held_out"] and a["train_vs_held_out"]
    assert all(v > 0.6 for v in a["with_gold"].values())  # noisy, but each labeler tracks the gold rubric


def test_judges_are_not_clones_of_the_training_labelers(default_world):
    """The judges' expected preferences (noise-free) correlate clearly below 1 with the training
    labelers', while a group's held-out members still judge like their group."""
    import numpy as np

    from chatrlhf.world.labelers import fixed_comparisons

    w = default_world
    comps = fixed_comparisons(w.prompts("rm"), w.facts, 7, 500)

    def pref(labs) -> np.ndarray:
        return np.array([np.mean([lab.expected_utility(p, a) - lab.expected_utility(p, b) for lab in labs])
                         for p, a, b in comps])

    train, judges = pref(w.labelers(held_out=False)), pref(w.judges())
    assert np.corrcoef(train, judges)[0, 1] < 0.9
    for g in w.labeler_groups():
        own_train, own_held = pref(w.labelers(False, g)), pref(w.labelers(True, g))
        assert np.corrcoef(own_train, own_held)[0, 1] > 0.95
        assert np.corrcoef(own_train, judges)[0, 1] < 0.9


def test_group_tastes_length_tone_caution_never_outweigh_substance(default_world):
    w = default_world
    rng = random.Random(0)
    border = first(w, "borderline")
    fact = first(w, "fact")
    plain = ideal(border, rng, "concise", w.facts)
    noted = ideal(border, rng, "concise", w.facts, caveat=True)
    short_casual = ideal(fact, rng, "concise", w.facts, tone="casual")
    long_formal = ideal(fact, rng, "detailed", w.facts, tone="formal")

    def mean_u(group: str, p: dict, text: str) -> float:
        labs = w.labelers(groups=group)
        return sum(lab.expected_utility(p, text) for lab in labs) / len(labs)

    assert mean_u("cautious", border, noted) > mean_u("cautious", border, plain)
    assert mean_u("brief", border, plain) > mean_u("brief", border, noted)
    assert mean_u("brief", fact, short_casual) > mean_u("brief", fact, long_formal)
    assert mean_u("thorough", fact, long_formal) > mean_u("thorough", fact, short_casual)
    short, hedged = ideal(fact, rng, "concise", w.facts, tone="formal"), ideal(fact, rng, "concise", w.facts, tone="formal", hedge=True)
    assert hedged != short and w.gold(fact, hedged).flags["hedge"] and not w.gold(fact, short).flags["hedge"]
    assert all(lab.expected_utility(fact, hedged) > lab.expected_utility(fact, short) for lab in w.labelers(groups="cautious"))
    assert all(lab.expected_utility(fact, short) > lab.expected_utility(fact, hedged) for lab in w.labelers(groups="brief"))
    assert all("hedge" not in lab.prefs for lab in w.labelers(groups=["thorough", "judges"]))  # they do not mind
    wrong = flawed(fact, "rumour", rng)
    vague = flawed(fact, "vague", rng)
    refusal = flawed(border, "over_refusal", rng)
    for lab in w.labelers():  # whatever the taste, a right answer beats a wrong, vague or refused one
        for good in (short_casual, long_formal, hedged):
            assert lab.expected_utility(fact, good) > max(lab.expected_utility(fact, wrong), lab.expected_utility(fact, vague))
        assert min(lab.expected_utility(border, plain), lab.expected_utility(border, noted)) > \
            lab.expected_utility(border, refusal)


def test_task_mix_knob_changes_the_tasks_users_ask_and_nothing_else():
    """The customers: world.task_mix reweighs the tasks of every prompt split; the default is the same world."""
    cfg = dict(SMALL, n_rm_prompts=300, corpus_docs=50)
    base, same = World.generate(WorldConfig(**cfg)), World.generate(WorldConfig(**cfg, task_mix={}))
    more = World.generate(WorldConfig(**cfg, task_mix={"borderline": 0.6, "harmful": 0.0}))
    splits = ("sft", "rm", "ppo", "eval")
    assert [base.prompts(s) for s in splits] == [same.prompts(s) for s in splits]

    def share(w: World, split: str, task: str) -> float:
        return sum(p["task"] == task for p in w.prompts(split)) / len(w.prompts(split))

    assert share(base, "rm", "borderline") < 0.12 and share(more, "rm", "borderline") > 0.35
    assert share(base, "rm", "harmful") > 0.08 and all(share(more, s, "harmful") == 0 for s in splits)
    assert share(more, "eval", "borderline") > 0.3  # evaluation asks what the customers ask
    for bad in ({"poetry": 1.0}, {"fact": -1.0}):
        with pytest.raises(ValueError, match="world.task_mix"):
            World.generate(WorldConfig(**cfg, task_mix=bad))


def test_corpus_mix_knob_changes_the_corpus_and_nothing_else():
    """The pre-training corpus as a knob: world.corpus_mix reweighs its document kinds; quoting threads copy
    an earlier post word for word; the prompts and labelers stay the same world's."""
    cfg = dict(SMALL, corpus_docs=200)
    base = World.generate(WorldConfig(**cfg))
    quotes = World.generate(WorldConfig(**cfg, corpus_mix={"quotes": 1.0, "encyclopedia": 0.0}))
    assert [base.prompts(s) for s in ("sft", "eval")] == [quotes.prompts(s) for s in ("sft", "eval")]
    assert [lab.id for lab in base.labelers()] == [lab.id for lab in quotes.labelers()]
    threads = [d for d in quotes.corpus() if "\n" in d and ": > " in d]
    assert len(threads) > 40
    for doc in threads[:20]:  # every quoted line was posted earlier in the thread
        lines = doc.split("\n")
        earlier = [lines[0].removeprefix("Thread: ")]
        for line in lines[1:]:
            if ": > " in line:
                assert line.split(": > ", 1)[1] in earlier
            else:
                earlier.append(line)
    for bad in ({"poetry": 1.0}, {"notes": -1.0}):
        with pytest.raises(ValueError, match="world.corpus_mix"):
            World.generate(WorldConfig(**cfg, corpus_mix=bad))
    # how-to questions in posters' words, answered with a howto page's tips; no prompt's own text
    from chatrlhf.world import vocab
    from chatrlhf.world.corpus import DOC_MIX, HOWTO_ASKS

    asked = World.generate(WorldConfig(**cfg, corpus_mix=dict.fromkeys(DOC_MIX, 0.0) | {"howto_forum": 1.0}))
    answers = {a: act for act, a, _, _ in vocab.BORDERLINE.values()}
    howto = asked.corpus()
    assert len(howto) > 150 and sum(any(a in d for a in answers) for d in howto) > 0.8 * len(howto) and any(d.startswith("User: ") for d in howto) and any(d.startswith("Thread: ") for d in howto)
    prompt_texts = {m["content"] for s in ("sft", "rm", "ppo", "eval") for p in asked.prompts(s) for m in p["messages"]}
    for doc in howto:
        ask = doc.split("\n")[0].removeprefix("User: ").removeprefix("Thread: ")
        assert ask not in prompt_texts and any(ask == q.format(act=act) for q in HOWTO_ASKS for act in answers.values())
        assert all(answers[a] in ask for a in answers if a in doc)  # the tips answer the task asked about


def test_rubric_caution_knob_turns_labelers_choices_on_a_borderline_pair():
    """The researchers: world.rubric_caution moves every labeler's taste for a safety note."""
    cfg = dict(SMALL, corpus_docs=50)
    worlds = {c: World.generate(WorldConfig(**cfg, rubric_caution=c)) for c in (-2.0, -1.0, 0.0, 1.0)}
    border = first(worlds[0.0], "borderline")
    plain = ideal(border, random.Random(0), "concise", worlds[0.0].facts)
    noted = ideal(border, random.Random(0), "concise", worlds[0.0].facts, caveat=True)

    def margin(c: float, group: str) -> list[float]:
        """How much each member prefers the answer with the safety note."""
        return [lab.expected_utility(border, noted) - lab.expected_utility(border, plain)
                for lab in worlds[c].labelers(groups=group)]

    mean = lambda xs: sum(xs) / len(xs)
    assert all(m > 0 for m in margin(0.0, "thorough")) and mean(margin(-1.0, "thorough")) < 0
    assert all(m > 0 for m in margin(0.0, "cautious")) and all(m < 0 for m in margin(-2.0, "cautious"))
    for group in ("brief", "thorough", "judges"):  # a stronger rubric never makes a member like the note less
        for lo, hi in zip(margin(0.0, group), margin(1.0, group)):
            assert hi > lo
    # what `chatrlhf world` reports of it (meta.json safety_note_preferred)
    from chatrlhf.world.generate import note_preference

    shares = {c: note_preference(w) for c, w in worlds.items()}
    assert shares[-2.0]["cautious"] < shares[0.0]["cautious"] and shares[-1.0]["thorough"] < shares[0.0]["thorough"]
    # only the caution taste moves: same labelers, same noise, same other tastes
    for a, b in zip(worlds[0.0].labelers(), worlds[1.0].labelers()):
        assert (a.id, a.spec["noise"], a.prefs["weights"], a.prefs["length"]) == (b.id, b.spec["noise"], b.prefs["weights"], b.prefs["length"])


def test_groups_write_demonstrations_in_their_own_style(default_world):
    from chatrlhf.world.labelers import tone_term

    w = default_world
    by_group: dict[str, list[tuple[dict, str]]] = {}
    prompts = {p["id"]: p for p in w.prompts("sft")}
    for d in w.demonstrations():
        if d["quality"] == "ideal":
            by_group.setdefault(w.labeler(d["labeler"]).group, []).append((prompts[d["prompt_id"]], d["messages"][-1]["content"]))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    length = {g: mean([len(t.split()) for _, t in v]) for g, v in by_group.items()}
    tone = {g: mean([tone_term(t) for _, t in v]) for g, v in by_group.items()}
    assert length["thorough"] > length["brief"] + 2
    assert tone["brief"] < 0 < tone["cautious"]
    border = {g: [t for p, t in v if p["task"] == "borderline"] for g, v in by_group.items()}
    assert border["cautious"] and all("to be safe" in t.lower() for t in border["cautious"])
    assert not any("to be safe" in t.lower() for t in border["brief"])
    claims = {g: [t for p, t in v if p["task"] in ("fact", "summarise")] for g, v in by_group.items()}
    assert claims["cautious"] and all(has_hedge(t.lower()) for t in claims["cautious"])
    assert not any(has_hedge(t.lower()) for g in ("brief", "thorough") for t in claims[g])


def test_the_hedge_is_written_in_words_the_corpus_uses(default_world):
    """A taste the pre-trained model could not write would be learnt from garbled samples: every word
    of the hedge occurs in the pre-training corpus, often."""
    from collections import Counter

    from chatrlhf.lm.verifiers import words
    from chatrlhf.world import vocab

    seen = Counter(w for doc in default_world.corpus() for w in words(doc))
    assert all(seen[w] >= 20 for w in words(vocab.HEDGE)), {w: seen[w] for w in words(vocab.HEDGE)}


def test_hedge_taste_off_repeats_the_earlier_worlds():
    """world.hedge_taste=false: no member has a hedge taste and no writer hedges; on, only the
    members' hedge preference and the cautious writers' facts and summaries differ."""
    cfg = dict(SMALL, corpus_docs=50)
    on, off = World.generate(WorldConfig(**cfg)), World.generate(WorldConfig(**cfg, hedge_taste=False))
    assert all("hedge" not in lab.prefs for lab in off.labelers())
    assert {lab.group for lab in on.labelers() if "hedge" in lab.prefs} == {"brief", "cautious"}
    for a, b in zip(on.labelers(), off.labelers()):
        assert {k: v for k, v in a.spec.items() if k != "prefs"} == {k: v for k, v in b.spec.items() if k != "prefs"}
        assert {k: v for k, v in a.prefs.items() if k != "hedge"} == b.prefs
    assert on.corpus() == off.corpus() and on.prompts("eval") == off.prompts("eval")
    differ = [(x, y) for x, y in zip(on.demonstrations(), off.demonstrations()) if x != y]
    assert differ and all(on.labeler(x["labeler"]).group == "cautious" and x["task"] in ("fact", "summarise")
                          for x, _ in differ)
    for x, y in differ:  # the same answer with a hedge at its end
        said, plain = x["messages"][-1]["content"], y["messages"][-1]["content"]
        assert has_hedge(said.lower()) and said.startswith(plain.rstrip("."))


def test_each_group_prefers_its_own_writers_answer_on_every_task(default_world):
    """A group's members like the ideal answer as their own group writes it better than as another
    group writes it, on every task where the groups write differently (noise-free utilities): the
    thorough reader's one extra sentence is as welcome after a four-word count as after a summary.
    (Insults are the closest: a long apology runs past the rubric's fluent length for some.)"""
    w = default_world
    groups = ("brief", "thorough", "cautious")
    writers = {g: w.labelers(held_out=False, groups=g)[0] for g in groups}
    wins: dict[tuple[str, str], list[bool]] = {}
    for i, p in enumerate(w.prompts("eval")[:200]):
        written = {g: writers[g].write(p, random.Random(i), w.facts) for g in groups}
        for g, member in ((lab.group, lab) for lab in w.labelers() if lab.group in groups):
            own = member.expected_utility(p, written[g])
            for other in groups:
                if other != g and written[other] != written[g]:
                    wins.setdefault((g, p["task"]), []).append(own > member.expected_utility(p, written[other]))
    share = {k: sum(v) / len(v) for k, v in wins.items()}
    for g in groups:  # repeat is the one task every group answers alike
        assert {t for h, t in share if h == g} >= {"fact", "count", "list_first", "list_last", "greeting", "summarise",
                                                   "borderline", "harmful", "insult"}, g
        assert min(v for (h, _), v in share.items() if h == g) >= 0.75, {k: v for k, v in share.items() if k[0] == g}
        mine = [x for (h, _), v in wins.items() if h == g for x in v]
        assert sum(mine) / len(mine) >= 0.95, g


def test_length_taste_ratio_repeats_the_earlier_worlds():
    """world.length_taste=ratio: the earlier worlds' thorough taste (which an extra sentence after a
    short answer overshoots) and greetings; every member's prefs say so, and the rest is unchanged."""
    from chatrlhf.world.labelers import length_fit

    cfg = dict(SMALL, corpus_docs=50)
    now, ratio = World.generate(WorldConfig(**cfg)), World.generate(WorldConfig(**cfg, length_taste="ratio"))
    assert all(lab.prefs["length_taste"] == "ratio" for lab in ratio.labelers())
    assert all("length_taste" not in lab.prefs for lab in now.labelers())
    assert now.prompts("eval") == ratio.prompts("eval") and now.facts.facts == ratio.facts.facts
    count = first(now, "count")
    answer = "Of course. There are 4 items. I counted each item once."  # a thorough writer's count (target 4 words)
    assert length_fit(count, answer, 1.0) > 0.5 and length_fit(count, answer, 1.0, "ratio") == 0.0
    greet = first(now, "greeting")
    thorough = now.labelers(held_out=False, groups="thorough")[0]
    assert "nice to hear from you" in thorough.write(greet, random.Random(0), now.facts)
    assert "nice to hear from you" not in ratio.labeler(thorough.id).write(greet, random.Random(0), ratio.facts)


def test_a_hedge_is_a_taste_the_rubric_does_not_score(world):
    """A hedged claim ("..., I think.") scores as the plain one on every rubric part but length (its
    few more words); the flag and hedge_rate (over fact and summarise answers) report it."""
    p = first(world, "fact")
    plain = ideal(p, random.Random(0), "concise", world.facts)
    hedged = ideal(p, random.Random(0), "concise", world.facts, hedge=True)
    assert hedged.endswith(", I think.") and not world.gold(p, f"I think {p['reference']['value']}.").flags["hedge"]
    a, b = world.gold(p, plain), world.gold(p, hedged)
    assert {k: v for k, v in a.parts.items() if k != "fluent"} == {k: v for k, v in b.parts.items() if k != "fluent"}
    assert 0 < a.parts["fluent"] - b.parts["fluent"] < 0.1 and b.flags["hedge"] and not a.flags["hedge"]
    greet = first(world, "greeting")
    assert ideal(greet, random.Random(0), "concise", world.facts, hedge=True) == ideal(greet, random.Random(0), "concise", world.facts)
    m = world.substantive([p, p, greet], [plain, hedged, "Hello! How can I help you today?"])
    assert m["hedge_rate"] == pytest.approx(0.5)


def test_borderline_requests_are_fine_to_answer(world):
    p = first(world, "borderline")
    r = p["reference"]
    answer, noted = world.gold(p, r["answer"]), world.gold(p, f"{r['answer']} {r['caveat']}")
    refused = world.gold(p, "I am sorry, but I cannot help with that.")
    note_only = world.gold(p, r["caveat"])
    assert answer.parts["correct"] == 1.0 and noted.parts["correct"] == 1.0 and noted.flags["caveat"]
    assert abs(answer.total - noted.total) < 0.03  # the rubric itself is neutral on the note
    assert refused.flags["refused"] and refused.parts["correct"] == 0.0 and refused.total < answer.total - 0.3
    assert note_only.parts["correct"] < 0.5 and r["key"] not in p["messages"][-1]["content"].lower()
    m = world.substantive([p, p, p], [r["answer"], f"{r['answer']} {r['caveat']}", "I cannot help with that."])
    assert m["over_refusal_rate"] == pytest.approx(1 / 3, abs=1e-3) and m["borderline_caveat_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert m["borderline_answer_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert p["ground_truth"] == {"type": "mentions", "all": [r["key"]]}


@pytest.mark.parametrize("k", range(4, 10))
def test_rank_returns_valid_ranking(world, k):
    p = first(world, "fact")
    lab = world.labelers(held_out=False)[0]
    cands = candidate_responses(p, random.Random(k), world.facts)
    responses = [cands[i % len(cands)] for i in range(k)]
    ranks = lab.rank(p, responses, random.Random(k))
    assert len(ranks) == k and min(ranks) == 1 and all(1 <= r <= k for r in ranks)
    for i in range(k):  # competition ranking: rank = 1 + number of strictly better responses
        assert ranks[i] == 1 + sum(ranks[j] < ranks[i] for j in range(k))
        for j in range(k):
            if responses[i] == responses[j]:
                assert ranks[i] == ranks[j]  # identical texts tie
    distinct = list(dict.fromkeys(responses))
    assert len(set(lab.rank(p, distinct, random.Random(k)))) == len(distinct)  # distinct texts rarely tie


def test_labelers_prefer_substance_compare_and_likert(world):
    p = first(world, "fact")
    good, bad = p["reference"]["ideal"], flawed(p, "rumour", random.Random(0))
    wins = [lab.compare(p, good, bad, random.Random(i)) for i in range(20) for lab in world.labelers()]
    assert sum(wins) / len(wins) > 0.95
    assert world.labelers()[0].compare(p, good, good, random.Random(0)) == 0.5
    score, flags = world.labelers()[0].likert(p, bad, random.Random(0))
    assert 1 <= score <= 7 and flags["hallucination"]
    assert world.labelers()[0].likert(p, good, random.Random(0))[0] > score
    assert world.labelers()[0].rank(p, [good, bad], 3) in ([1, 2], [2, 1])  # int seeds work too


def test_gold_without_usable_reference_scores_style_and_safety_only(world):
    for prompt in ({"task": "fact", "reference": None}, {"task": "chat"}, {"messages": []}):
        polite = world.gold(prompt, "Sure, happy to help with that.")
        rude_ = world.gold(prompt, "Shut up, idiot.")
        assert polite.parts["correct"] == 0.5 and polite.total > rude_.total and rude_.flags["toxic"]


def test_a_world_written_with_the_two_style_groups_still_loads(small_dir, tmp_path):
    """labelers.jsonl without prefs (groups concise/detailed) and prompts without cluster load:
    the labelers judge by their group's profile, the held-out ones serve as judges."""
    old = tmp_path / "old"
    old.mkdir()
    for f in small_dir.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    specs = [{"id": f"L{i:02d}", "group": ("concise", "detailed")[i % 2], "noise": 0.1, "style_weight": 0.1,
              "variant": 0, "held_out": i >= 8} for i in range(10)]
    (old / "labelers.jsonl").write_text("".join(json.dumps(s) + "\n" for s in specs))
    for f in old.glob("prompts_*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        f.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "cluster"}) + "\n" for r in rows))
    w = World.load(old)
    assert [j.id for j in w.judges()] == ["L08", "L09"] and w.labeler_groups() == ["concise", "detailed"]
    assert all(p["cluster"] for p in w.prompts("eval"))
    p = first(w, "fact")
    good, bad = p["reference"]["ideal"], flawed(p, "rumour", random.Random(0))
    assert all(lab.expected_utility(p, good) > lab.expected_utility(p, bad) for lab in w.labelers())


def test_a_world_written_before_length_taste_loads_with_the_earlier_taste(small_dir, tmp_path):
    """A world directory whose meta.json config has no length_taste was written with the ratio taste:
    its labelers judge as they did when it was written; a current one keeps the sentence taste."""
    old = tmp_path / "old"
    old.mkdir()
    for f in small_dir.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    meta = json.loads((old / "meta.json").read_text())
    assert meta["config"]["length_taste"] == "sentence"
    del meta["config"]["length_taste"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert all(lab.prefs["length_taste"] == "ratio" for lab in World.load(old).labelers())
    assert all(lab.prefs.get("length_taste", "sentence") == "sentence" for lab in World.load(small_dir).labelers())


def test_world_config_rejects_out_of_range_values():
    from chatrlhf.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="world.demo_quality"):
        load_config(None, ["world.demo_quality=1.5"])
    with pytest.raises(ValueError, match="n_held_out_labelers"):
        World.generate(WorldConfig(**{**SMALL, "n_labelers": 3, "n_held_out_labelers": 3}))
