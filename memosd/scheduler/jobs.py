"""Background jobs of MemScheduler: queued, run a few at a time, followed by progress, cancelled cooperatively.

A job's work is a coroutine `work(progress)`; CPU-heavy parts run in threads and call `progress.update()`
and `progress.check()` between steps, so a cancellation stops them at the next step, never mid-write.
With a database, each job's record is written when its state changes, so GetJob and ListJobs answer
after a restart; a job queued or running when the daemon stopped is recorded as failed at the next start.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from collections.abc import AsyncIterator, Awaitable, Callable

from memos_mip.bounds import quote
from memosd import errors
from memosd.errors import MemosError, NotFound, ResourceExhausted, Unavailable
from memosd.ids import is_id, new_id

log = logging.getLogger("memosd.jobs")


class JobState(enum.IntEnum):
    """Values equal the protocol's JobState numbers."""

    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class JobCancelled(Exception):
    """Raised inside a job's work by progress.check() once the job is cancelled."""


@dataclass(frozen=True)
class Job:
    """A snapshot of a job."""

    id: str
    kind: str
    owner: str
    state: JobState
    created_at: float
    done: int = 0
    total: int = 0
    message: str = ""
    result_ids: tuple[str, ...] = ()
    error: MemosError | None = field(default=None, compare=False)
    started_at: float | None = None
    finished_at: float | None = None
    # Numbers the work reports by name (e.g. "loss"), each kept at its latest value.
    metrics: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class Progress:
    """What a job's work reports through; safe to call from any thread."""

    def __init__(self, manager: JobManager, job_id: str, loop: asyncio.AbstractEventLoop):
        self._manager, self._id, self._loop = manager, job_id, loop
        self.cancelled = threading.Event()

    def update(self, done: int | None = None, total: int | None = None, message: str | None = None,
               metrics: dict[str, float] | None = None) -> None:
        changes = {k: v for k, v in (("done", done), ("total", total), ("message", message), ("metrics", metrics))
                   if v is not None}
        if _running_loop() is self._loop:
            self._manager._change(self._id, **changes)
        else:
            self._loop.call_soon_threadsafe(lambda: self._manager._change(self._id, **changes))

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled: call between steps."""
        if self.cancelled.is_set():
            raise JobCancelled()


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass
class _Entry:
    job: Job
    progress: Progress
    task: asyncio.Task | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class JobManager:
    """Runs jobs at most `concurrency` at a time and keeps the last `keep_finished` that ended."""

    def __init__(self, *, concurrency: int = 1, max_queued: int = 64, keep_finished: int = 200, db=None):
        self._slots = asyncio.Semaphore(concurrency)
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self._jobs: OrderedDict[str, _Entry] = OrderedDict()
        self._closed = False
        self._db = db
        self._saving: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Load the records of recent jobs; those a stop interrupted are recorded as failed."""
        if self._db is None:
            return
        now = time.time()

        def job(conn):
            self._db.sql.jobs.fail_unfinished(conn, (int(JobState.QUEUED), int(JobState.RUNNING)), int(JobState.FAILED),
                                       now, "the daemon stopped before the job finished",
                                       "the daemon stopped before the job finished; submit it again")
            return self._db.sql.jobs.recent(conn, self.keep_finished)

        for row in reversed(await self._db.write(job)):
            record = _from_row(row)
            self._jobs[record.id] = _Entry(record, Progress(self, record.id, asyncio.get_running_loop()))

    def submit(self, kind: str, owner: str, work: Callable[[Progress], Awaitable[list[str]]], *,
               total: int = 0, message: str = "queued") -> Job:
        """Queue work(progress), which returns the ids of what it made; returns the job as queued."""
        if self._closed:
            raise Unavailable("the daemon is shutting down; submit the job to the restarted daemon")
        waiting = sum(1 for e in self._jobs.values() if not e.job.finished)
        if waiting >= self.max_queued:
            raise ResourceExhausted(f"{waiting} jobs are queued or running; wait for some to finish")
        now = time.time()
        job = Job(new_id(now), kind, owner, JobState.QUEUED, now, total=total, message=message)
        entry = _Entry(job, Progress(self, job.id, asyncio.get_running_loop()))
        self._jobs[job.id] = entry
        entry.task = asyncio.create_task(self._run(entry, work), name=f"memosd-job-{job.id}")
        self._save(job)
        self._trim()
        return job

    async def _run(self, entry: _Entry, work) -> None:
        job_id = entry.job.id
        try:
            async with self._slots:
                entry.progress.check()
                self._change(job_id, state=JobState.RUNNING, started_at=time.time(), message="running")
                result = await work(entry.progress)
            self._change(job_id, state=JobState.SUCCEEDED, result_ids=tuple(result or ()), finished_at=time.time(),
                         message="done")
        except (JobCancelled, asyncio.CancelledError) as exc:
            self._change(job_id, state=JobState.CANCELLED, finished_at=time.time(), message="cancelled")
            if isinstance(exc, asyncio.CancelledError):
                raise
        except MemosError as exc:
            self._change(job_id, state=JobState.FAILED, error=exc, finished_at=time.time(), message=str(exc))
        except Exception as exc:  # noqa: BLE001 - a job's bug must not take the daemon down
            log.exception("job %s (%s) failed", job_id, entry.job.kind)
            self._change(job_id, state=JobState.FAILED, error=MemosError("internal error in the job; the daemon's"
                                                                         " log has the details"),
                         finished_at=time.time(), message=f"internal error ({type(exc).__name__})")

    def _change(self, job_id: str, **changes) -> None:
        entry = self._jobs.get(job_id)
        if entry is None or (entry.job.finished and "state" not in changes):
            return
        if "metrics" in changes:
            changes["metrics"] = {**entry.job.metrics, **changes["metrics"]}
        entry.job = replace(entry.job, **changes)
        event, entry.changed = entry.changed, asyncio.Event()
        event.set()
        if "state" in changes:
            self._save(entry.job)
            if entry.job.finished:
                self._trim()

    def _save(self, job: Job) -> None:
        # Written in order (the writer takes jobs first come, first served), awaited by stop().
        if self._db is not None:
            task = asyncio.ensure_future(self._db.write(lambda conn: self._db.sql.jobs.save(conn, _record(job))))
            self._saving.add(task)
            task.add_done_callback(self._saving.discard)

    def _trim(self) -> None:
        finished = [i for i, e in self._jobs.items() if e.job.finished]
        for job_id in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job_id]

    def get(self, job_id: str) -> Job:
        return self._entry(job_id).job

    def _entry(self, job_id: str) -> _Entry:
        entry = self._jobs.get(job_id) if is_id(job_id) else None
        if entry is None:
            raise NotFound(f"no job with id {quote(job_id)} (finished jobs are kept for a while only)")
        return entry

    def list(self) -> list[Job]:
        """Every job kept, newest first."""
        return [e.job for e in reversed(self._jobs.values())]

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop; a queued job stops at once, a running one at its next progress.check()."""
        job = self.get(job_id)
        entry = self._jobs[job_id]
        if not job.finished:
            entry.progress.cancelled.set()
            if job.state is JobState.QUEUED and entry.task is not None:
                entry.task.cancel()
            self._change(job_id, message="cancelling")
        return entry.job

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then each time it changes (intermediate changes may be skipped), until it ends."""
        entry = self._entry(job_id)
        while True:
            changed = entry.changed
            job = entry.job
            yield job
            if job.finished:
                return
            await changed.wait()

    async def wait(self, job_id: str) -> Job:
        job = self.get(job_id)
        async for latest in self.watch(job_id):
            job = latest
        return job

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job and wait (up to timeout) for their work to reach a checkpoint."""
        self._closed = True
        tasks = []
        for entry in self._jobs.values():
            if not entry.job.finished:
                entry.progress.cancelled.set()
                if entry.task is not None:
                    tasks.append(entry.task)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)


def _record(job: Job) -> tuple:
    return (job.id, job.kind, job.owner, int(job.state), job.created_at, job.started_at, job.finished_at, job.done,
            job.total, job.message, json.dumps(list(job.result_ids)), json.dumps(job.metrics),
            type(job.error).__name__ if job.error else None, str(job.error) if job.error else None)


def _from_row(row) -> Job:
    (job_id, kind, owner, state, created, started, finished, done, total, message, results, metrics,
     error_type, error) = row
    error_cls = getattr(errors, error_type or "", None)
    failure = error_cls(error) if isinstance(error_cls, type) and issubclass(error_cls, MemosError) else (
        MemosError(error) if error else None)
    return Job(job_id, kind, owner, JobState(state), created, done, total, message, tuple(json.loads(results)),
               failure, started, finished, json.loads(metrics))
