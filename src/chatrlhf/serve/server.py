"""OpenAI-compatible chat server: `chatrlhf serve --model DIR`.

    POST /v1/chat/completions   (stream via SSE, or one JSON reply)
    GET  /v1/models   /health   /  (the web chat page, static files in chatrlhf/web)

One worker thread owns the model and decodes every request in one continuously batched
DecodeBatch: a request that arrives mid-generation joins the running batch at the next step
instead of waiting for it to finish. `chatrlhf serve` runs that thread in a child process
(engine_process.py, `serve.decode_process`), so the HTTP work never holds up a decode step. Tokens go to each request's asyncio queue, so a client
that reads slowly only delays itself. Limits (body size, messages, max_tokens, timeout) and
every field's type and range answer 4xx with an OpenAI-style JSON error whose `param` names the
field; every other error (404, 405, 500) has the same {"error": {...}} shape.

One request cannot take the server down: its work is checked before it joins a batch, a failure
while joining fails only the joining requests, a failed step fails only the rows of that batch,
and a loop that dies anyway is restarted by a supervisor thread. /health answers 503 while the
loop is dead or stuck (holding work without finishing a step for serve.stuck_s).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatrlhf.config import ServeConfig
from chatrlhf.lm.engine import ChatFront, Engine, Generation, SamplingParams
from chatrlhf.serve.engine_process import ProcessScheduler
from chatrlhf.serve.scheduler import MAX_STOP, MAX_TOP_K, SEED_MAX, SEED_MIN, Job, Scheduler

WEB_DIR = Path(__file__).resolve().parent / "web"


# --- request schema -------------------------------------------------------------------------


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v: Any) -> Any:
        """Accept the list-of-parts form ([{"type": "text", "text": ...}]) the openai client may send."""
        if isinstance(v, list):
            return "".join(p.get("text", "") for p in v if isinstance(p, dict) and p.get("type") == "text")
        return v


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI options are accepted and ignored
    model: str | None = None
    messages: list[Message]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=MAX_TOP_K)
    stop: str | list[str] | None = Field(None, max_length=MAX_STOP)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)  # int64, as OpenAI's API: the sampler's range
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    group: str | None = Field(None, max_length=64)  # a group-conditioned model: whose preferences to follow


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None, code: str):
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, param: str | None, code: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- the app --------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: reject bodies over `limit` bytes with 413 before the app reads them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.strip().isdigit():
            resp = JSONResponse(error_body("content-length is not a number", "body", "invalid_value"), status_code=400)
            return await resp(scope, receive, send)
        body, more = b"", True
        if declared is None or int(declared) <= self.limit:
            while more and len(body) <= self.limit:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
        if declared is not None and int(declared) > self.limit or len(body) > self.limit:
            resp = JSONResponse(error_body(f"request body is larger than the {self.limit}-byte limit",
                                           "body", "body_too_large"), status_code=413)
            return await resp(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, expected or not, answers in OpenAI's error format."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError):
        return JSONResponse(error_body(e.message, e.param, e.code), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, f"http_{e.status_code}")
        return JSONResponse(error_body(str(e.detail), None, code), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", None, "internal_error",
                                       "server_error"), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"] if p != "body"]
        if err["type"] == "json_invalid":
            return JSONResponse(error_body(f"request body is not valid JSON: {err.get('ctx', {}).get('error', '')}",
                                           "body", "invalid_json"), status_code=400)
        param = ".".join(loc) or "body"
        return JSONResponse(error_body(f"{param}: {err['msg']}", param, "invalid_value"), status_code=400)


def create_app(engine: ChatFront, cfg: ServeConfig | None = None, model_name: str = "chatrlhf",
               save_conversations: str | Path | None = None, group_messages: dict[str, str] | None = None,
               scheduler: Scheduler | ProcessScheduler | None = None) -> FastAPI:
    """The app over `engine`: an Engine decoded by a Scheduler thread in this process, or a ChatFront
    (the tokenizer alone) with the `scheduler` that decodes, such as a ProcessScheduler."""
    cfg = cfg or ServeConfig()
    if scheduler is None and not isinstance(engine, Engine):
        raise TypeError("create_app needs an Engine, or a ChatFront with the scheduler that decodes for it")
    sched = scheduler or Scheduler(engine, cfg.max_batch, cfg.stuck_s)
    save_path = Path(save_conversations) / "conversations.jsonl" if save_conversations else None
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sched.start()
        yield
        sched.stop()

    app = FastAPI(title="chatrlhf", lifespan=lifespan)
    app.state.scheduler = sched

    _add_error_handlers(app)

    @app.get("/health")
    async def health():
        ok, why = sched.health()
        body = {"status": "ok" if ok else "unhealthy", "model": model_name, "queued": sched.queued,
                "decoding": sched.live, "restarts": sched.restarts}
        if ok:
            return body
        return JSONResponse({**body, **error_body(why, None, "unhealthy", "server_error")}, status_code=503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "chatrlhf"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        job, messages = _make_job(req, engine, cfg, group_messages or {})
        sched.submit(job)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_name}
        deadline = time.monotonic() + cfg.timeout_s
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(job, meta, deadline, usage, messages, save_path),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text_parts: list[str] = []
        gen = await _collect(job, deadline, text_parts, cfg.timeout_s)
        _save(save_path, meta, messages, gen)
        # a JSONResponse of plain JSON types: FastAPI's generic encoding pass over the reply is not needed
        return JSONResponse({**meta, "object": "chat.completion",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                                          "finish_reason": _finish(gen)}], "usage": _usage(gen)})

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    if WEB_DIR.is_dir():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app


def _make_job(req: ChatRequest, engine: ChatFront, cfg: ServeConfig,
              group_messages: dict[str, str]) -> tuple[Job, list[dict[str, str]]]:
    """Check the limits and build the job; every breach names its field."""
    if not req.messages:
        raise APIError(400, "messages must hold at least one message", "messages", "invalid_value")
    if len(req.messages) > cfg.max_messages:
        raise APIError(400, f"{len(req.messages)} messages is more than the limit of {cfg.max_messages}",
                       "messages", "too_many_messages")
    field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = req.max_completion_tokens or req.max_tokens or cfg.default_max_tokens
    if max_tokens > cfg.max_tokens:
        raise APIError(400, f"{field}={max_tokens} is more than this server's limit of {cfg.max_tokens}",
                       field, "max_tokens_too_large")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in req.messages]
    if req.group is not None:
        if req.group not in group_messages:
            known = ", ".join(sorted(group_messages)) or "none: it was not trained group-conditioned"
            raise APIError(400, f"group {req.group!r} is not one this model knows ({known})", "group", "unknown_group")
        messages = [{"role": "system", "content": group_messages[req.group]}, *[m for m in messages if m["role"] != "system"]]
    try:
        prompt = engine.chat_prompt(messages)
    except ValueError as e:  # the model's chat template refused the conversation (e.g. roles out of order)
        raise APIError(400, str(e), "messages", "invalid_messages") from None
    if len(prompt) >= engine.context:
        raise APIError(400, f"the messages are {len(prompt)} tokens; this model's context is {engine.context}",
                       "messages", "context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = engine.chat_params(SamplingParams(max_new_tokens=max_tokens, temperature=req.temperature,
                                               top_p=req.top_p, top_k=req.top_k, stop=stop, seed=req.seed))
    return Job(prompt, params, asyncio.get_running_loop(), req.stream), messages


async def _next(job: Job, deadline: float) -> tuple[str, Any]:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return await asyncio.wait_for(job.queue.get(), timeout=left)


async def _collect(job: Job, deadline: float, parts: list[str], timeout_s: float) -> Generation:
    try:
        while True:
            kind, value = await _next(job, deadline)
            if kind == "piece":
                parts.append(value)
            elif kind == "done":
                return value
            else:
                raise APIError(500, f"generation failed: {value}", None, "generation_error")
    except (TimeoutError, asyncio.TimeoutError):
        job.cancel()
        raise APIError(408, f"request took longer than the {timeout_s:g} s timeout", "timeout", "timeout") from None
    except asyncio.CancelledError:
        job.cancel()
        raise


async def _sse(job: Job, meta: dict, deadline: float, include_usage: bool, messages: list[dict[str, str]],
               save_path: Path | None) -> AsyncIterator[str]:
    """Server-sent events in the OpenAI chunk format, ending with `data: [DONE]`."""
    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {**meta, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            try:
                kind, value = await _next(job, deadline)
            except (TimeoutError, asyncio.TimeoutError):
                job.cancel()
                err = error_body("request took longer than the timeout", "timeout", "timeout")
                yield f"data: {json.dumps(err)}\n\n"
                break
            if kind == "piece":
                yield chunk({"content": value})
            elif kind == "done":
                yield chunk({}, _finish(value))
                if include_usage:
                    yield f"data: {json.dumps({**meta, 'object': 'chat.completion.chunk', 'choices': [], 'usage': _usage(value)})}\n\n"
                _save(save_path, meta, messages, value)
                break
            else:
                yield f"data: {json.dumps(error_body(f'generation failed: {value}', None, 'generation_error', 'server_error'))}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:  # the client went away or we are done: stop decoding this row
        job.cancel()


def _finish(gen: Generation) -> str:
    return "length" if gen.finish_reason == "length" else "stop"


def _usage(gen: Generation) -> dict[str, int]:
    p, c = len(gen.prompt_ids), len(gen.token_ids)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _save(path: Path | None, meta: dict, messages: list[dict[str, str]], gen: Generation) -> None:
    """Append the finished conversation (the input `chatrlhf sample --conversations` draws from)."""
    if path is None:
        return
    row = {"id": meta["id"], "created": meta["created"], "model": meta["model"], "finish_reason": gen.finish_reason,
           "messages": [*messages, {"role": "assistant", "content": gen.text}]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as e:  # the reply is good; a full disk must not turn it into an error
        print(f"warning: conversation {meta['id']} not saved to {path}: {e}", file=sys.stderr, flush=True)


def run_server(cfg, model: str | Path | None = None, save_conversations: str | Path | None = None) -> None:
    import uvicorn
    from transformers.utils import logging as hf_logging

    from chatrlhf.layout import resolve_model
    from chatrlhf.lm.engine import load_engine
    from chatrlhf.lm.training import configure_threads

    path = resolve_model(cfg, model)
    hf_logging.disable_progress_bar()
    if cfg.serve.decode_process:  # this process answers HTTP with the tokenizer alone; a child decodes
        engine: ChatFront = ChatFront.from_pretrained(path)
        sched = ProcessScheduler(path, cfg.model.dtype, cfg.run.device, cfg.run.threads, cfg.serve.max_batch, cfg.serve.stuck_s,
                                 compile=cfg.serve.compile)
    else:
        configure_threads(cfg.run.threads)  # 1 thread on a busy CPU: OpenMP threads wait on each other
        engine, sched = load_engine(path, cfg.model.dtype, cfg.run.device, compile=cfg.serve.compile), None
    save = save_conversations or cfg.serve.save_conversations
    name = path.name if path.name not in ("ppo", "sft", "pretrain") else f"chatrlhf-{path.name}"
    from chatrlhf.lm.modeling import read_meta

    groups = read_meta(path).get("group_messages") if (path / "meta.json").is_file() else None
    app = create_app(engine, cfg.serve, name, save, groups, scheduler=sched)
    where = f"a child process, {sched.threads} torch threads" if sched else "this process"
    print(f"serving {path} as '{name}' on http://{cfg.serve.host}:{cfg.serve.port}/ (decoding in {where})"
          + (f"; saving conversations to {save}" if save else ""), flush=True)
    # what is loaded by now (torch, transformers, the model: ~400k objects) lives as long as the server; out of
    # the collector's sight, it cannot make a full collection stall every request in flight (~0.2 s each time)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port, log_level="info")
