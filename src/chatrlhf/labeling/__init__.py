"""The labeling app: where people (and simulated labelers, through the same API) write demonstrations,
rank K responses and rate responses 1-7 with flags; export goes straight to `chatrlhf sft` / `rm`.

Modules: db (tables, engines), migrations (Alembic), tasks (what a task and an answer must be),
store (queue, answers, export), agreement, auth, app (FastAPI + pages/), client, cli.
"""
