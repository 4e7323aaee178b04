"""MemScheduler's JobManager on its own: progress, watching, cancellation (queued and running), failures."""

import asyncio
import contextvars
import threading
import time

import pytest

from memosd.errors import InvalidArgument, NotFound
from memosd.scheduler.jobs import Job, JobManager, JobState


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_progress_from_a_thread_is_watched_until_the_end():
    async def scenario():
        jobs = JobManager()

        def steps(progress):
            for i in range(1, 6):
                progress.update(done=i, total=5, message=f"step {i}")
                time.sleep(0.01)  # not a wait: paces the steps, so the watcher sees progress as it comes

        async def work(progress):
            await asyncio.to_thread(steps, progress)
            return ["01J9Z3K5Q8W2E4R6T8Y0V2X4N6"]

        job = jobs.submit("test", "alice", work)
        seen = [j async for j in jobs.watch(job.id)]
        return seen

    seen = run(scenario())
    assert seen[0].state in (JobState.QUEUED, JobState.RUNNING)
    assert seen[-1].state is JobState.SUCCEEDED and seen[-1].result_ids == ("01J9Z3K5Q8W2E4R6T8Y0V2X4N6",)
    assert seen[-1].done == seen[-1].total == 5
    dones = [j.done for j in seen]
    assert dones == sorted(dones) and seen[-1].finished_at >= seen[-1].started_at >= seen[-1].created_at


def test_a_running_job_stops_at_its_next_checkpoint_and_a_queued_one_at_once():
    async def scenario():
        jobs = JobManager(concurrency=1)
        started, finished_steps = threading.Event(), []

        def steps(progress):
            started.set()
            for i in range(1000):
                progress.check()
                finished_steps.append(i)
                progress.cancelled.wait(10)  # each step outlasts the test's cancel: it lands between two checks

        async def work(progress):
            await asyncio.to_thread(steps, progress)
            return []

        running = jobs.submit("test", "alice", work)
        queued = jobs.submit("test", "alice", work)
        await asyncio.to_thread(started.wait, 10)
        assert jobs.get(queued.id).state is JobState.QUEUED
        jobs.cancel(queued.id)
        jobs.cancel(running.id)
        return await jobs.wait(running.id), await jobs.wait(queued.id), len(finished_steps)

    running, queued, steps = run(scenario())
    assert running.state is JobState.CANCELLED and queued.state is JobState.CANCELLED
    assert queued.started_at is None and steps < 1000


def test_failures_are_reported_with_their_error_and_bugs_as_internal():
    async def scenario():
        jobs = JobManager()

        async def refuse(progress):
            raise InvalidArgument("no such thing")

        async def crash(progress):
            raise ZeroDivisionError()

        a, b = jobs.submit("test", "alice", refuse), jobs.submit("test", "alice", crash)
        return await jobs.wait(a.id), await jobs.wait(b.id)

    refused, crashed = run(scenario())
    assert refused.state is JobState.FAILED and isinstance(refused.error, InvalidArgument)
    assert crashed.state is JobState.FAILED and "internal error" in str(crashed.error)


def test_unknown_jobs_old_jobs_and_shutdown():
    async def scenario():
        jobs = JobManager(keep_finished=2)
        with pytest.raises(NotFound):
            jobs.get("not-an-id")

        async def quick(progress):
            return []

        ids = [jobs.submit("test", "alice", quick).id for _ in range(4)]
        for job_id in ids:
            await jobs.wait(job_id) if job_id in {j.id for j in jobs.list()} else None
        kept = [j.id for j in jobs.list()]

        gate, entered = asyncio.Event(), asyncio.Event()

        async def forever(progress):
            entered.set()
            await gate.wait()
            return []

        long = jobs.submit("test", "alice", forever)
        await entered.wait()  # running, not queued, when the manager stops
        await jobs.stop(timeout=1)
        return ids, kept, jobs.get(long.id)

    ids, kept, long = run(scenario())
    assert kept == ids[:1:-1]  # newest first, only the last two finished ones
    assert long.state is JobState.CANCELLED


def test_job_records_survive_a_restart_and_interrupted_jobs_are_failed(tmp_path):
    from memosd.storage.sqlite.db import Database

    result = "01J9Z3K5Q8W2E4R6T8Y0V2X4N6"

    async def first_life():
        db = Database(tmp_path / "memos.db")
        jobs = JobManager(db=db)
        await jobs.start()

        async def quick(progress):
            progress.update(done=1, total=1, metrics={"loss": 0.5})
            return [result]

        entered = asyncio.Event()

        async def endless(progress):
            entered.set()
            await asyncio.Event().wait()  # never set: the job runs until the crash

        done = jobs.submit("quick", "alice", quick)
        await jobs.wait(done.id)
        stuck = jobs.submit("endless", "bob", endless)
        await entered.wait()
        # A crash: no stop(), so the record of the running job still says RUNNING.
        await asyncio.gather(*jobs._saving)
        await asyncio.to_thread(db.close)
        return done.id, stuck.id

    async def second_life(done_id, stuck_id):
        db = Database(tmp_path / "memos.db")
        jobs = JobManager(db=db)
        await jobs.start()
        try:
            return jobs.get(done_id), jobs.get(stuck_id), [j.id for j in jobs.list()]
        finally:
            await jobs.stop()
            await asyncio.to_thread(db.close)

    done_id, stuck_id = run(first_life())
    done, stuck, listed = run(second_life(done_id, stuck_id))
    assert done.state is JobState.SUCCEEDED and done.result_ids == (result,) and done.metrics == {"loss": 0.5}
    assert stuck.state is JobState.FAILED and "stopped before the job finished" in str(stuck.error)
    assert listed == [stuck_id, done_id]


def test_only_the_admin_is_told_which_member_runs_a_job():
    # The runner names a host of the cluster: agents are shown none (as in Status), the admin is.
    from memosd.governance import Principal
    from memosd.server.auth import set_principal
    from memosd.server.convert_tensor import job_to_proto

    job = Job("01JOB", "kv_build", "alice", JobState.RUNNING, 0.0, message="building", runner="host-a:123:ab")
    def as_caller(p):  # in a context of its own, as each call is: the caller set here goes with it
        def shown():
            set_principal(p)
            return job_to_proto(job).message
        return contextvars.copy_context().run(shown)

    assert as_caller(Principal("alice")) == "building"
    assert as_caller(Principal("admin", admin=True)) == "building (on host-a:123:ab)"
