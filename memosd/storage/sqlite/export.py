"""The export's reads of MemVault on SQLite: the cubes a filter selects, in storage order, in batches."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from memosd.cube import CubeFilter
from memosd.vault import rows
from memosd.storage.sqlite.filters import filter_sql


def cube_rows(conn: sqlite3.Connection, f: CubeFilter, now: float, batch: int = 1000) -> Iterator[tuple]:
    """The rows (rows.COLUMNS) of the cubes the filter selects at `now`, in storage order, fetched in batches."""
    where, params = filter_sql(f, now)
    cursor = conn.execute(f"SELECT {rows.COLUMNS} FROM cubes c WHERE {where} ORDER BY c.seq", params)
    while chunk := cursor.fetchmany(batch):
        yield from chunk
