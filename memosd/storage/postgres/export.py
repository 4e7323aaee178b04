"""The export's reads of MemVault on PostgreSQL: the cubes a filter selects, in storage order, in batches."""

from __future__ import annotations

from collections.abc import Iterator

from memosd.cube import CubeFilter
from memosd.storage.postgres.filters import filter_sql
from memosd.vault import rows


def cube_rows(conn, f: CubeFilter, now: float, batch: int = 1000) -> Iterator[tuple]:
    """The rows (rows.COLUMNS) of the cubes the filter selects at `now`, in storage order, fetched in batches."""
    where, params = filter_sql(f, now)
    # A server-side cursor: an export of a whole vault streams through in batches, never all in memory.
    with conn.cursor(name="memosd_export_cubes") as cursor:
        cursor.itersize = max(1, batch)
        cursor.execute(f"SELECT {rows.COLUMNS} FROM cubes c WHERE {where} ORDER BY c.seq", params)
        yield from cursor
