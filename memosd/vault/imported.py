"""Writing imported plaintext cubes into MemVault, keeping their ids, times and header where it can."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from memosd.cube import LifecycleState, MemCube, MemoryKind
from memosd.ids import new_id
from memosd.vault import rows


async def import_cubes(vault, cubes: list[MemCube], actor: str, origin: str) -> tuple[int, int, int]:
    """Store plaintext cubes as version 1 owned by `actor`, in one transaction; (stored, skipped, renamed).

    A cube whose id is free keeps it, so re-running an import skips what it stored before (same id, same
    namespace). An id taken by another cube gets a new id, with the original one in derived_from."""
    if not cubes:
        return 0, 0, 0
    if any(c.kind is not MemoryKind.PLAINTEXT for c in cubes):
        raise ValueError("import_cubes takes plaintext cubes only")
    now = vault.clock()
    counts = [0, 0, 0]

    def job(conn: sqlite3.Connection) -> None:
        taken = dict(conn.execute(
            f"SELECT id, namespace FROM cubes WHERE id IN ({','.join('?' * len(cubes))})", [c.id for c in cubes]
        ).fetchall())
        fresh: list[MemCube] = []
        for c in cubes:
            if c.id in taken and taken[c.id] == c.namespace:
                counts[1] += 1
                continue
            if c.id in taken:
                c = replace(c, id=new_id(now), derived_from=tuple(dict.fromkeys((*c.derived_from, c.id)))[:64])
                counts[2] += 1
            taken[c.id] = c.namespace
            fresh.append(c)
        if not fresh:
            return
        vault._audit(conn, actor, "bundle.import", ",".join(sorted({c.namespace for c in fresh})), origin=origin,
                     ids=[c.id for c in fresh])
        (top,) = conn.execute("SELECT coalesce(max(seq), 0) FROM cubes").fetchone()
        conn.executemany(
            "INSERT INTO cubes (seq, id, namespace, kind, state, version, parent_version, text, tags, metadata,"
            " source, owner, visibility, priority, created_at, updated_at, expires_at, derived_from)"
            " VALUES (?, ?, ?, 1, ?, 1, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(top + i + 1, c.id, c.namespace, int(_state(c, now)), c.text, rows.dumps(list(c.tags)),
              rows.dumps(c.metadata), c.source, actor, int(c.visibility), c.priority, c.created_at,
              c.updated_at, c.expires_at, rows.dumps(list(c.derived_from)))
             for i, c in enumerate(fresh)])
        conn.executemany("INSERT INTO cube_tags (tag, seq) VALUES (?, ?)",
                         [(tag, top + i + 1) for i, c in enumerate(fresh) for tag in c.tags])
        counts[0] += len(fresh)

    await vault.db.write(job)
    if counts[0] and vault.dense is not None:
        vault.dense.wake()
    return counts[0], counts[1], counts[2]


def _state(c: MemCube, now: float) -> LifecycleState:
    if c.state is LifecycleState.ACTIVE and c.expires_at is not None and c.expires_at <= now:
        return LifecycleState.EXPIRED
    return c.state


def has_live_payload(conn: sqlite3.Connection, namespace: str, kind: MemoryKind, sha256: str) -> bool:
    """Whether a cube of this kind in the namespace, not deleted, has the payload with this sha256."""
    return conn.execute("SELECT 1 FROM cubes WHERE namespace = ? AND kind = ? AND state != ?"
                        " AND json_extract(manifest, '$.blob.sha256') = ?",
                        (namespace, int(kind), int(LifecycleState.DELETED), sha256)).fetchone() is not None
