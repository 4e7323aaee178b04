"""Background jobs of MemScheduler: queued, run a few at a time, followed by progress, cancelled cooperatively.

A job's work is a coroutine `work(progress)`; CPU-heavy parts run in threads and call `progress.update()`
and `progress.check()` between steps, so a cancellation stops them at the next step, never mid-write.
With a database, each job's record is written when its state changes, so GetJob and ListJobs answer
after a restart. On SQLite (one daemon) a job queued or running when the daemon stopped is recorded as
failed at the next start. On PostgreSQL the daemons sharing the vault are one cluster: each job is held by
one member under a lease it renews while the job runs, a job whose member died is taken over by another once the lease runs out, and every member lists and
cancels every job of the cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from collections.abc import AsyncIterator, Awaitable, Callable

from memos_mip.bounds import quote
from memosd import errors
from memosd.errors import FailedPrecondition, MemosError, NotFound, ResourceExhausted, Unavailable
from memosd.ids import is_id, new_id
from memosd.storage.records import FINISHED, JobState

log = logging.getLogger("memosd.jobs")




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
    # The cluster member that runs (or ran) it; empty on a daemon of its own.
    runner: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class Progress:
    """What a job's work reports through; safe to call from any thread."""

    def __init__(self, manager: JobManager, entry: _Entry, loop: asyncio.AbstractEventLoop):
        self._manager, self._entry, self._loop = manager, entry, loop
        self.cancelled = threading.Event()

    def update(self, done: int | None = None, total: int | None = None, message: str | None = None,
               metrics: dict[str, float] | None = None) -> None:
        changes = {k: v for k, v in (("done", done), ("total", total), ("message", message), ("metrics", metrics))
                   if v is not None}
        if _running_loop() is self._loop:
            self._manager._apply(self._entry, self, **changes)
        else:
            self._loop.call_soon_threadsafe(lambda: self._manager._apply(self._entry, self, **changes))

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled: call between steps."""
        if self.cancelled.is_set():
            raise JobCancelled()


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def member_id() -> str:
    """A name for this daemon among the members of its cluster: host, process and a random tag (two daemons of
    one process, as in the tests, are two members)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


# What rebuilds a job's work from the spec it was submitted with, at a member taking it over: (owner, spec) -> work.
Resume = Callable[[str, dict], Callable[[Progress], Awaitable[list[str]]]]


@dataclass(eq=False)
class _Entry:
    job: Job
    # The run this daemon is making of it (None: another member runs it, or it ended); a Progress from an
    # earlier run (the job was taken over meanwhile) changes nothing.
    progress: Progress | None = None
    task: asyncio.Task | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Submitted with a spec: another member can run it again.
    resumable: bool = False
    cancel_asked: bool = False


class JobManager:
    """Runs jobs at most `concurrency` at a time and keeps the last `keep_finished` that ended.

    On PostgreSQL (shared=True) it also follows the jobs of the cluster's other members from the vault every
    `poll` seconds: renewing the leases (`lease` seconds) of those it runs, with their progress; taking over
    jobs of kinds it can run (register) whose lease ran out; stopping those asked to stop anywhere."""

    def __init__(self, *, concurrency: int = 1, max_queued: int = 64, keep_finished: int = 200, db=None,
                 member: str = "", lease: float = 30.0):
        self._slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self._jobs: OrderedDict[str, _Entry] = OrderedDict()
        self._closed = False
        self._db = db
        self.shared = db is not None and db.engine == "postgresql"
        self.member = (member or member_id()) if self.shared else ""
        self.lease = lease
        self.poll = min(1.0, lease / 3)
        self._resumers: dict[str, Resume] = {}
        self._saving: set[asyncio.Task] = set()
        self._last_write: asyncio.Task | None = None
        self._tender: asyncio.Task | None = None
        self.taken_over = 0

    def register(self, kind: str, resume: Resume) -> None:
        """Let this daemon take over jobs of `kind` submitted with a spec: resume(owner, spec) is their work."""
        self._resumers[kind] = resume

    async def start(self) -> None:
        """Load the records of recent jobs; on a daemon of its own, those a stop interrupted are recorded as failed."""
        if self._db is None:
            return
        now = time.time()

        def job(conn):
            if not self.shared:  # a member's unfinished jobs are for the cluster to take over, not to fail
                self._db.sql.jobs.fail_unfinished(conn, (int(JobState.QUEUED), int(JobState.RUNNING)),
                                                  int(JobState.FAILED), now, _STOPPED, _STOPPED + "; submit it again")
            return self._db.sql.jobs.recent(conn, self.keep_finished)

        self._follow(await self._db.write(job))
        if self.shared:
            self._tender = asyncio.create_task(self._tend(), name="memosd-job-leases")

    def submit(self, kind: str, owner: str, work: Callable[[Progress], Awaitable[list[str]]], *,
               total: int = 0, message: str = "queued", spec: dict | None = None) -> Job:
        """Queue work(progress), which returns the ids of what it made; returns the job as queued. With spec (JSON),
        a member that registered `kind` can run it again if this daemon dies before it ends."""
        if self._closed:
            raise Unavailable("the daemon is shutting down; submit the job to the restarted daemon")
        waiting = sum(1 for e in self._jobs.values() if e.progress is not None and not e.job.finished)
        if waiting >= self.max_queued:
            raise ResourceExhausted(f"{waiting} jobs are queued or running; wait for some to finish")
        now = time.time()
        job = Job(new_id(now), kind, owner, JobState.QUEUED, now, total=total, message=message, runner=self.member)
        entry = _Entry(job, resumable=spec is not None)
        self._jobs[job.id] = entry
        record, text = self._record(job), json.dumps(spec) if spec is not None else None
        self._write(lambda conn: self._db.sql.jobs.create(conn, record, text))
        self._begin(entry, work)
        self._trim()
        return job

    async def written(self) -> None:
        """Wait until the records written so far (a job just submitted) are committed: a submission is
        acknowledged once the vault holds it, so that another member can take it over."""
        if self._last_write is not None:
            await asyncio.gather(self._last_write, return_exceptions=True)

    def _begin(self, entry: _Entry, work) -> None:
        entry.progress = Progress(self, entry, asyncio.get_running_loop())
        entry.task = asyncio.create_task(self._run(entry, entry.progress, work), name=f"memosd-job-{entry.job.id}")

    async def _run(self, entry: _Entry, progress: Progress, work) -> None:
        try:
            async with self._slots:
                progress.check()
                self._apply(entry, progress, state=JobState.RUNNING, started_at=time.time(), message="running")
                result = await work(progress)
            self._apply(entry, progress, state=JobState.SUCCEEDED, result_ids=tuple(result or ()),
                        finished_at=time.time(), message="done")
        except (JobCancelled, asyncio.CancelledError) as exc:
            self._apply(entry, progress, state=JobState.CANCELLED, finished_at=time.time(), message="cancelled")
            if isinstance(exc, asyncio.CancelledError):
                raise
        except MemosError as exc:
            self._apply(entry, progress, state=JobState.FAILED, error=exc, finished_at=time.time(), message=str(exc))
        except Exception as exc:  # noqa: BLE001 - a job's bug must not take the daemon down
            log.exception("job %s (%s) failed", entry.job.id, entry.job.kind)
            self._apply(entry, progress, state=JobState.FAILED, error=MemosError("internal error in the job; the"
                                                                                 " daemon's log has the details"),
                        finished_at=time.time(), message=f"internal error ({type(exc).__name__})")

    def _change(self, job_id: str, **changes) -> None:
        entry = self._jobs.get(job_id)
        if entry is not None:
            self._apply(entry, entry.progress, **changes)

    def _apply(self, entry: _Entry, progress: Progress | None, **changes) -> None:
        """A change the run `progress` of entry's job makes; ignored once that run is not this daemon's own."""
        if progress is None or entry.progress is not progress or (entry.job.finished and "state" not in changes):
            return
        if "metrics" in changes:
            changes["metrics"] = {**entry.job.metrics, **changes["metrics"]}
        self._publish(entry, replace(entry.job, **changes))
        if "state" in changes:
            record = self._record(entry.job)
            self._write(lambda conn: self._db.sql.jobs.save(conn, record))
            if entry.job.finished:
                entry.progress = None
                self._trim()

    def _publish(self, entry: _Entry, job: Job) -> None:
        entry.job = job
        event, entry.changed = entry.changed, asyncio.Event()
        event.set()

    def _write(self, write) -> None:
        # One after the other, in the order made (PostgreSQL runs writes on several connections at once), awaited
        # by stop(); a record another member took over is not written (save checks the runner).
        if self._db is None:
            return
        previous = self._last_write

        async def run():
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await self._db.write(write)
            except MemosError as exc:
                log.warning("a job record was not written: %s", exc)

        task = asyncio.ensure_future(run())
        self._last_write = task
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    def _record(self, job: Job) -> tuple:
        return _record(job, None if job.finished else time.time() + self.lease)

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
        """Every job kept (of the whole cluster, when shared), newest first."""
        return sorted((e.job for e in self._jobs.values()), key=lambda j: (j.created_at, j.id), reverse=True)

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop; a queued job stops at once, a running one at its next progress.check(). A job another
        member runs is asked through the vault: it stops at the checkpoint after that member's next renewal."""
        entry = self._entry(job_id)
        if entry.job.finished:
            return entry.job
        if self.shared:
            self._write(lambda conn: self._db.sql.jobs.request_cancel(conn, job_id))
        if entry.progress is None:
            self._publish(entry, replace(entry.job, message="cancelling"))
        else:
            self._stop_run(entry)
            self._apply(entry, entry.progress, message="cancelling")
        return entry.job

    def _stop_run(self, entry: _Entry) -> None:
        assert entry.progress is not None
        entry.cancel_asked = True
        entry.progress.cancelled.set()
        if entry.job.state is JobState.QUEUED and entry.task is not None:
            entry.task.cancel()

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
        """Cancel every job this daemon runs and wait (up to timeout) for their work to reach a checkpoint; in a
        cluster, the jobs another member can run again are handed back to the cluster instead of cancelled."""
        self._closed = True
        if self._tender is not None:
            self._tender.cancel()
            await asyncio.gather(self._tender, return_exceptions=True)
        tasks, member = [], self.member
        for entry in self._jobs.values():
            if entry.progress is not None and not entry.job.finished:
                if self.shared and entry.resumable and not entry.cancel_asked:
                    job_id = entry.job.id
                    self._write(lambda conn, job_id=job_id: self._db.sql.jobs.release(conn, job_id, member))
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

    # -- the cluster (shared) ------------------------------------------------------------------

    async def _tend(self) -> None:
        while True:
            try:
                await self._tend_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the cluster's jobs failed; retrying")
            await asyncio.sleep(self.poll)

    async def _tend_once(self) -> None:
        """Renew the leases of the jobs run here, fail those no member took over, take one over if a slot is free,
        and read every member's recent jobs."""
        now = time.time()
        until, sql, member = now + self.lease, self._db.sql.jobs, self.member
        ours = [e for e in self._jobs.values() if e.progress is not None and not e.job.finished]
        progress = [(e.job.id, e.job.done, e.job.total, e.job.message, json.dumps(e.job.metrics)) for e in ours]
        kinds = sorted(self._resumers) if len(ours) < self.concurrency and not self._closed else []

        def job(conn):
            renewed = {i: sql.renew(conn, i, member, until, d, t, m, x) for i, d, t, m, x in progress}
            # Twice the lease: time for a member that can run the job to take it over first.
            sql.fail_expired(conn, int(JobState.FAILED), now - 2 * self.lease, now, _ABANDONED,
                             _ABANDONED + "; submit it again")
            claimed = sql.claim(conn, member, kinds, now, until) if kinds else None
            return renewed, claimed, sql.recent(conn, self.keep_finished)

        renewed, claimed, rows = await self._db.write(job)
        for entry in ours:
            asked = renewed.get(entry.job.id)
            if entry.progress is None or entry.job.finished:
                continue
            if asked is None:  # taken over while this daemon stalled: its run must not write anything more
                log.warning("job %s was taken over by another member; stopping it here", entry.job.id)
                entry.progress.cancelled.set()
                if entry.task is not None and entry.job.state is JobState.QUEUED:
                    entry.task.cancel()
                entry.progress = None
            elif asked and not entry.cancel_asked:
                self._stop_run(entry)
        if claimed is not None:
            self._take_over(*claimed)
        self._follow(rows)

    def _take_over(self, record: tuple, spec: str, cancel: bool) -> None:
        job = _from_row(record)
        entry = self._jobs.get(job.id)
        if entry is None:
            entry = self._jobs[job.id] = _Entry(job)
        entry.resumable, entry.cancel_asked = True, cancel
        self._publish(entry, job)
        try:
            work = self._resumers[job.kind](job.owner, json.loads(spec))
        except (MemosError, ValueError, KeyError, TypeError) as exc:
            work = _refuse(exc)
        self.taken_over += 1
        log.info("took over job %s (%s) of %s", job.id, job.kind, job.owner)
        self._begin(entry, work)
        if cancel:
            self._stop_run(entry)

    def _follow(self, rows) -> None:
        """Take in the vault's records of jobs this daemon does not run."""
        for row in rows:
            job = _from_row(row)
            entry = self._jobs.get(job.id)
            if entry is None:
                self._jobs[job.id] = _Entry(job, resumable=False)
            elif entry.progress is None and (entry.job, entry.job.metrics) != (job, job.metrics):
                self._publish(entry, job)
        self._trim()


_STOPPED = "the daemon stopped before the job finished"
_ABANDONED = "its daemon stopped and no member of the cluster took the job over"


def _refuse(exc: Exception):
    async def work(progress: Progress) -> list[str]:
        if isinstance(exc, MemosError):
            raise exc
        raise FailedPrecondition(f"the job's record cannot be run again here ({type(exc).__name__})")

    return work


def _record(job: Job, lease_until: float | None) -> tuple:
    return (job.id, job.kind, job.owner, int(job.state), job.created_at, job.started_at, job.finished_at, job.done,
            job.total, job.message, json.dumps(list(job.result_ids)), json.dumps(job.metrics),
            type(job.error).__name__ if job.error else None, str(job.error) if job.error else None, job.runner,
            lease_until)


def _from_row(row) -> Job:
    (job_id, kind, owner, state, created, started, finished, done, total, message, results, metrics,
     error_type, error, runner, _lease_until) = row
    error_cls = getattr(errors, error_type or "", None)
    failure = error_cls(error) if isinstance(error_cls, type) and issubclass(error_cls, MemosError) else (
        MemosError(error) if error else None)
    return Job(job_id, kind, owner, JobState(state), created, done, total, message, tuple(json.loads(results)),
               failure, started, finished, json.loads(metrics), runner or "")
