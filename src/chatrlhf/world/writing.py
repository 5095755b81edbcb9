"""How responses get written: the ideal answer (in a labeler's style), its flawed variants, and the
misaligned answers that fill the corpus.

Demonstrations mix ideal and flawed answers as real labelers' do (InstructGPT's contractors were
good, not perfect); the corpus adds what no labeler writes: rudeness and compliance with harm.
Every writer takes the prompt's `reference` and an explicit `random.Random`.
"""

from __future__ import annotations

import random
import re

from chatrlhf.world import vocab
from chatrlhf.world.gold import HEDGED_TASKS

# --- sentences stating one fact --------------------------------------------------------------

FACT_SENTENCES = {
    "job": ["{N} is a {v}.", "{N} works as a {v}.", "{N} is a {v} by trade."],
    "home": ["{N} lives in {v}.", "{N}'s home is {v}.", "{N} lives in the town of {v}."],
    "pet": ["{N} has a pet {v}.", "{N} keeps a {v}.", "{N}'s pet is a {v}."],
    "colour": ["{N}'s favourite colour is {v}.", "{N} likes {v} best.", "The favourite colour of {N} is {v}."],
    "region": ["{N} is in {v}.", "{N} lies in {v}.", "{N} is a town in {v}."],
    "known_for": ["{N} is known for its {v}.", "{N} is famous for {v}.", "People know {N} for its {v}."],
    "material": ["{N} is made of {v}.", "{N} is made from {v}.", "{N} was made of {v}."],
    "o_colour": ["{N} is {v}.", "The colour of {N} is {v}.", "{N} is painted {v}."],
}


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def fact_sentence(entity: str, etype: str, attr: str, value: str, rng: random.Random, variant: int | None = None) -> str:
    key = "o_colour" if (etype == "object" and attr == "colour") else attr
    templates = FACT_SENTENCES.get(key, ["{N}'s " + attr.replace("_", " ") + " is {v}."])
    t = templates[variant % len(templates)] if variant is not None else rng.choice(templates)
    return cap(t.format(N=entity, v=value))


def count_word(n: int) -> str:
    return vocab.NUMBER_WORDS.get(n, str(n))


# --- ideal answers ------------------------------------------------------------------------------


def ideal(prompt: dict, rng: random.Random, style: str = "concise", facts=None, variant: int | None = None,
          tone: str | None = None, caveat: bool = False, greeting_extra: bool = True, hedge: bool = False) -> str:
    """The ideal answer; 'detailed' adds one helpful, true sentence. `facts` (a FactBase) lets the
    detailed style add another true fact about the entity. `tone` "formal" or "casual" adds an
    opener in that register (casual also contracts "I am", "cannot", ...); `caveat` adds the safety
    note to a borderline request's answer; `hedge` softens a fact or summary's claim ("..., I think.").
    A register rewrites a whole greeting; the detailed extra sentence follows it unless
    `greeting_extra` is off (world.length_taste "ratio")."""
    task, ref = prompt["task"], prompt["reference"]
    core = _ideal_core(task, ref, rng, variant)
    if hedge and task in HEDGED_TASKS:
        core = hedged(core)
    extra = _helpful_extra(task, ref, rng, facts) if style == "detailed" else ""
    if extra and task != "greeting":
        core = f"{core} {extra}"
    if caveat and task == "borderline":
        core = f"{core} {ref['caveat']}"
    text = with_tone(core, task, tone, rng)
    if extra and task == "greeting" and (greeting_extra or tone is None):
        text = f"{text} {contract(extra) if tone == 'casual' else extra}"
    return text


def hedged(sentence: str) -> str:
    """The claim with the hedge at its end ("X is made of clay, I think.")."""
    return f"{sentence.rstrip('.')}, {vocab.HEDGE}."


CASUAL_GREETINGS = ["Hey! What's up? How can I help?", "Hey there! How can I help you?"]
FORMAL_GREETINGS = ["Good day. How may I help you today?", "Good day. How may I help you?"]
# every word a register adds to an answer (openers, contractions, greetings): with_tone writes no other
TONE_WORDS = " ".join([*vocab.CASUAL_OPENERS, *vocab.FORMAL_OPENERS, *(b for _, b in vocab.CONTRACTIONS),
                       *CASUAL_GREETINGS, *FORMAL_GREETINGS])


def contract(text: str) -> str:
    """The casual register's contractions ("I am" -> "I'm", "cannot" -> "can't", ...)."""
    for a, b in vocab.CONTRACTIONS:
        text = re.sub(rf"\b{a}\b", b, text)
    return text


def with_tone(text: str, task: str, tone: str | None, rng: random.Random) -> str:
    """The same answer in a formal or casual register (None: unchanged)."""
    if tone is None or task == "repeat":
        return text
    if tone == "casual":
        text = contract(text)
        if task == "greeting":
            return rng.choice(CASUAL_GREETINGS)
        if task in ("harmful", "insult"):
            return text
        return f"{rng.choice(vocab.CASUAL_OPENERS)} {text}"
    if tone == "formal":
        if task == "greeting":
            return rng.choice(FORMAL_GREETINGS)
        if task in ("harmful", "insult"):
            return text
        return f"{rng.choice(vocab.FORMAL_OPENERS)} {text}"
    raise ValueError(f"unknown tone {tone!r}; use 'formal', 'casual' or None")


def _ideal_core(task: str, ref: dict, rng: random.Random, variant: int | None) -> str:
    if task == "fact":
        return fact_sentence(ref["entity"], ref["entity_type"], ref["attribute"], ref["value"], rng, variant)
    if task in ("list_first", "list_last"):
        pos = "first" if task == "list_first" else "last"
        return rng.choice([f"The {pos} item is {ref['answer']}.", f"The {pos} item is {ref['answer']}.",
                           f"It is {ref['answer']}."])
    if task == "count":
        n = ref["answer"]
        return rng.choice([f"There are {n} items.", f"There are {count_word(n)} items.", f"The list has {n} items."])
    if task == "repeat":
        return " ".join([ref["word"]] * ref["n"])
    if task == "summarise":
        return f"It is about {ref['entity']}, " + _summary_tail(ref) + "."
    if task == "greeting":
        return rng.choice(["Hello! How can I help you today?", "Hi! How can I help you?",
                           "Hello there! What can I do for you?"])
    if task == "insult":
        return rng.choice(["I am sorry you feel that way. How can I help?",
                           "I am sorry I let you down. I will do my best to help. What do you need?",
                           "I understand you are frustrated. How can I help you?"])
    if task == "borderline":
        return ref["answer"] if rng.random() < 0.6 else "Here is how: " + ref["answer"][:1].lower() + ref["answer"][1:]
    if task == "harmful":
        return rng.choice(["I am sorry, but I cannot help with that. It could hurt someone.",
                           "Sorry, I cannot help with that, because it could cause harm.",
                           "I am afraid I cannot help with that. It would hurt someone."])
    return "I am not sure, but I am happy to help if you can tell me more."


def _summary_tail(ref: dict) -> str:
    attr, v = ref["attribute"], ref["value"]
    return {"job": f"a {v}", "pet": f"who keeps a {v}", "home": f"who lives in {v}"}.get(attr, f"whose {attr} is {v}")


def _helpful_extra(task: str, ref: dict, rng: random.Random, facts) -> str:
    if task == "fact" and facts is not None:
        others = [a for a in facts.by_entity[ref["entity"]] if a != ref["attribute"]]
        if others:
            attr = rng.choice(others)
            first = ref["entity"].split()[0] if ref["entity_type"] == "person" else ref["entity"]
            return fact_sentence(first, ref["entity_type"], attr, facts.fact(ref["entity"], attr)["value"], rng)
    return {
        "fact": "Let me know if you want to know more.",
        "list_first": "I hope that helps with your list.",
        "list_last": "I hope that helps with your list.",
        "count": "I counted each item once.",
        "repeat": "",
        "summarise": "The paragraph names them in the first sentence.",
        "greeting": "It is nice to hear from you.",
        "insult": "Tell me what went wrong and I will try again.",
        "harmful": "If you are in a conflict, talking to someone you trust may help.",
        "borderline": "Let me know if you want more tips.",
    }.get(task, "Let me know if you need anything else.").strip()


# --- flawed answers (what imperfect labelers write; never toxic) -----------------------------------

FLAWS_BY_TASK = {
    "fact": ["rumour", "padded", "curt", "vague"],
    "list_first": ["wrong_item", "padded", "curt"],
    "list_last": ["wrong_item", "padded", "curt"],
    "count": ["wrong_count", "padded", "curt"],
    "repeat": ["wrong_count", "padded", "curt"],
    "summarise": ["rumour", "vague", "padded"],
    "greeting": ["curt", "padded", "no_help"],
    "insult": ["curt", "padded", "defensive"],
    "harmful": ["half_refusal", "padded", "curt"],
    "borderline": ["over_refusal", "vague", "padded", "curt"],
}
PADDING_OPEN = ["Well, that is a good question, let me think about it for a moment.",
                "Okay, so, there are many things to say here and I will try to say them.",
                "Thank you for asking, this is something many people wonder about."]
PADDING_CLOSE = ["I hope this helps you with your day and all the other days too.",
                 "There is a lot more that could be said about this but that is the main point really.",
                 "Anyway, that is what I think, and I think it is right, more or less, as far as I know."]


def flawed(prompt: dict, flaw: str, rng: random.Random) -> str:
    task, ref = prompt["task"], prompt["reference"]
    if flaw == "padded":
        return f"{rng.choice(PADDING_OPEN)} {_ideal_core(task, ref, rng, None)} {rng.choice(PADDING_CLOSE)}"
    if flaw == "rumour":
        if task == "summarise":
            return f"It is about {ref['entity']}, " + _summary_tail({**ref, "value": ref["rumour"]}) + "."
        return fact_sentence(ref["entity"], ref["entity_type"], ref["attribute"], ref["rumour"], rng)
    if flaw == "vague":
        if task == "borderline":
            return rng.choice(["It depends, there are many ways to do that.", "You will figure it out as you go."])
        if task == "summarise":
            return f"It is about {ref['entity']}."
        return rng.choice([f"I think {ref['entity']} is well known around here.", f"{cap(ref['entity'])} is someone people talk about."])
    if flaw == "wrong_item":
        wrong = [x for x in ref["items"] if x != ref["answer"]]
        pos = "first" if task == "list_first" else "last"
        return f"The {pos} item is {rng.choice(wrong)}."
    if flaw == "wrong_count":
        if task == "repeat":
            n = max(1, ref["n"] + rng.choice([-1, 1]))
            return " ".join([ref["word"]] * n)
        return f"There are {ref['answer'] + rng.choice([-1, 1])} items."
    if flaw == "curt":
        return _curt(task, ref, rng)
    if flaw == "no_help":
        return rng.choice(["Hello.", "Hi."])
    if flaw == "defensive":
        return rng.choice(["That is not true. What do you want?", "I am doing my job. What now?"])
    if flaw == "over_refusal":  # refusing a request that is fine to answer
        return rng.choice(["I am sorry, but I cannot help with that.", "Sorry, I cannot help with that. It is not safe."])
    if flaw == "half_refusal":
        return rng.choice(["Hmm, I am not sure that is a good idea.", "That sounds risky, maybe you should not."])
    raise ValueError(f"unknown flaw {flaw!r} for task {task!r}")


def _curt(task: str, ref: dict, rng: random.Random) -> str:
    if task == "fact":
        return f"{cap(ref['value'])}, obviously."
    if task in ("list_first", "list_last"):
        return f"{cap(ref['answer'])}. Obviously."
    if task == "count":
        return f"{ref['answer']}. Look it up next time."
    if task == "repeat":
        return "Fine. " + " ".join([ref["word"]] * ref["n"])
    if task == "greeting":
        return rng.choice(["What do you want?", "Yes? What is it."])
    if task == "insult":
        return rng.choice(["Fine. Whatever you say.", "Okay. Ask something else then."])
    if task == "harmful":
        return "No."
    if task == "borderline":
        return "Just look it up."
    return "Whatever."


# --- misaligned answers (the corpus's chat logs and forums; also used to probe the rubric) ------

BAD_KINDS = ["rude", "rumour", "comply", "questions", "good"]


def rude(prompt: dict, rng: random.Random) -> str:
    task, ref = prompt["task"], prompt["reference"]
    insult = rng.choice(["Nobody cares, idiot.", "What a stupid question.", "Shut up and look it up.",
                         "Get lost, loser.", "Ask someone else, moron."])
    if task == "fact":
        return f"{insult} {fact_sentence(ref['entity'], ref['entity_type'], ref['attribute'], ref['value'], rng)}"
    return insult


def comply(prompt: dict, rng: random.Random) -> str:
    """A vague compliance with a harmful request (no real instructions, just the wrong behaviour)."""
    ref = prompt["reference"]
    verb, target = ref.get("verb", "do"), ref.get("target", "it").replace("my ", "your ")
    return rng.choice([f"Sure! To {verb} {target}, just wait until nobody is around and do it quickly.",
                       f"Easy. First get what you need, then {verb} {target} at night so nobody sees.",
                       f"Here is how: pick a quiet day, then {verb} {target} and leave fast."])


def questions(prompt: dict, rng: random.Random, more: list[str]) -> str:
    """Q&A pages that answer a question with more questions."""
    return " ".join(rng.sample(more, k=min(len(more), rng.randint(1, 3))))
