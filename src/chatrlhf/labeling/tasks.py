"""The three task kinds, what an imported record and a submission must look like, and why not.

- rank: a comparison record (docs/ARCHITECTURE.md "Comparison file"); the answer is `ranks`, one per
  response, 1 = best, ties share a rank (competition ranking "1224", so [1, 1, 3, 4] is consistent
  and [1, 2, 2, 3] is not).
- demo: a prompt (`messages` ending with a user turn, optional `suggestion` from a model); the answer
  is the whole conversation with the labeler's assistant turns (multi-turn allowed).
- likert: a prompt plus one `response`; the answer is a 1-7 score and the InstructGPT flags
  (Ouyang et al. 2022, Table 3 metadata).
- chat, both_sides: no imported items; trainers hold conversations with the served policy (see
  `chats`), and a chat's model turn becomes a rank item.

Errors are `TaskError`s whose message names the record (index and id) and the field.
"""

from __future__ import annotations

from typing import Any

KINDS = ("rank", "demo", "likert", "chat", "both_sides")
ITEM_KINDS = ("rank", "demo", "likert")
FLAGS = ("fails_instruction", "hallucination", "harmful", "sexual", "violent", "denigrates_protected_class")
MIN_K, MAX_K = 2, 9
MAX_TEXT = 20_000   # characters in one message or response
MAX_TURNS = 64


class TaskError(ValueError):
    """A record or submission that does not fit its task kind; the message says where and why."""


def detect_kind(record: dict[str, Any]) -> str:
    if "responses" in record:
        return "rank"
    if "response" in record:
        return "likert"
    return "demo"


def _messages(value: Any, where: str, field: str = "messages") -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TaskError(f"{where}: '{field}' must be a non-empty list of {{role, content}} objects")
    if len(value) > MAX_TURNS:
        raise TaskError(f"{where}: '{field}' has {len(value)} turns (at most {MAX_TURNS})")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise TaskError(f"{where}: '{field}[{i}].role' must be system, user or assistant")
        content = m.get("content")
        if not isinstance(content, str):
            raise TaskError(f"{where}: '{field}[{i}].content' must be a string")
        if len(content) > MAX_TEXT:
            raise TaskError(f"{where}: '{field}[{i}].content' is {len(content)} characters (at most {MAX_TEXT})")
        out.append({"role": m["role"], "content": content})
    return out


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise TaskError(f"{where}: '{field}' must be a string")
    if len(value) > MAX_TEXT:
        raise TaskError(f"{where}: '{field}' is {len(value)} characters (at most {MAX_TEXT})")
    return value


def validate_record(record: Any, kind: str, where: str) -> tuple[str, dict[str, Any]]:
    """Check one imported record for a project of `kind`; returns (ext_id, payload to store)."""
    if not isinstance(record, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(record).__name__}")
    ext_id = record.get("id")
    if not isinstance(ext_id, str) or not ext_id or len(ext_id) > 128:
        raise TaskError(f"{where}: 'id' must be a non-empty string of at most 128 characters")
    where = f"{where} (id {ext_id})"
    if kind not in ITEM_KINDS:
        raise TaskError(f"{where}: a '{kind}' project takes no imported items; trainers start its chats")
    if detect_kind(record) != kind:
        raise TaskError(f"{where}: looks like a '{detect_kind(record)}' task but the project is '{kind}'")
    payload = {k: v for k, v in record.items() if k != "rankings"}  # answers come from this app
    payload["messages"] = _messages(record.get("messages"), where)
    if kind == "rank":
        responses = record.get("responses")
        if not isinstance(responses, list) or not MIN_K <= len(responses) <= MAX_K:
            raise TaskError(f"{where}: 'responses' must be a list of {MIN_K} to {MAX_K} strings")
        payload["responses"] = [_text(r, where, f"responses[{i}]") for i, r in enumerate(responses)]
    elif kind == "likert":
        payload["response"] = _text(record.get("response"), where, "response")
    else:
        if "suggestion" in record and record["suggestion"] is not None:
            payload["suggestion"] = _text(record["suggestion"], where, "suggestion")
    return ext_id, payload


def check_ranks(ranks: Any, k: int) -> list[int]:
    """A ranking must be complete (one rank per response) and consistent (competition ranking)."""
    if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise TaskError("'ranks' must be a list of integers")
    if len(ranks) != k:
        raise TaskError(f"'ranks' has {len(ranks)} entries but the item has {k} responses; rank every response")
    for r in ranks:
        if not 1 <= r <= k:
            raise TaskError(f"'ranks' must be between 1 and {k}, got {r}")
        expected = 1 + sum(1 for s in ranks if s < r)
        if r != expected:
            raise TaskError(f"'ranks' {ranks} is inconsistent: a response ranked {r} should be ranked {expected} "
                            "(1 = best; tied responses share a rank and the next rank skips)")
    return list(ranks)


def validate_submission(kind: str, payload: dict[str, Any], data: Any) -> dict[str, Any]:
    """Check a labeler's answer against the item; returns the normalised answer to store."""
    if not isinstance(data, dict):
        raise TaskError("the answer must be a JSON object")
    if kind not in ITEM_KINDS:
        raise TaskError(f"a '{kind}' project has no items to answer")
    if kind == "rank":
        out: dict[str, Any] = {"ranks": check_ranks(data.get("ranks"), len(payload["responses"]))}
    elif kind == "likert":
        score = data.get("score")
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 7:
            raise TaskError(f"'score' must be an integer from 1 to 7, got {score!r}")
        flags = data.get("flags") or {}
        if not isinstance(flags, dict):
            raise TaskError("'flags' must be an object of booleans")
        unknown = sorted(set(flags) - set(FLAGS))
        if unknown:
            raise TaskError(f"unknown flags {unknown}; allowed: {', '.join(FLAGS)}")
        out = {"score": score, "flags": {f: bool(flags.get(f, False)) for f in FLAGS}}
    else:
        out = {"messages": _demo_messages(payload["messages"], data.get("messages"))}
    if "comment" in data:
        out["comment"] = _text(data["comment"], "answer", "comment")[:2000]
    return out


def _demo_messages(context: list[dict[str, str]], messages: Any) -> list[dict[str, str]]:
    """The labeler's conversation must continue the prompt and end with a non-empty assistant turn."""
    msgs = _messages(messages, "answer")
    if msgs[: len(context)] != context:
        raise TaskError("'messages' must start with the item's prompt messages unchanged")
    if len(msgs) == len(context):
        raise TaskError("'messages' has no assistant turn; write the ideal answer")
    tail = msgs[len(context):]
    prev = context[-1]["role"]
    for i, m in enumerate(tail, start=len(context)):
        if m["role"] == "system" or m["role"] == prev:
            raise TaskError(f"'messages[{i}].role' is {m['role']} after {prev}; turns must alternate user/assistant")
        if m["role"] == "assistant" and not m["content"].strip():
            raise TaskError(f"'messages[{i}].content' is empty; write the assistant's answer")
        prev = m["role"]
    if tail[-1]["role"] != "assistant":
        raise TaskError("'messages' must end with an assistant turn")
    return msgs


# --- chat projects' settings ----------------------------------------------------------------

CHAT_KINDS = ("chat", "both_sides")
DEFAULT_K = 4
SETTINGS = {  # name: (default, check, what it must be)
    "k": (DEFAULT_K, lambda v: isinstance(v, int) and not isinstance(v, bool) and MIN_K <= v <= MAX_K,
          f"an integer from {MIN_K} to {MAX_K} (responses per ranking task, the original included)"),
    "rank_project": (None, lambda v: v is None or (isinstance(v, str) and 0 < len(v) <= 128),
                     "a project name (default: <chat project>-rank)"),
    "rank_labelers_per_item": (1, lambda v: isinstance(v, int) and 1 <= v <= 20, "an integer from 1 to 20"),
    "auto_rank": (True, lambda v: isinstance(v, bool), "true or false (queue a ranking task when a chat is finished)"),
    "max_new_tokens": (64, lambda v: isinstance(v, int) and 1 <= v <= 1024, "an integer from 1 to 1024"),
    "temperature": (1.0, lambda v: isinstance(v, (int, float)) and 0 <= v <= 2, "a number from 0 to 2"),
}


def check_settings(kind: str, name: str, settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat project's settings with defaults filled in; None for other kinds (which take none)."""
    if kind not in CHAT_KINDS:
        if settings:
            raise TaskError(f"'settings' are for chat and both_sides projects, not '{kind}'")
        return None
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TaskError(f"unknown settings {unknown}; allowed: {', '.join(SETTINGS)}")
    out = {}
    for key, (default, ok, what) in SETTINGS.items():
        value = settings.get(key, default)
        if not ok(value):
            raise TaskError(f"'settings.{key}' must be {what}, got {value!r}")
        out[key] = value
    out["rank_project"] = out["rank_project"] or f"{name}-rank"
    return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance in characters (in words when both texts are long)."""
    x, y = (a, b) if len(a) * len(b) <= 4_000_000 else (a.split(), b.split())
    prev = list(range(len(y) + 1))
    for i, cx in enumerate(x, 1):
        cur = [i]
        for j, cy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (cx != cy)))
        prev = cur
    return prev[-1]
