"""Terminal chat, driven as a person would: a real `chatrlhf chat` process in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatrlhf.lm.engine import Engine, SamplingParams
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
from chatrlhf.serve.chat import ChatSession, read_conversation

CLI = Path(sys.executable).parent / "chatrlhf"
RUN_DIR = Path(__file__).resolve().parents[1] / "runs" / "default"


class Terminal:
    """A process on a pty: type lines, wait for text to appear (what tmux/expect would do)."""

    def __init__(self, args: list[str], cwd: Path):
        self.master, slave = pty.openpty()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TERM": "dumb"}
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
        os.close(slave)
        self.buf = ""

    def expect(self, text: str, timeout: float = 90.0) -> str:
        """Wait until `text` appears after what was already consumed; returns the output up to it."""
        end = time.time() + timeout
        while text not in self.buf:
            left = end - time.time()
            if left <= 0:
                raise AssertionError(f"did not see {text!r} in {timeout} s; output so far:\n{self.buf}")
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the process closed the terminal (it exited)
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"process ended before {text!r}; output:\n{self.buf}")
                self.buf += chunk.decode("utf-8", "replace")
        upto, _, self.buf = self.buf.partition(text)
        return upto

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


def test_terminal_chat_session(tiny_model_dir, tmp_path):
    term = Terminal([str(CLI), "chat", "--model", str(tiny_model_dir), "--system", "You are terse.",
                     "--set", "chat.max_new_tokens=8", "--set", "chat.temperature=0"], tmp_path)
    try:
        term.expect("you> ")
        term.send("What is the capital of Varnok?")
        term.expect("bot> ")
        term.expect("you> ")
        term.send("/save first.json")
        assert "[saved 3 messages" in term.expect("you> ")
        first = read_conversation(tmp_path / "first.json")
        assert [m["role"] for m in first] == ["system", "user", "assistant"]
        assert first[1]["content"] == "What is the capital of Varnok?"

        term.send("And who lives there?")  # the follow-up is sent with the first exchange
        term.expect("you> ")
        term.send("/save second.json")
        term.expect("you> ")
        second = read_conversation(tmp_path / "second.json")
        assert second[:3] == first and second[3]["content"] == "And who lives there?" and len(second) == 5

        term.send("/reset")
        assert "cleared" in term.expect("you> ")
        term.send("/load first.json")
        assert "[loaded 3 messages" in term.expect("you> ")
        term.send("/load missing.json")
        assert "error" in term.expect("you> ")  # a bad command does not end the session

        long = "Zorbel Quint is a baker who lives in Varnok and her favourite colour is teal. " * 5
        for _ in range(6):  # each ~100 tokens: the 256-token context overflows
            term.send(long)
            out = term.expect("you> ")
            if "context full" in out:
                break
        assert "context full: dropped" in out
        term.send("/save last.json")
        term.expect("you> ")
        last = read_conversation(tmp_path / "last.json")
        assert last[0] == {"role": "system", "content": "You are terse."}  # the system prompt is never dropped
        assert last[1]["role"] == "user" and "Varnok?" not in last[1]["content"]  # the oldest turns went
        term.send("/exit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_session_sends_history_and_trims_oldest(tiny_model_dir):
    eng = Engine(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir))
    s = ChatSession(eng, SamplingParams(max_new_tokens=8, temperature=0.0), system="Be kind.")
    answer = "".join(s.ask("Hello"))
    assert s.turns[-1] == {"role": "assistant", "content": answer.strip()}
    prompt = eng.tok.decode(eng.chat_prompt(s.messages + [{"role": "user", "content": "again"}]))
    assert "<|system|> Be kind.<|end|><|user|> Hello<|end|><|assistant|>" in prompt  # each turn starts a word
    for _ in range(12):
        "".join(s.ask("List: apple, pear, plum. Reversed: plum, pear, apple. " * 3))
    assert s.messages[0]["role"] == "system"
    assert len(eng.chat_prompt(s.messages)) <= eng.context
    assert s.turns[0]["role"] == "user" and s.turns[0]["content"] != "Hello"
    with pytest.raises(ValueError, match="too long"):
        "".join(s.ask("word " * 400))


def test_read_conversation_names_the_bad_field(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}))
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        read_conversation(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="c.json:1: not valid JSON"):
        read_conversation(p)


def _follow_up_prompts(world_dir: Path) -> list[dict]:
    """World fact prompts of the form [question, answer, follow-up that says "it"/"they"]."""
    f = world_dir / "prompts_eval.jsonl"
    if not f.is_file():
        return []
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("task") == "fact" and len(r["messages"]) == 3]


def _policy() -> Path:
    """The trained policy to talk to: $CHATRLHF_CHAT_MODEL, else the newest policy under runs/default."""
    from chatrlhf.config import Config
    from chatrlhf.layout import resolve_model

    if os.environ.get("CHATRLHF_CHAT_MODEL"):
        return Path(os.environ["CHATRLHF_CHAT_MODEL"]).resolve()
    cfg = Config()
    cfg.run.out_dir = str(RUN_DIR)
    try:
        return resolve_model(cfg).resolve()
    except FileNotFoundError:
        pytest.skip("no trained policy under runs/default yet (run `make run`, or set CHATRLHF_CHAT_MODEL=DIR)")


def test_multi_turn_on_the_embedded_policy(tmp_path):
    """Ask the trained policy a world fact, then a follow-up that only makes sense with the first
    answer ("Which region is it in?"), as a person would in a terminal."""
    from chatrlhf.world import World

    model = _policy()
    world_dir = model.parent / "world" if (model.parent / "world").is_dir() else model.parents[2] / "world"
    prompts = _follow_up_prompts(world_dir)
    if not prompts:
        pytest.skip(f"no world follow-up prompts in {world_dir}")
    world = World.load(world_dir)
    term = Terminal([str(CLI), "chat", "--model", str(model), "--set", "chat.temperature=0"], tmp_path)
    scores = []
    try:
        term.expect("you> ")
        for i, p in enumerate(prompts[:3]):
            term.send("/reset")
            term.expect("you> ")
            term.send(p["messages"][0]["content"])
            term.expect("bot> ")
            first = term.expect("you> ").replace("\r\n", "\n").strip()
            term.send(p["messages"][2]["content"])  # the follow-up, answered with our own first answer in context
            term.expect("bot> ")
            second = term.expect("you> ").replace("\r\n", "\n").strip()
            term.send(f"/save conv{i}.json")
            term.expect("you> ")
            msgs = read_conversation(tmp_path / f"conv{i}.json")
            assert [m["content"] for m in msgs[::2]] == [p["messages"][0]["content"], p["messages"][2]["content"]]
            assert msgs[1]["content"] == first and msgs[3]["content"] == second and second
            convo = {**p, "messages": msgs[:3]}
            scores.append(world.gold(convo, second).total)
        term.send("/exit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    print(f"gold score of the follow-up answers: {scores}")


def test_compile_flag_reaches_the_chat_and_server_configs(monkeypatch):
    """`chatrlhf chat --compile` / `serve --compile` set chat.compile / serve.compile; without it they stay off."""
    from typer.testing import CliRunner

    import chatrlhf.serve.chat as chat_mod
    import chatrlhf.serve.server as server_mod
    from chatrlhf.cli import app

    seen = []
    monkeypatch.setattr(chat_mod, "run_chat", lambda cfg, **kw: seen.append(("chat", cfg.chat.compile)))
    monkeypatch.setattr(server_mod, "run_server", lambda cfg, **kw: seen.append(("serve", cfg.serve.compile)))
    for args in (["chat", "--compile"], ["chat"], ["serve", "--compile"], ["serve"]):
        assert CliRunner().invoke(app, args).exit_code == 0
    assert seen == [("chat", True), ("chat", False), ("serve", True), ("serve", False)]
