"""Trainers' conversations with the served policy. Each turn is committed as soon as it is written;
the model is asked outside any transaction."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException

from chatrlhf.labeling import chats, store
from chatrlhf.labeling.db import User
from chatrlhf.labeling.web import ChatReq, Ctx, RankTurnReq, TurnReq


def register(app: FastAPI, ctx: Ctx) -> None:
    """Trainers' conversations with the served policy."""
    _conversation_routes(app, ctx)
    _turn_routes(app, ctx)


def _reply(ctx: Ctx, user: User, chat_id: int) -> None:
    """The policy answers the chat's last user turn; the model is asked between two transactions."""
    with ctx.tx() as s:
        ask = chats.reply_request(s, user, chat_id)
    text = ctx.complete(ask.policy, ask.messages, 1, None, ask.settings,
                        f"The conversation so far is saved (turns 0 to {ask.position - 1}); retry the reply "
                        f"with POST /api/chats/{chat_id}/reply")[0]
    with ctx.tx() as s:
        chats.store_reply(s, ask, text)


def _rank_turn(ctx: Ctx, user: User, chat_id: int, turn: int | None, k: int | None) -> dict[str, Any]:
    """Sample K - 1 alternatives to one model turn and queue the K-way ranking task."""
    with ctx.tx() as s:
        plan = chats.rank_plan(s, user, chat_id, turn, k)
    alts = ctx.complete(plan.policy, plan.context, plan.k - 1, plan.seed, plan.settings,
                        f"The chat is kept; no ranking task was queued: retry with POST /api/chats/{chat_id}/rank-turn")
    with ctx.tx() as s:
        item = chats.queue_ranking(s, plan, alts)
        return {"id": item.id, "ext_id": item.ext_id, "project": plan.settings["rank_project"],
                "turn": plan.turn, "k": len(item.payload["responses"])}


def _conversation_routes(app: FastAPI, ctx: Ctx) -> None:
    """Start a chat, list one's chats, read one, write a turn (the policy answers in a chat project)."""

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
            _reply(ctx, user, chat_id)
        with ctx.tx() as s:
            return chats.chat_view(s, chats.get_chat(s, user, chat_id))

    @app.post("/api/chats/{chat_id}/reply", status_code=201)
    def api_reply(chat_id: int, user: User = Depends(ctx.current_user)):
        """The policy answers the chat's last user turn (again, after a failed attempt)."""
        _reply(ctx, user, chat_id)
        with ctx.tx() as s:
            return chats.chat_view(s, chats.get_chat(s, user, chat_id))


def _turn_routes(app: FastAPI, ctx: Ctx) -> None:
    """Suggestions for both_sides, finishing a chat, ranking one of its model turns."""

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
                rank_item = _rank_turn(ctx, user, chat_id, None, None)
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
        return _rank_turn(ctx, user, chat_id, req.turn, req.k)
