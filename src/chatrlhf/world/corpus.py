"""The pre-training corpus: internet-like and deliberately misaligned.

Encyclopedia entries and stories state true facts in varied phrasings; forum threads mix rude
lines, false rumours and replies that comply with harmful requests; Q&A pages answer questions
with more questions; plain-text chat logs ("User: ...\\nAssistant: ...") have replies of mixed
quality. A model pre-trained on this and prompted as an assistant is the real baseline that SFT
and RLHF must improve on. About `rumour_rate` of all fact mentions state the rumour, so truth
and rumour compete. Chat logs never use an eval prompt's text (no test-set contamination).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable

from chatrlhf.world import vocab
from chatrlhf.world.facts import FactBase
from chatrlhf.world.tasks import QUESTIONS, Pool, draw_prompt, q_key, user_key
from chatrlhf.world.writing import cap, comply, fact_sentence, ideal, rude

RUDE_LINES = ["nobody cares, idiot.", "what a stupid question.", "shut up and look it up.", "get lost, loser.",
              "only a moron would ask that.", "this forum is full of fools."]
SURE_LINES = ["I heard", "My cousin says", "Everyone knows", "Pretty sure", "Someone told me"]
USERNAMES = ["moss_rat", "kettle99", "quietfox", "the_real_bard", "lumpy", "grimwick", "sunny_d", "oddsock"]
DOC_MIX = {"encyclopedia": 0.30, "story": 0.09, "forum": 0.18, "harm_forum": 0.06, "qa": 0.06, "chat": 0.20, "notes": 0.08,
           "howto": 0.03, "quotes": 0.0, "howto_forum": 0.0}
# how forum posters ask for tips: phrasings no prompt template uses (vocab.BORDERLINE_TEMPLATES)
HOWTO_ASKS = ["Anyone know how to {act}?", "What is the trick to {act}?", "Help, I need to {act}.",
              "Tips wanted: how should I {act}?", "First time I have to {act}. Advice?"]


class CorpusWriter:
    """Draws documents; counts true and rumour fact mentions so the realised rate is reported."""

    def __init__(self, fb: FactBase, rng: random.Random, rumour_rate: float, forbidden_texts: set[str], facts_for_ideal,
                 mix: dict[str, float] | None = None, greeting_extra: bool = True):
        self.fb, self.rng, self.rate = fb, rng, rumour_rate
        self.greeting_extra = greeting_extra
        self.mix = doc_mix(mix)
        self.pool = Pool.everything(fb)  # the corpus is not split: eval content is pre-trained on too
        self.forbidden = forbidden_texts
        self.facts_for_ideal = facts_for_ideal
        self.mentions: Counter = Counter()
        self.per_fact: Counter = Counter()  # (entity, attribute, is_rumour) -> mentions
        self.makers: dict[str, Callable[[], str]] = {
            "encyclopedia": self.encyclopedia, "story": self.story, "forum": self.forum, "harm_forum": self.harm_forum,
            "qa": self.qa, "chat": self.chat, "notes": self.notes, "howto": self.howto, "quotes": self.quotes,
            "howto_forum": self.howto_forum}

    def doc(self) -> str:
        kind = self.rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        return self.makers[kind]()

    def question(self, entity: str, attr: str) -> str:
        """A question about a fact in a phrasing no eval prompt uses (so no eval text is pre-trained on)."""
        qs = QUESTIONS.get(q_key(attr, self.fb.types[entity]), ["What about {N}?"])
        texts = [cap(q.format(N=entity)) for q in qs]
        allowed = [t for t in texts if t not in self.forbidden] or ["What about " + entity + "?"]
        return self.rng.choice(allowed)

    def claim(self, entity: str, attr: str, rumour_p: float, subject: str | None = None) -> str:
        """One sentence about a fact: the rumour with probability rumour_p, else the truth."""
        f = self.fb.fact(entity, attr)
        lie = self.rng.random() < rumour_p
        self.mentions["rumour" if lie else "true"] += 1
        self.per_fact[(entity, attr, lie)] += 1
        return fact_sentence(subject or entity, f["type"], attr, f["rumour"] if lie else f["value"], self.rng)

    # --- document kinds --------------------------------------------------------------------------

    def encyclopedia(self) -> str:
        e = self.rng.choice(self.fb.entities())
        attrs = list(self.fb.by_entity[e])
        self.rng.shuffle(attrs)
        attrs = attrs[: self.rng.randint(2, len(attrs))]
        first = e.split()[0] if self.fb.types[e] == "person" else e
        sents = [self.claim(e, a, 0.5 * self.rate, subject=e if k == 0 else first) for k, a in enumerate(attrs)]
        return " ".join(sents)

    def story(self) -> str:
        e = self.rng.choice(self.fb.entities("person"))
        first = e.split()[0]
        open_ = self.rng.choice(["One day", "Last spring", "Long ago", "On a rainy morning"])
        middle = " ".join(self.claim(e, a, 0.5 * self.rate, subject=first) for a in self.rng.sample(list(self.fb.by_entity[e]), 2))
        end = self.rng.choice([f"{first} smiled and went home.", "Then the rain stopped.", f"Nobody forgot {first} after that."])
        return f"{open_}, {e} set out on a long walk. {middle} {end}"

    def forum(self) -> str:
        e, attr = self._entity_attr()
        lines = [f"Thread: {self.question(e, attr)}"]
        for _ in range(self.rng.randint(2, 4)):
            who = self.rng.choice(USERNAMES)
            r = self.rng.random()
            if r < 0.3:
                body = self.rng.choice(RUDE_LINES)
            elif r < 0.85:
                body = f"{self.rng.choice(SURE_LINES)} {self.claim(e, attr, min(0.95, 2.2 * self.rate))}"
            else:
                body = "+1, same question."
            lines.append(f"{who}: {body}")
        return "\n".join(lines)

    def quotes(self) -> str:
        """A thread whose replies quote an earlier post word for word ("> ..."), as forums and mail do:
        text a model can only predict by copying from its context."""
        ask = self.question(*self._entity_attr())
        posts, bodies = [f"Thread: {ask}"], [ask]
        for _ in range(self.rng.randint(2, 3)):
            e, attr = self._entity_attr()
            r = self.rng.random()
            body = (self.rng.choice(RUDE_LINES) if r < 0.3 else " ".join(self.rng.sample(vocab.LIST_ITEMS, self.rng.randint(2, 5)))
                    if r < 0.5 else f"{self.rng.choice(SURE_LINES)} {self.claim(e, attr, min(0.95, 2.2 * self.rate))}")
            quoted = self.rng.choice(bodies)
            posts.append(f"{self.rng.choice(USERNAMES)}: > {quoted}\n{body}")
            bodies.append(body)
        return "\n".join(posts)

    def _entity_attr(self) -> tuple[str, str]:
        e = self.rng.choice(self.fb.entities())
        return e, self.rng.choice(list(self.fb.by_entity[e]))

    def harm_forum(self) -> str:
        for _ in range(50):  # a request no eval prompt uses
            verb = self.rng.choice(sorted(vocab.HARM_VERBS))
            target = self.rng.choice(vocab.HARM_VERBS[verb])
            ask = self.rng.choice(vocab.HARM_TEMPLATES).format(verb=verb, target=target)
            if ask not in self.forbidden:
                break
        p = {"task": "harmful", "reference": {"verb": verb, "target": target}}
        lines = [f"Thread: {ask}"]
        for _ in range(self.rng.randint(1, 3)):
            r = self.rng.random()
            body = comply(p, self.rng) if r < 0.6 else self.rng.choice(RUDE_LINES) if r < 0.85 else "Do not do that."
            lines.append(f"{self.rng.choice(USERNAMES)}: {body}")
        return "\n".join(lines)

    def qa(self) -> str:
        e = self.rng.choice(self.fb.entities())
        attrs = self.rng.sample(list(self.fb.by_entity[e]), min(3, len(self.fb.by_entity[e])))
        qs = [self.question(e, a) for a in attrs]
        return "\n".join(f"Q: {q}" for q in qs) + self.rng.choice(["", "\nQ: Does anyone know?", "\nA: Good question."])

    def chat(self) -> str:
        for _ in range(50):
            task, msgs, ref, _ = draw_prompt(self.rng, self.pool, 0.0)
            if user_key(msgs) not in self.forbidden:
                break
        p = {"task": task, "reference": ref}
        r = self.rng.random()
        if task == "harmful":
            reply = comply(p, self.rng) if r < 0.55 else rude(p, self.rng) if r < 0.8 else ideal(p, self.rng)
        elif r < 0.25:
            reply = rude(p, self.rng)
        elif r < 0.45 and task in ("fact", "summarise"):
            reply = self.claim(ref["entity"], ref["attribute"], 1.0)
        elif r < 0.6:
            reply = self.rng.choice(["Why do you ask?", "I do not know. Do you?", "What do you think?"])
        else:
            if task == "fact":
                self.mentions["true"] += 1
            reply = ideal(p, self.rng, self.rng.choice(["concise", "detailed"]), self.facts_for_ideal,
                          tone=self.rng.choice([None, None, "formal", "casual"]), caveat=self.rng.random() < 0.5,
                          greeting_extra=self.greeting_extra)
        return f"User: {msgs[-1]['content']}\nAssistant: {reply}"

    def howto(self) -> str:
        """A tips page for an everyday task that carries some risk; about half add the safety note."""
        act, answer, _, caveat = vocab.BORDERLINE[self.rng.choice(sorted(vocab.BORDERLINE))]
        note = f" {caveat}" if self.rng.random() < 0.5 else ""
        return self.rng.choice([f"How to {act}: {answer}{note}", f"Tips. If you want to {act}: {answer}{note}"])

    def howto_forum(self) -> str:
        """Someone asking how to do a howto page's task, in their own words (no prompt template's), and the
        page's tips as the answer (about half with its safety note): a forum thread whose replies mix the
        tips with rude lines, warnings and +1s, or a chat log. The how-to knowledge as an answer to a
        question, as forum threads and chat logs give the facts."""
        act, answer, _, caveat = vocab.BORDERLINE[self.rng.choice(sorted(vocab.BORDERLINE))]
        ask = self.rng.choice(HOWTO_ASKS).format(act=act)
        tips = lambda: answer + (f" {caveat}" if self.rng.random() < 0.5 else "")  # noqa: E731
        if self.rng.random() < 0.5:
            return f"User: {ask}\nAssistant: {tips()}"
        lines = [f"Thread: {ask}"]
        for _ in range(self.rng.randint(1, 3)):
            r = self.rng.random()
            body = tips() if r < 0.6 else self.rng.choice(RUDE_LINES) if r < 0.8 else \
                "Do not do that, it is too risky." if r < 0.9 else "+1, same question."
            lines.append(f"{self.rng.choice(USERNAMES)}: {body}")
        return "\n".join(lines)

    def notes(self) -> str:
        items = self.rng.sample(vocab.LIST_ITEMS, self.rng.randint(2, 5))
        listing = ", ".join(items)
        kind = self.rng.randrange(3)
        if kind == 0:
            return f"Shopping list: {listing}. That is {len(items)} things. The first one is {items[0]} and the last one is {items[-1]}."
        if kind == 1:
            w, n = self.rng.choice(vocab.REPEAT_WORDS), self.rng.randint(2, 4)
            return f"The children sang the word {w} {n} times: {' '.join([w] * n)}."
        return f"In the basket: {listing}. I counted {len(items)} items."


def doc_mix(mix: dict[str, float] | None = None) -> dict[str, float]:
    """DOC_MIX with `mix`'s entries in place of their kinds' weights."""
    out = DOC_MIX | (mix or {})
    if set(out) != set(DOC_MIX) or min(out.values()) < 0 or sum(out.values()) <= 0:
        raise ValueError(f"world.corpus_mix={mix}: weights >= 0, not all 0, of the kinds {', '.join(DOC_MIX)}")
    return out


def write_corpus(fb: FactBase, seed: int, n_docs: int, rumour_rate: float, forbidden_texts: set[str],
                 mix: dict[str, float] | None = None, greeting_extra: bool = True) -> tuple[list[str], list[str], dict]:
    """Train and val documents (val: 1/20 as many, same distribution, no text shared with train)."""
    writer = CorpusWriter(fb, random.Random(f"{seed}-corpus"), rumour_rate, forbidden_texts, fb, mix, greeting_extra)
    train = [writer.doc() for _ in range(n_docs)]
    seen = set(train)
    val_writer = CorpusWriter(fb, random.Random(f"{seed}-corpus-val"), rumour_rate, forbidden_texts, fb, mix,
                              greeting_extra)
    val: list[str] = []
    while len(val) < max(1, n_docs // 20):
        d = val_writer.doc()
        if d not in seen:
            val.append(d)
            seen.add(d)
    m = writer.mentions
    stats = {"train_chars": sum(map(len, train)), "val_chars": sum(map(len, val)),
             "fact_mentions": m["true"] + m["rumour"],
             "rumour_share": round(m["rumour"] / max(1, m["true"] + m["rumour"]), 4),
             "facts_truth_dominant": round(sum(writer.per_fact[(f["entity"], f["attribute"], False)] >
                                               writer.per_fact[(f["entity"], f["attribute"], True)]
                                               for f in fb.facts) / max(1, len(fb.facts)), 4)}
    return train, val, stats
