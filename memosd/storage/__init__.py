"""The storage seam: the core reaches its records only through a Database and the engine's `sql` modules.

A Database runs jobs: `await db.write(job)` runs job(conn) in one durable transaction, `await db.read(job)` in
one consistent snapshot. A job composes named record functions of the engine, `db.sql.<module>.<function>(conn,
...)`: the core decides what is one transaction, the engine package owns every statement. Each engine is one
package under memosd/storage/ with the same modules and functions (tests/test_storage_contract.py drives them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memosd.errors import FailedPrecondition
from memosd.storage.urls import POSTGRESQL, vault_engine

# An engine's connection inside a job: opaque to the core, which only hands it to that engine's functions.
Conn = Any


def open_database(data_dir: Path, migrations=None, *, url: str = "sqlite:", create: bool = False) -> Any:
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


def sql_of(conn: Conn):
    """The record functions of the engine a job's connection belongs to, for a function handed only the
    connection (memosd.vault.blob_access's, which vault/blobs.py calls inside its own jobs)."""
    import sqlite3

    if isinstance(conn, sqlite3.Connection):
        import memosd.storage.sqlite as sql

        return sql
    if type(conn).__module__.startswith("psycopg"):
        import memosd.storage.postgres as pg

        return pg
    raise TypeError(f"no storage engine has connections of type {type(conn).__name__}")
