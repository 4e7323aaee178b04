"""Read lanes: point reads (Get, History) have readers that searches and lists cannot hold; a full queue sheds."""

import asyncio
import threading
from contextlib import contextmanager

import pytest

from memos_client import MemosClient, ResourceExhausted
from memosd.errors import ResourceExhausted as CoreResourceExhausted
from memosd.storage import Lane

pytestmark = pytest.mark.vaults  # the daemon-level tests once per vault engine (SQLite, PostgreSQL)


class Gate:
    """A read job that holds its reader thread until the gate opens; counts the jobs holding one."""

    def __init__(self):
        self.opened = threading.Event()
        self._started = 0
        self._changed = threading.Condition()

    def job(self, conn):
        with self._changed:
            self._started += 1
            self._changed.notify_all()
        self.opened.wait(60)  # a guard against a hung test, not a timing

    def wait_started(self, n: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self._started >= n, 30), f"{self._started} of {n} readers held"


@contextmanager
def scan_lane_held(daemon, jobs: int = 0):
    """Every scan reader of the daemon's database busy with a gated read, and `jobs` in all queued or running."""
    db = daemon.vault.db
    gate = Gate()
    held = [asyncio.run_coroutine_threadsafe(db.read(gate.job), daemon.loop) for _ in range(max(jobs, db.readers))]
    try:
        gate.wait_started(db.readers)
        yield
    finally:
        gate.opened.set()
        for future in held:
            future.result(60)


@pytest.fixture
def quick(daemon):
    # A short deadline, so that a call stuck behind the gate fails the test instead of waiting out the gate.
    with MemosClient(daemon.address, key=daemon.admin_key, timeout=10) as c:
        yield c


def test_get_and_history_are_answered_while_scans_hold_every_reader(daemon, quick):
    cube = quick.put("the red fox", "agents/a/n")
    quick.update(cube.id, text="the brown fox")
    with scan_lane_held(daemon):
        assert quick.get(cube.id).text == "the brown fox"
        assert quick.get(cube.id, version=1).text == "the red fox"
        assert [v.version for v in quick.history(cube.id)] == [1, 2]


def test_blob_metadata_is_answered_while_scans_hold_every_reader(daemon, quick):
    ref = quick.upload_blob(b"\x01" * 4096, "agents/admin/kv")
    with scan_lane_held(daemon):
        assert quick.upload_status(ref.sha256, ref.size, "agents/admin/kv") == (True, 0)


def test_a_full_read_queue_answers_search_and_list_with_resource_exhausted(daemon, quick):
    cube = quick.put("the red fox", "agents/a/n")
    with scan_lane_held(daemon, daemon.vault.db.max_scans):
        with pytest.raises(ResourceExhausted, match="retry") as refused:
            quick.search("fox")
        assert len(str(refused.value)) < 200
        with pytest.raises(ResourceExhausted):
            quick.list_page("agents/a")
        assert quick.get(cube.id).id == cube.id
    # Served again once the queue drains.
    assert [h.cube.id for h in quick.search("fox")] == [cube.id]
    assert [c.id for c in quick.list_page("agents/a").cubes] == [cube.id]


def test_each_engine_keeps_point_readers_free_and_sheds_scans_past_its_bound(engine):
    async def body():
        db, gate = engine.db, Gate()
        held = [asyncio.ensure_future(db.read(gate.job)) for _ in range(db.max_scans)]
        await asyncio.to_thread(gate.wait_started, db.readers)
        assert await asyncio.wait_for(db.read(lambda conn: "point", lane=Lane.POINT), 30) == "point"
        with pytest.raises(CoreResourceExhausted, match="retry"):
            await db.read(lambda conn: "scan")
        gate.opened.set()
        await asyncio.gather(*held)
        assert await db.read(lambda conn: "scan") == "scan"

    asyncio.run(body())
