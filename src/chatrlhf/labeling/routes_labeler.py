"""The labeler's routes: login and logout, their queue, items of their projects, their own answers."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request, Response
from sqlalchemy.exc import IntegrityError

from chatrlhf.labeling import store
from chatrlhf.labeling.db import User
from chatrlhf.labeling.web import COOKIE, Ctx, LoginReq, ProfileReq


def register(app: FastAPI, ctx: Ctx) -> None:
    """Login and what a labeler may do: their queue, items of their projects, their own answers."""
    _session_routes(app, ctx)
    _work_routes(app, ctx)


def _session_routes(app: FastAPI, ctx: Ctx) -> None:
    """Log in (rate-limited per name and per address), log out, who am I."""

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
        return _me_view(user)

    @app.put("/api/me")
    def api_set_me(req: ProfileReq, user: User = Depends(ctx.current_user)):
        """A labeler says which group they belong to (optional, self-declared)."""
        with ctx.tx() as s:
            out = _me_view(store.set_group(s, user.id, req.group))
        ctx.forget_user(user.id)  # the cached user still has the old group
        return out


def _me_view(user: User) -> dict[str, Any]:
    return {"name": user.name, "role": user.role, "group": user.group_name}


def _work_routes(app: FastAPI, ctx: Ctx) -> None:
    """The queue, the next item of a project, an item, submitting an answer, one's own submissions."""

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


def _item_view(item, project, **extra: Any) -> dict[str, Any]:
    """An item as its labeler sees it (the payload without gold fields)."""
    return {"id": item.id, "ext_id": item.ext_id, "kind": project.kind, "project": project.name, **extra,
            "payload": _public(item.payload)}


def _public(payload: dict[str, Any]) -> dict[str, Any]:
    """What a labeler sees of an item: the gold `reference` would bias the labeler, so it stays hidden."""
    return {k: v for k, v in payload.items() if k not in ("reference", "rankings", "original_index", "policy")}
