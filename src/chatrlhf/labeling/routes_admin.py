"""The admin's routes: users, projects, imports, assignment, export, the served policy, the watch
report, chats and agreement."""

from __future__ import annotations

import json
from typing import Callable

from fastapi import Depends, FastAPI, HTTPException, Response

from chatrlhf.labeling import chats, exports, store
from chatrlhf.labeling.db import User
from chatrlhf.labeling.policy import ModelError
from chatrlhf.labeling.web import Ctx, ItemsReq, MembersReq, PolicyReq, ProjectReq, UserReq


def register(app: FastAPI, ctx: Ctx) -> None:
    """Users, projects, imports, assignment, export and agreement: admins only."""

    def admin(user: User = Depends(ctx.current_user)) -> User:
        if user.role != "admin":
            raise HTTPException(403, "admins only")
        return user

    _user_routes(app, ctx, admin)
    _project_routes(app, ctx, admin)
    _policy_routes(app, ctx, admin)
    _review_routes(app, ctx, admin)


def _user_routes(app: FastAPI, ctx: Ctx, admin: Callable[..., User]) -> None:
    """Create users, issue and revoke their tokens, list them."""

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


def _project_routes(app: FastAPI, ctx: Ctx, admin: Callable[..., User]) -> None:
    """Create and list projects, import items, add members, export the answers."""

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
    def api_export(project: str, all: bool = False, round: int | None = None, group: str | None = None,
                   _: User = Depends(admin)):
        with ctx.tx() as s:
            records = exports.export(s, store.get_project(s, project), include_unlabeled=all, round=round, group=group)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{project}.jsonl"'})


def _policy_routes(app: FastAPI, ctx: Ctx, admin: Callable[..., User]) -> None:
    """Which model the trainers chat with."""

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


def _review_routes(app: FastAPI, ctx: Ctx, admin: Callable[..., User]) -> None:
    """What the trainers did: the watch report, their chats, agreement between labelers."""

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
