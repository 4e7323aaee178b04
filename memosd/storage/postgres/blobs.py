"""Blob rows on PostgreSQL: one per distinct content, its size, XXH3-128 and how many cubes reference it."""

from __future__ import annotations


def known(conn) -> set[str]:
    """The sha256 of every blob recorded."""
    return {sha for (sha,) in conn.execute("SELECT sha256 FROM blobs")}


def record(conn, sha256: str, size: int, xxh3_128: str, now: float) -> None:
    """Record a stored blob (a row there already stays); an unreferenced one starts its grace period now."""
    conn.execute("INSERT INTO blobs (sha256, size, refcount, created_at, unreferenced_since, xxh3_128)"
                 " VALUES (%s, %s, 0, %s, %s, %s) ON CONFLICT (sha256) DO NOTHING", (sha256, size, now, now, xxh3_128))
    # A new holder has the grace period to reference it, as if it were stored just now.
    conn.execute("UPDATE blobs SET unreferenced_since = %s WHERE sha256 = %s AND refcount <= 0", (now, sha256))


def collect(conn, cutoff: float) -> list[str]:
    """Delete the rows of blobs no cube has referenced since before `cutoff`; their sha256."""
    # Under READ COMMITTED a row another transaction referenced meanwhile is re-checked after its lock is
    # released, and kept: a concurrent reference wins over the sweep, or finds the blob gone and says so.
    rows = conn.execute("DELETE FROM blobs WHERE refcount <= 0 AND unreferenced_since <= %s RETURNING sha256",
                        (cutoff,)).fetchall()
    return [sha for (sha,) in rows]


def checksum(conn, sha256: str) -> tuple[str | None] | None:
    """(xxh3_128,) of a recorded blob, the checksum None for one stored before checksums were kept; None if
    the blob is not recorded."""
    row = conn.execute("SELECT xxh3_128 FROM blobs WHERE sha256 = %s", (sha256,)).fetchone()
    return None if row is None else (row[0],)


def set_checksum(conn, sha256: str, xxh3_128: str) -> None:
    conn.execute("UPDATE blobs SET xxh3_128 = %s WHERE sha256 = %s", (xxh3_128, sha256))
