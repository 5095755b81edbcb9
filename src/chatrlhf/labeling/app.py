"""The labeling web app: a JSON API (FastAPI) plus a few plain HTML pages with no build step.

    app = create_app("sqlite:///runs/labeling.db")      # or "postgresql://user@host/db"

Auth: `Authorization: Bearer <token>` (API clients, simulated labelers) or the `chatrlhf_token`
cookie set by /api/login (people). Labelers reach /api/queue, /api/projects/*/next, /api/items/*
and their own /api/submissions; everything under /api/admin needs an admin.

Chats (`chats`): trainers talk to the served policy in chat projects, or write both sides from
its suggestions in both_sides projects, under /api/projects/*/chats and /api/chats/*; a finished
chat's model turn becomes a ranking task. Admins choose the policy with /api/admin/policy and read
the per-trainer report at /api/admin/watch.

Failed logins are limited per user name and per client address (429 with Retry-After), so a
password cannot be guessed at speed; an admin revokes a user's tokens with
POST /api/admin/users/{name}/revoke (or `chatrlhf label revoke NAME`).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fastapi import Body, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from chatrlhf.labeling import chats, exports, store
from chatrlhf.labeling.db import User, open_db, reader
from chatrlhf.labeling.policy import Backends, ModelError
from chatrlhf.labeling.tasks import TaskError

PAGES = Path(__file__).parent / "pages"
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


def create_app(db: str, max_body_bytes: int = 4_000_000, claim_minutes: float = 60.0,
               admin_token: str | None = None, admin_name: str = "admin", migrate: bool = True,
               login_limit: int = 10, login_window_s: float = 300.0) -> FastAPI:
    """Build the app on `db` (migrated to head first unless migrate=False). `admin_token` makes that
    token an admin's. A user name gets `login_limit` failed logins per `login_window_s`, an address
    three times that."""
    sessions: sessionmaker = open_db(db, upgrade=migrate)
    if admin_token:
        with sessions.begin() as s:
            store.ensure_admin_token(s, admin_name, admin_token)
    app = FastAPI(title="chatrlhf labeling", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.sessions = sessions
    ctx = Ctx(sessions, claim_minutes, login_limit, login_window_s)
    _page_routes(app, ctx)
    _labeler_routes(app, ctx)
    _chat_routes(app, ctx)
    _admin_routes(app, ctx)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def _page_routes(app: FastAPI, ctx: Ctx) -> None:
    """Static HTML + JS pages (the JS talks to the API); unauthenticated visitors go to /login."""

    def page(name: str) -> FileResponse:
        return FileResponse(PAGES / name, media_type="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    def home_page(request: Request):
        return page("home.html") if ctx.token_of(request) else RedirectResponse("/login", 303)

    @app.get("/login", include_in_schema=False)
    def login_page():
        return page("login.html")

    @app.get("/label/{project}", include_in_schema=False)
    def label_page(project: str, request: Request):
        return page("label.html") if ctx.token_of(request) else RedirectResponse("/login", 303)

    @app.get("/chat/{project}", include_in_schema=False)
    def chat_page(project: str, request: Request):
        return page("chat.html") if ctx.token_of(request) else RedirectResponse("/login", 303)

    @app.get("/mine", include_in_schema=False)
    def mine_page(request: Request):
        return page("mine.html") if ctx.token_of(request) else RedirectResponse("/login", 303)

    @app.get("/admin", include_in_schema=False)
    def admin_page(request: Request):
        user = ctx.lookup(ctx.token_of(request))
        if user is None:
            return RedirectResponse("/login", 303)
        if user.role != "admin":
            return HTMLResponse("<h1>403</h1><p>Admins only. <a href='/'>Back to your queue</a></p>", 403)
        return page("admin.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        path = PAGES / name
        if name not in ("app.js", "style.css") or not path.is_file():
            raise HTTPException(404, "not found")
        return FileResponse(path)


def _labeler_routes(app: FastAPI, ctx: Ctx) -> None:
    """Login and what a labeler may do: their queue, items of their projects, their own answers."""

    @app.post("/api/login")
    def api_login(req: LoginReq, request: Request, response: Response):
        addr = request.client.host if request.client else "unknown"
        keys = [(ctx.user_logins, f"user:{req.name}", f"user '{req.name}'"),
                (ctx.addr_logins, f"addr:{addr}", f"address {addr}")]
        for limiter, key, who in keys:
            wait = limiter.wait_s(key)
            if wait > 0:
                raise HTTPException(429, f"too many failed logins for {who}: {limiter.limit} within "
                                         f"{limiter.window_s:g} s; try again in {math.ceil(wait)} s",
                                    headers={"Retry-After": str(math.ceil(wait))})
        try:
            with ctx.tx() as s:
                user, token = store.login(s, req.name, req.password)
        except HTTPException as e:
            if e.status_code == 403:
                for limiter, key, _ in keys:
                    limiter.failed(key)
            raise
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=14 * 24 * 3600)
        return {"name": user.name, "role": user.role, "token": token}

    @app.post("/api/logout")
    def api_logout(request: Request, response: Response):
        token = ctx.token_of(request)
        if token:
            ctx.auth_cache.pop(token, None)
            with ctx.tx() as s:
                store.logout(s, token)
        response.delete_cookie(COOKIE)
        return {"ok": True}

    @app.get("/api/me")
    def api_me(user: User = Depends(ctx.current_user)):
        return {"name": user.name, "role": user.role}

    @app.get("/api/queue")
    def api_queue(user: User = Depends(ctx.current_user)):
        with ctx.tx() as s:
            return {"projects": store.queue(s, user)}

    @app.post("/api/projects/{project}/next")
    def api_next(project: str, user: User = Depends(ctx.current_user)):
        with ctx.tx() as s:
            item = store.next_item(s, user, project, ctx.claim_minutes)
            if item is None:
                return {"item": None}
            p = s.get(store.Project, item.project_id)
            return {"item": _item_view(item, p, instructions=p.instructions)}

    @app.get("/api/items/{item_id}")
    def api_item(item_id: int, user: User = Depends(ctx.current_user)):
        with ctx.tx() as s:
            item, p = store.get_item_for(s, user, item_id)
            return _item_view(item, p)

    @app.post("/api/items/{item_id}/submit")
    def api_submit(item_id: int, response: Response, answer: dict[str, Any] = Body(...),
                   user: User = Depends(ctx.current_user)):
        for attempt in range(3):
            try:
                with ctx.tx() as s:
                    sub, created = store.submit(s, user, item_id, answer)
                    view = store.submission_view(sub, s.get(store.Item, item_id), user.name)
                break
            except IntegrityError:  # a concurrent identical request won the insert: answer as a resubmission
                if attempt == 2:
                    raise HTTPException(409, "concurrent conflicting submissions; retry") from None
        response.status_code = 201 if created else 200
        return {**view, "created": created}

    @app.get("/api/submissions")
    def api_my_submissions(user: User = Depends(ctx.current_user)):
        with ctx.tx() as s:
            return {"submissions": store.my_submissions(s, user)}

    @app.get("/api/submissions/{sub_id}")
    def api_submission(sub_id: int, user: User = Depends(ctx.current_user)):
        with ctx.tx() as s:
            return store.get_submission(s, user, sub_id)


def _admin_routes(app: FastAPI, ctx: Ctx) -> None:
    """Users, projects, imports, assignment, export and agreement: admins only."""

    def admin(user: User = Depends(ctx.current_user)) -> User:
        if user.role != "admin":
            raise HTTPException(403, "admins only")
        return user

    @app.post("/api/admin/users", status_code=201)
    def api_create_user(req: UserReq, _: User = Depends(admin)):
        with ctx.tx() as s:
            user, token = store.create_user(s, req.name, req.role, req.password, req.group)
            return {"name": user.name, "role": user.role, "group": user.group_name, "token": token}

    @app.post("/api/admin/users/{name}/token", status_code=201)
    def api_new_token(name: str, _: User = Depends(admin)):
        with ctx.tx() as s:
            user = store.get_user(s, name)
            return {"name": user.name, "role": user.role, "token": store.issue_token(s, user)}

    @app.post("/api/admin/users/{name}/revoke")
    def api_revoke(name: str, _: User = Depends(admin)):
        """End every token and session of `name` (a leaked token, a labeler who left)."""
        with ctx.tx() as s:
            user = store.get_user(s, name)
            n = store.revoke_tokens(s, user)
            user_id = user.id
        ctx.forget_user(user_id)
        return {"name": name, "revoked": n}

    @app.get("/api/admin/users")
    def api_users(_: User = Depends(admin)):
        with ctx.tx() as s:
            return {"users": [{"name": u.name, "role": u.role, "group": u.group_name}
                              for u in s.query(User).order_by(User.name)]}

    @app.post("/api/admin/projects")
    def api_create_project(req: ProjectReq, response: Response, _: User = Depends(admin)):
        with ctx.tx() as s:
            project, created = store.create_project(s, req.name, req.kind, req.labelers_per_item, req.instructions,
                                                    req.settings)
            response.status_code = 201 if created else 200
            return {**store.project_stats(s, project), "created": created}

    @app.get("/api/admin/projects")
    def api_projects(_: User = Depends(admin)):
        with ctx.tx() as s:
            return {"projects": [store.project_stats(s, p) for p in s.query(store.Project).order_by(store.Project.name)]}

    @app.get("/api/admin/projects/{project}")
    def api_project(project: str, _: User = Depends(admin)):
        with ctx.tx() as s:
            return store.project_stats(s, store.get_project(s, project))

    @app.post("/api/admin/projects/{project}/items")
    def api_import(project: str, req: ItemsReq, _: User = Depends(admin)):
        with ctx.tx() as s:
            return store.import_items(s, store.get_project(s, project, lock=True), req.records)

    @app.get("/api/admin/projects/{project}/items")
    def api_items(project: str, _: User = Depends(admin)):
        with ctx.tx() as s:
            p = store.get_project(s, project)
            items = s.query(store.Item).filter(store.Item.project_id == p.id).order_by(store.Item.id)
            return {"items": [{"id": i.id, "ext_id": i.ext_id, "payload": i.payload} for i in items]}

    @app.post("/api/admin/projects/{project}/members")
    def api_members(project: str, req: MembersReq, _: User = Depends(admin)):
        with ctx.tx() as s:
            return {"added": store.add_members(s, store.get_project(s, project), req.labelers)}

    @app.get("/api/admin/projects/{project}/export")
    def api_export(project: str, all: bool = False, round: int | None = None, _: User = Depends(admin)):
        with ctx.tx() as s:
            records = exports.export(s, store.get_project(s, project), include_unlabeled=all, round=round)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{project}.jsonl"'})

    @app.get("/api/admin/policy")
    def api_policy(_: User = Depends(admin)):
        with ctx.tx() as s:
            return {"policy": chats.policy_view(chats.current_policy(s))}

    @app.post("/api/admin/policy", status_code=201)
    def api_set_policy(req: PolicyReq, _: User = Depends(admin)):
        """Serve a model to the trainers from now on: a model directory (loaded in this process) or an
        OpenAI-compatible endpoint; `round` is the RLHF round its chats feed."""
        if (req.model_dir is None) == (req.url is None):
            raise HTTPException(422, "give exactly one of 'model_dir' (a saved model) or 'url' (an OpenAI-compatible endpoint)")
        kind, target = ("local", req.model_dir) if req.model_dir is not None else ("openai", req.url)
        backend = None
        if req.check:
            backend = _probe(kind, target, req.model)
        with ctx.tx() as s:
            policy = chats.set_policy(s, kind, target, req.model, req.round)
            view = chats.policy_view(policy)
        if backend is not None:
            ctx.backends.put(view["id"], backend)
        return {"policy": view}

    @app.get("/api/admin/watch")
    def api_watch(round: int | None = None, _: User = Depends(admin)):
        from chatrlhf.labeling.watch import watch_report

        with ctx.tx() as s:
            return watch_report(s, round)

    @app.get("/api/admin/chats")
    def api_chats(project: str | None = None, round: int | None = None, admin_user: User = Depends(admin)):
        with ctx.tx() as s:
            q = s.query(chats.Chat).order_by(chats.Chat.id)
            if project is not None:
                q = q.filter(chats.Chat.project_id == store.get_project(s, project).id)
            if round is not None:
                q = q.filter(chats.Chat.round == round)
            return {"chats": [chats.chat_view(s, c) for c in q]}

    @app.get("/api/admin/projects/{project}/agreement")
    def api_agreement(project: str, _: User = Depends(admin)):
        with ctx.tx() as s:
            return store.project_agreement(s, store.get_project(s, project))


def _probe(kind: str, target: str, model: str | None):
    """Load a model directory, or ask an endpoint for its models: a policy that cannot answer is
    refused before trainers meet it (422 naming the cause)."""
    from chatrlhf.labeling.policy import LocalBackend, OpenAIBackend

    try:
        if kind == "local":
            return LocalBackend(target)
        backend = OpenAIBackend(target, model)
        import httpx

        try:
            r = httpx.get(backend.url + "/v1/models", timeout=10.0, trust_env=False)
        except httpx.HTTPError as e:
            raise ModelError(f"the model endpoint {backend.url} is unreachable: {type(e).__name__}: {e}") from e
        if r.status_code >= 400:
            raise ModelError(f"the model endpoint {backend.url}/v1/models answered {r.status_code}")
        return backend
    except ModelError as e:
        raise HTTPException(422, f"{e} (pass \"check\": false to store it anyway)") from None


def _chat_routes(app: FastAPI, ctx: Ctx) -> None:
    """Trainers' conversations with the served policy. Each turn is committed as soon as it is
    written; the model is asked outside any transaction."""

    def reply(user: User, chat_id: int) -> None:
        with ctx.tx() as s:
            ask = chats.reply_request(s, user, chat_id)
        text = ctx.complete(ask.policy, ask.messages, 1, None, ask.settings,
                            f"The conversation so far is saved (turns 0 to {ask.position - 1}); retry the reply "
                            f"with POST /api/chats/{chat_id}/reply")[0]
        with ctx.tx() as s:
            chats.store_reply(s, ask, text)

    def rank_turn(user: User, chat_id: int, turn: int | None, k: int | None) -> dict[str, Any]:
        with ctx.tx() as s:
            plan = chats.rank_plan(s, user, chat_id, turn, k)
        alts = ctx.complete(plan.policy, plan.context, plan.k - 1, plan.seed, plan.settings,
                            f"The chat is kept; no ranking task was queued: retry with POST /api/chats/{chat_id}/rank-turn")
        with ctx.tx() as s:
            item = chats.queue_ranking(s, plan, alts)
            return {"id": item.id, "ext_id": item.ext_id, "project": plan.settings["rank_project"],
                    "turn": plan.turn, "k": len(item.payload["responses"])}

    @app.post("/api/projects/{project}/chats", status_code=201)
    def api_start_chat(project: str, req: ChatReq | None = None, user: User = Depends(ctx.current_user)):
        with ctx.tx() as s:
            chat = chats.start_chat(s, user, project, req.system if req else None)
            return chats.chat_view(s, chat)

    @app.get("/api/projects/{project}/chats")
    def api_my_chats(project: str, user: User = Depends(ctx.current_user)):
        with ctx.tx() as s:
            return {"chats": chats.my_chats(s, user, project)}

    @app.get("/api/chats/{chat_id}")
    def api_chat(chat_id: int, user: User = Depends(ctx.current_user)):
        with ctx.tx() as s:
            return chats.chat_view(s, chats.get_chat(s, user, chat_id))

    @app.post("/api/chats/{chat_id}/messages", status_code=201)
    def api_message(chat_id: int, req: TurnReq, user: User = Depends(ctx.current_user)):
        """Store the trainer's turn; in a chat project the policy then answers it (a failing model
        is a 502 and the turn stays stored)."""
        with ctx.tx() as s:
            chats.add_turn(s, user, chat_id, req.role, req.content, req.meta)
            kind = s.get(store.Project, s.get(chats.Chat, chat_id).project_id).kind
        if kind == "chat":
            reply(user, chat_id)
        with ctx.tx() as s:
            return chats.chat_view(s, chats.get_chat(s, user, chat_id))

    @app.post("/api/chats/{chat_id}/reply", status_code=201)
    def api_reply(chat_id: int, user: User = Depends(ctx.current_user)):
        """The policy answers the chat's last user turn (again, after a failed attempt)."""
        reply(user, chat_id)
        with ctx.tx() as s:
            return chats.chat_view(s, chats.get_chat(s, user, chat_id))

    @app.post("/api/chats/{chat_id}/suggest")
    def api_suggest(chat_id: int, user: User = Depends(ctx.current_user)):
        """both_sides: the policy's suggestion for the next assistant turn, kept with the turn the
        trainer writes from it."""
        with ctx.tx() as s:
            ask = chats.suggestion_request(s, user, chat_id)
        text = ctx.complete(ask.policy, ask.messages, 1, None, ask.settings,
                            "The conversation so far is saved; write the turn yourself or ask again")[0]
        with ctx.tx() as s:
            chats.store_suggestion(s, ask, text)
        return {"suggestion": chats.clean(text)}

    @app.post("/api/chats/{chat_id}/finish")
    def api_finish(chat_id: int, user: User = Depends(ctx.current_user)):
        """Finish the chat; in a chat project with auto_rank, one of its model turns becomes a ranking
        task (a failure to sample alternatives leaves the chat finished and says so in rank_error)."""
        with ctx.tx() as s:
            chat = chats.finish_chat(s, user, chat_id)
            project = s.get(store.Project, chat.project_id)
            auto = project.kind == "chat" and (project.settings or {}).get("auto_rank", True)
        rank_item, rank_error = None, None
        if auto:
            try:
                rank_item = rank_turn(user, chat_id, None, None)
            except HTTPException as e:
                rank_error = e.detail
        with ctx.tx() as s:
            return {"chat": chats.chat_view(s, chats.get_chat(s, user, chat_id)), "rank_item": rank_item,
                    "rank_error": rank_error}

    @app.post("/api/chats/{chat_id}/rank-turn", status_code=201)
    def api_rank_turn(chat_id: int, req: RankTurnReq | None = None, user: User = Depends(ctx.current_user)):
        """Queue a K-way ranking of one model turn (`turn`, default random) of a finished chat: the
        original and K - 1 fresh samples for the same context, shuffled."""
        req = req or RankTurnReq()
        return rank_turn(user, chat_id, req.turn, req.k)


def _item_view(item, project, **extra: Any) -> dict[str, Any]:
    """An item as its labeler sees it (the payload without gold fields)."""
    return {"id": item.id, "ext_id": item.ext_id, "kind": project.kind, "project": project.name, **extra,
            "payload": _public(item.payload)}


def _public(payload: dict[str, Any]) -> dict[str, Any]:
    """What a labeler sees of an item: the gold `reference` would bias the labeler, so it stays hidden."""
    return {k: v for k, v in payload.items() if k not in ("reference", "rankings", "original_index", "policy")}
