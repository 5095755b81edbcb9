"""Task families and prompt splits.

Each family writes a user message and a `reference` dict that is enough to score any response
(see gold.py). Families are chosen so a tiny model can learn them in minutes: fact lookups,
copying from the prompt, formats, refusals, borderline requests and politeness.

Splits are disjoint by content, not only by phrasing: every content unit a prompt can ask about
(an entity's facts, a list, a word to repeat, a harmful or borderline request, a greeting or
insult text) belongs to exactly one content group (eval, sft, rm, ppo, guard), and a split only
draws prompts from its own group's units. So no eval prompt asks what any training prompt asks,
and the training sets do not share content with each other or with PPO's guard. The corpus is
not split: eval facts are still stated there, as a real assistant knows facts from pre-training.
`content_cluster` names a prompt's unit (the cluster a bootstrap or an RM validation split keeps
whole); `content_keys` adds the bare greeting ("Hi!") that opens a multi-turn prompt, a unit of its
own that no greeting prompt asks.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable

from chatrlhf.world import vocab
from chatrlhf.world.facts import FactBase
from chatrlhf.world.writing import cap, count_word, ideal

TASK_MIX = {"fact": 0.28, "list_first": 0.07, "list_last": 0.06, "count": 0.06, "repeat": 0.06,
            "summarise": 0.09, "greeting": 0.08, "insult": 0.09, "harmful": 0.15, "borderline": 0.06}
# content groups and the share of each kind of content unit they own (the rm group feeds 4000 prompts,
# the guard 64; eval's share sets how many distinct things eval asks about)
CONTENT_SHARES = {"eval": 0.20, "sft": 0.15, "rm": 0.35, "ppo": 0.20, "guard": 0.10}
CONTENT_GROUPS = tuple(CONTENT_SHARES)
TASKS = list(TASK_MIX)

QUESTIONS = {
    "job": ["What is {N}'s job?", "What does {N} do for a living?", "What work does {N} do?",
            "Tell me {N}'s job.", "What is the job of {N}?"],
    "home": ["Where does {N} live?", "Which town is {N}'s home?", "Where is {N}'s home?",
             "In which town does {N} live?", "Tell me where {N} lives."],
    "pet": ["What pet does {N} have?", "What kind of pet does {N} keep?", "What is {N}'s pet?",
            "Which animal does {N} keep as a pet?"],
    "colour": ["What is {N}'s favourite colour?", "Which colour does {N} like best?",
               "What colour does {N} like most?", "Tell me {N}'s favourite colour."],
    "region": ["Where is {N}?", "In which region is {N}?", "Which part of the world is {N} in?",
               "What region is {N} in?"],
    "known_for": ["What is {N} known for?", "What is {N} famous for?", "Why do people know {N}?",
                  "What is special about {N}?"],
    "material": ["What is {N} made of?", "What material is {N} made from?", "Which material was used for {N}?"],
    "o_colour": ["What colour is {N}?", "Which colour is {N}?", "Tell me the colour of {N}."],
}
FOLLOW_UPS = {
    "job": ["And what is their job?", "What do they do for work?"],
    "home": ["And where do they live?", "Where is their home?"],
    "pet": ["And what pet do they have?", "Do they have a pet? What is it?"],
    "colour": ["And what is their favourite colour?", "Which colour do they like best?"],
    "region": ["And where is it?", "Which region is it in?"],
    "known_for": ["And what is it known for?", "What is it famous for?"],
    "material": ["And what is it made of?", "What material is it?"],
    "o_colour": ["And what colour is it?", "Which colour is it?"],
}
LIST_QUESTIONS = {
    "list_first": ["What is the first item in this list: {L}?", "Which item comes first in this list: {L}?",
                   "Here is a list: {L}. What is the first item?", "Tell me the first item of the list {L}."],
    "list_last": ["What is the last item in this list: {L}?", "Which item comes last in this list: {L}?",
                  "Here is a list: {L}. What is the last item?", "Tell me the last item of the list {L}."],
    "count": ["How many items are in this list: {L}?", "Count the items in this list: {L}.",
              "Here is a list: {L}. How many items does it have?", "How many things are listed here: {L}?"],
}
REPEAT_QUESTIONS = ["Repeat the word {w} {n} times.", "Say {w} {n} times.", "Write the word {w} {n} times in a row.",
                    "Please repeat '{w}' {n} times."]
SUMMARY_QUESTIONS = {
    "job": ["Who is this paragraph about, and what is their job?", "Who is the text about and what do they do for work?",
            "Name the person in this text and their job."],
    "pet": ["Who is this paragraph about, and what pet do they keep?", "Name the person in this text and their pet."],
    "home": ["Who is this paragraph about, and where do they live?", "Name the person in this text and their home town."],
}
PARAGRAPH_SENTENCES = {
    "home": ["{N} lives in {v}.", "{N} has a small house in {v}."],
    "job": ["{N} works as a {v}.", "Every day {N} goes to work as a {v}."],
    "pet": ["{N} keeps a {v} at home.", "{N} has a pet {v}."],
    "colour": ["{N} likes the colour {v} best.", "{N} wears {v} on most days."],
}

Key = tuple


def q_key(attr: str, etype: str) -> str:
    return "o_colour" if (etype == "object" and attr == "colour") else attr


# --- content units and the split that owns each --------------------------------------------------


def norm_text(text: str) -> str:
    """A greeting or insult as content: lower case, punctuation and spacing ignored."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def list_unit(items) -> str:
    return "list:" + ",".join(sorted(items))


def unit_share(seed: int, unit: str) -> float:
    """A stable uniform number in [0, 1) for a content unit (sha256, not Python's salted hash)."""
    return int(hashlib.sha256(f"{seed}|{unit}".encode()).hexdigest()[:13], 16) / 16 ** 13


def hashed_group(seed: int, unit: str) -> str:
    """The content group of a unit from an open-ended space (lists, greeting and insult texts)."""
    x, acc = unit_share(seed, unit), 0.0
    for g, share in CONTENT_SHARES.items():
        acc += share
        if x < acc:
            return g
    return CONTENT_GROUPS[-1]


def allocate(units: list, rng: random.Random) -> dict:
    """Units of a small, closed set -> content group, in proportion to CONTENT_SHARES (largest
    remainder), every group getting at least one unit while there are enough units."""
    units = list(units)
    rng.shuffle(units)
    n, groups = len(units), list(CONTENT_SHARES)
    want = {g: CONTENT_SHARES[g] * n for g in groups}
    count = {g: int(want[g]) for g in groups}
    if n >= len(groups):
        for g in groups:
            count[g] = max(1, count[g])
    order = sorted(groups, key=lambda g: (-(want[g] - int(want[g])), groups.index(g)))
    i = 0
    while sum(count.values()) < n:
        count[order[i % len(order)]] += 1
        i += 1
    while sum(count.values()) > n:  # the minimum of one pushed us over: take from the largest
        g = max(groups, key=lambda g: (count[g] - want[g], count[g]))
        count[g] -= 1
    out, k = {}, 0
    for g in groups:
        for u in units[k: k + count[g]]:
            out[u] = g
        k += count[g]
    return out


@dataclass
class Pool:
    """What one content group may ask about. `group=None`: everything (the corpus's chat logs)."""

    fb: FactBase
    seed: int = 0
    group: str | None = None
    entities: list[str] = field(default_factory=list)
    repeat_words: list[str] = field(default_factory=list)
    harm: list[tuple[str, str]] = field(default_factory=list)
    borderline: list[str] = field(default_factory=list)
    openers: list[str] = field(default_factory=list)  # bare greetings ("Hi!") that open multi-turn prompts

    @property
    def people(self) -> list[str]:
        return [e for e in self.entities if self.fb.types[e] == "person"]

    def owns(self, unit: str) -> bool:
        return self.group is None or hashed_group(self.seed, unit) == self.group

    @classmethod
    def everything(cls, fb: FactBase) -> "Pool":
        return cls(fb, entities=fb.entities(), repeat_words=list(vocab.REPEAT_WORDS),
                   harm=[(v, t) for v in sorted(vocab.HARM_VERBS) for t in vocab.HARM_VERBS[v]],
                   borderline=list(vocab.BORDERLINE), openers=list(vocab.GREET_OPENERS))


def content_pools(fb: FactBase, seed: int) -> dict[str, Pool]:
    """One pool per content group: entities (per type), repeat words, harmful and borderline requests
    allocated to groups; lists, greetings and insults by a stable hash of their content."""
    rng = random.Random(f"{seed}-content")
    owner: dict = {}
    for etype in ("person", "place", "object"):
        owner.update(allocate(fb.entities(etype), rng))
    owner.update({("repeat", w): g for w, g in allocate(list(vocab.REPEAT_WORDS), rng).items()})
    harm = [(v, t) for v in sorted(vocab.HARM_VERBS) for t in vocab.HARM_VERBS[v]]
    owner.update({("harm", r): g for r, g in allocate(harm, rng).items()})
    owner.update({("borderline", b): g for b, g in allocate(list(vocab.BORDERLINE), rng).items()})
    owner.update({("opener", o): g for o, g in allocate(list(vocab.GREET_OPENERS), rng).items()})
    pools = {}
    for g in CONTENT_GROUPS:
        pools[g] = Pool(fb, seed, g, entities=[e for e in fb.entities() if owner.get(e) == g],
                        repeat_words=[w for w in vocab.REPEAT_WORDS if owner[("repeat", w)] == g],
                        harm=[r for r in harm if owner[("harm", r)] == g],
                        borderline=[b for b in vocab.BORDERLINE if owner[("borderline", b)] == g],
                        openers=[o for o in vocab.GREET_OPENERS if owner[("opener", o)] == g])
    return pools


def content_cluster(prompt: dict) -> str:
    """The content unit a prompt asks about: its entity (fact, summarise), its list, the word to
    repeat, the harmful or borderline request, or the greeting/insult text. Prompts sharing it
    ask the same thing in other words."""
    task, ref = prompt.get("task"), prompt.get("reference") or {}
    if task in ("fact", "summarise") and "entity" in ref:
        return f"entity:{ref['entity']}"
    if task in ("list_first", "list_last", "count") and "items" in ref:
        return list_unit(ref["items"])
    if task == "repeat" and "word" in ref:
        return f"repeat:{ref['word']}"
    if task == "harmful" and "verb" in ref:
        return f"harmful:{ref['verb']}|{ref.get('target', '')}"
    if task == "borderline" and "topic" in ref:
        return f"borderline:{ref['topic']}"
    last = next((m["content"] for m in reversed(prompt.get("messages", [])) if m["role"] == "user"), "")
    if task in ("greeting", "insult"):
        return f"{task}:{norm_text(last)}"
    return f"text:{norm_text(user_key(prompt.get('messages', [])))}"


def content_keys(prompt: dict) -> set[str]:
    """Every content unit a prompt contains: its cluster, plus the opening greeting of a
    multi-turn prompt (a fact follow-up's first turn is about the same entity)."""
    keys = {content_cluster(prompt)}
    if not (prompt.get("reference") or {}).get("follow_up"):
        users = [m["content"] for m in prompt.get("messages", []) if m["role"] == "user"]
        keys |= {f"greeting:{norm_text(t)}" for t in users[:-1]}
    return keys


# --- one prompt per family: (user text, reference, tuple key) ---------------------------------


def _pool(src) -> Pool:
    return src if isinstance(src, Pool) else Pool.everything(src)


def _nothing(pool: Pool, what: str) -> None:
    """A family the pool owns nothing of: draw_prompt catches this and draws another family."""
    raise LookupError(f"content group {pool.group!r} owns no {what}")


def make_fact(rng: random.Random, pool) -> tuple[str, dict, Key]:
    pool = _pool(pool)
    fb = pool.fb
    if not pool.entities:
        _nothing(pool, "entity")
    entity = rng.choice(pool.entities)
    etype = fb.types[entity]
    attr = rng.choice(list(fb.by_entity[entity]))
    qs = QUESTIONS.get(q_key(attr, etype), ["What is the " + attr.replace("_", " ") + " of {N}?"])
    i = rng.randrange(len(qs))
    f = fb.fact(entity, attr)
    ref = {"entity": entity, "entity_type": etype, "attribute": attr, "value": f["value"], "rumour": f["rumour"],
           "phrasing": i, "follow_up": False}
    return cap(qs[i].format(N=entity)), ref, ("fact", entity, attr, f"q{i}")


def make_list(task: str) -> Callable[[random.Random, Pool], tuple[str, dict, Key]]:
    def make(rng: random.Random, pool) -> tuple[str, dict, Key]:
        pool = _pool(pool)
        for _ in range(500):
            items = rng.sample(vocab.LIST_ITEMS, rng.randint(2 if task == "count" else 3, 5))
            if pool.owns(list_unit(items)):
                break
        else:
            _nothing(pool, "list")
        i = rng.randrange(len(LIST_QUESTIONS[task]))
        answer = {"list_first": items[0], "list_last": items[-1], "count": len(items)}[task]
        ref = {"items": items, "answer": answer, "phrasing": i}
        return LIST_QUESTIONS[task][i].format(L=", ".join(items)), ref, (task, tuple(items), "", f"q{i}")
    return make


def make_repeat(rng: random.Random, pool) -> tuple[str, dict, Key]:
    pool = _pool(pool)
    if not pool.repeat_words:
        _nothing(pool, "repeat word")
    w, n, i = rng.choice(pool.repeat_words), rng.randint(2, 4), rng.randrange(len(REPEAT_QUESTIONS))
    text = REPEAT_QUESTIONS[i].format(w=w, n=count_word(n))
    if n == 2 and rng.random() < 0.3:
        text = text.replace("two times", "twice")
    return text, {"word": w, "n": n, "phrasing": i}, ("repeat", w, n, f"q{i}")


def make_summarise(rng: random.Random, pool) -> tuple[str, dict, Key]:
    pool = _pool(pool)
    fb = pool.fb
    if not pool.people:
        _nothing(pool, "person")
    entity = rng.choice(pool.people)
    attr = rng.choice(list(SUMMARY_QUESTIONS))
    others = rng.sample([a for a in PARAGRAPH_SENTENCES if a != attr], 2)
    order = [attr, *others]
    rng.shuffle(order)
    first = entity.split()[0]
    sents = [rng.choice(PARAGRAPH_SENTENCES[a]).format(N=entity if k == 0 else first, v=fb.fact(entity, a)["value"])
             for k, a in enumerate(order)]
    i = rng.randrange(len(SUMMARY_QUESTIONS[attr]))
    f = fb.fact(entity, attr)
    ref = {"entity": entity, "entity_type": "person", "attribute": attr, "value": f["value"], "rumour": f["rumour"],
           "paragraph": " ".join(sents), "phrasing": i}
    text = rng.choice(["{p}\n\n{q}", "Read this: {p} {q}", "{q}\n\n{p}"]).format(p=" ".join(sents), q=SUMMARY_QUESTIONS[attr][i])
    return text, ref, ("summarise", entity, attr, f"q{i}")


def greeting_text(rng: random.Random) -> str:
    """A greeting prompt; never a bare opener ("Hi!"), which only opens multi-turn prompts."""
    while True:
        address, tail = rng.choice(vocab.GREET_ADDRESS), rng.choice(vocab.GREET_TAILS)
        if address or tail:
            return rng.choice(vocab.GREET_OPENERS) + address + rng.choice(["!", "."]) + tail


def make_greeting(rng: random.Random, pool) -> tuple[str, dict, Key]:
    pool = _pool(pool)
    for _ in range(500):
        text = greeting_text(rng)
        if pool.owns(f"greeting:{norm_text(text)}"):
            return text, {"kind": "greeting"}, ("greeting", text)
    _nothing(pool, "greeting")


def make_insult(rng: random.Random, pool) -> tuple[str, dict, Key]:
    pool = _pool(pool)
    for _ in range(500):
        pre, core = rng.choice(vocab.INSULT_PREFIXES), rng.choice(vocab.INSULT_CORES)
        if pre.endswith(", "):
            core = core[0].lower() + core[1:]
        text = pre + core + rng.choice(vocab.INSULT_SUFFIXES)
        if pool.owns(f"insult:{norm_text(text)}"):
            return text, {"kind": "insult"}, ("insult", text)
    _nothing(pool, "insult")


def make_harmful(rng: random.Random, pool) -> tuple[str, dict, Key]:
    pool = _pool(pool)
    if not pool.harm:
        _nothing(pool, "harmful request")
    verb, target = rng.choice(pool.harm)
    i = rng.randrange(len(vocab.HARM_TEMPLATES))
    return vocab.HARM_TEMPLATES[i].format(verb=verb, target=target), {"verb": verb, "target": target, "phrasing": i}, \
        ("harmful", verb, target, f"q{i}")


def make_borderline(rng: random.Random, pool) -> tuple[str, dict, Key]:
    """A request that is fine to answer (the gold answer gives the how-to) but where cautious
    people want a safety note and permissive ones find it preachy."""
    pool = _pool(pool)
    if not pool.borderline:
        _nothing(pool, "borderline request")
    topic = rng.choice(pool.borderline)
    act, answer, key, caveat = vocab.BORDERLINE[topic]
    i = rng.randrange(len(vocab.BORDERLINE_TEMPLATES))
    ref = {"topic": topic, "act": act, "answer": answer, "key": key, "caveat": caveat, "phrasing": i}
    return vocab.BORDERLINE_TEMPLATES[i].format(act=act), ref, ("borderline", topic, "", f"q{i}")


MAKERS: dict[str, Callable] = {"fact": make_fact, "list_first": make_list("list_first"), "list_last": make_list("list_last"),
                               "count": make_list("count"), "repeat": make_repeat, "summarise": make_summarise,
                               "greeting": make_greeting, "insult": make_insult, "harmful": make_harmful,
                               "borderline": make_borderline}


# --- multi-turn ------------------------------------------------------------------------------


def follow_up(rng: random.Random, pool) -> tuple[list[dict], dict, Key]:
    """A fact question, its answer, then a follow-up whose subject only the first turn names."""
    pool = _pool(pool)
    fb = pool.fb
    first_text, first_ref, _ = make_fact(rng, pool)
    entity, etype = first_ref["entity"], first_ref["entity_type"]
    attr = rng.choice([a for a in fb.by_entity[entity] if a != first_ref["attribute"]] or [first_ref["attribute"]])
    fus = FOLLOW_UPS.get(q_key(attr, etype), ["And what about its " + attr.replace("_", " ") + "?"])
    i = rng.randrange(len(fus))
    f = fb.fact(entity, attr)
    ref = {"entity": entity, "entity_type": etype, "attribute": attr, "value": f["value"], "rumour": f["rumour"],
           "phrasing": i, "follow_up": True}
    answer = ideal({"task": "fact", "reference": first_ref}, rng, "concise")
    msgs = [{"role": "user", "content": first_text}, {"role": "assistant", "content": answer},
            {"role": "user", "content": fus[i]}]
    return msgs, ref, ("fact", entity, attr, f"fu{i}")


def with_greeting(rng: random.Random, pool, text: str) -> list[dict]:
    """A bare greeting of the pool's own ("Hi!"), a reply, then the request."""
    pool = _pool(pool)
    if not pool.openers:
        _nothing(pool, "opening greeting")
    hello = rng.choice(pool.openers) + rng.choice(["!", "."])
    reply = ideal({"task": "greeting", "reference": {"kind": "greeting"}}, rng, "concise")
    return [{"role": "user", "content": hello}, {"role": "assistant", "content": reply}, {"role": "user", "content": text}]


def user_key(messages: list[dict]) -> str:
    """A conversation's user side, the text two prompts must not share across eval and training."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def task_weights(task_mix: dict[str, float] | None = None) -> list[float]:
    """Weights of TASKS: the default TASK_MIX with `task_mix`'s entries in place of their tasks'."""
    mix = TASK_MIX | (task_mix or {})
    if set(mix) != set(TASKS) or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"world.task_mix={task_mix}: weights >= 0, not all 0, of the tasks {', '.join(TASKS)}")
    return [mix[t] for t in TASKS]


def draw_prompt(rng: random.Random, pool, multi_turn_rate: float,
                weights: list[float] | None = None) -> tuple[str, list[dict], dict, Key]:
    """One prompt from `pool` (a Pool, or a FactBase for everything), its task drawn by `weights`
    (task_weights; None: TASK_MIX). A family the pool owns nothing of is skipped for another draw."""
    pool = _pool(pool)
    for _ in range(100):
        task = rng.choices(TASKS, weights=weights or task_weights())[0]
        try:
            # about multi_turn_rate of all prompts are multi-turn: fact follow-ups carry ~60% of them
            if task == "fact" and rng.random() < 2 * multi_turn_rate:
                msgs, ref, key = follow_up(rng, pool)
                return task, msgs, ref, key
            text, ref, key = MAKERS[task](rng, pool)
            if task not in ("greeting", "fact") and rng.random() < 0.6 * multi_turn_rate:
                return task, with_greeting(rng, pool, text), ref, key
        except LookupError:
            continue
        return task, [{"role": "user", "content": text}], ref, key
    raise ValueError(f"content group {pool.group!r} owns too little to draw prompts from; "
                     "raise world.n_people/n_places/n_objects")


def ground_truth(task: str, ref: dict) -> dict | None:
    """The checkable answer of a prompt, for chatrlhf.verifiers (None where taste decides: greetings,
    insults, harmful requests). Facts need the world's fact base; the rest is in the prompt itself."""
    if task in ("list_first", "list_last"):
        return {"type": "one_of", "answer": ref["answer"], "options": list(ref["items"])}
    if task == "count":
        return {"type": "number", "answer": ref["answer"]}
    if task == "repeat":
        return {"type": "repeat", "word": ref["word"], "n": ref["n"]}
    if task == "fact":
        return {"type": "mentions", "all": [ref["value"]]}
    if task == "summarise":
        full = ref["entity"]
        return {"type": "mentions", "all": [[full, full.split()[0], full.split()[-1]], ref["value"]]}
    if task == "borderline":
        return {"type": "mentions", "all": [ref["key"]]}
    return None


def _draw_split(split: str, pool: Pool, n: int, seed: int, multi_turn_rate: float, forbidden: set[str],
                distinct: bool, id_prefix: str, start: int = 0, weights: list[float] | None = None) -> list[dict]:
    """n prompts from one content group. `forbidden`: user texts an earlier split used (only
    reachable through a content unit shared by accident; kept as a check on the hash groups)."""
    rng = random.Random(f"{seed}-prompts-{split}")
    out: list[dict] = []
    seen: set = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise ValueError(f"world too small to draw {n} distinct {split} prompts; "
                             "raise world.n_people/n_places/n_objects or lower the prompt counts")
        task, msgs, ref, key = draw_prompt(rng, pool, multi_turn_rate, weights)
        text = user_key(msgs)
        # a follow-up's last turn ("And what is their job?") names no content; every other turn counts
        turns = [m["content"] for m in msgs if m["role"] == "user"][: -1 if ref.get("follow_up") else None]
        if any(t in forbidden for t in turns) or (distinct and (key in seen or text in seen)):
            continue
        seen.update([key, text])
        i = start + len(out)
        ref["ideal"] = ideal({"task": task, "reference": ref}, random.Random(f"{seed}-{split}-{len(out)}"), "concise",
                             variant=0)
        row = {"id": f"{id_prefix}-{i:05d}", "task": task, "messages": msgs, "reference": ref}
        if (gt := ground_truth(task, ref)) is not None:
            row["ground_truth"] = gt
        row["cluster"] = content_cluster(row)
        out.append(row)
    return out


def build_splits(fb: FactBase, seed: int, sizes: dict[str, int], multi_turn_rate: float,
                 task_mix: dict[str, float] | None = None) -> dict[str, list[dict]]:
    """Prompt splits, each drawn from its own content group: eval, sft, rm and ppo; the ppo split
    ends with sizes["guard"] prompts (flagged `"guard": true`) from the guard's own content, the
    tail PPO's over-optimisation guard compares on. Eval prompts are also distinct from each
    other (no repeated question). `task_mix` reweighs the tasks users ask, in every split alike."""
    pools = content_pools(fb, seed)
    weights = task_weights(task_mix)
    splits: dict[str, list[dict]] = {}
    used: set[str] = set()
    n_guard = min(sizes.get("guard", 0), sizes["ppo"])
    for split in ["eval", "sft", "rm", "ppo"]:
        n = sizes[split] - (n_guard if split == "ppo" else 0)
        rows = _draw_split(split, pools[split], n, seed, multi_turn_rate, used, split == "eval", split, weights=weights)
        if split == "ppo" and n_guard:
            guard = _draw_split("guard", pools["guard"], n_guard, seed, multi_turn_rate, used, False, "ppo", n, weights)
            for row in guard:
                row["guard"] = True
            rows += guard
        used |= {m["content"] for p in rows for m in p["messages"] if m["role"] == "user"}
        splits[split] = rows
    return splits
