"""Tables of the labeling app and how to open a database (SQLite file or PostgreSQL URL).

The schema is owned by Alembic (`labeling/migrations`); `open_db` upgrades to head before use, so a
database made by an older version is migrated, never silently recreated.

Why the locking: SQLite transactions start with BEGIN IMMEDIATE (one writer at a time, no
"database is locked" on a read-to-write upgrade) in WAL mode with synchronous=FULL (a commit that
was acknowledged survives a crash). PostgreSQL rows are locked with SELECT ... FOR UPDATE where two
labelers could race (claiming the next item, the last free slot of an item).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "labeler"
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    group_name: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a team of trainers (watch report)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Token(Base):
    """Bearer tokens, stored as SHA-256 (tokens are 256-bit random, so no slow hash is needed)."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "api" | "session"
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "rank" | "demo" | "likert" | "chat" | "both_sides"
    labelers_per_item: Mapped[int] = mapped_column(Integer, default=1)
    instructions: Mapped[str] = mapped_column(String(4000), default="")
    # chat projects: {"k", "rank_project", "rank_labelers_per_item", "max_new_tokens", "temperature"}
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Member(Base):
    __tablename__ = "members"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Item(Base):
    """One task: a comparison record (rank), a prompt (demo) or a prompt + response (likert).

    `answers` counts its submissions (kept by `store.submit` under the item's row lock) so that
    finding the next open item reads an index instead of counting every answered item (0002)."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "ext_id"), Index("ix_items_open", "project_id", "answers", "id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    ext_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    answers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Claim(Base):
    """A labeler holds an item for a while, so two people do not fill the same last slot."""

    __tablename__ = "claims"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # first claim, for time per task


class Submission(Base):
    """A labeler's answer to an item; (item, labeler) is unique, which makes resubmission idempotent."""

    __tablename__ = "submissions"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # claim -> submit
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Policy(Base):
    """A model the app talks to: a model directory loaded in the app process ("local") or an
    OpenAI-compatible endpoint ("openai"). The newest row is the one served; `round` is the RLHF
    round whose data its chats feed."""

    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "local" | "openai"
    target: Mapped[str] = mapped_column(String(1000))  # model directory or base URL
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the endpoint's model name
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Chat(Base):
    """A conversation a trainer holds in a chat project (the policy writes the assistant turns) or
    writes in a both-sides project (the trainer writes both, from the policy's suggestions)."""

    __tablename__ = "chats"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id", ondelete="SET NULL"), nullable=True)
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="open")  # "open" | "finished"
    pending_suggestion: Mapped[str | None] = mapped_column(Text, nullable=True)  # both-sides: offered, not yet answered
    rank_item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Turn(Base):
    """One message of a chat, stored as soon as it is written."""

    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("chat_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # "system" | "user" | "assistant"
    content: Mapped[str] = mapped_column(Text)
    by_model: Mapped[bool] = mapped_column(Boolean, default=False)
    suggestion: Mapped[str | None] = mapped_column(Text, nullable=True)  # both-sides: what the policy offered
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id", ondelete="SET NULL"), nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # e.g. {"prompt_id", "task"}
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # since the previous turn
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def normalize_url(db: str) -> str:
    """'runs/x.db' -> sqlite:///runs/x.db; 'postgresql://' -> the psycopg 3 driver."""
    if "://" not in db:
        return f"sqlite:///{db}"
    if db.startswith("postgresql://") or db.startswith("postgres://"):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    return db


def make_engine(db: str) -> Engine:
    url = normalize_url(db)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=20,
                               max_overflow=20)
        _sqlite_pragmas(engine)
        return engine
    if url.startswith("postgresql+psycopg"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise RuntimeError("PostgreSQL needs the psycopg driver: pip install 'psycopg[binary]>=3.1'") from None
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # IMMEDIATE by default; readers (engine.execution_options(sqlite_begin="DEFERRED")) never
        # block writers in WAL mode
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'IMMEDIATE')}")


def alembic_config(db: str):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(db).replace("%", "%%"))
    return cfg


def migrate(db: str, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic upgrade)."""
    from alembic import command

    command.upgrade(alembic_config(db), revision)


def downgrade(db: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(db), revision)


def open_db(db: str, upgrade: bool = True) -> sessionmaker:
    """Migrate to head, then return a session factory bound to the database."""
    if upgrade:
        migrate(db)
    return sessionmaker(bind=make_engine(db), expire_on_commit=False)


def reader(sessions: sessionmaker) -> sessionmaker:
    """Sessions for read-only work (auth lookups): a deferred transaction on SQLite."""
    return sessionmaker(bind=sessions.kw["bind"].execution_options(sqlite_begin="DEFERRED"), expire_on_commit=False)
