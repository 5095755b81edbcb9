"""What every route of the labeling app shares: request bodies, the body-size limit, the login
limiter and `Ctx` (database, auth, the served policy)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from chatrlhf.labeling import store
from chatrlhf.labeling.db import User, reader
from chatrlhf.labeling.policy import Backends, ModelError
from chatrlhf.labeling.tasks import TaskError

COOKIE = "chatrlhf_token"
AUTH_TTL_S = 10.0


class Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginReq(Req):
    name: str = Field(max_length=64)
    password: str = Field(max_length=256)


class UserReq(Req):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: str = Field("labeler", pattern="^(admin|labeler)$")
    password: str | None = Field(None, min_length=8, max_length=256)
    group: str | None = Field(None, min_length=1, max_length=64)


class ProfileReq(Req):
    group: str | None = Field(None, min_length=1, max_length=64)  # None: no group


class ProjectReq(Req):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str = Field(pattern="^(rank|demo|likert|chat|both_sides)$")
    labelers_per_item: int = Field(1, ge=1, le=20)
    instructions: str = Field("", max_length=4000)
    settings: dict[str, Any] | None = None


class ChatReq(Req):
    system: str | None = Field(None, max_length=20_000)


class TurnReq(Req):
    role: str = "user"
    content: str
    meta: dict[str, Any] | None = None


class RankTurnReq(Req):
    turn: int | None = None
    k: int | None = None


class PolicyReq(Req):
    model_dir: str | None = Field(None, max_length=1000)
    url: str | None = Field(None, max_length=1000)
    model: str | None = Field(None, max_length=200)
    round: int | None = Field(None, ge=1)
    check: bool = True


class ItemsReq(Req):
    records: list[Any] = Field(max_length=5000)


class MembersReq(Req):
    labelers: list[str] = Field(max_length=1000)


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 before they reach a handler (header or stream)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:
            return await self._too_large(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # a chunked body with no Content-Length
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    async def _too_large(self, send):
        body = json.dumps({"detail": f"request body over {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class LoginLimiter:
    """Failed logins per key (a user name, a client address) in a sliding window: once a key has
    `limit` failures within `window_s`, further attempts are refused until the oldest expires.
    In-process: each server process counts its own attempts."""

    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s = limit, window_s
        self.fails: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self.fails.setdefault(key, deque())
        while q and now - q[0] >= self.window_s:
            q.popleft()
        return q

    def wait_s(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        now = time.monotonic()
        with self.lock:
            q = self._recent(key, now)
            return self.window_s - (now - q[0]) if len(q) >= self.limit else 0.0

    def failed(self, key: str) -> None:
        now = time.monotonic()
        with self.lock:
            if len(self.fails) > 100_000:  # a flood of distinct keys: forget the idle ones
                self.fails = {k: q for k, q in self.fails.items() if q and now - q[-1] < self.window_s}
            self._recent(key, now).append(now)


class Ctx:
    """What every route needs: the database, auth and the queue's claim length."""

    def __init__(self, sessions: sessionmaker, claim_minutes: float, login_limit: int = 10,
                 login_window_s: float = 300.0):
        self.sessions, self.readers = sessions, reader(sessions)
        self.claim_minutes = claim_minutes
        # an address may hold several people (an office behind one NAT): it gets 3x a user's allowance
        self.user_logins = LoginLimiter(login_limit, login_window_s)
        self.addr_logins = LoginLimiter(3 * login_limit, login_window_s)
        # token -> (user, when looked up): saves a database round trip on most requests. Logout
        # drops the entry here; another server process sees a revoked token at most AUTH_TTL_S later.
        self.auth_cache: dict[str, tuple[User, float]] = {}
        self.backends = Backends()

    def complete(self, policy: dict[str, Any], messages: list[dict[str, str]], n: int, seed: int | None,
                 settings: dict[str, Any], what: str) -> list[str]:
        """n replies of the served policy; a model that fails is a 502 naming it and saying what is kept."""
        try:
            backend = self.backends.get(policy["id"], policy["kind"], policy["target"], policy["model"])
            return backend.complete(messages, n=n, seed=seed, max_new_tokens=settings["max_new_tokens"],
                                    temperature=settings["temperature"])
        except ModelError as e:
            raise HTTPException(502, f"{e}. {what}") from None

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction per request, committed before the response goes out."""
        try:
            with self.sessions.begin() as s:
                yield s
        except store.NotFound as e:
            raise HTTPException(404, str(e)) from None
        except store.Forbidden as e:
            raise HTTPException(403, str(e)) from None
        except store.Conflict as e:
            raise HTTPException(409, str(e)) from None
        except TaskError as e:
            raise HTTPException(422, str(e)) from None
        except OperationalError as e:  # e.g. SQLite busy beyond its timeout: the client may retry
            raise HTTPException(503, f"database busy, retry: {e.orig}") from None

    @staticmethod
    def token_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(COOKIE)

    def lookup(self, token: str | None) -> User | None:
        if not token:
            return None
        hit = self.auth_cache.get(token)
        if hit is not None and time.monotonic() - hit[1] < AUTH_TTL_S:
            return hit[0]
        with self.readers.begin() as s:
            user = store.user_for_token(s, token)
        if user is not None:
            if len(self.auth_cache) > 10_000:
                self.auth_cache.clear()
            self.auth_cache[token] = (user, time.monotonic())
        return user

    def forget_user(self, user_id: int) -> None:
        """Drop a user's cached tokens (after a revocation) so this process refuses them at once."""
        for token, (user, _) in list(self.auth_cache.items()):
            if user.id == user_id:
                self.auth_cache.pop(token, None)

    def current_user(self, request: Request) -> User:
        user = self.lookup(self.token_of(request))
        if user is None:
            raise HTTPException(401, "log in first (bearer token or /login)")
        return user
