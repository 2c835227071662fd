"""Background jobs: a thread pool with job ids, progress and de-duplication.

A job runs a function ``fn(progress) -> dict`` on a worker thread; ``progress(fraction, message)``
records how far it is and raises :class:`JobCancelled` once the queue shuts down. Submitting the same
key while a job for it is queued, running or done returns that job instead of starting another, so eight
browser tabs asking for the same picture compute it once. Finished jobs are kept (the most recent
``keep`` of them) so that a client polling late still finds its result.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "JobCancelled", "JobQueue"]

log = logging.getLogger("netvis.app.serve")

QUEUED, RUNNING, DONE, ERROR, CANCELLED = "queued", "running", "done", "error", "cancelled"


class JobCancelled(Exception):
    """Raised inside a job by its progress callback once the job (or the whole queue) is cancelled."""


@dataclass
class Job:
    """One background computation and what is known about it."""

    id: str
    kind: str
    key: str
    params: dict[str, Any]
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
        }


class JobQueue:
    """Runs jobs on ``workers`` threads.

    Args:
        workers: Worker threads.
        keep: Finished jobs remembered (the oldest are forgotten first).
    """

    def __init__(self, workers: int = 2, keep: int = 5000) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="netvis-job")
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_key: dict[str, str] = {}
        self._keep = keep
        self._closed = False

    def submit(
        self,
        kind: str,
        key: str,
        fn: Callable[[Callable[..., None]], dict[str, Any]],
        params: dict[str, Any] | None = None,
        cached: dict[str, Any] | None = None,
    ) -> Job:
        """Start ``fn`` for ``key`` unless a job for ``key`` is queued, running or done; return the job.

        With ``cached`` (a stored result) the job is created already done.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is shut down")
            existing = self._jobs.get(self._by_key.get(f"{kind}/{key}", ""))
            if existing is not None and existing.status in (QUEUED, RUNNING, DONE):
                return existing
            job = Job(id=secrets.token_hex(8), kind=kind, key=key, params=dict(params or {}))
            self._jobs[job.id] = job
            self._by_key[f"{kind}/{key}"] = job.id
            if cached is not None:
                job.status, job.progress, job.message, job.result, job.cached = DONE, 1.0, "cached", cached, True
                job.started = job.finished = time.time()
            else:
                self._executor.submit(self._run, job, fn)
            self._forget_old()
        return job

    def _forget_old(self) -> None:
        excess = len(self._jobs) - self._keep
        if excess <= 0:
            return
        for job_id in [jid for jid, job in self._jobs.items() if job.status not in (QUEUED, RUNNING)][:excess]:
            job = self._jobs.pop(job_id)
            if self._by_key.get(f"{job.kind}/{job.key}") == job_id:
                del self._by_key[f"{job.kind}/{job.key}"]

    def _progress(self, job: Job) -> Callable[..., None]:
        def report(fraction: float, message: str | None = None) -> None:
            if job.cancel.is_set():
                raise JobCancelled(job.id)
            with self._lock:
                job.progress = min(max(float(fraction), 0.0), 1.0)
                if message is not None:
                    job.message = message

        return report

    def _run(self, job: Job, fn: Callable[[Callable[..., None]], dict[str, Any]]) -> None:
        with self._lock:
            if job.cancel.is_set():
                job.status, job.message, job.finished = CANCELLED, "cancelled", time.time()
                return
            job.status, job.message, job.started = RUNNING, "running", time.time()
        try:
            result = fn(self._progress(job))
        except JobCancelled:
            with self._lock:
                job.status, job.message, job.finished = CANCELLED, "cancelled", time.time()
        except Exception as exc:  # reported to the client; the traceback goes to the log
            log.exception("job %s (%s) failed", job.id, job.kind)
            with self._lock:
                job.status, job.error, job.message = ERROR, f"{type(exc).__name__}: {exc}", "failed"
                job.finished = time.time()
        else:
            with self._lock:
                job.status, job.result, job.progress, job.message = DONE, result, 1.0, "done"
                job.finished = time.time()

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A snapshot of job ``job_id`` or ``None`` if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.to_dict()

    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        with self._lock:
            out: dict[str, int] = {}
            for job in self._jobs.values():
                out[job.status] = out.get(job.status, 0) + 1
            return out

    def shutdown(self, wait: bool = False) -> None:
        """Cancel queued and running jobs (running ones stop at their next progress report)."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                job.cancel.set()
                if job.status == QUEUED:
                    job.status, job.message, job.finished = CANCELLED, "cancelled", time.time()
        self._executor.shutdown(wait=wait, cancel_futures=True)
