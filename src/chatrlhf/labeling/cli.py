"""`chatrlhf label ...`: serve the labeling app and manage its database from the shell.

    chatrlhf label serve --db postgresql://user@host/db      # admin token: CHATRLHF_LABEL_ADMIN_TOKEN
                                                             # (or CHATRLHF_LABEL_TOKEN, as iterate reads)
    chatrlhf label create-user ana --password ...            # prints ana's API token once
    chatrlhf label import runs/default/rounds/round_2/comparisons.jsonl --project round-2
    chatrlhf label assign round-2 ana ben
    chatrlhf label export round-2 --out rm_rankings.jsonl
    chatrlhf label agreement round-2
    chatrlhf label simulate 'chatrlhf-round-*' --watch   # world labelers as API clients (for iterate)
    chatrlhf label policy --model runs/default/ppo --round 2  # the model trainers chat with
    chatrlhf label simulate-chats talk --chats 20        # world labelers as trainers in a chat project
    chatrlhf label watch --round 2                       # agreement, time per task, suggestions kept

Heavy imports (FastAPI, SQLAlchemy) stay inside the commands so `chatrlhf --help` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

label_app = typer.Typer(help="The labeling app: demonstrations, K-way rankings and 1-7 ratings by people "
                             "and simulated labelers.", no_args_is_help=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Dotted override, e.g. --set label.port=8200.")]
DbOpt = Annotated[Optional[str], typer.Option("--db", help="Database: a SQLite path/URL or postgresql://... (default: label.db).")]


def _label_cfg(config: Path | None, overrides: list[str] | None):
    from chatrlhf.cli_options import load_cfg

    return load_cfg(config, overrides).label


def _db(config: Path | None, overrides: list[str] | None, db: str | None) -> str:
    return db or _label_cfg(config, overrides).db


def _session(db: str):
    from chatrlhf.labeling.db import open_db

    return open_db(db).begin()


def fail_with(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1)


@label_app.command()
def serve(config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None,
          host: Annotated[Optional[str], typer.Option(help="Bind address (default label.host).")] = None,
          port: Annotated[Optional[int], typer.Option(help="Port (default label.port).")] = None,
          workers_log: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
          model: Annotated[Optional[str], typer.Option(help="Serve this model directory to chat projects.")] = None,
          model_url: Annotated[Optional[str], typer.Option(help="Or an OpenAI-compatible endpoint (e.g. `chatrlhf serve`).")] = None,
          round: Annotated[Optional[int], typer.Option(help="RLHF round the served model's chats feed.")] = None):
    """Serve the labeling app (pages at /, API at /api, docs at /api/docs)."""
    import uvicorn

    from chatrlhf.labeling.app import create_app

    cfg = _label_cfg(config, set)
    url = db or cfg.db
    if model or model_url:
        _set_policy(url, model, model_url, None, round)
    # the same variable `chatrlhf iterate` and `label simulate` read works for the server too
    token = os.environ.get("CHATRLHF_LABEL_ADMIN_TOKEN") or os.environ.get("CHATRLHF_LABEL_TOKEN")
    app = create_app(url, max_body_bytes=cfg.max_body_bytes, claim_minutes=cfg.claim_minutes,
                     admin_token=token, admin_name=cfg.admin_name)
    h, p = host or cfg.host, port or cfg.port
    typer.echo(f"labeling app on http://{h}:{p}/  (database {url})", err=True)
    if not token:
        typer.echo("no CHATRLHF_LABEL_ADMIN_TOKEN (or CHATRLHF_LABEL_TOKEN) set: make an admin with "
                   "`chatrlhf label create-user NAME --role admin`", err=True)
    uvicorn.run(app, host=h, port=p, log_level=workers_log)


def _set_policy(db: str, model: str | None, url: str | None, name: str | None, round: int | None) -> dict:
    from chatrlhf.labeling import chats
    from chatrlhf.labeling.tasks import TaskError

    if (model is None) == (url is None):
        fail_with(ValueError("give exactly one of --model DIR or --model-url URL"))
    try:
        with _session(db) as s:
            return chats.policy_view(chats.set_policy(s, "local" if model else "openai",
                                                      str(Path(model).resolve()) if model else url, name, round))
    except TaskError as e:
        fail_with(e)


@label_app.command()
def policy(config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None,
           model: Annotated[Optional[str], typer.Option(help="A saved model directory (runs/default/ppo).")] = None,
           model_url: Annotated[Optional[str], typer.Option(help="An OpenAI-compatible endpoint.")] = None,
           name: Annotated[Optional[str], typer.Option(help="The endpoint's model name.")] = None,
           round: Annotated[Optional[int], typer.Option(help="RLHF round the chats with it feed.")] = None):
    """Show the model chat projects talk to, or serve another one (running apps switch at their
    next model call)."""
    from chatrlhf.labeling import chats

    url = _db(config, set, db)
    if model or model_url:
        typer.echo(json.dumps(_set_policy(url, model, model_url, name, round)))
        return
    with _session(url) as s:
        typer.echo(json.dumps(chats.policy_view(chats.current_policy(s))))


@label_app.command()
def watch(config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None,
          round: Annotated[Optional[int], typer.Option(help="Only items and chats of this round.")] = None):
    """Per trainer and per group: agreement on overlapping items, time per task, suggestions kept."""
    from chatrlhf.labeling.watch import watch_report

    with _session(_db(config, set, db)) as s:
        typer.echo(json.dumps(watch_report(s, round), indent=2))


@label_app.command("simulate-chats")
def simulate_chats(project: str, url: Annotated[str, typer.Option(help="Labeling app URL.")] = "http://127.0.0.1:8100",
                   config: ConfigOpt = None, set: SetOpt = None,
                   chats: Annotated[int, typer.Option(help="Conversations to hold (two world prompts each).")] = 10,
                   labelers: Annotated[Optional[str], typer.Option(help="Comma-separated labeler ids (default: all "
                                                                        "non-held-out world labelers).")] = None,
                   seed: Annotated[int, typer.Option(help="Seed of the trainers' judgement noise.")] = 0):
    """World labelers as trainers of a chat (or both_sides) project, over the API (admin token in
    CHATRLHF_LABEL_TOKEN); in a chat project each finished chat queues a ranking task, which
    `chatrlhf label simulate PROJECT-rank` can then fill."""
    from chatrlhf.cli_options import load_cfg
    from chatrlhf.labeling.client import LabelingClient, LabelingError
    from chatrlhf.world.loader import require_world

    token = os.environ.get("CHATRLHF_LABEL_TOKEN")
    if not token:
        fail_with(ValueError("set CHATRLHF_LABEL_TOKEN to an admin token of the labeling app"))
    world = require_world(load_cfg(config, set), "the simulated trainers")
    labs = [world.labeler(x) for x in labelers.split(",")] if labelers else world.labelers(held_out=False)
    client = LabelingClient(url, token)
    prompts = world.prompts("rm")
    try:
        if client.stats(project)["kind"] == "both_sides":
            typer.echo(json.dumps(client.simulate_both_sides(project, labs, world, prompts[:chats], seed)))
        else:
            typer.echo(json.dumps(client.simulate_chats(project, labs, world, prompts[: 2 * chats], 2, seed)))
    except LabelingError as e:
        fail_with(e)


@label_app.command()
def migrate(config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None,
            revision: Annotated[str, typer.Option(help="Alembic revision to upgrade to.")] = "head"):
    """Upgrade the database schema (serve does this at start too)."""
    from chatrlhf.labeling.db import migrate as run_migrate

    url = _db(config, set, db)
    run_migrate(url, revision)
    typer.echo(f"{url}: schema at {revision}")


@label_app.command("create-user")
def create_user(name: str, config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None,
                role: Annotated[str, typer.Option(help="admin or labeler.")] = "labeler",
                group: Annotated[Optional[str], typer.Option(help="Team, for the watch report.")] = None,
                password: Annotated[Optional[str], typer.Option(help="Password for the web login (8+ chars).")] = None):
    """Create a user and print its API token (shown only once)."""
    from chatrlhf.labeling import store

    if password is not None and len(password) < 8:
        fail_with(ValueError("password must have at least 8 characters"))
    try:
        with _session(_db(config, set, db)) as s:
            _, token = store.create_user(s, name, role, password, group)
    except (store.Conflict, ValueError) as e:
        fail_with(e)
    typer.echo(token)


@label_app.command()
def revoke(name: str, config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None):
    """Revoke every API token and login session of a user (servers refuse them within seconds)."""
    from chatrlhf.labeling import store

    try:
        with _session(_db(config, set, db)) as s:
            n = store.revoke_tokens(s, store.get_user(s, name))
    except store.NotFound as e:
        fail_with(e)
    typer.echo(f"revoked {n} token(s) of '{name}'")


@label_app.command("import")
def import_(file: Path, project: Annotated[str, typer.Option(help="Project name (created if missing).")],
            config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None,
            kind: Annotated[Optional[str], typer.Option(help="rank, demo or likert (default: from the first record).")] = None,
            labelers_per_item: Annotated[int, typer.Option(help="Labelers who answer each item.")] = 1,
            instructions: Annotated[str, typer.Option(help="Shown to labelers above each task.")] = ""):
    """Import a jsonl task file (comparison records from `chatrlhf sample`, prompts, or prompt+response)."""
    from chatrlhf.labeling import store
    from chatrlhf.labeling.tasks import TaskError, detect_kind

    lines, records = _read_jsonl(file)
    if not records:
        fail_with(ValueError(f"{file}: no records"))
    try:
        with _session(_db(config, set, db)) as s:
            proj, _ = store.create_project(s, project, kind or detect_kind(records[0]), labelers_per_item, instructions)
            got = store.import_items(s, proj, records, where=lambda i: f"line {lines[i]}")
    except (TaskError, store.Conflict) as e:
        fail_with(ValueError(f"{file}: {e}"))
    typer.echo(f"{project}: {got['added']} added, {got['unchanged']} already there")


@label_app.command()
def assign(project: str, labelers: list[str], config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None):
    """Give labelers access to a project's queue."""
    from chatrlhf.labeling import store

    try:
        with _session(_db(config, set, db)) as s:
            n = store.add_members(s, store.get_project(s, project), labelers)
    except store.NotFound as e:
        fail_with(e)
    typer.echo(f"{project}: {n} labeler(s) assigned")


@label_app.command()
def export(project: str, config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None,
           out: Annotated[Optional[Path], typer.Option(help="Output jsonl (default: stdout).")] = None,
           all: Annotated[bool, typer.Option("--all", help="Include comparison items nobody ranked yet.")] = False,
           round: Annotated[Optional[int], typer.Option(help="Only items and chats of this RLHF round.")] = None,
           group: Annotated[Optional[str], typer.Option(help="Only the answers of labelers in this group.")] = None):
    """Export answers in the formats `chatrlhf sft` (demonstrations) and `chatrlhf rm` (rankings) read."""
    from chatrlhf.labeling import exports, store

    try:
        with _session(_db(config, set, db)) as s:
            records = exports.export(s, store.get_project(s, project), include_unlabeled=all, round=round, group=group)
    except store.NotFound as e:
        fail_with(e)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"{len(records)} records -> {out}", err=True)


@label_app.command()
def agreement(project: str, config: ConfigOpt = None, set: SetOpt = None, db: DbOpt = None):
    """Inter-labeler agreement of a project, overall and per labeler pair."""
    from chatrlhf.labeling import store

    try:
        with _session(_db(config, set, db)) as s:
            typer.echo(json.dumps(store.project_agreement(s, store.get_project(s, project)), indent=2))
    except store.NotFound as e:
        fail_with(e)


@label_app.command()
def simulate(pattern: Annotated[str, typer.Argument(help="Project name, or a glob such as 'chatrlhf-round-*'.")],
             url: Annotated[str, typer.Option(help="Labeling app URL.")] = "http://127.0.0.1:8100",
             config: ConfigOpt = None, set: SetOpt = None,
             labelers: Annotated[Optional[str], typer.Option(help="Comma-separated labeler ids (default: all "
                                                                  "non-held-out world labelers).")] = None,
             watch: Annotated[bool, typer.Option(help="Keep watching for new matching projects (Ctrl-C stops).")] = False,
             seed: Annotated[int, typer.Option(help="Seed of the labelers' judgement noise.")] = 0):
    """Attach the world's simulated labelers to the app as API clients (admin token in
    CHATRLHF_LABEL_TOKEN); they fill the same queue people use."""
    from chatrlhf.cli_options import load_cfg
    from chatrlhf.labeling.client import LabelingClient
    from chatrlhf.world.loader import require_world

    token = os.environ.get("CHATRLHF_LABEL_TOKEN")
    if not token:
        fail_with(ValueError("set CHATRLHF_LABEL_TOKEN to an admin token of the labeling app"))
    world = require_world(load_cfg(config, set), "the simulated labelers")
    labs = world.labelers(held_out=False)
    if labelers:
        wanted = labelers.split(",")
        labs = [world.labeler(x) for x in wanted]
    client = LabelingClient(url, token)
    if watch:
        typer.echo(f"simulated labelers {[lab.id for lab in labs]} watching {pattern} on {url} (Ctrl-C stops)", err=True)
        try:
            client.watch_simulated(pattern, labs, world, seed)
        except KeyboardInterrupt:
            return
    else:
        typer.echo(json.dumps(client.attach_simulated(pattern, labs, world, seed)))


def _read_jsonl(path: Path) -> tuple[list[int], list]:
    """(line numbers, records) of a jsonl file; a bad line fails with file:line."""
    from chatrlhf.lm.data import iter_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    rows = list(iter_jsonl(path, objects_only=False))
    return [n for n, _ in rows], [r for _, r in rows]
