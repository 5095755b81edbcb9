"""The labeling app: where people (and simulated labelers, through the same API) write demonstrations,
rank K responses and rate responses 1-7 with flags, chat with the served policy or write both sides
from its suggestions; export goes straight to `chatrlhf sft` / `rm`.

Modules: db (tables, engines), migrations (Alembic), tasks (what a task and an answer must be),
store (queue, answers, export), chats (conversations with the policy, rank one turn), policy (the
model the app talks to), watch (per-trainer report), loop (the chat loop under `chatrlhf iterate`),
agreement, auth, app (FastAPI + pages/; web holds what its routes share, routes_labeler, routes_chat
and routes_admin the routes), client, cli.
"""
