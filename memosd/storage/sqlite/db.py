"""The embedded engine's Database: SQLite with one writer thread (group commit) and two small pools of readers."""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database as SqliteUtilsDatabase

from memosd.errors import MemosError, Unavailable
from memosd.storage import segment
from memosd.storage.lanes import MAX_QUEUED_SCANS, Lane, ScanQueue

T = TypeVar("T")
log = logging.getLogger("memosd.vault")
_STOP = object()
MAX_GROUP = 64
# Pages are read from a memory map of the database file rather than copied in by read() calls: at
# 100k cubes a BM25 query takes about a third less time, a List page's count nearly half. Address
# space, not memory: the pages are the OS page cache's, shared by every connection.
MMAP_BYTES = 1 << 30


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit acknowledged to a client is on disk before the acknowledgement.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    register_functions(conn)
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


def register_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions the schema's triggers call: every connection that may write cubes (or migrate) needs them.
    trusted_schema on, as SQLite's default: a build that turns it off would refuse them inside triggers."""
    conn.create_function(segment.INDEX_FUNCTION, 1, segment.index_text, deterministic=True)
    conn.execute("PRAGMA trusted_schema=1")


def all_migrations() -> tuple:
    """The vault's, governance's and MemStore's migrations, in the order they apply."""
    from memosd.storage.sqlite.schema import governance, store, vault

    return vault.migrations, governance.migrations, store.migrations


class Database:
    """Runs write jobs on one thread (batched into shared transactions) and reads on a pool per lane."""

    engine = "sqlite"

    def __init__(self, path: Path, *, readers: int = 4, point_readers: int = 2, max_scans: int = MAX_QUEUED_SCANS,
                 migrations: tuple | None = None):
        self.path = path
        self.readers, self.max_scans = readers, max_scans
        if migrations is None:
            from memosd.storage.sqlite.schema.vault import migrations as vault_migrations

            migrations = (vault_migrations,)
        setup = connect(path)
        for migration_set in migrations:
            migration_set.apply(SqliteUtilsDatabase(setup))
        setup.close()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="memosd-writer", daemon=True)
        self._writer.start()
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="memosd-reader")
        # Under a mixed load a Get queued behind searches and lists for the same readers (p50 229 ms at 64
        # clients); point reads take a few rows by key, so two threads of their own keep up with many callers.
        self._point_readers = ThreadPoolExecutor(max_workers=point_readers, thread_name_prefix="memosd-point-reader")
        self._scans = ScanQueue(max_scans)

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run job(conn) inside a transaction; return once it is committed and durable."""
        if self._closed:
            raise Unavailable("the daemon is shutting down; retry against the restarted daemon")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((job, loop, future))
        return await future

    async def read(self, job: Callable[[sqlite3.Connection], T], *, lane: Lane = Lane.SCAN) -> T:
        """Run job(conn) on a reader thread of the lane, in one read transaction (a consistent snapshot)."""
        loop = asyncio.get_running_loop()
        if lane is Lane.POINT:
            return await loop.run_in_executor(self._point_readers, self._run_read, job)
        with self._scans.admit():
            return await loop.run_in_executor(self._readers, self._run_read, job)

    @property
    def sql(self):
        """The engine's record functions, one module per part of the core (memosd/storage/sqlite/)."""
        import memosd.storage.sqlite as sql

        return sql

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own in one read transaction, for a long read on the caller's thread (an export)."""
        conn = connect(self.path, readonly=True)
        try:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _run_read(self, job):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, readonly=True)
        conn.execute("BEGIN")
        try:
            return job(conn)
        finally:
            conn.execute("COMMIT")

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Nothing to take: a SQLite vault has one daemon, whose own locks order its work."""
        yield

    def close(self) -> None:
        """Finish queued writes, then stop the writer and readers."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        self._writer.join()
        self._readers.shutdown(wait=True)
        self._point_readers.shutdown(wait=True)

    def _write_loop(self) -> None:
        conn = connect(self.path)
        stopping = False
        while not stopping:
            batch = [self._jobs.get()]
            while len(batch) < MAX_GROUP:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                self._commit_group(conn, batch)
        conn.close()

    def _commit_group(self, conn: sqlite3.Connection, batch) -> None:
        # Group commit: one fsync for many callers; each job in its own savepoint so a failing
        # job is rolled back alone and the others still commit.
        outcomes = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, _, _ in batch:
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((True, job(conn)))
                    conn.execute("RELEASE job")
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.exception("commit failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(False, exc)] * len(batch)
        for (_, loop, future), (ok, value) in zip(batch, outcomes):
            loop.call_soon_threadsafe(_settle, future, ok, value)


def _settle(future: asyncio.Future, ok: bool, value) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value if isinstance(value, (MemosError, Exception)) else RuntimeError(value))
