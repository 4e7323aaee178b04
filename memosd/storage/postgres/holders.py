"""Blob holders on PostgreSQL: who proved it has a blob's bytes, and the live cubes naming a blob (for blob_access)."""

from __future__ import annotations

from memosd.cube import LifecycleState


def record(conn, sha256: str, agent: str, now: float) -> None:
    """Record that agent proved it has the blob's bytes (once: the first time stays)."""
    conn.execute("INSERT INTO blob_holders (sha256, agent, since) VALUES (%s, %s, %s)"
                 " ON CONFLICT (sha256, agent) DO NOTHING", (sha256, agent, now))


def blob_size(conn, sha256: str) -> int | None:
    """The size of the stored blob, None when it is not stored."""
    found = conn.execute("SELECT size FROM blobs WHERE sha256 = %s", (sha256,)).fetchone()
    return None if found is None else int(found[0])


def holds(conn, sha256: str, agent: str) -> bool:
    """Whether agent is recorded as holding the blob's bytes."""
    return conn.execute("SELECT 1 FROM blob_holders WHERE sha256 = %s AND agent = %s",
                        (sha256, agent)).fetchone() is not None


def naming_cubes(conn, sha256: str) -> list[tuple[str, str, int, str, int]]:
    """(id, namespace, kind, owner, visibility) of each cube, not deleted, whose manifest names the blob."""
    # The condition spells the cubes_blob index's expression and predicate.
    return conn.execute("SELECT id, namespace, kind, owner, visibility FROM cubes WHERE manifest IS NOT NULL"
                        " AND ((manifest::jsonb) #>> '{blob,sha256}') = %s AND state != %s",
                        (sha256, int(LifecycleState.DELETED))).fetchall()
