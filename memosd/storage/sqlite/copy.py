"""Reading an embedded vault table by table, in key order and in batches, for `memosd migrate`.

The migration reads a private copy of the database (copy_database), never the data directory's own files: a
read-only open of a WAL database still writes its -shm index, and an `immutable` open would miss a WAL that a
daemon stopped by kill -9 left behind. The copy is migrated to this memosd's schema, so an older vault moves too.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database as SqliteUtilsDatabase

from memosd.storage.sqlite.db import all_migrations, register_functions

DB_NAME = "memos.db"
# Every table of the vault that holds records, with its key (the copy's order and its resume point). Derived
# tables (cubes_fts, sqlite-utils' _sqlite_migrations) are not here: the target builds its own. settings comes
# last: a target holds the source's daemon id only once everything else is in. members is not here: it
# lists the daemons serving a vault, and the source's is stopped.
# vector_log is not here either: it serves the embedded daemon's saved HNSW index (memosd/vault/keeper.py).
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("agents", ("name",)),
    ("policies", ("id",)),
    ("audit", ("seq",)),
    ("audit_checkpoints", ("n",)),
    ("audit_keys", ("fingerprint",)),
    ("blobs", ("sha256",)),
    ("blob_holders", ("sha256", "agent")),
    ("cubes", ("seq",)),
    ("cube_tags", ("tag", "seq")),
    ("cube_versions", ("id", "version")),
    ("embeddings", ("seq",)),
    ("activation_prefixes", ("key", "seq")),
    ("topics", ("name",)),
    ("events", ("topic", "seq")),
    ("topic_cubes", ("topic", "cube_id", "publisher")),
    ("durable_subscriptions", ("agent", "name")),
    ("jobs", ("id",)),
    ("settings", ("key",)),
)
# SQLite's shared-memory index: every connection holds a read lock on this byte while it has the database open.
_SHM_DMS_BYTE = 128


def holder_of(data_dir: Path) -> str:
    """Why the data directory's database is open in another process ("" if it is not): a running daemon holds
    a read lock on the WAL index (memos.db-shm) for as long as it has the database open."""
    shm = Path(data_dir) / (DB_NAME + "-shm")
    try:
        fd = os.open(shm, os.O_RDWR)  # a write lock needs a descriptor open for writing; nothing is written
    except FileNotFoundError:
        return ""
    except PermissionError:
        return f"{shm} is not ours to lock"
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS_BYTE)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return f"another process has {Path(data_dir) / DB_NAME} open (its WAL index is locked)"
        raise
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _SHM_DMS_BYTE)
    finally:
        os.close(fd)
    return ""


def copy_database(data_dir: Path, into: Path) -> str:
    """Copy memos.db (and a WAL left beside it) from data_dir to the file `into`; the sha256 of what was copied,
    which tells a resumed migration whether the source changed in between. FileNotFoundError if there is none."""
    source = Path(data_dir) / DB_NAME
    digest = hashlib.sha256()
    into.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for suffix in ("", "-wal"):
        target = Path(str(into) + suffix)
        target.unlink(missing_ok=True)
        if suffix and not Path(str(source) + suffix).exists():
            continue
        with open(str(source) + suffix, "rb") as src, open(target, "wb") as out:
            digest.update(suffix.encode() + b"\0")
            while piece := src.read(1 << 20):
                digest.update(piece)
                out.write(piece)
    Path(str(into) + "-shm").unlink(missing_ok=True)
    return digest.hexdigest()


def open_copy(path: Path) -> sqlite3.Connection:
    """The copied database, brought to this memosd's schema (replaying any WAL into it), for reading."""
    conn = sqlite3.connect(path, isolation_level=None)
    register_functions(conn)
    for migration_set in all_migrations():
        migration_set.apply(SqliteUtilsDatabase(conn))
    conn.execute("PRAGMA query_only=1")
    return conn


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def count(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def rows_after(conn: sqlite3.Connection, table: str, cols: list[str], key: tuple[str, ...], after: tuple | None,
               limit: int) -> list[tuple]:
    """Up to limit rows (the columns cols, which start with the key) after the key `after`, in key order."""
    keys = ", ".join(key)
    where = f" WHERE ({keys}) > ({', '.join('?' * len(key))})" if after is not None else ""
    return conn.execute(f"SELECT {', '.join(cols)} FROM {table}{where} ORDER BY {keys} LIMIT ?",
                        (*(after or ()), limit)).fetchall()


def daemon_id(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM settings WHERE key = 'daemon_id'").fetchone()
    return str(row[0]) if row else ""


def blobs(conn: sqlite3.Connection, after: str, limit: int) -> list[tuple[str, int, int]]:
    """Up to limit (sha256, size, refcount) of the blob store's rows after the digest `after`, in digest order."""
    return conn.execute("SELECT sha256, size, refcount FROM blobs WHERE sha256 > ? ORDER BY sha256 LIMIT ?",
                        (after, limit)).fetchall()


def remove_copy(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    if path.parent.exists() and not any(path.parent.iterdir()):
        shutil.rmtree(path.parent, ignore_errors=True)


def iter_all(conn: sqlite3.Connection, table: str, key: tuple[str, ...]) -> Iterator[tuple]:
    """Every row of a table in key order (all its columns): what a check compares the target's rows with."""
    yield from conn.execute(f"SELECT * FROM {table} ORDER BY {', '.join(key)}")
