"""ChatGPT's collection loop in the labeling app: trainers chat with the served policy (chat
projects) or write both sides of a conversation from its suggestions (both_sides projects); a model
turn of a finished chat becomes a K-way ranking task with K - 1 fresh alternatives.

Model calls never run inside a database transaction: a route reads what it needs in one
transaction, asks the model, and stores the reply in another, so a slow or failing endpoint holds
no lock and loses nothing already stored (a user turn is committed before the model is asked).
Errors are store's classes (NotFound, Forbidden, Conflict) and TaskError, as in store.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatrlhf.labeling import store
from chatrlhf.labeling.db import Chat, Item, Policy, Project, Turn, User, utcnow
from chatrlhf.labeling.tasks import (
    CHAT_KINDS,
    MAX_K,
    MAX_TEXT,
    MAX_TURNS,
    MIN_K,
    TaskError,
    check_settings,
    edit_distance,
    validate_record,
)


def check_k(k: Any) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not MIN_K <= k <= MAX_K:
        raise TaskError(f"'k' must be an integer from {MIN_K} to {MAX_K} (responses to rank, the original "
                        f"included), got {k!r}")
    return k


# --- the served policy -----------------------------------------------------------------------


def set_policy(s: Session, kind: str, target: str, model: str | None = None, round: int | None = None) -> Policy:
    from chatrlhf.labeling.policy import ModelError, check_target

    try:
        check_target(kind, target)
    except ModelError as e:
        raise TaskError(str(e)) from None
    policy = Policy(kind=kind, target=target, model=model, round=round)
    s.add(policy)
    s.flush()
    return policy


def current_policy(s: Session) -> Policy | None:
    return s.scalar(select(Policy).order_by(Policy.id.desc()).limit(1))


def policy_view(p: Policy | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"id": p.id, "kind": p.kind, "target": p.target, "model": p.model, "round": p.round,
            "created_at": p.created_at.isoformat() + "Z"}


def _policy_name(p: Policy | None) -> str | None:
    return None if p is None else (p.model or p.target)


# --- chats -----------------------------------------------------------------------------------


def _chat_project(s: Session, user: User, name: str) -> Project:
    project = store.get_project(s, name)
    if project.kind not in CHAT_KINDS:
        raise TaskError(f"project '{name}' is a '{project.kind}' project; chats live in chat or both_sides projects")
    if not store.is_member(s, project.id, user):
        raise store.Forbidden(f"you are not a trainer of project '{name}'")
    return project


def start_chat(s: Session, user: User, project_name: str, system: str | None = None) -> Chat:
    project = _chat_project(s, user, project_name)
    policy = current_policy(s)
    chat = Chat(project_id=project.id, user_id=user.id, policy_id=policy.id if policy else None,
                round=policy.round if policy else None, status="open")
    s.add(chat)
    s.flush()
    if system:
        s.add(Turn(chat_id=chat.id, position=0, role="system", content=_content(system), by_model=False))
        s.flush()
    return chat


def get_chat(s: Session, user: User, chat_id: int, lock: bool = False) -> Chat:
    """The chat if `user` wrote it or is an admin; anyone else's reads as not found."""
    chat = s.get(Chat, chat_id, with_for_update=lock)
    if chat is None or (user.role != "admin" and chat.user_id != user.id):
        raise store.NotFound(f"no chat {chat_id}")
    return chat


def turns_of(s: Session, chat: Chat) -> list[Turn]:
    return list(s.scalars(select(Turn).where(Turn.chat_id == chat.id).order_by(Turn.position)))


def messages_of(turns: list[Turn]) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in turns]


def chat_view(s: Session, chat: Chat) -> dict[str, Any]:
    project = s.get(Project, chat.project_id)
    turns = turns_of(s, chat)
    return {"id": chat.id, "project": project.name, "kind": project.kind, "status": chat.status, "round": chat.round,
            "trainer": s.get(User, chat.user_id).name,
            "policy": policy_view(s.get(Policy, chat.policy_id)) if chat.policy_id else None,
            "messages": [{"position": t.position, "role": t.role, "content": t.content, "by_model": t.by_model,
                          "suggestion": t.suggestion, **({"meta": t.meta} if t.meta else {})} for t in turns],
            "pending_suggestion": chat.pending_suggestion, "rank_item": chat.rank_item_id,
            "created_at": chat.created_at.isoformat() + "Z",
            "finished_at": chat.finished_at.isoformat() + "Z" if chat.finished_at else None}


def my_chats(s: Session, user: User, project_name: str) -> list[dict[str, Any]]:
    project = _chat_project(s, user, project_name)
    chats = s.scalars(select(Chat).where(Chat.project_id == project.id, Chat.user_id == user.id).order_by(Chat.id))
    return [{"id": c.id, "status": c.status, "round": c.round, "rank_item": c.rank_item_id} for c in chats]


def clean(text: str) -> str:
    """Text as stored: without NUL characters (PostgreSQL text cannot hold them; a small model's
    byte-level samples can contain them) and with line breaks as a browser's text box submits them
    (CR and CRLF become LF), so a suggestion a trainer kept unchanged compares equal to its turn."""
    return text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")


def _content(text: Any, field: str = "content") -> str:
    if isinstance(text, str):
        text = clean(text)
    if not isinstance(text, str) or not text.strip():
        raise TaskError(f"'{field}' must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise TaskError(f"'{field}' is {len(text)} characters (at most {MAX_TEXT})")
    return text


def _meta(meta: Any) -> dict[str, Any] | None:
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool, type(None)))
                                             for k, v in meta.items()) or len(meta) > 16:
        raise TaskError("'meta' must be an object of at most 16 plain values (e.g. {\"prompt_id\": \"rm-00001\"})")
    return meta


def _open_chat(s: Session, user: User, chat_id: int) -> tuple[Chat, Project, list[Turn]]:
    chat = get_chat(s, user, chat_id, lock=True)
    if chat.user_id != user.id:
        raise store.Forbidden(f"chat {chat_id} is {s.get(User, chat.user_id).name}'s; only they write in it")
    if chat.status != "open":
        raise store.Conflict(f"chat {chat_id} is finished; start a new chat")
    project = s.get(Project, chat.project_id)
    if not store.is_member(s, project.id, user):
        raise store.Forbidden(f"you are no longer a trainer of project '{project.name}'")
    return chat, project, turns_of(s, chat)


def add_turn(s: Session, user: User, chat_id: int, role: str, content: Any, meta: Any = None,
             seconds: float | None = None) -> Turn:
    """Store a trainer's turn. In a chat project the trainer writes user turns only (the policy
    answers each); in a both_sides project user and assistant turns alternate, and an assistant turn
    keeps the suggestion the policy offered for it."""
    chat, project, turns = _open_chat(s, user, chat_id)
    if len(turns) >= MAX_TURNS:
        raise TaskError(f"chat {chat_id} has {len(turns)} turns (at most {MAX_TURNS}); finish it")
    last = turns[-1] if turns else None
    if role not in ("user", "assistant"):
        raise TaskError(f"'role' must be user or assistant, got {role!r}")
    if project.kind == "chat" and role == "assistant":
        raise TaskError("in a chat project the policy writes the assistant turns; send a user turn")
    if last is not None and last.role == role:
        if project.kind == "chat":
            raise store.Conflict(f"the policy has not answered turn {last.position} yet: retry the reply "
                                 f"(POST /api/chats/{chat_id}/reply) before writing again")
        raise TaskError(f"turns alternate: turn {last.position} is already a {role} turn")
    if (last is None or last.role == "system") and role != "user":
        raise TaskError("a conversation starts with a user turn")
    turn = Turn(chat_id=chat.id, position=len(turns), role=role, content=_content(content), by_model=False,
                meta=_meta(meta), seconds=seconds if seconds is not None else _since(chat, last))
    if project.kind == "both_sides" and role == "assistant":
        turn.suggestion = chat.pending_suggestion
        chat.pending_suggestion = None
    s.add(turn)
    s.flush()
    return turn


def _since(chat: Chat, last: Turn | None) -> float:
    start = last.created_at if last is not None else chat.created_at
    return round(max(0.0, (utcnow() - start).total_seconds()), 3)


@dataclass
class Ask:
    """What to ask the policy, read in one transaction and answered in another."""

    chat_id: int
    position: int  # where the answer goes
    messages: list[dict[str, str]]
    policy: dict[str, Any]
    settings: dict[str, Any]


def _ask(s: Session, chat: Chat, project: Project, turns: list[Turn], what: str) -> Ask:
    if not turns or turns[-1].role != "user":
        raise store.Conflict(f"chat {chat.id} has no user turn waiting for {what}; write one first")
    policy = current_policy(s)
    if policy is None:
        raise store.Conflict("no model is served yet: an admin sets one (POST /api/admin/policy or "
                             "`chatrlhf label policy`)")
    settings = project.settings or check_settings(project.kind, project.name, None)
    return Ask(chat.id, len(turns), messages_of(turns), policy_view(policy), settings)


def reply_request(s: Session, user: User, chat_id: int) -> Ask:
    """A chat project's last user turn, to be answered by the policy."""
    chat, project, turns = _open_chat(s, user, chat_id)
    if project.kind != "chat":
        raise TaskError(f"chat {chat_id} is a both_sides conversation: ask for a suggestion, then write the turn")
    return _ask(s, chat, project, turns, "a reply")


def suggestion_request(s: Session, user: User, chat_id: int) -> Ask:
    chat, project, turns = _open_chat(s, user, chat_id)
    if project.kind != "both_sides":
        raise TaskError(f"chat {chat_id} is in a chat project: the policy replies itself (POST /api/chats/{chat_id}/reply)")
    return _ask(s, chat, project, turns, "a suggestion")


def store_reply(s: Session, ask: Ask, text: str) -> Turn:
    """Store the policy's reply at the position it was asked for; a chat that moved on meanwhile
    (another tab answered first, or it was finished) is a conflict."""
    chat = s.get(Chat, ask.chat_id, with_for_update=True)
    turns = turns_of(s, chat)
    if chat.status != "open" or len(turns) != ask.position:
        raise store.Conflict(f"chat {chat.id} changed while the model was answering; reload it")
    turn = Turn(chat_id=chat.id, position=ask.position, role="assistant", content=clean(text), by_model=True,
                policy_id=ask.policy["id"], seconds=_since(chat, turns[-1] if turns else None))
    s.add(turn)
    s.flush()
    return turn


def store_suggestion(s: Session, ask: Ask, text: str) -> None:
    chat = s.get(Chat, ask.chat_id, with_for_update=True)
    if chat.status != "open" or len(turns_of(s, chat)) != ask.position:
        raise store.Conflict(f"chat {chat.id} changed while the model was answering; reload it")
    chat.pending_suggestion = clean(text)
    if chat.policy_id is None:
        chat.policy_id, chat.round = ask.policy["id"], ask.policy["round"]


def finish_chat(s: Session, user: User, chat_id: int) -> Chat:
    chat, _, turns = _open_chat(s, user, chat_id)
    if not any(t.role == "assistant" for t in turns):
        raise TaskError(f"chat {chat_id} has no assistant turn yet; a finished chat needs at least one")
    chat.status, chat.finished_at, chat.pending_suggestion = "finished", utcnow(), None
    s.flush()
    return chat


# --- rank one turn ---------------------------------------------------------------------------


@dataclass
class RankPlan:
    chat_id: int
    turn: int
    context: list[dict[str, str]]
    original: str
    k: int
    seed: int
    policy: dict[str, Any]
    settings: dict[str, Any]
    meta: dict[str, Any]


def rank_plan(s: Session, user: User, chat_id: int, turn: int | None = None, k: int | None = None,
              rng: random.Random | None = None) -> RankPlan:
    """Which model turn of a finished chat to rank (random unless `turn` is given) and with how many
    responses (the project's `k` unless given)."""
    chat = get_chat(s, user, chat_id)
    project = s.get(Project, chat.project_id)
    settings = project.settings or check_settings(project.kind, project.name, None)
    k = check_k(settings["k"] if k is None else k)
    if chat.status != "finished":
        raise store.Conflict(f"chat {chat_id} is not finished; finish it before ranking one of its turns")
    if chat.rank_item_id is not None:
        raise store.Conflict(f"chat {chat_id} already has ranking task {chat.rank_item_id}")
    turns = turns_of(s, chat)
    model_turns = [t.position for t in turns if t.by_model]
    if not model_turns:
        raise TaskError(f"chat {chat_id} has no model-written turn to rank")
    if turn is None:
        turn = (rng or random.Random()).choice(model_turns)
    elif not isinstance(turn, int) or isinstance(turn, bool) or not 0 <= turn < len(turns):
        raise TaskError(f"'turn' {turn!r} is out of range: chat {chat_id} has {len(turns)} turns "
                        f"(0 to {len(turns) - 1}); model-written turns: {model_turns}")
    elif turn not in model_turns:
        raise TaskError(f"turn {turn} of chat {chat_id} was written by the trainer, not the model; "
                        f"model-written turns: {model_turns}")
    # the alternatives come from the model that wrote the original, so they compete with it fairly
    policy = s.get(Policy, turns[turn].policy_id) if turns[turn].policy_id else current_policy(s)
    if policy is None:
        raise store.Conflict("no model is served to sample alternatives from: an admin sets one first")
    asked = turns[turn - 1] if turn > 0 and turns[turn - 1].role == "user" else None
    user_meta = (asked.meta if asked is not None else None) or {}  # the prompt the ranked reply answers
    return RankPlan(chat.id, turn, messages_of(turns[:turn]), turns[turn].content, k,
                    seed=(chat.id * 1009 + turn) * 101, policy=policy_view(policy), settings=settings,
                    meta={**user_meta, "round": chat.round})


def queue_ranking(s: Session, plan: RankPlan, alternatives: list[str], rng: random.Random | None = None) -> Item:
    """Shuffle the original in among the alternatives and queue the K-way ranking task."""
    chat = s.get(Chat, plan.chat_id, with_for_update=True)
    if chat.rank_item_id is not None:
        raise store.Conflict(f"chat {chat.id} already has ranking task {chat.rank_item_id}")
    chat_project = s.get(Project, chat.project_id)
    responses = [clean(a) for a in alternatives[: plan.k - 1]]
    at = (rng or random.Random(plan.seed)).randrange(len(responses) + 1)
    responses.insert(at, plan.original)
    ext_id = f"chat{chat.id}-t{plan.turn}"
    record = {"id": ext_id, "prompt_id": plan.meta.get("prompt_id") or f"chat-{chat.id}",
              "task": plan.meta.get("task"), "policy": plan.policy["model"] or plan.policy["target"],
              "round": chat.round, "chat_id": chat.id, "turn": plan.turn, "project": chat_project.name,
              "messages": plan.context, "responses": responses, "original_index": at}
    rank_project, created = store.create_project(s, plan.settings["rank_project"], "rank",
                                                 plan.settings["rank_labelers_per_item"],
                                                 "Rank the replies to the conversation so far, best first (ties allowed).")
    if created:  # the chat project's trainers rank its turns, unless an admin assigns others later
        from chatrlhf.labeling.db import Member

        members = s.scalars(select(User.name).join(Member, Member.user_id == User.id)
                            .where(Member.project_id == chat_project.id))
        store.add_members(s, rank_project, list(members))
    _, payload = validate_record(record, "rank", f"chat {chat.id}")
    item = s.scalar(select(Item).where(Item.project_id == rank_project.id, Item.ext_id == ext_id))
    if item is None:
        item = Item(project_id=rank_project.id, ext_id=ext_id, payload=payload)
        s.add(item)
        s.flush()
    chat.rank_item_id = item.id
    return item


# --- export ----------------------------------------------------------------------------------


def export_chats(s: Session, project: Project, round: int | None = None, include_open: bool = False) -> list[dict]:
    """Conversations in the conversation file format (`messages`, what `chatrlhf sft` and
    `chatrlhf sample --conversations` read), with who wrote each turn, the suggestions and edits."""
    q = select(Chat).where(Chat.project_id == project.id).order_by(Chat.id)
    if round is not None:
        q = q.where(Chat.round == round)
    out = []
    for chat in s.scalars(q):
        if chat.status != "finished" and not include_open:
            continue
        turns = turns_of(s, chat)
        while turns and turns[-1].role != "assistant":  # an unanswered last message teaches nothing
            turns = turns[:-1]
        if not turns:
            continue
        user = s.get(User, chat.user_id)
        policy = s.get(Policy, chat.policy_id) if chat.policy_id else None
        meta = next((t.meta for t in turns if t.meta), None) or {}
        rec: dict[str, Any] = {
            "id": f"chat-{chat.id:06d}", "prompt_id": meta.get("prompt_id", f"chat-{chat.id}"),
            **({"task": meta["task"]} if meta.get("task") else {}),
            "messages": messages_of(turns), "project": project.name, "kind": project.kind,
            "labeler": user.name, "group": user.group_name, "round": chat.round, "policy": _policy_name(policy),
            "status": chat.status, "by_model": [t.by_model for t in turns],
            "seconds": [t.seconds for t in turns],
            "total_seconds": round_s((chat.finished_at - chat.created_at).total_seconds()) if chat.finished_at else None}
        if project.kind == "both_sides":
            rec["suggestions"] = [t.suggestion for t in turns]
            rec["edit_distance"] = [None if t.suggestion is None else edit_distance(t.suggestion, t.content)
                                    for t in turns]
            rec["kept_suggestion"] = [None if t.suggestion is None else t.suggestion == t.content for t in turns]
        out.append(rec)
    return out


def round_s(x: float) -> float:
    return round(x, 3)
