"""MemVault's usage figures on PostgreSQL: the access counts flushed from memory, and cubes and payload bytes by kind."""

from __future__ import annotations


def record_access(conn, access: list[tuple[str, int, float]]) -> None:
    """Add each (cube_id, reads, last read at) to the cube's access count, keeping its latest read time
    (an id no cube has any more is passed over)."""
    # In id order: two daemons flushing counts for the same cubes lock their rows in the same order (no
    # deadlock); each update adds to the committed count, so concurrent flushes both count.
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE cubes SET access_count = access_count + %s,"
            " last_accessed_at = greatest(coalesce(last_accessed_at, 0), %s) WHERE id = %s",
            [(n, float(last), cube_id) for cube_id, n, last in sorted(access)])


def by_kind_and_state(conn) -> list[tuple[int, int, int, int, int]]:
    """(kind, state, cubes, UTF-8 bytes of their text, bytes of their blobs) for each (kind, state) present."""
    return conn.execute(
        "SELECT kind, state, count(*), coalesce(sum(octet_length(text)), 0)::bigint,"
        " coalesce(sum(((manifest::jsonb) #>> '{blob,size}')::numeric), 0)::bigint FROM cubes GROUP BY kind, state"
    ).fetchall()
