"""The PostgreSQL engine's Database: jobs on pooled connections in worker threads, each write its own transaction."""

from __future__ import annotations

import asyncio
import logging
import select
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from memosd.errors import Unavailable
from memosd.storage.lanes import MAX_QUEUED_SCANS, Lane, ScanQueue
from memosd.storage.postgres import schema
from memosd.storage.urls import redact, redact_text

T = TypeVar("T")
log = logging.getLogger("memosd.vault")
# A read is one snapshot, as SQLite's read transaction is; it may not write. Asked for in the BEGIN psycopg sends
# (the connection's isolation_level and read_only), not in a statement after it: a round trip less per read.
_SNAPSHOT = {"isolation_level": psycopg.IsolationLevel.REPEATABLE_READ, "read_only": True}
_DEFAULT = {"isolation_level": None, "read_only": None}
# Serialization failures and deadlocks are PostgreSQL telling one of two concurrent writers to try again; a job
# is a function of its connection alone, so running it again from the start is what the caller would do.
_RETRIES = 5
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
# A connection back in the pool for longer than this is checked with a round trip before it serves again; one
# used more recently only if its socket has something to say (a server that ended it has: its FATAL, or EOF).
_IDLE_CHECK = 5.0
# pg_advisory_lock(class, hashtext(name)) of Database.exclusive: "excl", apart from events' per-topic class.
_EXCLUSIVE_CLASS = 0x6578636C


def _begin(conn: psycopg.Connection, mode: dict) -> None:
    """Set how the connection's next transaction begins (no round trip: psycopg sends it with its BEGIN)."""
    for name, value in mode.items():
        if getattr(conn, name) != value:
            setattr(conn, name, value)


class Database:
    """Runs each job on a pooled connection in a worker thread: a write in one committed transaction
    (synchronous_commit on), a read in one REPEATABLE READ, read-only snapshot. Any number of daemons may write
    to one database at once: the record modules lock what they change (no single-writer assumption)."""

    engine = "postgresql"

    def __init__(self, url: str, *, create: bool = True, pool_size: int = 8, point_readers: int = 2,
                 max_scans: int = MAX_QUEUED_SCANS, statement_timeout: float = 30.0, connect_timeout: float = 10.0):
        self.url = url
        self.readers, self.max_scans = pool_size, max_scans
        self.shown_url = redact(url)
        # Every connection: commits wait for the WAL flush whatever the server's default, statements end at
        # the timeout, and the server knows who we are. psycopg prepares a statement run often (prepare_threshold).
        # memosd.instance names this Database to the server, for work one daemon claims (vectors.missing).
        self.instance = uuid.uuid4().hex
        options = (f"-c synchronous_commit=on -c statement_timeout={int(statement_timeout * 1000)}"
                   f" -c memosd.instance={self.instance}")
        self._kwargs: dict[str, Any] = {"options": options, "application_name": "memosd",
                                        "connect_timeout": max(1, int(connect_timeout))}
        self.applied = self._migrate(create)
        # When each connection went back to the pool (time.monotonic()); one never returned counts as idle long.
        self._back: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()
        # A connection for every worker thread of both lanes: a point read never waits for one a scan holds.
        self._pool = ConnectionPool(url, kwargs=self._kwargs, min_size=1, max_size=pool_size + point_readers,
                                    open=False, check=self._check, reset=self._returned, timeout=connect_timeout,
                                    name="memosd-vault")
        self._pool.open(wait=False)
        self._workers = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="memosd-pg")
        # Point reads (Get, History, blob metadata) on threads of their own, as the SQLite engine's are.
        self._point_workers = ThreadPoolExecutor(max_workers=point_readers, thread_name_prefix="memosd-pg-point")
        self._scans = ScanQueue(max_scans)
        self._closed = False

    def _returned(self, conn: psycopg.Connection) -> None:
        self._back[conn] = time.monotonic()

    def _check(self, conn: psycopg.Connection) -> None:
        """The pool's check at checkout, without a round trip for a connection busy a moment ago (that round
        trip was an eighth of a publish): a server that restarted or ended the backend has closed the socket or
        written its FATAL there, which a zero-timeout poll sees; a connection idle longer, which a silent network
        may have cut, gets the full check. A dead one fails here and the pool gives out another."""
        idle = time.monotonic() - self._back.get(conn, float("-inf"))
        if idle > _IDLE_CHECK or conn.closed or select.select([conn.fileno()], [], [], 0)[0]:
            ConnectionPool.check_connection(conn)

    def _migrate(self, create: bool) -> list[str]:
        try:
            with psycopg.connect(self.url, autocommit=True, **self._kwargs) as conn:
                # A migration may build an index over a large table, or wait for another daemon's: no timeout.
                conn.execute("SET statement_timeout = 0")
                done = schema.migrate(conn, create=create)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        if done:
            log.info("vault %s: applied migrations %s", self.shown_url, ", ".join(done))
        return done

    async def write(self, job: Callable[[psycopg.Connection], T]) -> T:
        """Run job(conn) inside a transaction; return once it is committed and durable."""
        return await self._submit(self._workers, job, read=False)

    async def read(self, job: Callable[[psycopg.Connection], T], *, lane: Lane = Lane.SCAN) -> T:
        """Run job(conn) in one read-only snapshot, on the lane's workers (writes share the scan lane's)."""
        if lane is Lane.POINT:
            return await self._submit(self._point_workers, job, read=True)
        with self._scans.admit():
            return await self._submit(self._workers, job, read=True)

    async def _submit(self, workers: ThreadPoolExecutor, job, *, read: bool):
        if self._closed:
            raise Unavailable("the daemon is shutting down; retry against the restarted daemon")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(workers, self._run, job, read)

    @property
    def sql(self):
        """The engine's record functions, one module per part of the core (memosd/storage/postgres/)."""
        import memosd.storage.postgres as sql

        return sql

    @contextmanager
    def snapshot(self) -> Iterator[psycopg.Connection]:
        """A pooled connection in one read-only snapshot, for a long read on the caller's thread (an export)."""
        try:
            with self._pool.connection() as conn:
                _begin(conn, _SNAPSHOT)
                yield conn
                conn.commit()
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        except (PoolTimeout, PoolClosed) as exc:
            raise self._no_connection(exc) from None

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """One holder at a time among every daemon on this database, held across awaits: a session advisory lock
        on a pooled connection kept for the block (waiting as long as the holder takes; a daemon that dies
        holding it lets go with its connection)."""
        if self._closed:
            raise Unavailable("the daemon is shutting down; retry against the restarted daemon")
        conn = await asyncio.to_thread(self._lock, name)
        try:
            yield
        finally:
            await asyncio.to_thread(self._unlock, conn, name)

    def _lock(self, name: str) -> psycopg.Connection:
        try:
            conn = self._pool.getconn()
        except (PoolTimeout, PoolClosed) as exc:
            raise self._no_connection(exc) from None
        try:
            conn.autocommit = True
            conn.execute("SET statement_timeout = 0")  # the wait is the holder's work, however long it takes
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (_EXCLUSIVE_CLASS, name))
            return conn
        except psycopg.Error as exc:
            self._give_back(conn, broken=True)
            raise self._unavailable(exc) from None
        except BaseException:
            self._give_back(conn, broken=True)
            raise

    def _unlock(self, conn: psycopg.Connection, name: str) -> None:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_EXCLUSIVE_CLASS, name))
            conn.execute("RESET statement_timeout")
            conn.autocommit = False
        except psycopg.Error:
            self._give_back(conn, broken=True)  # closing it lets go of the lock too
            return
        self._give_back(conn, broken=False)

    def _give_back(self, conn: psycopg.Connection, *, broken: bool) -> None:
        if broken:
            conn.close()
        self._pool.putconn(conn)

    def _run(self, job, read: bool):
        for attempt in range(_RETRIES):
            try:
                checked_out = False
                with self._pool.connection() as conn:
                    checked_out = True  # what fails from here is this connection's
                    _begin(conn, _SNAPSHOT if read else _DEFAULT)
                    result = job(conn)
                    conn.commit()
                    return result
            except _RETRYABLE as exc:
                if attempt == _RETRIES - 1:
                    raise Unavailable("the vault database is too busy with concurrent writes; retry") from exc
            except pg_errors.QueryCanceled:
                raise Unavailable("a vault database statement ran past its statement_timeout; retry, or ask for"
                                  " less at once") from None
            except psycopg.OperationalError as exc:
                # A read is safe to run again: once, on another connection, for one the server had just ended
                # when the checkout's quiet-socket check passed it (a write is not: it may have committed).
                if not (read and attempt == 0 and checked_out):
                    raise self._unavailable(exc) from None
            except (PoolTimeout, PoolClosed) as exc:
                raise self._no_connection(exc) from None
        raise AssertionError("unreachable")

    def _unavailable(self, exc: psycopg.Error) -> Unavailable:
        # libpq's first line says what failed (refused, no such socket, auth); the rest is hints and context.
        if isinstance(exc, pg_errors.QueryCanceled):
            return Unavailable("a vault database statement ran past its statement_timeout")
        reason = redact_text((str(exc).strip().splitlines() or ["unknown error"])[0], self.url)[:300]
        if not isinstance(exc, psycopg.OperationalError):
            return Unavailable(f"the PostgreSQL vault at {self.shown_url} failed: {reason}")
        return Unavailable(f"cannot reach the PostgreSQL vault at {self.shown_url}: {reason}")

    def _no_connection(self, exc: Exception) -> Unavailable:
        if isinstance(exc, PoolClosed) or self._closed:
            return Unavailable("the daemon is shutting down; retry against the restarted daemon")
        return Unavailable(f"cannot reach the PostgreSQL vault at {self.shown_url}: no connection within"
                           f" {self._pool.timeout:g}s")

    def close(self) -> None:
        """Finish running jobs, then close the pool's connections."""
        if self._closed:
            return
        self._closed = True
        self._workers.shutdown(wait=True)
        self._point_workers.shutdown(wait=True)
        self._pool.close()
