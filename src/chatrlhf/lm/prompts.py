"""The one plain-text chat format, for models without a chat template: the chat-log format of the
pre-training corpus ('User: ...\nAssistant: ...'), which a base model continues."""

from __future__ import annotations

PLAIN_TURN_STOP = "\nUser:"  # the model starts writing the user's next turn: its answer is over
PLAIN_STOPS = [PLAIN_TURN_STOP, "\n\n"]  # a one-paragraph answer also ends at a blank line


def group_system_message(meta: dict, group: str) -> str:
    """The system message a group-conditioned model was trained to read for `group` (its stage
    meta.json's `group_messages`); a clear error for a model that was not conditioned or a wrong name."""
    messages = meta.get("group_messages") or {}
    if not messages:
        raise ValueError(f"--group {group}: this model was not trained group-conditioned (its meta.json has no "
                         "group_messages); train one with --set rm.conditioned=true or `chatrlhf preferences`")
    if group not in messages:
        raise ValueError(f"--group {group}: unknown group; this model knows {', '.join(sorted(messages))}")
    return messages[group]


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """'User: ...' / 'Assistant: ...' lines, ending where the assistant's next turn starts. System
    messages are left out: the corpus's chat logs have none, so a base model cannot follow them."""
    turns = [f"{'Assistant' if m['role'] == 'assistant' else 'User'}: {m['content']}"
             for m in messages if m["role"] != "system"]
    return "\n".join(turns) + "\nAssistant:"
