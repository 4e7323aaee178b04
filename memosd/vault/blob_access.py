"""Who may make a cube reference a stored blob: an agent that proved it has the bytes, or one that may read a
live cube already naming it; to anyone else the blob answers as one that is not stored.

A digest is an address, not a credential: digests appear in manifests, bundles and logs, and common content
can be guessed, so knowing one proves nothing. Possession is proved by sending all the bytes (an upload
whose sha256 matched, deduplicated or not) or by the daemon storing them for the agent (an import that
carried them, a KV build, a distillation); it is recorded in blob_holders and forgotten with the blob.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

from memosd.cube import MemoryKind, Visibility
from memosd.errors import PermissionDenied
from memosd.storage import Conn


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


def referable_size(sql, conn: Conn, sha256: str, agent: str, guard: Guard | None) -> int | None:
    """The size of the blob if `agent` may make a cube reference it, else None (exactly as for a blob that is
    not stored). Without a guard only possession counts. The same queries run whether or not the blob
    exists, so that the answer's timing says little more than the answer."""
    holders = sql.holders
    size = holders.blob_size(conn, sha256)
    held = holders.holds(conn, sha256, agent)
    naming = [] if held or guard is None else holders.naming_cubes(conn, sha256)
    if size is None:
        return None
    if held or guard is not None and any(_may_read(guard, CubeHeader(i, ns, MemoryKind(k), o, Visibility(v)))
                                         for i, ns, k, o, v in naming):
        return size
    return None


def _may_read(guard: Guard, cube: CubeHeader) -> bool:
    try:
        guard(cube)
    except PermissionDenied:
        return False
    return True
