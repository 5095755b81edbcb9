"""The model trainers talk to in the labeling app: a model directory loaded in the app process with
the project's own engine, or any OpenAI-compatible chat endpoint (`chatrlhf serve`, vLLM, ...).

    backend = open_backend("local", "runs/default/ppo")          # or ("openai", "http://127.0.0.1:8000")
    texts = backend.complete(messages, n=3, seed=7)               # n replies to the same context

Every failure to get a reply (no such directory, an endpoint that does not answer, an HTTP error, a
malformed answer) is a `ModelError` whose message says which model and why; the app answers it
with 502 and keeps everything already stored.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

MAX_NEW_TOKENS = 64
TEMPERATURE = 1.0


class ModelError(RuntimeError):
    """The policy could not produce a reply; the message names the model and the cause."""


def check_target(kind: str, target: str) -> None:
    """Refuse a policy that cannot work before it is stored: a missing model directory, a bad URL."""
    if kind == "local":
        p = Path(target)
        if not (p / "config.json").is_file():
            raise ModelError(f"model directory {target} has no config.json (a saved model stage such as "
                             "runs/default/ppo is expected)")
    elif kind == "openai":
        if not target.startswith(("http://", "https://")):
            raise ModelError(f"endpoint {target!r} must be an http:// or https:// URL")
    else:
        raise ModelError(f"policy kind must be local or openai, got {kind!r}")


class LocalBackend:
    """`load_engine(model_dir)` in this process; one generation at a time (the engine is not shared
    between threads)."""

    def __init__(self, model_dir: str):
        from chatrlhf.lm.engine import load_engine

        check_target("local", model_dir)
        try:
            self.engine = load_engine(model_dir, device="cpu")
        except Exception as e:  # any load failure is the model's
            raise ModelError(f"model directory {model_dir} could not be loaded: {type(e).__name__}: {e}") from e
        self.name = model_dir
        self.lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], n: int = 1, seed: int | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS, temperature: float = TEMPERATURE) -> list[str]:
        from chatrlhf.lm.engine import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        try:
            with self.lock:
                gens = self.engine.generate_chat([messages], params, n=n)
        except ValueError as e:  # e.g. a conversation longer than the model's context
            raise ModelError(f"model {self.name} could not reply: {e}") from e
        return [g.text for g in gens]


class OpenAIBackend:
    """POST {url}/v1/chat/completions, one request per reply (servers such as `chatrlhf serve`
    accept only n = 1), each with its own seed."""

    def __init__(self, url: str, model: str | None = None, timeout_s: float = 60.0, api_key: str | None = None):
        check_target("openai", url)
        self.url = url.rstrip("/").removesuffix("/v1")
        self.model, self.timeout_s = model, timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def complete(self, messages: list[dict[str, str]], n: int = 1, seed: int | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS, temperature: float = TEMPERATURE) -> list[str]:
        import httpx

        out = []
        with httpx.Client(timeout=self.timeout_s, trust_env=False) as http:
            for i in range(n):
                body: dict[str, Any] = {"messages": messages, "max_tokens": max_new_tokens, "temperature": temperature}
                if self.model:
                    body["model"] = self.model
                if seed is not None:
                    body["seed"] = seed + i
                where = f"{self.url}/v1/chat/completions"
                try:
                    r = http.post(where, json=body, headers=self.headers)
                except httpx.HTTPError as e:
                    raise ModelError(f"the model endpoint {where} is unreachable: {type(e).__name__}: {e}") from e
                if r.status_code >= 400:
                    try:
                        detail = r.json().get("error", {}).get("message") or r.text
                    except ValueError:
                        detail = r.text
                    raise ModelError(f"the model endpoint {where} answered {r.status_code}: {str(detail)[:500]}")
                try:
                    out.append(str(r.json()["choices"][0]["message"]["content"]))
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    raise ModelError(f"the model endpoint {where} sent no chat completion: {r.text[:300]}") from e
        return out


def open_backend(kind: str, target: str, model: str | None = None, timeout_s: float = 60.0):
    if kind == "local":
        return LocalBackend(target)
    if kind == "openai":
        return OpenAIBackend(target, model, timeout_s)
    raise ModelError(f"policy kind must be local or openai, got {kind!r}")


class Backends:
    """Loaded backends by policy id: the app loads a policy the first time it is needed and keeps the
    two most recently used (the served one, and the one that wrote a chat still being ranked)."""

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self.loaded: dict[int, Any] = {}
        self.lock = threading.Lock()

    def get(self, policy_id: int, kind: str, target: str, model: str | None):
        with self.lock:
            backend = self.loaded.pop(policy_id, None)
            if backend is None:
                backend = open_backend(kind, target, model, self.timeout_s)
            self.loaded[policy_id] = backend  # most recently used last
            while len(self.loaded) > 2:
                self.loaded.pop(next(iter(self.loaded)))
            return backend

    def put(self, policy_id: int, backend) -> None:
        with self.lock:
            self.loaded[policy_id] = backend
            while len(self.loaded) > 2:
                self.loaded.pop(next(iter(self.loaded)))
