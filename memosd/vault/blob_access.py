"""Who may make a cube reference a stored blob: an agent that proved it has the bytes, or one that may read a
live cube already naming it; to anyone else the blob answers as one that is not stored.

A digest is an address, not a credential: digests appear in manifests, bundles and logs, and common content
can be guessed, so knowing one proves nothing. Possession is proved by sending all the bytes (an upload
whose sha256 matched, deduplicated or not) or by the daemon storing them for the agent (an import that
carried them, a KV build, a distillation); it is recorded in blob_holders and forgotten with the blob.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from collections.abc import Callable

from memosd.cube import LifecycleState, MemoryKind, Visibility
from memosd.errors import PermissionDenied


@dataclass(frozen=True)
class CubeHeader:
    """What a read decision looks at (MemGovernance.check_cube): cheap to load for every cube naming a blob."""

    id: str
    namespace: str
    kind: MemoryKind
    owner: str
    visibility: Visibility


# guard(cube) raises PermissionDenied unless the caller may read the cube (as MemVault.get's guard).
Guard = Callable[[CubeHeader], None]


def record_holder(conn: sqlite3.Connection, sha256: str, agent: str, now: float) -> None:
    """Record that agent proved it has the blob's bytes; call inside the transaction storing the blob row."""
    conn.execute("INSERT OR IGNORE INTO blob_holders (sha256, agent, since) VALUES (?, ?, ?)", (sha256, agent, now))


def referable_size(conn: sqlite3.Connection, sha256: str, agent: str, guard: Guard | None) -> int | None:
    """The size of the blob if `agent` may make a cube reference it, else None (exactly as for a blob that is
    not stored). Without a guard only possession counts. The same queries run whether or not the blob
    exists, so that the answer's timing says little more than the answer."""
    stored = conn.execute("SELECT size FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
    held = conn.execute("SELECT 1 FROM blob_holders WHERE sha256 = ? AND agent = ?", (sha256, agent)).fetchone()
    naming = [] if held or guard is None else conn.execute(
        "SELECT id, namespace, kind, owner, visibility FROM cubes WHERE manifest IS NOT NULL"
        " AND json_extract(manifest, '$.blob.sha256') = ? AND state != ?",
        (sha256, int(LifecycleState.DELETED))).fetchall()
    if stored is None:
        return None
    if held or guard is not None and any(_may_read(guard, CubeHeader(i, ns, MemoryKind(k), o, Visibility(v))) for i, ns, k, o, v in naming):
        return stored[0]
    return None


def _may_read(guard: Guard, cube: CubeHeader) -> bool:
    try:
        guard(cube)
    except PermissionDenied:
        return False
    return True
