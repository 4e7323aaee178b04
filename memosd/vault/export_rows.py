"""The export's reads of MemVault: the cubes a filter selects, from one read snapshot of the database file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memosd.cube import CubeFilter
from memosd.vault import rows
from memosd.vault.db import connect
from memosd.vault.query import filter_sql


@contextmanager
def snapshot(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the vault in data_dir, inside one read transaction (a consistent snapshot)."""
    conn = connect(Path(data_dir) / "memos.db", readonly=True)
    try:
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def cube_rows(conn: sqlite3.Connection, f: CubeFilter, now: float, batch: int = 1000) -> Iterator[tuple]:
    """The rows (rows.COLUMNS) of the cubes the filter selects at `now`, in storage order, fetched in batches."""
    where, params = filter_sql(f, now)
    cursor = conn.execute(f"SELECT {rows.COLUMNS} FROM cubes c WHERE {where} ORDER BY c.seq", params)
    while chunk := cursor.fetchmany(batch):
        yield from chunk
