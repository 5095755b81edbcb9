"""Exports of any project kind in the formats the trainers read: rankings and demonstrations from
the store, chats and both-sides dialogues (conversation format) from the chat loop."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from chatrlhf.labeling import store
from chatrlhf.labeling.chats import export_chats
from chatrlhf.labeling.db import Project
from chatrlhf.labeling.tasks import CHAT_KINDS


def export(s: Session, project: Project, include_unlabeled: bool = False, round: int | None = None,
           group: str | None = None) -> list[dict[str, Any]]:
    """Records of `project` (see docs/ARCHITECTURE.md). `round`: only items of that RLHF round;
    `group`: only the answers (chats) of that group's labelers (trainers)."""
    if project.kind in CHAT_KINDS:
        chats = export_chats(s, project, round, include_open=include_unlabeled)
        return [c for c in chats if group is None or c.get("group") == group]
    return store.export(s, project, include_unlabeled, round, group)
