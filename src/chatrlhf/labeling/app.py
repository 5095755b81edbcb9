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

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from sqlalchemy.orm import sessionmaker

from chatrlhf.labeling import routes_admin, routes_chat, routes_labeler, store
from chatrlhf.labeling.db import open_db
from chatrlhf.labeling.web import BodyLimit, Ctx

PAGES = Path(__file__).parent / "pages"


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
    routes_labeler.register(app, ctx)
    routes_chat.register(app, ctx)
    routes_admin.register(app, ctx)
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
