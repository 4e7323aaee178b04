"""The storage seam: the core reaches its records only through a Database and the engine's `sql` modules.

A Database runs jobs: `await db.write(job)` runs job(conn) in one durable transaction, `await db.read(job)` in
one consistent snapshot (`lane=Lane.POINT` for a read of a few rows by key, on readers no search or list holds).
A job composes named record functions of the engine, `db.sql.<module>.<function>(conn, ...)`: the core decides
what is one transaction, the engine package owns every statement. Each engine is one package under
memosd/storage/ with the same modules and functions (tests/test_storage_contract.py drives them).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from memosd.errors import FailedPrecondition
from memosd.storage.lanes import Lane
from memosd.storage.urls import POSTGRESQL, vault_engine

# An engine's connection inside a job: opaque to the core, which only hands it to that engine's functions.
Conn = Any
T = TypeVar("T")


class Database(Protocol):
    """What every engine's Database offers the core (memosd/storage/sqlite/db.py, postgres/db.py)."""

    engine: str  # "sqlite" or "postgresql"
    readers: int  # threads of the scan lane
    max_scans: int  # reads the scan lane holds, queued or running, before it refuses more (ResourceExhausted)

    @property
    def sql(self) -> Any:
        """The engine's package of record modules: db.sql.cubes, db.sql.events, ..."""

    async def write(self, job: Callable[[Conn], T]) -> T:
        """Run job(conn) in one transaction; return once it is committed and durable."""

    async def read(self, job: Callable[[Conn], T], *, lane: Lane = Lane.SCAN) -> T:
        """Run job(conn) in one consistent, read-only snapshot, on the lane's readers."""

    def snapshot(self) -> AbstractContextManager[Conn]:
        """A connection of its own in one read snapshot, for a long read on the caller's thread."""

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        """Held by one holder at a time among every daemon on this vault, across awaits (SQLite: one daemon per
        vault, so nothing to take; PostgreSQL: an advisory lock)."""

    def close(self) -> None:
        """Finish what is queued, then release the connections."""


def open_database(data_dir: Path, migrations=None, *, url: str = "sqlite:", create: bool = False) -> Database:
    """The database vault_url names, migrated: `sqlite:` is the embedded engine in data_dir (created on first
    use); `postgresql://...` a PostgreSQL database whose schema `create` makes (memosd init) and which is
    otherwise refused, with FailedPrecondition, if it has none or one newer than this code (Unavailable:
    unreachable). migrations: the SQLite migration sets to apply (tests), all of them by default."""
    if vault_engine(url) == POSTGRESQL:
        try:
            from memosd.storage.postgres.db import Database as PostgresDatabase
        except ImportError as exc:
            raise FailedPrecondition(f"a postgresql:// vault_url needs psycopg ({exc.name} is missing):"
                                     " pip install 'memosd[postgres]'") from None

        return PostgresDatabase(url, create=create)
    from memosd.storage.sqlite.db import Database, all_migrations

    return Database(Path(data_dir) / "memos.db", migrations=migrations or all_migrations())


def missing_modules(db) -> tuple[str, ...]:
    """The record modules the core needs that db's engine does not implement yet (nothing for SQLite)."""
    return tuple(getattr(db.sql, "MISSING", ()))
