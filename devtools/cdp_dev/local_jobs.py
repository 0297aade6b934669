"""Jobs on this machine: the state machine's loop run on threads, over the same steps the jobs function runs.

:class:`InProcessJobRunner` is a :class:`cdp.pipeline.jobs.JobRunner`: ``start`` runs what the jobs state machine
runs (Advance, then every scan segment's Work until done, ``workers`` at a time, then Finish, and Advance again),
through :func:`cdp.pipeline.jobs.run_step` with the same events, each Work invocation with a time budget so
cursors hand over as in Lambda. A failing step is retried as the state machine retries it, then the job is failed.

:class:`LocalPopulationSchedule` stands in for the hourly schedule: a percentiles job whenever the ingest has
applied events since the last one and then been quiet for a moment (so once right after a sample replay), and at
most every ``every_seconds`` under steady traffic. :func:`local_traits_schedule` stands in for the daily computed
traits schedule the same way, except that a quiet moment starts only its first job (ten seconds after a sample
replay settles); after that it runs daily, or on demand (``cdp jobs run traits``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from cdp.pipeline.jobs import DONE, FAILED, PERCENTILES, TRAITS, JobEngine, JobStore, run_step, start_job

LOCAL_POPULATION_SECONDS = 20.0
LOCAL_TRAITS_SECONDS = 86_400.0  # daily, as deployed
LOCAL_TRAITS_QUIET_SECONDS = 10.0
STEP_ATTEMPTS = 4  # as the state machine's retry of a task
RETRY_SECONDS = 0.5


class InProcessJobRunner:
    def __init__(self, build_jobs_deps: Callable[[], JobEngine], workers: int = 4, *, background: bool = True,
                 budget_seconds: float = 5.0, sleep: Callable[[float], None] = time.sleep,
                 stopping: threading.Event | None = None) -> None:
        self.build = build_jobs_deps
        # Set when the stack stops: a Work step ends after its page, and no further step starts (the job is left
        # running, as a state machine's execution would be when stopped).
        self.stopping = stopping or threading.Event()
        self.workers = workers
        self.background = background
        self.budget_seconds = budget_seconds
        self.sleep = sleep
        self.errors: list[str] = []
        self.threads: dict[str, threading.Thread] = {}

    def start(self, job_id: str) -> None:
        if not self.background:
            self.run(job_id)
            return
        thread = threading.Thread(target=self.run, args=(job_id,), name=f"job {job_id[:8]}", daemon=True)
        self.threads[job_id] = thread
        thread.start()

    def running(self) -> list[threading.Thread]:
        return [thread for thread in self.threads.values() if thread.is_alive()]

    def wait(self, job_id: str, timeout: float | None = None) -> bool:
        """Whether the job's thread ended within ``timeout`` (True for a job this runner ran in the foreground)."""
        thread = self.threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def run(self, job_id: str) -> None:
        """The state machine: Advance -> (Map of Work -> Finish -> Advance) until done; Fail on an error."""
        engine = self.build()
        try:
            state = self._step(engine, {"step": "advance", "job_id": job_id, "finished": ""})
            while not state["done"] and not self.stopping.is_set():
                phase, total = state["phase"], state["total"]
                segments = state["segments"]
                with ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="job-work") as pool:
                    list(pool.map(self._segment, [engine] * len(segments), [job_id] * len(segments),
                                  [phase] * len(segments), segments, [total] * len(segments)))
                if self.stopping.is_set():
                    return
                finished = self._step(engine, {"step": "finish", "job_id": job_id, "phase": phase})
                state = self._step(engine, {"step": "advance", "job_id": job_id,
                                            "finished": finished["finished"]})
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            self.errors.append(reason)
            run_step(engine, {"step": "fail", "job_id": job_id, "error": {"Error": type(error).__name__,
                                                                         "Cause": str(error)}})

    def _segment(self, engine: JobEngine, job_id: str, phase: str, segment: int, total: int) -> None:
        cursor: Any = ""
        while True:
            worked = self._step(engine, {"step": "work", "job_id": job_id, "phase": phase, "segment": segment,
                                         "total": total, "cursor": cursor}, budgeted=True)
            if worked["done"] or self.stopping.is_set():
                return
            cursor = worked["cursor"]

    def _step(self, engine: JobEngine, event: dict[str, Any], budgeted: bool = False) -> dict[str, Any]:
        for attempt in range(1, STEP_ATTEMPTS + 1):
            try:
                return run_step(engine, event, self._budget() if budgeted else (lambda: True))
            except Exception:
                if attempt == STEP_ATTEMPTS:
                    raise
                self.sleep(RETRY_SECONDS * attempt)
        raise AssertionError("unreachable")

    def _budget(self) -> Callable[[], bool]:
        """A Work invocation's time, as Lambda's remaining time less the reserve."""
        deadline = time.monotonic() + self.budget_seconds
        return lambda: time.monotonic() < deadline and not self.stopping.is_set()


class LocalPopulationSchedule:
    """Start a ``kind`` job (percentiles by default) when ``marker()`` (e.g. the ingest's applied events) has moved
    since the last job and then stayed put for ``quiet_seconds`` (with ``quiet_once``: only before the first job),
    or has moved and ``every_seconds`` have passed."""

    def __init__(self, jobs: JobStore, runner: InProcessJobRunner, marker: Callable[[], object],
                 now: Callable[[], float], *, every_seconds: float = LOCAL_POPULATION_SECONDS,
                 quiet_seconds: float = 2.0, monotonic: Callable[[], float] = time.monotonic,
                 kind: str = PERCENTILES, options: dict[str, Any] | None = None, quiet_once: bool = False) -> None:
        self.jobs, self.runner, self.marker, self.now = jobs, runner, marker, now
        self.every_seconds, self.quiet_seconds = every_seconds, quiet_seconds
        self.kind, self.options, self.quiet_once = kind, dict(options or {}), quiet_once
        self.monotonic = monotonic
        self.started: list[str] = []
        self._ran_at = monotonic()
        self._ran_for: object = marker()
        self._seen: object = self._ran_for
        self._seen_at = self._ran_at

    def tick(self) -> str | None:
        """Check once; the id of the job started, if one was."""
        at, current = self.monotonic(), self.marker()
        if current != self._seen:
            self._seen, self._seen_at = current, at
        if current == self._ran_for:
            return None
        settled = at - self._seen_at >= self.quiet_seconds and not (self.quiet_once and self.started)
        if not settled and at - self._ran_at < self.every_seconds:
            return None
        self._ran_for, self._ran_at = current, at
        job = start_job(self.jobs, self.runner, self.kind, dict(self.options), self.now())
        self.started.append(job.job_id)
        return job.job_id

    def run(self, stopping: threading.Event, check_seconds: float = 1.0) -> None:
        while not stopping.wait(check_seconds):
            self.tick()


def local_traits_schedule(jobs: JobStore, runner: InProcessJobRunner, marker: Callable[[], object],
                          now: Callable[[], float], **given: Any) -> LocalPopulationSchedule:
    """The daily computed traits job, and its first run once a sample replay has settled."""
    settings: dict[str, Any] = {"every_seconds": LOCAL_TRAITS_SECONDS, "quiet_seconds": LOCAL_TRAITS_QUIET_SECONDS,
                                **given}
    return LocalPopulationSchedule(jobs, runner, marker, now, kind=TRAITS, quiet_once=True, **settings)


def runner_override(handler: ModuleType, runner: InProcessJobRunner) -> dict[str, Any]:
    """``{"runner": runner}`` for a handler whose dependencies take a job runner (the jobs and api functions)."""
    kind = getattr(handler, "Dependencies", None)
    names = {f.name for f in dataclasses.fields(kind)} if kind is not None and dataclasses.is_dataclass(kind) else set()
    return {"runner": runner} if "runner" in names else {}


def finished(jobs: JobStore, job_id: str) -> bool:
    job = jobs.get(job_id)
    return job is not None and job.status in (DONE, FAILED)
