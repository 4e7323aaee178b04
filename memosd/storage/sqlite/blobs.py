"""Blob rows on SQLite: one per distinct content, its size, XXH3-128 and how many cubes reference it."""

from __future__ import annotations

import sqlite3


def known(conn: sqlite3.Connection) -> set[str]:
    """The sha256 of every blob recorded."""
    return {sha for (sha,) in conn.execute("SELECT sha256 FROM blobs")}


def record(conn: sqlite3.Connection, sha256: str, size: int, xxh3_128: str, now: float) -> None:
    """Record a stored blob (a row there already stays); an unreferenced one starts its grace period now."""
    conn.execute("INSERT OR IGNORE INTO blobs (sha256, size, refcount, created_at, unreferenced_since, xxh3_128)"
                 " VALUES (?, ?, 0, ?, ?, ?)", (sha256, size, now, now, xxh3_128))
    # A new holder has the grace period to reference it, as if it were stored just now.
    conn.execute("UPDATE blobs SET unreferenced_since = ? WHERE sha256 = ? AND refcount <= 0", (now, sha256))


def collect(conn: sqlite3.Connection, cutoff: float) -> list[str]:
    """Delete the rows of blobs no cube has referenced since before `cutoff`; their sha256."""
    rows = conn.execute("DELETE FROM blobs WHERE refcount <= 0 AND unreferenced_since <= ? RETURNING sha256",
                        (cutoff,)).fetchall()
    return [sha for (sha,) in rows]


def checksum(conn: sqlite3.Connection, sha256: str) -> tuple[str | None] | None:
    """(xxh3_128,) of a recorded blob, the checksum None for one stored before checksums were kept; None if
    the blob is not recorded."""
    row = conn.execute("SELECT xxh3_128 FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else (row[0],)


def set_checksum(conn: sqlite3.Connection, sha256: str, xxh3_128: str) -> None:
    conn.execute("UPDATE blobs SET xxh3_128 = ? WHERE sha256 = ?", (xxh3_128, sha256))
