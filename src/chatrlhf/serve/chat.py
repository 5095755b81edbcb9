"""Terminal chat: `chatrlhf chat --model DIR`.

Keeps the conversation, applies the chat template, streams the reply. Commands: /reset, /save FILE,
/load FILE, /system TEXT, /help, /exit. When the conversation outgrows the context window the oldest
exchanges are dropped (never the system prompt) and the user is told, as ChatGPT did silently.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from chatrlhf.layout import resolve_model
from chatrlhf.lm.engine import Engine, SamplingParams, load_engine

HELP = "commands: /reset  /save FILE  /load FILE  /system TEXT  /help  /exit"
# C0 control characters (but newline and tab) and DEL: a model must not drive the terminal
_CONTROL = {c: None for c in [*range(0, 9), *range(11, 32), 127]}
ROLES = ("system", "user", "assistant")


class ChatSession:
    """A conversation with one model: history, context-window trimming and streamed replies."""

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None):
        self.eng, self.params = engine, params
        self.system = system
        self.turns: list[dict[str, str]] = []  # user/assistant messages, oldest first

    @property
    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        self.turns = []

    def fit(self) -> int:
        """Drop the oldest exchanges until prompt + reply fit the context; returns messages dropped."""
        budget = self.eng.context - self.params.max_new_tokens
        dropped = 0
        while len(self.eng.chat_prompt(self.messages)) > budget and len(self.turns) > 1:
            self.turns.pop(0)  # the oldest message; an assistant reply goes with its question
            dropped += 1
            while self.turns and self.turns[0]["role"] != "user":
                self.turns.pop(0)
                dropped += 1
        n = len(self.eng.chat_prompt(self.messages))
        if n > budget:
            self.turns.pop()
            raise ValueError(f"that message is too long: {n} tokens with the system prompt, the context holds "
                             f"{self.eng.context} including {self.params.max_new_tokens} for the reply")
        return dropped

    def ask(self, text: str) -> Iterator[str]:
        """Add a user message and stream the reply; the reply joins the history when it is complete."""
        self.turns.append({"role": "user", "content": text})
        self.last_dropped = self.fit()
        params = self.eng.chat_params(self.params)
        pieces: list[str] = []
        for piece in self.eng.stream(self.eng.chat_prompt(self.messages), params):
            if not any(pieces):  # the reply shows (and is kept) without leading blanks
                piece = piece.lstrip()
            pieces.append(piece)
            if piece:
                yield piece
        self.turns.append({"role": "assistant", "content": "".join(pieces).strip()})

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"messages": self.messages}, ensure_ascii=False) + "\n")

    def load(self, path: str | Path) -> None:
        msgs = read_conversation(path)
        self.system = next((m["content"] for m in msgs if m["role"] == "system"), self.system)
        self.turns = [m for m in msgs if m["role"] != "system"]


def read_conversation(path: str | Path) -> list[dict[str, str]]:
    """Messages from a /save file ({"messages": [...]} or a bare list), with errors naming the field."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    msgs = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(msgs, list):
        raise ValueError(f"{p}: expected {{\"messages\": [...]}} or a list of messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{p}: messages[{i}] needs 'role' in {ROLES} and a string 'content', got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def repl(session: ChatSession, inp: TextIO | None = None, out: TextIO | None = None) -> None:
    """Read lines, run commands, stream replies; ends at /exit or end of input."""
    inp, out = inp or sys.stdin, out or sys.stdout  # looked up per call: a redirected stdin is honoured
    def say(text: str) -> None:
        out.write(text)
        out.flush()

    while True:
        say("you> ")
        line = inp.readline()
        if not line:
            say("\n")
            return
        line = line.strip()
        if not line:
            continue
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            if cmd in ("/exit", "/quit"):
                return
            if cmd == "/help":
                say(HELP + "\n")
            elif cmd == "/reset":
                session.reset()
                say("[conversation cleared]\n")
            elif cmd == "/save" and arg:
                session.save(arg)
                say(f"[saved {len(session.messages)} messages to {arg}]\n")
            elif cmd == "/load" and arg:
                session.load(arg)
                say(f"[loaded {len(session.messages)} messages from {arg}]\n")
            elif cmd == "/system":
                session.system = arg or None
                say(f"[system prompt {'set' if arg else 'removed'}]\n")
            elif cmd.startswith("/"):
                say(f"[unknown command or missing FILE: {line}] {HELP}\n")
            else:
                _reply(session, line, say)
        except (OSError, ValueError) as e:
            say(f"[error: {e}]\n")


def _reply(session: ChatSession, line: str, say) -> None:
    stream = session.ask(line)
    try:
        first = next(stream, "")
        if session.last_dropped:
            say(f"[context full: dropped the {session.last_dropped} oldest messages]\n")
        say("bot> " + first.translate(_CONTROL))
        for piece in stream:
            say(piece.translate(_CONTROL))
    except KeyboardInterrupt:
        session.turns.pop()  # forget the unanswered question
        say(" [interrupted]")
    except (OSError, ValueError):
        if session.turns and session.turns[-1]["role"] == "user":
            session.turns.pop()  # the conversation stays as it was before the failed question
        raise
    say("\n")


def run_chat(cfg, model: str | Path | None = None, system: str | None = None, group: str | None = None) -> None:
    from transformers.utils import logging as hf_logging

    from chatrlhf.lm.training import configure_threads

    path = resolve_model(cfg, model)
    if group:  # a group-conditioned model is told whose preferences to follow in its system message
        from chatrlhf.lm.modeling import read_meta
        from chatrlhf.lm.prompts import group_system_message

        system = group_system_message(read_meta(path), group)
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in a chat window
    configure_threads(cfg.run.threads)  # 1 thread on a busy CPU: OpenMP threads wait on each other
    eng = load_engine(path, cfg.model.dtype, cfg.run.device, compile=cfg.chat.compile)
    c = cfg.chat
    params = SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                            top_k=c.top_k, seed=None)
    session = ChatSession(eng, params, system if system is not None else c.system_prompt)
    print(f"chatrlhf chat with {path} (context {eng.context} tokens). {HELP}", flush=True)
    repl(session)
