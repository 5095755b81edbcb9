"""The server's decoding loop: one thread runs continuous batching over every request in flight.
Each request is a Job; one request's failure ends only that request, and a supervisor restarts a
dead loop, so one bad request never harms another.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

from chatrlhf.lm.engine import DecodeBatch, Engine, SamplingParams

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # torch generators take [-2^63, 2^64); rows add small offsets
MAX_TOP_K = 1_000_000  # beyond any vocabulary; keeps the value inside the sampler's int64 tensors
MAX_STOP = 4  # stop sequences per request, as OpenAI's API


class Job:
    """One request: its prompt and params in, text pieces and the final Generation out (async queue)."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop,
                 stream: bool = True):
        self.prompt_ids, self.params, self.loop, self.stream = prompt_ids, params, loop, stream
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.on_cancel: Any = None  # set by a scheduler that must pass the cancellation on (another process)

    def cancel(self) -> None:
        """Stop decoding this request (its client went away or its time ran out)."""
        if not self.cancelled and self.on_cancel is not None:
            self.on_cancel()
        self.cancelled = True

    def push(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the request's event loop is gone (client and server shut down): nobody to tell
            self.cancelled = True

    def fail(self, message: str) -> None:
        self.push("error", message)
        self.cancelled = True


def deliver(events: list[tuple[Job, str, Any]]) -> None:
    """Hand a step's events to their requests with one wake-up per event loop, not one per event: each
    wake-up is a write to the loop's self-pipe, and that thread then competes with this one for the GIL."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, str, Any]]] = {}
    for ev in events:
        by_loop.setdefault(ev[0].loop, []).append(ev)
    for loop, evs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, evs)
        except RuntimeError:  # that event loop is gone (client and server shut down): nobody to tell
            for job, _, _ in evs:
                job.cancelled = True


def _put_all(events: list[tuple[Job, str, Any]]) -> None:
    for job, kind, value in events:
        job.queue.put_nowait((kind, value))


def check_params(params: SamplingParams) -> None:
    """What the sampler accepts, checked before a request joins a batch (a bad value raising inside
    the batch would take the other rows with it)."""
    if params.seed is not None and not SEED_MIN <= params.seed <= SEED_MAX:
        raise ValueError(f"seed {params.seed} is outside [{SEED_MIN}, {SEED_MAX}]")
    if not 0 <= params.top_k <= MAX_TOP_K:
        raise ValueError(f"top_k {params.top_k} is outside [0, {MAX_TOP_K}]")
    if not (0.0 <= params.temperature <= 2.0 and 0.0 < params.top_p <= 1.0):
        raise ValueError("temperature must be in [0, 2] and top_p in (0, 1]")


class Scheduler:
    """A thread that keeps one DecodeBatch running and lets waiting jobs join it (up to max_batch rows).

    A supervisor thread restarts the decoding thread if it dies; the jobs the dead loop held fail
    with an error, every other request is served by the new loop."""

    def __init__(self, engine: Engine, max_batch: int = 16, stuck_s: float = 30.0):
        self.eng, self.max_batch, self.stuck_s = engine, max_batch, stuck_s
        self.idle_s = 0.5  # how often an idle loop wakes to show /health it is alive
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()  # the decoding thread's alone: submit's notify() must wake it
        self.stopping = threading.Event()  # what the supervisor waits on
        self.running = False
        self.live = 0
        self.thread: threading.Thread | None = None
        self.supervisor: threading.Thread | None = None
        self.batch: DecodeBatch | None = None
        self.rows: dict[int, Job] = {}
        self.beat = time.monotonic()  # last time the loop made progress (or waited idle)
        self.restarts = 0
        self.admitted = 0  # requests that joined a batch (a cancelled request that never ran is not one)
        self.last_error: str | None = None

    def start(self) -> None:
        self.running = True
        self.stopping.clear()
        self._spawn()
        self.supervisor = threading.Thread(target=self._supervise, name="chatrlhf-supervisor", daemon=True)
        self.supervisor.start()

    def _spawn(self) -> None:
        self.beat = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="chatrlhf-decoder", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify_all()
        self.stopping.set()
        for th in (self.supervisor, self.thread):
            if th:
                th.join(timeout=10)

    @property
    def queued(self) -> int:
        return len(self.pending)

    def submit(self, job: Job) -> None:
        with self.cond:
            self.pending.append(job)
            self.cond.notify()

    def health(self) -> tuple[bool, str]:
        """(healthy, why not): the loop is alive, and if it holds work it finished a step recently."""
        if not self.running:
            return False, "the decoding loop is stopped"
        if self.thread is None or not self.thread.is_alive():
            return False, f"the decoding loop is dead (last error: {self.last_error}); restarting"
        idle_for = time.monotonic() - self.beat
        if (self.live or self.pending) and idle_for > self.stuck_s:
            return False, f"the decoding loop has not finished a step for {idle_for:.0f} s (serve.stuck_s = {self.stuck_s:g})"
        return True, ""

    def _supervise(self) -> None:
        while not self.stopping.wait(0.2):
            if self.thread is not None and not self.thread.is_alive():
                self._fail_held(f"the decoding loop died ({self.last_error}); this request was lost")
                self.restarts += 1
                self._spawn()

    def _fail_held(self, message: str) -> None:
        for job in list(self.rows.values()):
            job.fail(message)
        self.rows, self.batch, self.live = {}, None, 0

    def _run(self) -> None:
        """The decoding thread: an error that escapes the loop fails the jobs it held, then the loop
        starts over with a fresh batch; what escapes even that is left to the supervisor."""
        while self.running:
            try:
                self._loop()
                return
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                self._fail_held(f"generation failed: {self.last_error}")
                self.restarts += 1
                time.sleep(0.05)  # an error that repeats must not spin a core
            except BaseException as e:  # not ours to swallow: the supervisor restarts the thread
                self.last_error = f"{type(e).__name__}: {e}"
                raise

    def _take(self, room: int) -> list[Job]:
        with self.cond:
            while self.running and not self.pending and self.live == 0:
                self.beat = time.monotonic()
                self.cond.wait(self.idle_s)
            # no gathering window: requests that arrive together but a few ms apart join the batch
            # at the next step boundaries (measured: holding arrivals back to prefill them together
            # lost more rows-in-flight than it saved in prefill calls)
            jobs = []
            while self.pending and len(jobs) < room:
                job = self.pending.popleft()
                if not job.cancelled:
                    jobs.append(job)
            return jobs

    def _admit(self, new: list[Job]) -> None:
        """Start or join the batch with `new`. A job the sampler would refuse fails alone; if joining
        them together fails, each is tried on its own so only the culprit fails."""
        ok = []
        for j in new:
            try:
                check_params(j.params)
                ok.append(j)
            except ValueError as e:
                j.fail(f"invalid request: {e}")
        groups = [ok] if len(ok) <= 1 else [ok, *[[j] for j in ok]]
        for group in groups:
            if not group:
                continue
            try:
                running = self.batch is not None and not self.batch.done
                if running:
                    ids = self.batch.join([j.prompt_ids for j in group], [j.params for j in group])
                else:
                    self.batch = DecodeBatch(self.eng, [j.prompt_ids for j in group], [j.params for j in group])
                    self.rows, ids = {}, list(range(len(group)))
            except Exception as e:  # a bad job fails its own request, never the batch or the server
                if len(group) == 1:
                    group[0].fail(str(e))
                continue
            self.rows.update(zip(ids, group))
            self.admitted += len(group)
            if group is ok:
                return  # all joined together: the one-by-one retries are not needed

    def _loop(self) -> None:
        while self.running:
            self.beat = time.monotonic()
            batch = self.batch
            running = batch is not None and not batch.done
            # a batch whose cache cannot be extended (sliding windows) finishes before the next one starts
            new = self._take(self.max_batch - self.live) if not running or batch.can_join() else []
            if new:
                self._admit(new)
                self.live = len(self.rows)  # held work, seen by /health before the first step ends
            if self.batch is None or self.batch.done:
                self.live = 0
                continue
            self._step(self.batch, self.rows)

    def _step(self, batch: DecodeBatch, rows: dict[int, Job]) -> None:
        for r, job in rows.items():
            if job.cancelled:
                batch.cancel(r)
        try:
            got = batch.step()
        except Exception as e:  # the batch's state is unknown: its rows fail, the loop goes on
            for job in rows.values():
                job.fail(f"generation failed: {e}")
            rows.clear()
            self.batch, self.live = None, 0
            return
        events: list[tuple[Job, str, Any]] = []
        for r in got:
            job = rows.get(r)
            if job is None:
                continue
            try:
                piece = batch.delta(r) if job.stream else ""  # a non-streamed reply only needs the end
                done = batch.result(r) if batch.reason[r] is not None else None
            except Exception as e:  # this row's output failed: end this request only
                events.append((job, "error", f"generation failed: {e}"))
                job.cancelled = True
                batch.cancel(r)
                rows.pop(r, None)
                continue
            if piece:
                events.append((job, "piece", piece))
            if done is not None:
                events.append((job, "done", done))
        deliver(events)
        for r in [r for r in rows if batch.reason[r] is not None]:
            del rows[r]
            batch.release(r)
        self.live = len(rows)
