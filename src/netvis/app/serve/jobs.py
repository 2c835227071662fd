"""Background jobs: worker threads with job ids, progress, de-duplication, limits, fairness and cancellation.

A job runs a function ``fn(progress) -> dict`` on a worker thread; ``progress(fraction, message)`` records
how far it is and raises :class:`JobCancelled` once the job is cancelled (``DELETE /api/jobs/<id>``) or the
queue shuts down, so running work stops at its next step; ``progress.check()`` only checks. Submitting the
same key while a job for it is queued, running or done returns that job instead of starting another, so
eight browser tabs asking for the same picture compute it once. Finished jobs are kept (the most recent
``keep`` of them) so that a client polling late still finds its result.

Limits and fairness: each job belongs to a *client* (the page sends ``X-Netvis-Client``; otherwise the
peer address). A client may have at most ``max_queued_per_client`` jobs queued or running, and at most
``max_queued`` jobs wait in all; beyond either :meth:`JobQueue.submit` raises :class:`JobLimit` (HTTP 429
with ``Retry-After``). A free worker takes the next job of the waiting client served least recently
(round robin), so one client's backlog of 3000 jobs does not hold up another client's single job.

Worker threads are daemon threads: a process that is told to stop does not wait for a computation that
ignores cancellation (every file the viewer writes is written atomically, so none is left half-written).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "JobCancelled", "JobLimit", "JobQueue", "Progress"]

log = logging.getLogger("netvis.app.serve")

QUEUED, RUNNING, DONE, ERROR, CANCELLED = "queued", "running", "done", "error", "cancelled"
ACTIVE = (QUEUED, RUNNING)


class JobCancelled(Exception):
    """Raised inside a job by its progress callback once the job (or the whole queue) is cancelled."""


class JobLimit(Exception):
    """A job is refused for now (HTTP 429): the client or the whole queue has too many waiting.

    Attributes:
        retry_after: Seconds after which a retry is likely to be accepted (``Retry-After``).
    """

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Job:
    """One background computation and what is known about it."""

    id: str
    kind: str
    key: str
    params: dict[str, Any]
    client: str = "local"
    status: str = QUEUED
    progress: float = 0.0
    message: str = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    cached: bool = False
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    fn: Callable[..., dict[str, Any]] | None = field(default=None, repr=False)
    requesters: set[str] = field(default_factory=set)
    """The clients that asked for this computation (the one that queued it and those that asked again)."""

    def __post_init__(self) -> None:
        self.requesters.add(self.client)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        elapsed = None
        if self.started is not None:
            elapsed = (self.finished or time.time()) - self.started
        return {
            "id": self.id,
            "kind": self.kind,
            "params": self.params,
            "status": self.status,
            "progress": self.progress,
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "cached": self.cached,
            "seconds": elapsed,
            "requesters": len(self.requesters),
        }


def lower_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux: threads have their own; elsewhere ignored)."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


class Progress:
    """The progress callback handed to a job: ``progress(fraction, message=None)``; ``check()``.

    Both raise :class:`JobCancelled` once the job is cancelled or the queue shuts down.
    """

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self._queue = queue
        self._job = job

    @property
    def cancelled(self) -> bool:
        """Whether the job has been asked to stop."""
        return self._job.cancel.is_set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job has been asked to stop."""
        if self._job.cancel.is_set():
            raise JobCancelled(self._job.id)

    def __call__(self, fraction: float, message: str | None = None) -> None:
        self.check()
        with self._queue._lock:
            value = float(fraction)
            self._job.progress = min(max(value, 0.0), 1.0) if math.isfinite(value) else self._job.progress
            if message is not None:
                self._job.message = message


class JobQueue:
    """Runs jobs on ``workers`` daemon threads, fairly between clients and within limits.

    Args:
        workers: Worker threads.
        keep: Finished jobs remembered (the oldest are forgotten first).
        max_queued: Jobs that may wait in all (running ones not counted).
        max_queued_per_client: Jobs one client may have queued or running.
        nice: Niceness added to the worker threads (Linux: per thread), so that a server's event loop wins
            the CPU from the jobs.
    """

    def __init__(self, workers: int = 2, keep: int = 5000, max_queued: int = 256,
                 max_queued_per_client: int = 16, nice: int = 0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_queued < 1 or max_queued_per_client < 1:
            raise ValueError("max_queued and max_queued_per_client must be at least 1")
        self.workers = workers
        self.max_queued = max_queued
        self.max_queued_per_client = max_queued_per_client
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_key: dict[str, str] = {}
        self._waiting: OrderedDict[str, deque[Job]] = OrderedDict()  # client -> its queued jobs, oldest first
        self._active: dict[str, int] = {}  # client -> jobs queued or running
        self._served: dict[str, int] = {}  # client -> dispatch number of its last job
        self._dispatches = itertools.count()
        self._queued = 0
        self._running = 0
        self._mean_seconds = 2.0
        self._keep = keep
        self._closed = False
        self._nice = nice
        self._threads = [threading.Thread(target=self._work, name=f"netvis-job-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        key: str,
        fn: Callable[[Progress], dict[str, Any]],
        params: dict[str, Any] | None = None,
        cached: dict[str, Any] | None = None,
        client: str = "local",
    ) -> Job:
        """Queue ``fn`` for ``key`` unless a job for ``key`` is queued, running or done; return the job.

        With ``cached`` (a stored result) the job is created already done (no limit applies).

        Raises:
            JobLimit: ``client`` has ``max_queued_per_client`` jobs queued or running, or ``max_queued``
                jobs wait in all.
            RuntimeError: the queue is shut down.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is shut down")
            existing = self._jobs.get(self._by_key.get(f"{kind}/{key}", ""))
            if existing is not None and existing.status in (QUEUED, RUNNING, DONE) and not existing.cancel.is_set():
                existing.requesters.add(client)
                return existing
            if cached is None:
                if self._active.get(client, 0) >= self.max_queued_per_client:
                    raise JobLimit(f"too many jobs per client: this client has {self.max_queued_per_client} "
                                   "queued or running; wait for one to finish or cancel one",
                                   self._retry_after(self._active.get(client, 0)))
                if self._queued >= self.max_queued:
                    raise JobLimit(f"the job queue is full ({self.max_queued} jobs waiting); try again later",
                                   self._retry_after(self._queued))
            job = Job(id=secrets.token_hex(8), kind=kind, key=key, params=dict(params or {}), client=client)
            self._jobs[job.id] = job
            self._by_key[f"{kind}/{key}"] = job.id
            if cached is not None:
                job.status, job.progress, job.message, job.result, job.cached = DONE, 1.0, "cached", cached, True
                job.started = job.finished = time.time()
            else:
                job.fn = fn
                self._waiting.setdefault(client, deque()).append(job)
                self._active[client] = self._active.get(client, 0) + 1
                self._queued += 1
                self._wake.notify()
            self._forget_old()
        return job

    def _retry_after(self, waiting: int) -> int:
        return int(min(60, max(1, math.ceil(self._mean_seconds * max(1, waiting) / self.workers))))

    def _forget_old(self) -> None:
        excess = len(self._jobs) - self._keep
        if excess <= 0:
            return
        for job_id in [jid for jid, job in self._jobs.items() if job.status not in ACTIVE][:excess]:
            job = self._jobs.pop(job_id)
            if self._by_key.get(f"{job.kind}/{job.key}") == job_id:
                del self._by_key[f"{job.kind}/{job.key}"]
        if len(self._served) > 4 * self._keep:  # clients long gone
            for client in [c for c in self._served if c not in self._waiting][: len(self._served) // 2]:
                del self._served[client]

    def _next(self) -> Job | None:
        """The oldest job of the waiting client served least recently (under the lock)."""
        if not self._waiting:
            return None
        client = min(self._waiting, key=lambda c: (self._served.get(c, -1), self._waiting[c][0].created))
        jobs = self._waiting[client]
        job = jobs.popleft()
        if not jobs:
            del self._waiting[client]
        self._served[client] = next(self._dispatches)
        self._queued -= 1
        return job

    def _finish(self, job: Job, status: str) -> None:
        """Mark ``job`` finished (under the lock)."""
        if job.status == RUNNING:
            self._running -= 1
        job.status, job.finished, job.fn = status, time.time(), None
        if status == CANCELLED:
            job.message = "cancelled"
        left = self._active.get(job.client, 0) - 1
        if left > 0:
            self._active[job.client] = left
        else:
            self._active.pop(job.client, None)

    def _work(self) -> None:
        if self._nice:
            lower_priority(self._nice)
        while True:
            with self._lock:
                while not self._closed and not self._waiting:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._next()
                if job is None:
                    continue
                job.status, job.message, job.started = RUNNING, "running", time.time()
                self._running += 1
                fn = job.fn
            try:
                result = fn(Progress(self, job))
            except JobCancelled:
                with self._lock:
                    self._finish(job, CANCELLED)
            except Exception as exc:  # reported to the client; the traceback goes to the log
                log.exception("job %s (%s) failed", job.id, job.kind)
                with self._lock:
                    job.error, job.message = f"{type(exc).__name__}: {exc}", "failed"
                    self._finish(job, ERROR)
            else:
                with self._lock:
                    if job.cancel.is_set():  # asked to stop after its last step: still cancelled
                        self._finish(job, CANCELLED)
                    else:
                        job.result, job.progress, job.message = result, 1.0, "done"
                        self._finish(job, DONE)
                        seconds = job.finished - job.started
                        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    # ------------------------------------------------------------------------------------------------

    def cancel(self, job_id: str, client: str | None = None) -> dict[str, Any] | None:
        """Cancel job ``job_id``: a queued job is dropped at once, a running one stops at its next progress
        report (its status stays ``running``, message ``cancelling``, until then). A finished job is left as
        it is. Returns the job's snapshot, ``None`` when unknown.

        A job that several clients asked for (the same computation) is shared: ``cancel(job_id, client)``
        withdraws only ``client``'s request while another client still waits for the result, and the job
        stops once every client that asked for it has cancelled. ``client=None`` stops it for everyone.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if client is not None and job.status in ACTIVE and job.requesters - {client}:
                job.requesters.discard(client)
                return job.to_dict()
            if job.status == QUEUED:
                job.cancel.set()
                jobs = self._waiting.get(job.client)
                if jobs is not None:
                    jobs.remove(job)
                    if not jobs:
                        del self._waiting[job.client]
                self._queued -= 1
                self._finish(job, CANCELLED)
            elif job.status == RUNNING:
                job.cancel.set()
                job.message = "cancelling"
            return job.to_dict()

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A snapshot of job ``job_id`` or ``None`` if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.to_dict()

    def snapshot_ids(self) -> list[str]:
        """The ids of the jobs queued or running."""
        with self._lock:
            return [job.id for job in self._jobs.values() if job.status in ACTIVE]

    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        with self._lock:
            out: dict[str, int] = {}
            for job in self._jobs.values():
                out[job.status] = out.get(job.status, 0) + 1
            return out

    def shutdown(self, wait: bool = False, timeout: float | None = None) -> None:
        """Cancel queued and running jobs (running ones stop at their next progress report).

        Args:
            wait: Wait for the worker threads to end (at most ``timeout`` seconds).
            timeout: How long to wait; ``None``: until they end.
        """
        with self._lock:
            self._closed = True
            for job in list(self._jobs.values()):
                job.cancel.set()
                if job.status == QUEUED:
                    self._finish(job, CANCELLED)
                elif job.status == RUNNING:
                    job.message = "cancelling"
            self._waiting.clear()
            self._queued = 0
            self._wake.notify_all()
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            for thread in self._threads:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(left)
