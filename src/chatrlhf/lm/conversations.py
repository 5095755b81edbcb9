"""Conversation loaders for SFT: every source becomes a list of chat-message conversations.

    convs = load_conversations("data.jsonl", fmt="auto", columns={"prompt": "question"})
    # -> [[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}], ...]

Sources: the world's demonstrations (None), a local .jsonl/.jsonl.gz/.json/.csv/.parquet file, or a
`datasets` name. Row formats (`fmt`, detected from the columns on "auto"):

- messages         a list of {"role", "content"} (ShareGPT {"from", "value"} is accepted too)
- prompt_response  one user prompt and one assistant response
- instruction      self-instruct / Alpaca: instruction + optional input -> output (or `instances`)
- transcript       HH-RLHF text: "\\n\\nHuman: ...\\n\\nAssistant: ..." (column `chosen` by default)
- oasst_tree       an OpenAssistant message tree; we follow the rank-0 reply at every level

A bad row fails with the file, the line (1-based, as an editor shows it) and the field, because
"KeyError: 'content'" after ten minutes of tokenising tells a user nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chatrlhf.lm.data import DataError, check_mapping, iter_jsonl

log = logging.getLogger(__name__)
Message = dict[str, str]
Conversation = list[Message]

FORMATS = ("messages", "prompt_response", "instruction", "transcript", "oasst_tree")
ROLE_ALIASES = {"user": "user", "human": "user", "prompter": "user", "assistant": "assistant", "gpt": "assistant",
                "bot": "assistant", "model": "assistant", "system": "system"}
# Default column names per format; `columns` in the config overrides any of them.
DEFAULT_COLUMNS = {
    "messages": {"messages": "messages"},
    "prompt_response": {"prompt": "prompt", "response": "response"},
    "instruction": {"instruction": "instruction", "input": "input", "output": "output"},
    "transcript": {"text": "chosen"},
    "oasst_tree": {"tree": "prompt"},
}


# --- reading rows ---------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    yield from ((f"{path}:{i}", row) for i, row in iter_jsonl(path, objects_only=False))


def _read_table(path: Path) -> Iterator[tuple[str, Any]]:
    import pandas as pd

    if path.suffix == ".csv":
        rows = pd.read_csv(path, keep_default_na=False).to_dict(orient="records")
        # line 1 is the header, so row i sits on line i + 2
        yield from ((f"{path}:{i + 2}", row) for i, row in enumerate(rows))
    else:  # parquet has no lines: name the 1-based row
        rows = pd.read_parquet(path).to_dict(orient="records")
        yield from ((f"{path}:row {i + 1}", row) for i, row in enumerate(rows))


LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".csv", ".parquet")


def _read_json_list(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    yield from ((f"{path}:item {i}", row) for i, row in enumerate(data))


def _read_hub(name: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, missing split: say which source it was
        raise DataError(f"{name}: not a local file, and `datasets` could not load it ({type(e).__name__}: {e})") from e
    yield from ((f"{name}[{split}] row {i}", row) for i, row in enumerate(ds))


def read_rows(source: str, split: str = "train") -> Iterator[tuple[str, Any]]:
    """(where, row) pairs from a local file or a datasets name; `where` is 'file:line'."""
    path = Path(source)
    name = path.name.lower()
    if name.endswith(LOCAL_SUFFIXES) and not path.is_file():
        raise DataError(f"data file not found: {path}")
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        yield from _read_jsonl(path)
    elif name.endswith(".json"):
        yield from _read_json_list(path)
    elif name.endswith((".csv", ".parquet")):
        yield from _read_table(path)
    elif path.is_file():
        raise DataError(f"{path}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)}, or a datasets name)")
    else:  # a hub name, or a local folder that `datasets` understands
        yield from _read_hub(source, split)


# --- rows -> conversations ------------------------------------------------------------------


def detect_format(row: dict[str, Any], columns: dict[str, str]) -> str:
    """Guess a row's format from its columns (a column mapping counts as a hint)."""
    keys = set(row) | set(columns.values())
    if isinstance(row.get("prompt"), dict) and "replies" in row["prompt"]:
        return "oasst_tree"
    if keys & {"messages", "conversations"} or "messages" in columns:
        return "messages"
    if "instruction" in keys or "instruction" in columns:
        return "instruction"
    if ("prompt" in keys and keys & {"response", "completion", "chosen"}) or "response" in columns:
        return "prompt_response"
    if "chosen" in keys or "text" in columns:
        return "transcript"
    raise DataError(f"cannot tell the format from the columns {sorted(row)}; set sft.format "
                    f"(one of {', '.join(FORMATS)}) and sft.columns")


def _field(row: dict[str, Any], col: str, where: str, required: bool = True) -> Any:
    if col not in row or row[col] is None:
        if required:
            raise DataError(f"{where}: missing field '{col}' (columns present: {', '.join(sorted(row))})")
        return None
    return row[col]


def _text(value: Any, where: str, col: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{col}' must be a string, got {type(value).__name__}")
    return value


def _from_messages(row: dict[str, Any], cols: dict[str, str], where: str) -> list[Conversation]:
    col = cols["messages"] if cols["messages"] in row or "conversations" not in row else "conversations"
    msgs = _field(row, col, where)
    if not isinstance(msgs, (list, tuple)) and not hasattr(msgs, "tolist"):
        raise DataError(f"{where}: field '{col}' must be a list of messages, got {type(msgs).__name__}")
    out: Conversation = []
    for j, m in enumerate(list(msgs)):
        if not isinstance(m, dict):
            raise DataError(f"{where}: {col}[{j}] must be an object with role and content")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role is None or content is None:
            raise DataError(f"{where}: {col}[{j}] needs 'role' and 'content' (got keys {sorted(m)})")
        norm = ROLE_ALIASES.get(str(role).lower())
        if norm is None:
            raise DataError(f"{where}: {col}[{j}].role {role!r} is not one of system, user, assistant")
        out.append({"role": norm, "content": _text(content, where, f"{col}[{j}].content")})
    return [out]


def _from_prompt_response(row: dict[str, Any], cols: dict[str, str], where: str) -> list[Conversation]:
    pcol = cols["prompt"]
    rcol = cols["response"] if cols["response"] in row else next(
        (c for c in ("completion", "chosen") if c in row), cols["response"])
    prompt, response = _field(row, pcol, where), _field(row, rcol, where)
    if isinstance(prompt, str) and isinstance(response, str):
        return [[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]]
    # TRL's conversational prompt-completion rows: chat messages on either side (a string is one turn)
    turns = [*_turns(prompt, "user", where, pcol), *_turns(response, "assistant", where, rcol)]
    conv = _from_messages({"messages": turns}, {**cols, "messages": "messages"}, where)[0]
    if not conv or conv[-1]["role"] != "assistant":
        last = repr(conv[-1]["role"]) if conv else "none: no messages"
        raise DataError(f"{where}: field '{rcol}' must end with the assistant's reply (its last role is {last})")
    return [conv]


def _turns(value: Any, role: str, where: str, col: str) -> list[Any]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return list(value)
    raise DataError(f"{where}: field '{col}' must be a string or a list of messages, got {type(value).__name__}")


def _from_instruction(row: dict[str, Any], cols: dict[str, str], where: str) -> list[Conversation]:
    instruction = _text(_field(row, cols["instruction"], where), where, cols["instruction"])
    if "instances" in row and cols["output"] not in row:  # self-instruct seed tasks: one conversation per instance
        pairs = [(inst.get("input", ""), inst.get("output")) for inst in row["instances"]]
    else:
        pairs = [(_field(row, cols["input"], where, required=False) or "", _field(row, cols["output"], where))]
    convs = []
    for inp, output in pairs:
        user = instruction if not inp else f"{instruction}\n\n{inp}"
        convs.append([{"role": "user", "content": user},
                      {"role": "assistant", "content": _text(output, where, cols["output"])}])
    return convs


_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_transcript(text: str, where: str = "") -> Conversation:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> messages (Anthropic HH-RLHF layout)."""
    parts = _TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    if len(parts) < 3:
        raise DataError(f"{where}: no 'Human:'/'Assistant:' turns found in transcript")
    conv = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        conv.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return conv


def _from_transcript(row: dict[str, Any], cols: dict[str, str], where: str) -> list[Conversation]:
    return [parse_transcript(_text(_field(row, cols["text"], where), where, cols["text"]), where)]


def _from_oasst_tree(row: dict[str, Any], cols: dict[str, str], where: str) -> list[Conversation]:
    """Rank-0 path of an OpenAssistant tree: at each level the reply ranked best (rank 0)."""
    node = _field(row, cols["tree"], where)
    conv: Conversation = []
    while isinstance(node, dict):
        role = ROLE_ALIASES.get(str(node.get("role", "")).lower())
        if role is None or not isinstance(node.get("text"), str):
            raise DataError(f"{where}: message tree node without a valid role/text (keys {sorted(node)})")
        conv.append({"role": role, "content": node["text"]})
        replies = [r for r in node.get("replies") or [] if not r.get("deleted")]
        ranked = [r for r in replies if r.get("rank") is not None]
        node = min(ranked, key=lambda r: r["rank"]) if ranked else (replies[0] if replies else None)
    return [conv]


CONVERTERS = {"messages": _from_messages, "prompt_response": _from_prompt_response, "instruction": _from_instruction,
              "transcript": _from_transcript, "oasst_tree": _from_oasst_tree}


def row_to_conversations(row: Any, fmt: str, columns: dict[str, str], where: str) -> list[Conversation]:
    """Convert one row. Conversations without a non-empty assistant turn are left out (real data
    has them, e.g. HH-RLHF rows whose last 'Assistant:' is empty); a malformed row is an error."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object per row, got {type(row).__name__}")
    if fmt == "auto":
        try:
            fmt = detect_format(row, columns)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
    if fmt not in CONVERTERS:
        raise DataError(f"unknown conversation format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    cols = {**DEFAULT_COLUMNS[fmt], **columns}
    convs = CONVERTERS[fmt](row, cols, where)
    for conv in convs:
        # a trailing user turn or empty reply has nothing to learn from
        while conv and not (conv[-1]["role"] == "assistant" and conv[-1]["content"].strip()):
            conv.pop()
    return [c for c in convs if c]


MAPPING_KEYS = sorted({k for cols in DEFAULT_COLUMNS.values() for k in cols} | {"ground_truth"})


def check_columns(columns: dict[str, str] | None, key: str = "sft.columns") -> dict[str, str]:
    """A conversation or prompt column mapping with known keys only (lm.data.check_mapping)."""
    return check_mapping(columns, key, MAPPING_KEYS, "prompt=question")


def load_conversations(source: str | Path | None, fmt: str = "auto", columns: dict[str, str] | None = None,
                       split: str = "train", limit: int = 0) -> list[Conversation]:
    """All conversations of a source. An empty result is an error: training on nothing would
    "succeed" silently. The embedded world's demonstrations are the stages' to load
    (`world.loader.world_demonstrations`: building blocks never read the world)."""
    if source is None:
        raise DataError("no data source given (the embedded world is read by the stages only); "
                        "set sft.data to your demonstrations")
    columns = check_columns(columns)
    convs, skipped = [], []
    for loc, row in read_rows(str(source), split):
        got = row_to_conversations(row, fmt, columns, loc)
        convs.extend(got)
        if not got:
            skipped.append(loc)
        if limit and len(convs) >= limit:
            break
    if skipped:
        log.warning("%d rows without a non-empty assistant reply were skipped (first: %s)",
                    len(skipped), ", ".join(skipped[:3]))
    return nonempty(convs[:limit] if limit else convs, str(source))


def nonempty(convs: list[Conversation], where: str) -> list[Conversation]:
    if not convs:
        raise DataError(f"{where}: no conversations with an assistant reply found (empty dataset)")
    return convs


# --- prompts (PPO, rounds, evaluation) ------------------------------------------------------


def _prompt_of(conv: Conversation) -> Conversation:
    """The context before the last assistant turn: what the policy is asked to continue."""
    last_user = max((i for i, m in enumerate(conv) if m["role"] == "user"), default=-1)
    return conv[: last_user + 1]


def row_to_prompts(row: Any, fmt: str, columns: dict[str, str], where: str) -> list[Conversation]:
    """Prompts of one row: a bare string, a `prompt` column (an HH 'Human:' transcript is split into
    turns) with no reply, or any conversation format with its last reply taken off."""
    if isinstance(row, str):
        return [[{"role": "user", "content": row}]] if row.strip() else []
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object or a string per row, got {type(row).__name__}")
    pcol = columns.get("prompt", "prompt")
    prompt_only = fmt in ("auto", "prompt_response") and pcol in row and not any(
        c in row for c in (columns.get("response", "response"), "completion", "chosen"))
    if prompt_only:
        text = _field(row, pcol, where)
        if isinstance(text, str):
            conv = parse_transcript(text, where) if "\n\nHuman:" in text else [{"role": "user", "content": text}]
        else:  # TRL's conversational prompt-only rows: the prompt as chat messages
            conv = _from_messages({"messages": _turns(text, "user", where, pcol)}, {"messages": "messages"}, where)[0]
        conv = _prompt_of(conv) if conv and conv[-1]["role"] == "assistant" else conv
        return [conv] if conv and conv[-1]["content"].strip() else []
    if fmt == "auto":
        try:
            fmt = detect_format(row, columns)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
    cols = {**DEFAULT_COLUMNS.get(fmt, {}), **columns}
    if fmt == "instruction" and cols["output"] not in row and "instances" not in row:  # a task with no answer yet
        inst = _text(_field(row, cols["instruction"], where), where, cols["instruction"])
        inp = _field(row, cols["input"], where, required=False) or ""
        return [[{"role": "user", "content": inst if not inp else f"{inst}\n\n{inp}"}]]
    if fmt not in CONVERTERS:
        raise DataError(f"unknown conversation format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    out = []
    for conv in CONVERTERS[fmt](row, cols, where):  # a conversation ending with the user is a prompt as it is
        p = conv if conv and conv[-1]["role"] == "user" else _prompt_of(conv)
        if p and p[-1]["content"].strip():
            out.append(p)
    return out


def load_prompts(source: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None,
                 split: str = "train", key: str = "ppo.columns") -> list[dict[str, Any]]:
    """Distinct prompts of a source as `{"id", "messages"}` (+ `ground_truth` where the data carries
    one, for the rule-based check), in file order."""
    columns = check_columns(columns, key)
    gt_col = columns.get("ground_truth", "ground_truth")
    out, seen = [], set()
    for loc, row in read_rows(str(source), split):
        gt = row.get(gt_col) if isinstance(row, dict) else None
        if isinstance(gt, str) and gt.strip().startswith("{"):
            gt = json.loads(gt)  # a csv cell holds the spec as JSON text
        for conv in row_to_prompts(row, fmt, columns, loc):
            k = json.dumps(conv, sort_keys=True)
            if k in seen:
                continue
            seen.add(k)
            p: dict[str, Any] = {"id": f"p{len(out):06d}", "messages": conv, "source": loc}
            if gt is not None:
                p["ground_truth"] = gt
            out.append(p)
    if not out:
        raise DataError(f"{source}: no prompts found (rows need a prompt, a user turn or a transcript)")
    return out
