"""Blob holders on SQLite: who proved it has a blob's bytes, and the live cubes naming a blob (for blob_access)."""

from __future__ import annotations

import sqlite3

from memosd.cube import LifecycleState


def record(conn: sqlite3.Connection, sha256: str, agent: str, now: float) -> None:
    """Record that agent proved it has the blob's bytes (once: the first time stays)."""
    conn.execute("INSERT OR IGNORE INTO blob_holders (sha256, agent, since) VALUES (?, ?, ?)", (sha256, agent, now))


def blob_size(conn: sqlite3.Connection, sha256: str) -> int | None:
    """The size of the stored blob, None when it is not stored."""
    found = conn.execute("SELECT size FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
    return None if found is None else found[0]


def holds(conn: sqlite3.Connection, sha256: str, agent: str) -> bool:
    """Whether agent is recorded as holding the blob's bytes."""
    return conn.execute("SELECT 1 FROM blob_holders WHERE sha256 = ? AND agent = ?",
                        (sha256, agent)).fetchone() is not None


def naming_cubes(conn: sqlite3.Connection, sha256: str) -> list[tuple[str, str, int, str, int]]:
    """(id, namespace, kind, owner, visibility) of each cube, not deleted, whose manifest names the blob."""
    return conn.execute("SELECT id, namespace, kind, owner, visibility FROM cubes WHERE manifest IS NOT NULL"
                        " AND json_extract(manifest, '$.blob.sha256') = ? AND state != ?",
                        (sha256, int(LifecycleState.DELETED))).fetchall()
