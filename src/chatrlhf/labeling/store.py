"""What the labeling app does to its database: users and tokens, projects, the queue, answers, export.

Every function takes an open Session inside a transaction; the caller commits before it answers the
client, so an acknowledged answer is on disk. Errors are the classes below; the web layer maps them
to 403/404/409/422.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from chatrlhf.labeling import auth
from chatrlhf.labeling.agreement import agreement
from chatrlhf.labeling.db import Claim, Item, Member, Project, Submission, Token, User, utcnow
from chatrlhf.labeling.tasks import (CHAT_KINDS, KINDS, TaskError, check_settings, edit_distance, validate_record,
                                     validate_submission)


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    pass


class Conflict(ValueError):
    pass


# --- users and tokens ------------------------------------------------------------------------


def get_user(s: Session, name: str) -> User:
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named '{name}'")
    return user


def create_user(s: Session, name: str, role: str, password: str | None = None,
                group: str | None = None) -> tuple[User, str]:
    """A new user and a fresh API token (shown once; only its hash is stored). `group`: the team
    the watch report groups trainers by."""
    if role not in ("admin", "labeler"):
        raise TaskError(f"'role' must be admin or labeler, got {role!r}")
    if s.scalar(select(User).where(User.name == name)) is not None:
        raise Conflict(f"user '{name}' already exists")
    user = User(name=name, role=role, password_hash=auth.hash_password(password) if password else None,
                group_name=group)
    s.add(user)
    s.flush()
    return user, issue_token(s, user)


def set_group(s: Session, user_id: int, group: str | None) -> User:
    """A user's own say of which group of labelers they belong to (None: none); exports and the
    watch report group their answers by it, and `chatrlhf iterate` can train on one group's."""
    user = s.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    user.group_name = group
    s.flush()
    return user


def issue_token(s: Session, user: User, kind: str = "api", token: str | None = None) -> str:
    token = token or auth.new_token()
    s.add(Token(token_hash=auth.token_hash(token), user_id=user.id, kind=kind))
    s.flush()
    return token


def user_for_token(s: Session, token: str) -> User | None:
    return s.scalar(select(User).join(Token, Token.user_id == User.id)
                    .where(Token.token_hash == auth.token_hash(token)))


def login(s: Session, name: str, password: str) -> tuple[User, str]:
    user = s.scalar(select(User).where(User.name == name))
    if user is None or not auth.verify_password(password, user.password_hash):
        raise Forbidden("wrong name or password")
    return user, issue_token(s, user, kind="session")


def logout(s: Session, token: str) -> None:
    tok = s.scalar(select(Token).where(Token.token_hash == auth.token_hash(token), Token.kind == "session"))
    if tok is not None:
        s.delete(tok)


def revoke_tokens(s: Session, user: User) -> int:
    """Delete every token (API and session) of `user`; returns how many there were. A new one can be
    issued with POST /api/admin/users/{name}/token."""
    tokens = list(s.scalars(select(Token).where(Token.user_id == user.id)))
    for tok in tokens:
        s.delete(tok)
    s.flush()
    return len(tokens)


def ensure_admin_token(s: Session, name: str, token: str) -> None:
    """Make `token` valid for admin `name` (used by `label serve` with CHATRLHF_LABEL_ADMIN_TOKEN)."""
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, role="admin")
        s.add(user)
        s.flush()
    elif user.role != "admin":
        raise Conflict(f"user '{name}' exists and is not an admin")
    if s.scalar(select(Token).where(Token.token_hash == auth.token_hash(token))) is None:
        issue_token(s, user, token=token)


# --- projects --------------------------------------------------------------------------------


def get_project(s: Session, name: str, lock: bool = False) -> Project:
    q = select(Project).where(Project.name == name)
    project = s.scalar(q.with_for_update() if lock else q)
    if project is None:
        raise NotFound(f"no project named '{name}'")
    return project


def create_project(s: Session, name: str, kind: str, labelers_per_item: int = 1, instructions: str = "",
                   settings: dict[str, Any] | None = None) -> tuple[Project, bool]:
    """Create a project, or return the existing one of the same kind (idempotent). `settings`:
    chat projects only (`chats.SETTINGS`: K, the rank project, sampling)."""

    if kind not in KINDS:
        raise TaskError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    checked = check_settings(kind, name, settings)
    old = s.scalar(select(Project).where(Project.name == name))
    if old is not None:
        if old.kind != kind:
            raise Conflict(f"project '{name}' exists with kind '{old.kind}', not '{kind}'")
        if settings is not None and checked != old.settings:
            old.settings = checked  # an admin changes K or sampling for the chats to come
        return old, False
    project = Project(name=name, kind=kind, labelers_per_item=labelers_per_item, instructions=instructions,
                      settings=checked)
    s.add(project)
    s.flush()
    return project, True


def add_members(s: Session, project: Project, names: list[str]) -> int:
    added = 0
    for name in names:
        user = get_user(s, name)
        if s.get(Member, (project.id, user.id)) is None:
            s.add(Member(project_id=project.id, user_id=user.id))
            added += 1
    s.flush()
    return added


def is_member(s: Session, project_id: int, user: User) -> bool:
    return s.get(Member, (project_id, user.id)) is not None


def import_items(s: Session, project: Project, records: list[Any], where: Callable[[int], str] | None = None) -> dict[str, int]:
    """Add task records; a record whose id is already there with the same content is skipped.
    `where(i)` names record i in error messages (default "record i", 0-based)."""
    where = where or (lambda i: f"record {i}")
    validated = [validate_record(r, project.kind, where(i)) for i, r in enumerate(records)]
    ids = [e for e, _ in validated]
    if len(set(ids)) != len(ids):
        dup = next(e for e in ids if ids.count(e) > 1)
        raise TaskError(f"id '{dup}' appears more than once in this import")
    existing = {i.ext_id: i for i in s.scalars(select(Item).where(Item.project_id == project.id, Item.ext_id.in_(ids)))}
    added = unchanged = 0
    for ext_id, payload in validated:
        old = existing.get(ext_id)
        if old is None:
            s.add(Item(project_id=project.id, ext_id=ext_id, payload=payload))
            added += 1
        elif old.payload == payload:
            unchanged += 1
        else:
            raise Conflict(f"id '{ext_id}' is already in project '{project.name}' with different content")
    s.flush()
    return {"added": added, "unchanged": unchanged}


# --- the queue -------------------------------------------------------------------------------


def _open_items(s: Session, project: Project, user: User, now: dt.datetime):
    """Items this labeler has not answered whose answers plus others' live claims leave a free slot."""
    n_claims = (select(func.count()).select_from(Claim)
                .where(Claim.item_id == Item.id, Claim.user_id != user.id, Claim.expires_at > now)
                .correlate(Item).scalar_subquery())
    mine = exists().where(Submission.item_id == Item.id, Submission.user_id == user.id)
    # `answers < n` walks ix_items_open past every finished item at once
    return (select(Item).where(Item.project_id == project.id, Item.answers < project.labelers_per_item, ~mine,
                               Item.answers + n_claims < project.labelers_per_item).order_by(Item.answers, Item.id))


def next_item(s: Session, user: User, project_name: str, claim_minutes: float) -> Item | None:
    """The labeler's current item (a live claim), else claim the first open one."""
    project = get_project(s, project_name, lock=True)  # serialises claims per project (FOR UPDATE)
    if not is_member(s, project.id, user):
        raise Forbidden(f"you are not a labeler of project '{project_name}'")
    now = utcnow()
    held = s.scalar(select(Item).join(Claim, Claim.item_id == Item.id)
                    .where(Item.project_id == project.id, Claim.user_id == user.id, Claim.expires_at > now,
                           ~exists().where(Submission.item_id == Item.id, Submission.user_id == user.id))
                    .order_by(Item.id).limit(1))
    item = held or s.scalar(_open_items(s, project, user, now).limit(1))
    if item is None:
        return None
    claim = s.get(Claim, (item.id, user.id))
    expires = now + dt.timedelta(minutes=claim_minutes)
    if claim is None:
        s.add(Claim(item_id=item.id, user_id=user.id, expires_at=expires, claimed_at=now))
    else:
        claim.expires_at = expires
    s.flush()
    return item


def get_item_for(s: Session, user: User, item_id: int) -> tuple[Item, Project]:
    item = s.get(Item, item_id)
    if item is None:
        raise NotFound(f"no item {item_id}")
    project = s.get(Project, item.project_id)
    if user.role != "admin" and not is_member(s, project.id, user):
        raise Forbidden(f"item {item_id} is not in one of your projects")
    return item, project


def submit(s: Session, user: User, item_id: int, data: Any) -> tuple[Submission, bool]:
    """Store an answer. Same answer again -> the stored one (idempotent); a different one -> Conflict."""
    item = s.get(Item, item_id, with_for_update=True)  # one writer per item on PostgreSQL
    if item is None:
        raise NotFound(f"no item {item_id}")
    project = s.get(Project, item.project_id)
    if not is_member(s, project.id, user):
        raise Forbidden(f"item {item_id} is not in one of your projects")
    answer = validate_submission(project.kind, item.payload, data)
    old = s.scalar(select(Submission).where(Submission.item_id == item.id, Submission.user_id == user.id))
    if old is not None:
        if old.data == answer:
            return old, False
        raise Conflict(f"you already answered item {item_id} differently; answers are final")
    now = utcnow()
    claim = s.get(Claim, (item.id, user.id))
    if claim is None or claim.expires_at <= now:
        taken = item.answers + s.scalar(select(func.count()).select_from(Claim).where(
            Claim.item_id == item.id, Claim.user_id != user.id, Claim.expires_at > now))
        if taken >= project.labelers_per_item:
            raise Conflict(f"item {item_id} already has the {project.labelers_per_item} answer(s) it needs")
    seconds = None
    if claim is not None:
        if claim.claimed_at is not None:
            seconds = round(max(0.0, (now - claim.claimed_at).total_seconds()), 3)
        s.delete(claim)
    sub = Submission(item_id=item.id, user_id=user.id, data=answer, seconds=seconds)
    item.answers += 1  # under the item's row lock (PostgreSQL) or the database write lock (SQLite)
    s.add(sub)
    s.flush()
    return sub, True


# --- reading answers -------------------------------------------------------------------------


def submission_view(sub: Submission, item: Item, labeler: str) -> dict[str, Any]:
    return {"id": sub.id, "item_id": item.id, "item": item.ext_id, "labeler": labeler, "answer": sub.data,
            "created_at": sub.created_at.isoformat() + "Z"}


def my_submissions(s: Session, user: User, limit: int = 500) -> list[dict[str, Any]]:
    rows = s.execute(select(Submission, Item, Project.name).join(Item, Item.id == Submission.item_id)
                     .join(Project, Project.id == Item.project_id)
                     .where(Submission.user_id == user.id).order_by(Submission.id.desc()).limit(limit))
    return [{**submission_view(sub, item, user.name), "project": pname} for sub, item, pname in rows]


def get_submission(s: Session, user: User, sub_id: int) -> dict[str, Any]:
    sub = s.get(Submission, sub_id)
    # Someone else's answer reads as "not found": a labeler cannot even learn that it exists.
    if sub is None or (user.role != "admin" and sub.user_id != user.id):
        raise NotFound(f"no submission {sub_id}")
    labeler = s.get(User, sub.user_id).name
    return submission_view(sub, s.get(Item, sub.item_id), labeler)


def queue(s: Session, user: User) -> list[dict[str, Any]]:
    projects = s.scalars(select(Project).join(Member, Member.project_id == Project.id)
                         .where(Member.user_id == user.id).order_by(Project.name))
    out = []
    now = utcnow()
    for p in projects:
        if p.kind in ("chat", "both_sides"):  # no queue: the trainer starts conversations
            from chatrlhf.labeling.db import Chat

            done = s.scalar(select(func.count()).select_from(Chat).where(
                Chat.project_id == p.id, Chat.user_id == user.id, Chat.status == "finished"))
            out.append({"project": p.name, "kind": p.kind, "instructions": p.instructions, "done": done, "open": None})
            continue
        done = s.scalar(select(func.count()).select_from(Submission).join(Item, Item.id == Submission.item_id)
                        .where(Item.project_id == p.id, Submission.user_id == user.id))
        open_n = s.scalar(select(func.count()).select_from(_open_items(s, p, user, now).subquery()))
        out.append({"project": p.name, "kind": p.kind, "instructions": p.instructions, "done": done, "open": open_n})
    return out


def answers_by_item(s: Session, project: Project) -> list[tuple[Item, list[tuple[str, Submission]]]]:
    rows = s.execute(select(Item, Submission, User.name)
                     .outerjoin(Submission, Submission.item_id == Item.id)
                     .outerjoin(User, User.id == Submission.user_id)
                     .where(Item.project_id == project.id).order_by(Item.id, Submission.id))
    grouped: dict[int, tuple[Item, list[tuple[str, Submission]]]] = {}
    for item, sub, name in rows:
        entry = grouped.setdefault(item.id, (item, []))
        if sub is not None:
            entry[1].append((name, sub))
    return list(grouped.values())


def export(s: Session, project: Project, include_unlabeled: bool = False, round: int | None = None,
           group: str | None = None) -> list[dict[str, Any]]:
    """Records in the formats the trainers read (see docs/ARCHITECTURE.md). `round`: only items of
    that RLHF round (rank items made from chats, chats themselves). Each answer names its labeler's
    group where they have one; `group`: only the answers of that group's labelers."""
    if project.kind in CHAT_KINDS:
        raise TaskError(f"project '{project.name}' is a {project.kind} project: export it with exports.export")
    group_of = {name: g for name, g in s.execute(select(User.name, User.group_name))}
    tag = lambda name: {"group": group_of[name]} if group_of.get(name) else {}
    out: list[dict[str, Any]] = []
    for item, subs in answers_by_item(s, project):
        p = item.payload
        if round is not None and p.get("round") != round:
            continue
        subs = [(n, sub) for n, sub in subs if group is None or group_of.get(n) == group]
        if project.kind == "rank":
            if subs or include_unlabeled:
                out.append({**p, "rankings": [{"labeler": n, **tag(n), "ranks": sub.data["ranks"]} for n, sub in subs],
                            "seconds": {n: sub.seconds for n, sub in subs if sub.seconds is not None}})
        elif project.kind == "demo":
            for name, sub in subs:  # what `chatrlhf sft` reads
                out.append({"id": f"demo-{sub.id:06d}", "prompt_id": p.get("prompt_id", item.ext_id),
                            **({"task": p["task"]} if "task" in p else {}),
                            "messages": sub.data["messages"], "labeler": name, **tag(name),
                            **_suggestion_use(p, sub.data["messages"]),
                            **({"seconds": sub.seconds} if sub.seconds is not None else {})})
        else:
            for name, sub in subs:
                out.append({"id": f"lik-{sub.id:06d}", "prompt_id": p.get("prompt_id", item.ext_id),
                            "messages": p["messages"], "response": p["response"], "labeler": name, **tag(name),
                            "score": sub.data["score"], "flags": sub.data["flags"]})
    return out


def _suggestion_use(payload: dict[str, Any], messages: list[dict[str, str]]) -> dict[str, Any]:
    """A demo item's suggestion against the labeler's first assistant turn: kept as is, and the edit distance."""

    sug = payload.get("suggestion")
    if sug is None or len(messages) <= len(payload["messages"]):
        return {}
    final = messages[len(payload["messages"])]["content"]
    return {"suggestion": sug, "kept_suggestion": final == sug, "edit_distance": edit_distance(sug, final)}


def project_agreement(s: Session, project: Project) -> dict[str, Any]:
    answers = {item.id: {name: sub.data for name, sub in subs} for item, subs in answers_by_item(s, project)}
    return agreement(project.kind, answers)


def project_stats(s: Session, project: Project) -> dict[str, Any]:
    items = s.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id))
    subs = s.scalar(select(func.count()).select_from(Submission).join(Item, Item.id == Submission.item_id)
                    .where(Item.project_id == project.id))
    full = s.scalar(select(func.count()).select_from(Item).where(
        Item.project_id == project.id, Item.answers >= project.labelers_per_item))
    members = list(s.scalars(select(User.name).join(Member, and_(Member.user_id == User.id,
                                                                 Member.project_id == project.id)).order_by(User.name)))
    out = {"project": project.name, "kind": project.kind, "labelers_per_item": project.labelers_per_item,
           "instructions": project.instructions, "items": items, "answers": subs, "complete_items": full,
           "labelers": members}
    if project.kind in ("chat", "both_sides"):
        from chatrlhf.labeling.db import Chat

        out["settings"] = project.settings
        out["chats"] = s.scalar(select(func.count()).select_from(Chat).where(Chat.project_id == project.id))
        out["finished_chats"] = s.scalar(select(func.count()).select_from(Chat).where(
            Chat.project_id == project.id, Chat.status == "finished"))
    return out
