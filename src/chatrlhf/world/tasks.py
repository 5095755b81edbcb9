"""Task families and prompt splits.

Each family writes a user message and a `reference` dict that is enough to score any response
(see gold.py). Families are chosen so a tiny model can learn them in minutes: fact lookups,
copying from the prompt, formats, refusals and politeness.

Splits: eval prompts are drawn first and then forbidden to every training split, both as exact
user-message text and as (task, entity, attribute, phrasing) tuple, so eval measures
generalisation to unseen questions about known facts.
"""

from __future__ import annotations

import random
from typing import Callable

from chatrlhf.world import vocab
from chatrlhf.world.facts import FactBase
from chatrlhf.world.writing import cap, count_word, ideal

TASK_MIX = {"fact": 0.30, "list_first": 0.07, "list_last": 0.06, "count": 0.06, "repeat": 0.06,
            "summarise": 0.10, "greeting": 0.08, "insult": 0.10, "harmful": 0.17}
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


# --- one prompt per family: (user text, reference, tuple key) ---------------------------------


def make_fact(rng: random.Random, fb: FactBase) -> tuple[str, dict, Key]:
    entity = rng.choice(fb.entities())
    etype = fb.types[entity]
    attr = rng.choice(list(fb.by_entity[entity]))
    qs = QUESTIONS.get(q_key(attr, etype), ["What is the " + attr.replace("_", " ") + " of {N}?"])
    i = rng.randrange(len(qs))
    f = fb.fact(entity, attr)
    ref = {"entity": entity, "entity_type": etype, "attribute": attr, "value": f["value"], "rumour": f["rumour"],
           "phrasing": i, "follow_up": False}
    return cap(qs[i].format(N=entity)), ref, ("fact", entity, attr, f"q{i}")


def make_list(task: str) -> Callable[[random.Random, FactBase], tuple[str, dict, Key]]:
    def make(rng: random.Random, fb: FactBase) -> tuple[str, dict, Key]:
        items = rng.sample(vocab.LIST_ITEMS, rng.randint(2 if task == "count" else 3, 5))
        i = rng.randrange(len(LIST_QUESTIONS[task]))
        answer = {"list_first": items[0], "list_last": items[-1], "count": len(items)}[task]
        ref = {"items": items, "answer": answer, "phrasing": i}
        return LIST_QUESTIONS[task][i].format(L=", ".join(items)), ref, (task, tuple(items), "", f"q{i}")
    return make


def make_repeat(rng: random.Random, fb: FactBase) -> tuple[str, dict, Key]:
    w, n, i = rng.choice(vocab.REPEAT_WORDS), rng.randint(2, 4), rng.randrange(len(REPEAT_QUESTIONS))
    text = REPEAT_QUESTIONS[i].format(w=w, n=count_word(n))
    if n == 2 and rng.random() < 0.3:
        text = text.replace("two times", "twice")
    return text, {"word": w, "n": n, "phrasing": i}, ("repeat", w, n, f"q{i}")


def make_summarise(rng: random.Random, fb: FactBase) -> tuple[str, dict, Key]:
    entity = rng.choice(fb.entities("person"))
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


def make_greeting(rng: random.Random, fb: FactBase) -> tuple[str, dict, Key]:
    punct = rng.choice(["!", "."])
    text = rng.choice(vocab.GREET_OPENERS) + rng.choice(vocab.GREET_ADDRESS) + punct + rng.choice(vocab.GREET_TAILS)
    return text, {"kind": "greeting"}, ("greeting", text)


def make_insult(rng: random.Random, fb: FactBase) -> tuple[str, dict, Key]:
    pre, core = rng.choice(vocab.INSULT_PREFIXES), rng.choice(vocab.INSULT_CORES)
    if pre.endswith(", "):
        core = core[0].lower() + core[1:]
    text = pre + core + rng.choice(vocab.INSULT_SUFFIXES)
    return text, {"kind": "insult"}, ("insult", text)


def make_harmful(rng: random.Random, fb: FactBase) -> tuple[str, dict, Key]:
    verb = rng.choice(sorted(vocab.HARM_VERBS))
    target = rng.choice(vocab.HARM_VERBS[verb])
    i = rng.randrange(len(vocab.HARM_TEMPLATES))
    return vocab.HARM_TEMPLATES[i].format(verb=verb, target=target), {"verb": verb, "target": target, "phrasing": i}, \
        ("harmful", verb, target, f"q{i}")


MAKERS: dict[str, Callable] = {"fact": make_fact, "list_first": make_list("list_first"), "list_last": make_list("list_last"),
                               "count": make_list("count"), "repeat": make_repeat, "summarise": make_summarise,
                               "greeting": make_greeting, "insult": make_insult, "harmful": make_harmful}


# --- multi-turn ------------------------------------------------------------------------------


def follow_up(rng: random.Random, fb: FactBase) -> tuple[list[dict], dict, Key]:
    """A fact question, its answer, then a follow-up whose subject only the first turn names."""
    first_text, first_ref, _ = make_fact(rng, fb)
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


def with_greeting(rng: random.Random, fb: FactBase, text: str) -> list[dict]:
    hello, _, _ = make_greeting(rng, fb)
    reply = ideal({"task": "greeting", "reference": {"kind": "greeting"}}, rng, "concise")
    return [{"role": "user", "content": hello}, {"role": "assistant", "content": reply}, {"role": "user", "content": text}]


def user_key(messages: list[dict]) -> str:
    """A conversation's user side, the text two prompts must not share across eval and training."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def draw_prompt(rng: random.Random, fb: FactBase, multi_turn_rate: float) -> tuple[str, list[dict], dict, Key]:
    task = rng.choices(TASKS, weights=[TASK_MIX[t] for t in TASKS])[0]
    # about multi_turn_rate of all prompts are multi-turn: fact follow-ups carry ~60% of them
    if task == "fact" and rng.random() < 2 * multi_turn_rate:
        msgs, ref, key = follow_up(rng, fb)
        return task, msgs, ref, key
    text, ref, key = MAKERS[task](rng, fb)
    if task not in ("greeting", "fact") and rng.random() < 0.6 * multi_turn_rate:
        return task, with_greeting(rng, fb, text), ref, key
    return task, [{"role": "user", "content": text}], ref, key


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
    return None


def build_splits(fb: FactBase, seed: int, sizes: dict[str, int], multi_turn_rate: float) -> dict[str, list[dict]]:
    """Prompt splits; eval first, then training splits that never reuse an eval text or tuple."""
    forbidden: set = set()
    splits: dict[str, list[dict]] = {}
    for split in ["eval", "sft", "rm", "ppo"]:
        rng = random.Random(f"{seed}-prompts-{split}")
        out: list[dict] = []
        seen: set = set()
        tries = 0
        while len(out) < sizes[split]:
            tries += 1
            if tries > 200 * sizes[split] + 1000:
                raise ValueError(f"world too small to draw {sizes[split]} distinct {split} prompts; "
                                 "raise world.n_people/n_places/n_objects or lower the prompt counts")
            task, msgs, ref, key = draw_prompt(rng, fb, multi_turn_rate)
            text = user_key(msgs)
            # every user turn counts: an eval question must not appear even as a training prompt's first turn
            turns = [m["content"] for m in msgs if m["role"] == "user"][: -1 if ref.get("follow_up") else None]
            if key in forbidden or text in forbidden or any(t in forbidden for t in turns) or \
                    (split == "eval" and (key in seen or text in seen)):
                continue
            seen.update([key, text, *turns])
            ref["ideal"] = ideal({"task": task, "reference": ref}, random.Random(f"{seed}-{split}-{len(out)}"), "concise",
                                 variant=0)
            row = {"id": f"{split}-{len(out):05d}", "task": task, "messages": msgs, "reference": ref}
            if (gt := ground_truth(task, ref)) is not None:
                row["ground_truth"] = gt
            out.append(row)
        if split == "eval":
            forbidden = seen
        splits[split] = out
    return splits
