"""MemVault's usage figures on SQLite: the access counts flushed from memory, and cubes and payload bytes by kind."""

from __future__ import annotations

import sqlite3


def record_access(conn: sqlite3.Connection, access: list[tuple[str, int, float]]) -> None:
    """Add each (cube_id, reads, last read at) to the cube's access count, keeping its latest read time
    (an id no cube has any more is passed over)."""
    conn.executemany(
        "UPDATE cubes SET access_count = access_count + ?, last_accessed_at = max(coalesce(last_accessed_at, 0), ?)"
        " WHERE id = ?", [(n, last, cube_id) for cube_id, n, last in access])


def by_kind_and_state(conn: sqlite3.Connection) -> list[tuple[int, int, int, int, int]]:
    """(kind, state, cubes, UTF-8 bytes of their text, bytes of their blobs) for each (kind, state) present."""
    return conn.execute(
        "SELECT kind, state, count(*), sum(coalesce(length(CAST(text AS BLOB)), 0)),"
        " sum(coalesce(json_extract(manifest, '$.blob.size'), 0)) FROM cubes GROUP BY kind, state").fetchall()
