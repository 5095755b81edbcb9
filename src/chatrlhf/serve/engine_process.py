"""The server's decoding loop in a child process (`serve.decode_process`, on by default).

In one process the HTTP front end (parsing, validation, the chat template, the reply) and the
decoding loop take turns holding Python's interpreter lock, and every request's front-end work
stalls the decode step in flight. `chatrlhf serve` therefore runs the `Scheduler` in a child
process, as vLLM's engine core runs apart from its API server: the HTTP process keeps only the
tokenizer (`ChatFront`) and sends each request's prompt ids and sampling parameters down a pipe; the
child sends back each decode step's events (text pieces, finished generations, errors) in one message.

If the child dies, the requests it held fail with an error, a new child starts, and requests that
arrive meanwhile wait for it; /health answers 503 until it is up.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from chatrlhf.lm.training import cpu_busy
from chatrlhf.serve.scheduler import Job, Scheduler, deliver

LOST = "the decoding process died; this request was lost"


def decode_threads(threads: int) -> int:
    """torch threads for the decoding process: `threads` when > 0; else every core but one (the HTTP
    process and its clients need one), and 1 on a busy machine."""
    if threads > 0:
        return threads
    return 1 if cpu_busy() else max(1, (os.cpu_count() or 1) - 1)


# --- the child --------------------------------------------------------------------------------


class _Outbox:
    """The child's stand-in for a request's event loop: what `deliver` and `Job.push` hand it goes up
    the pipe as (job id, kind, value) triples, one message per call."""

    def __init__(self, conn, jobs: dict[int, Job]):
        self.conn, self.jobs, self.lock = conn, jobs, threading.Lock()

    def send(self, msg: tuple) -> None:
        with self.lock:
            self.conn.send(msg)

    def call_soon_threadsafe(self, _fn: Any, events: list[tuple[Job, str, Any]]) -> None:
        for job, kind, _ in events:
            if kind in ("done", "error"):
                self.jobs.pop(job.id, None)  # type: ignore[attr-defined]
        self.send(("events", [(job.id, kind, value) for job, kind, value in events]))  # type: ignore[attr-defined]


class _ChildJob(Job):
    def __init__(self, job_id: int, prompt_ids: list[int], params, outbox: _Outbox, stream: bool):
        super().__init__(prompt_ids, params, outbox, stream)  # type: ignore[arg-type]
        self.id = job_id

    def push(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(None, [(self, kind, value)])


def _child(model_dir: str, dtype: str, device: str, threads: int, max_batch: int, stuck_s: float, compile: bool,
           inbox, outbox) -> None:
    """The decoding process: load the model, run a Scheduler, and turn pipe messages into its jobs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the HTTP process, which stops this one
    try:
        from transformers.utils import logging as hf_logging

        from chatrlhf.lm.engine import load_engine
        from chatrlhf.lm.training import configure_threads

        hf_logging.disable_progress_bar()
        configure_threads(threads)
        sched = Scheduler(load_engine(model_dir, dtype, device, compile=compile), max_batch, stuck_s)
    except BaseException:
        outbox.send(("failed", traceback.format_exc()))
        return
    gc.collect()
    gc.freeze()  # what is loaded lives as long as the process: no full collection stalls a step
    jobs: dict[int, Job] = {}
    out = _Outbox(outbox, jobs)
    sched.start()
    out.send(("ready",))
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):  # the HTTP process is gone
            break
        if msg[0] == "submit":
            _, job_id, prompt_ids, params, stream = msg
            jobs[job_id] = job = _ChildJob(job_id, prompt_ids, params, out, stream)
            sched.submit(job)
        elif msg[0] == "cancel":
            job = jobs.pop(msg[1], None)
            if job is not None:
                job.cancelled = True
        elif msg[0] == "health":
            ok, why = sched.health()
            out.send(("health", ok, why, sched.queued, sched.live, sched.restarts, sched.admitted))
        elif msg[0] == "stop":
            break
    sched.stop()


# --- the HTTP process's side ----------------------------------------------------------------


class ProcessScheduler:
    """The `Scheduler` interface (start, stop, submit, health, queued, live, restarts, admitted) over a child
    process that loads the model from `model_dir` and decodes."""

    def __init__(self, model_dir: str | Path, dtype: str = "float32", device: str = "auto", threads: int = 0,
                 max_batch: int = 16, stuck_s: float = 30.0, start_timeout_s: float = 600.0, compile: bool = False):
        self.model_dir, self.threads = str(model_dir), decode_threads(threads)
        self.args = (self.model_dir, dtype, device, self.threads, max_batch, stuck_s, compile)  # the child's
        self.start_timeout_s = start_timeout_s
        self.lock = threading.Lock()  # guards conn, jobs, backlog: the event loop and the reader both use them
        self.conn: Any = None  # to the child; None while it (re)starts
        self.jobs: dict[int, Job] = {}
        self.backlog: list[tuple[int, Job]] = []  # submitted while no child was up
        self.ids = itertools.count()
        self.running = False
        self.proc: Any = None
        self.events: Any = None
        self.reader: threading.Thread | None = None
        self.last_error: str | None = None
        self.child_restarts = 0  # process restarts; the child's own loop restarts come with its health
        self.queued = self.live = self._loop_restarts = self.admitted = 0  # the child's, as of its last health reply
        self.health_lock, self.health_reply = threading.Lock(), threading.Event()
        self._health: tuple = (True, "")

    @property
    def restarts(self) -> int:
        return self.child_restarts + self._loop_restarts

    def start(self) -> None:
        self.running = True
        self._launch()
        self.reader = threading.Thread(target=self._read, name="chatrlhf-decode-pipe", daemon=True)
        self.reader.start()

    def _launch(self) -> None:
        """Start a child and wait until it has loaded the model; then send what waited for it."""
        ctx = mp.get_context("spawn")  # a fork would copy this process's threads and OpenMP state
        inbox_r, inbox_w = ctx.Pipe(duplex=False)
        events_r, events_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(*self.args, inbox_r, events_w), name="chatrlhf-decoder", daemon=True)
        proc.start()
        inbox_r.close()
        events_w.close()  # only the child holds the write end: its death reads as EOF here
        try:
            if not events_r.poll(self.start_timeout_s):
                raise RuntimeError(f"the decoding process did not load the model in {self.start_timeout_s:g} s")
            msg = events_r.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"the decoding process exited with code {proc.exitcode} while loading the model") from None
        except RuntimeError:
            proc.kill()
            raise
        if msg[0] != "ready":
            proc.join(5)
            raise RuntimeError(f"the decoding process could not load {self.model_dir}:\n{msg[1]}")
        self.proc, self.events = proc, events_r
        with self.lock:
            self.conn = inbox_w
            backlog, self.backlog = self.backlog, []
            for job_id, job in backlog:
                self._post(("submit", job_id, job.prompt_ids, job.params, job.stream))

    def _post(self, msg: tuple) -> None:
        """Send to the child (the caller holds the lock). A dead child's pipe refuses: the reader then
        fails what it held and starts a new one."""
        try:
            self.conn.send(msg)
        except (OSError, ValueError):
            pass

    def submit(self, job: Job) -> None:
        with self.lock:
            job_id = next(self.ids)
            self.jobs[job_id] = job
            job.on_cancel = lambda: self._cancel(job_id)
            if self.conn is None:
                self.backlog.append((job_id, job))
            else:
                self._post(("submit", job_id, job.prompt_ids, job.params, job.stream))

    def _cancel(self, job_id: int) -> None:
        """Nobody reads the job's events any more; the child drops it if it still holds it (a streamed
        request is cancelled when its stream closes, after its end came too: nothing to send then)."""
        with self.lock:
            held = self.jobs.pop(job_id, None) is not None
            self.backlog = [(i, job) for i, job in self.backlog if i != job_id]
            if held and self.conn is not None:
                self._post(("cancel", job_id))

    def _read(self) -> None:
        """The reader thread: route the child's events to their requests; restart a child that died."""
        while self.running:
            try:
                msg = self.events.recv()
            except (EOFError, OSError):
                if self.running:
                    self._restart()
                continue
            if msg[0] == "events":
                routed = []
                with self.lock:
                    for i, kind, value in msg[1]:
                        job = self.jobs.pop(i, None) if kind in ("done", "error") else self.jobs.get(i)
                        if job is not None:
                            routed.append((job, kind, value))
                deliver(routed)
            elif msg[0] == "health":
                self._health, (self.queued, self.live, self._loop_restarts, self.admitted) = msg[1:3], msg[3:]
                self.health_reply.set()

    def _restart(self) -> None:
        with self.lock:
            self.conn = None
            waiting = {i for i, _ in self.backlog}
            lost = [job for i, job in self.jobs.items() if i not in waiting]
            self.jobs = {i: job for i, job in self.jobs.items() if i in waiting}
        deliver([(job, "error", LOST) for job in lost])
        self.proc.join(5)
        self.last_error = f"the decoding process exited with code {self.proc.exitcode}"
        self.child_restarts += 1
        while self.running:
            try:
                self._launch()
                return
            except RuntimeError as e:
                self.last_error = str(e)
                time.sleep(1.0)

    def health(self) -> tuple[bool, str]:
        """(healthy, why not): the child is up and its decoding loop is healthy (it answers in 2 s)."""
        if not self.running:
            return False, "the decoding process is stopped"
        if self.conn is None or self.proc is None or not self.proc.is_alive():
            return False, f"the decoding process is down ({self.last_error}); restarting"
        with self.health_lock:
            self.health_reply.clear()
            with self.lock:
                self._post(("health",))
            if not self.health_reply.wait(2.0):
                return False, "the decoding process does not answer"
            return self._health

    def stop(self) -> None:
        self.running = False
        with self.lock:
            if self.conn is not None:
                self._post(("stop",))
        if self.proc is not None:
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
