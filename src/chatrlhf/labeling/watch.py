"""What to watch in a team of trainers, per trainer and per group (`users.group_name`):

- agreement on overlapping items: over rank items that two people ranked, the share of response
  pairs both order strictly that they order the same way (InstructGPT sec. 3.4); a trainer's figure
  pools every pair they are part of, a group's the pairs inside the group ("within") and the pairs
  with someone outside it ("across");
- time per task: seconds from claiming an item to submitting it (rank, demo, likert), and from
  starting a chat to finishing it;
- suggestions: how often the model's suggestion was kept unchanged (both_sides assistant turns and
  demo items with a suggestion), and the mean edit distance of the ones changed.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatrlhf.labeling.agreement import ranking_pairs
from chatrlhf.labeling.db import Chat, Item, Project, Submission, Turn, User
from chatrlhf.labeling.tasks import edit_distance


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def _share(a: int, b: int) -> float | None:
    return a / b if b else None


@dataclass
class _Tally:
    """What each trainer did, by name: counted once, then summed per trainer and per group."""

    tasks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    task_seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    chats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    chat_seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # name -> edit distance of each suggestion (0 = kept)
    sugg: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    by_item: dict[int, dict[str, list[int]]] = field(default_factory=lambda: defaultdict(dict))  # item -> name -> ranks
    pair_counts: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0]))  # agree, compared, items


def watch_report(s: Session, round_no: int | None = None) -> dict[str, Any]:
    users = {u.id: u for u in s.scalars(select(User))}
    group_of = {u.name: u.group_name for u in users.values()}
    t = _Tally()
    _tally_submissions(s, users, round_no, t)
    _tally_chats(s, users, round_no, t)
    _tally_pairs(t)
    names = sorted(set(t.tasks) | set(t.chats) | set(t.sugg) | {u.name for u in users.values() if u.role == "labeler"})

    trainers = []
    for n in names:
        mine = [p for p in t.pair_counts if n in p]
        trainers.append({"name": n, "group": group_of.get(n), **_summary(t, {n}, [], mine)})
        del trainers[-1]["agreement_within"], trainers[-1]["agreement_across"]
    groups = []
    for g in sorted({group_of.get(n) for n in names} - {None}):
        members = {n for n in names if group_of.get(n) == g}
        within = [p for p in t.pair_counts if p[0] in members and p[1] in members]
        across = [p for p in t.pair_counts if (p[0] in members) != (p[1] in members)]
        groups.append({"group": g, "members": sorted(members), **_summary(t, members, within, across)})
    return {"round": round_no, "measure": "agreement: share of response pairs two rankers order the same way "
                                       "(pairs either tied left out), over items both ranked",
            "trainers": trainers, "groups": groups}


def _tally_submissions(s: Session, users: dict[int, User], round_no: int | None, t: _Tally) -> None:
    """Tasks and their seconds per trainer, rankings per rank item, edits of demo items' suggestions."""
    rows = s.execute(select(Submission, Item, Project.kind).join(Item, Item.id == Submission.item_id)
                     .join(Project, Project.id == Item.project_id))
    for sub, item, kind in rows:
        if round_no is not None and item.payload.get("round") != round_no:
            continue
        name = users[sub.user_id].name
        t.tasks[name] += 1
        if sub.seconds is not None:
            t.task_seconds[name].append(sub.seconds)
        if kind == "rank":
            t.by_item[item.id][name] = sub.data["ranks"]
        elif kind == "demo" and item.payload.get("suggestion") is not None:
            n = len(item.payload["messages"])
            if len(sub.data["messages"]) > n:
                t.sugg[name].append(edit_distance(item.payload["suggestion"], sub.data["messages"][n]["content"]))


def _tally_chats(s: Session, users: dict[int, User], round_no: int | None, t: _Tally) -> None:
    """Finished chats and their seconds per trainer, edits of both_sides suggestions."""
    chat_q = select(Chat)
    if round_no is not None:
        chat_q = chat_q.where(Chat.round == round_no)
    chat_ids: dict[int, str] = {}
    for chat in s.scalars(chat_q):
        name = users[chat.user_id].name
        chat_ids[chat.id] = name
        if chat.status == "finished":
            t.chats[name] += 1
            t.chat_seconds[name].append((chat.finished_at - chat.created_at).total_seconds())
    if chat_ids:
        for turn in s.scalars(select(Turn).where(Turn.chat_id.in_(list(chat_ids)), Turn.suggestion.is_not(None))):
            t.sugg[chat_ids[turn.chat_id]].append(edit_distance(turn.suggestion, turn.content))


def _tally_pairs(t: _Tally) -> None:
    """Agreement of every two trainers over the rank items both ranked."""
    for answers in t.by_item.values():
        for a, b in combinations(sorted(answers), 2):
            agree, total = ranking_pairs(answers[a], answers[b])
            acc = t.pair_counts[(a, b)]
            acc[0] += agree
            acc[1] += total
            acc[2] += 1


def _summary(t: _Tally, members: set[str], pairs_in: list[tuple[str, str]],
             pairs_out: list[tuple[str, str]]) -> dict[str, Any]:
    """One trainer's or one group's figures; agreement within and across from the given pairs."""
    ins = [t.pair_counts[p] for p in pairs_in]
    outs = [t.pair_counts[p] for p in pairs_out]
    both = ins + outs
    edits = [d for m in members for d in t.sugg.get(m, [])]
    changed = [d for d in edits if d]
    secs = [x for m in members for x in t.task_seconds.get(m, [])]
    csecs = [x for m in members for x in t.chat_seconds.get(m, [])]
    return {"tasks": sum(t.tasks.get(m, 0) for m in members), "chats": sum(t.chats.get(m, 0) for m in members),
            "overlap_items": sum(c[2] for c in both),
            "agreement": _share(sum(c[0] for c in both), sum(c[1] for c in both)),
            "compared_pairs": sum(c[1] for c in both),
            "agreement_within": _share(sum(c[0] for c in ins), sum(c[1] for c in ins)),
            "agreement_across": _share(sum(c[0] for c in outs), sum(c[1] for c in outs)),
            "median_seconds_per_task": _median(secs), "median_seconds_per_chat": _median(csecs),
            "suggestions": len(edits), "kept_unchanged": _share(len(edits) - len(changed), len(edits)),
            "mean_edit_distance_when_changed": round(sum(changed) / len(changed), 2) if changed else None}
