"""MemVault's cube records on PostgreSQL under several daemons writing at once: seq order is commit order for
readers that walk seq, and concurrent versions of one cube are all kept."""

import asyncio
import threading
import time

import psycopg

from memosd.cube import CubeDraft, CubeFilter, CubePatch, LifecycleState, MemCube, MemoryKind
from memosd.errors import FailedPrecondition
from memosd.ids import new_id
from memosd.storage.postgres.db import Database
from memosd.vault.vault import MemVault


def _run(coro):
    return asyncio.run(coro)


def _cube(i: int) -> MemCube:
    return MemCube(id=new_id(100.0), namespace="n", kind=MemoryKind.PLAINTEXT, created_at=100.0, updated_at=100.0,
                   owner="alice", text=f"t{i}", tags=("x",))


def _threads(targets):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    return threads


def test_a_reader_walking_seq_while_two_daemons_insert_misses_no_committed_cube(postgres_url):
    daemons = [Database(postgres_url, create=False, pool_size=4) for _ in range(2)]
    writers_per_daemon, batches = 3, 12
    # Large batches among small ones: a small batch that takes its seqs after a large one commits before it.
    sizes = [300 if b % 4 == 0 else 3 for b in range(batches)]
    errors: list[BaseException] = []
    writing = threading.Event()
    writing.set()
    seen: list[str] = []

    def writer(db, w):
        async def go():
            # Several transactions of one daemon at once too: each batch is its own write.
            await asyncio.gather(*(db.write(lambda conn, b=b: db.sql.cubes.insert_cubes(
                conn, [_cube(w * 10_000 + b * 1000 + i) for i in range(sizes[b])])) for b in range(batches)))
        try:
            _run(go())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def walk(conn, after):
        # As List with page tokens (and the embedding backfill): the next page starts after the last seq seen,
        # each page its own snapshot. On a connection of its own, so that it reads as often as it can.
        while True:
            page, _ = daemons[1].sql.cubes.list_page(conn, CubeFilter(), 200.0, after, 50, count=False)
            if not page:
                return after
            seen.extend(r["id"] for r in page)
            after = page[-1]["seq"]

    def reader():
        after = 0
        try:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                while writing.is_set():
                    after = walk(conn, after)
                walk(conn, after)  # what the last writers committed
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        reading = _threads([reader])
        threads = _threads([lambda db=db, w=d * writers_per_daemon + t: writer(db, w)
                            for d, db in enumerate(daemons) for t in range(writers_per_daemon)])
        for t in threads:
            t.join()
        writing.clear()
        reading[0].join()
        assert errors == []
        db = daemons[0]
        stored, total = _run(db.read(lambda conn: db.sql.cubes.list_page(conn, CubeFilter(), 200.0, 0, 100_000,
                                                                        count=True)))
        assert total == 2 * writers_per_daemon * sum(sizes)
        missed = {r["id"] for r in stored} - set(seen)
        assert not missed, f"the walker skipped {len(missed)} of {total} committed cubes"
        assert seen == [r["id"] for r in stored]  # each once, in seq order
    finally:
        for d in daemons:
            d.close()


def test_a_batch_that_took_its_seqs_first_commits_before_a_later_one_is_listed(postgres_url):
    db = Database(postgres_url, create=False, pool_size=2)
    first, later = _cube(1), _cube(2)
    try:
        with psycopg.connect(postgres_url) as slow:  # a daemon in the middle of a batch: seqs taken, no commit
            db.sql.cubes.insert_cubes(slow, [first])
            done = threading.Event()
            writer = _threads([lambda: (_run(db.write(lambda conn: db.sql.cubes.insert_cubes(conn, [later]))),
                                        done.set())])[0]
            with psycopg.connect(postgres_url, autocommit=True) as watch:
                # The later batch has either committed or is waiting for the first one (on a lock).
                deadline = time.monotonic() + 30
                while not done.is_set() and not watch.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'memosd' AND wait_event_type = 'Lock'"
                        ).fetchone():
                    assert time.monotonic() < deadline, "the later batch neither committed nor waited"
            page = _list(db, 0)
            slow.commit()
        writer.join()
        after = page[-1]["seq"] if page else 0
        listed = [r["id"] for r in page + _list(db, after)]  # the next page, as a page token continues
        assert listed == [first.id, later.id]
    finally:
        db.close()


def _list(db, after):
    return _run(db.read(lambda conn: db.sql.cubes.list_page(conn, CubeFilter(), 200.0, after, 50, count=False)))[0]


def test_concurrent_updates_of_one_cube_in_two_daemons_keep_every_version(postgres_url, tmp_path):
    daemons = [Database(postgres_url, create=False, pool_size=4) for _ in range(2)]
    vaults = [MemVault(tmp_path / f"d{i}", db=db) for i, db in enumerate(daemons)]
    (cube,) = _run(vaults[0].put_many([CubeDraft(namespace="n", text="v0", tags=("t0",))], "alice"))
    per_thread, threads_per_daemon = 8, 2
    errors: list[BaseException] = []
    written: list[tuple[int, str]] = []

    def updater(vault, w):
        async def go():
            for i in range(per_thread):
                text = f"w{w}-{i}"
                new = await vault.update(cube.id, CubePatch(frozenset({"text", "tags"}),
                                                            CubeDraft("", text, tags=(text,))))
                written.append((new.version, text))
        try:
            _run(go())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = _threads([lambda v=v, w=d * threads_per_daemon + t: updater(v, w)
                            for d, v in enumerate(vaults) for t in range(threads_per_daemon)])
        for t in threads:
            t.join()
        assert errors == []
        n = 2 * threads_per_daemon * per_thread
        history = _run(vaults[1].history(cube.id))
        assert [c.version for c in history] == list(range(1, n + 2))
        assert [c.parent_version for c in history] == list(range(0, n + 1))
        # Each update answered with the version it wrote, and that version holds its text and tags.
        assert sorted(written) == [(c.version, c.text) for c in history[1:]]
        assert all(c.tags == (c.text,) for c in history[1:])
        current = history[-1]
        f = CubeFilter(tags=(current.text,))
        assert [r["id"] for r in _run(daemons[0].read(
            lambda conn: daemons[0].sql.cubes.list_page(conn, f, 200.0, 0, 10, count=False)))[0]] == [cube.id]
    finally:
        for d in daemons:
            d.close()


def test_an_update_and_a_delete_racing_in_two_daemons_are_applied_one_after_the_other(postgres_url, tmp_path):
    daemons = [Database(postgres_url, create=False, pool_size=2) for _ in range(2)]
    vaults = [MemVault(tmp_path / f"d{i}", db=db) for i, db in enumerate(daemons)]
    cubes = _run(vaults[0].put_many([CubeDraft(namespace="n", text=f"c{i}") for i in range(20)], "alice"))
    updated: dict[str, str] = {}
    deleted: dict[str, int] = {}

    def update():
        async def go():
            for c in cubes:
                try:
                    await vaults[0].update(c.id, CubePatch(frozenset({"text"}), CubeDraft("", "new")))
                    updated[c.id] = "updated"
                except FailedPrecondition:  # the delete came first
                    updated[c.id] = "refused"
        _run(go())

    def delete():
        async def go():
            for c in cubes:
                deleted[c.id] = await vaults[1].delete(c.id)
        _run(go())

    try:
        for t in _threads([update, delete]):
            t.join()
        for c in cubes:
            history = _run(vaults[0].history(c.id))
            assert [v.version for v in history] == list(range(1, len(history) + 1))
            assert history[-1].state is LifecycleState.DELETED and deleted[c.id] == len(history)
            if updated[c.id] == "updated":  # the update came first: its version is kept before the tombstone
                assert [v.text for v in history] == [c.text, "new", None]
                assert len(history) == 3
            else:
                assert len(history) == 2
    finally:
        for d in daemons:
            d.close()


def test_blob_references_and_holders_on_rows_stored_as_the_blob_store_will(postgres_url):
    # BlobStore writes its rows with SQLite's SQL until the blobs module exists on PostgreSQL (#14), so the
    # tensor contract's blob tests run on SQLite only; these rows are the ones it stores (refcount 0, a holder).
    db = Database(postgres_url, create=False)
    sha, gone = "a" * 64, "f" * 64
    try:
        def store(conn):
            conn.execute("INSERT INTO blobs (sha256, size, refcount, created_at, unreferenced_since)"
                         " VALUES (%s, 5, 0, 1.0, 1.0)", (sha,))
            db.sql.holders.record(conn, sha, "alice", 1.0)

        _run(db.write(store))
        assert _run(db.write(lambda conn: db.sql.tensors.reference_blob(conn, gone))) is False
        assert _run(db.write(lambda conn: db.sql.tensors.reference_blob(conn, sha))) is True
        assert _run(db.read(lambda conn: conn.execute("SELECT refcount, unreferenced_since FROM blobs"
                                                      " WHERE sha256 = %s", (sha,)).fetchone())) == (1, None)
        _run(db.write(lambda conn: db.sql.holders.record(conn, sha, "bob", 2.0)))
        _run(db.write(lambda conn: db.sql.holders.record(conn, sha, "bob", 3.0)))  # again: the first time stays
        assert _run(db.read(lambda conn: conn.execute("SELECT agent, since FROM blob_holders ORDER BY agent")
                            .fetchall())) == [("alice", 1.0), ("bob", 2.0)]
        assert [_run(db.read(lambda conn, a=a, s=s: db.sql.holders.holds(conn, s, a)))
                for a, s in (("alice", sha), ("bob", sha), ("carol", sha), ("bob", gone))] == [True, True, False, False]
        assert _run(db.read(lambda conn: db.sql.holders.blob_size(conn, sha))) == 5
        assert _run(db.read(lambda conn: db.sql.holders.blob_size(conn, gone))) is None
        _run(db.write(lambda conn: conn.execute("DELETE FROM blobs WHERE sha256 = %s", (sha,))))
        assert _run(db.read(lambda conn: db.sql.holders.holds(conn, sha, "alice"))) is False  # gone with its blob
    finally:
        db.close()
