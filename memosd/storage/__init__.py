"""The storage seam: the core reaches its records only through a Database and the engine's `sql` modules.

A Database runs jobs: `await db.write(job)` runs job(conn) in one durable transaction, `await db.read(job)` in
one consistent snapshot. A job composes named record functions of the engine, `db.sql.<module>.<function>(conn,
...)`: the core decides what is one transaction, the engine package owns every statement. Each engine is one
package under memosd/storage/ with the same modules and functions (tests/test_storage_contract.py drives them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# An engine's connection inside a job: opaque to the core, which only hands it to that engine's functions.
Conn = Any


def open_database(data_dir: Path, migrations=None):
    """The embedded engine's database in data_dir (SQLite), migrated."""
    from memosd.storage.sqlite.db import Database, all_migrations

    return Database(Path(data_dir) / "memos.db", migrations=migrations or all_migrations())


def sql_of(conn: Conn):
    """The record functions of the engine a job's connection belongs to, for a function handed only the
    connection (memosd.vault.blob_access's, which vault/blobs.py calls inside its own jobs)."""
    import sqlite3

    if isinstance(conn, sqlite3.Connection):
        import memosd.storage.sqlite as sql

        return sql
    raise TypeError(f"no storage engine has connections of type {type(conn).__name__}")
