"""Writing imported plaintext cubes into MemVault, keeping their ids, times and header where it can."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from memosd.cube import LifecycleState, MemCube, MemoryKind
from memosd.ids import new_id
from memosd.storage import Conn


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def agent_id(actor: str, cube_id: str) -> str:
    """The id an agent's import gives a bundle's cube: the bundle id's time (its first 10 characters), and 80 bits
    made from the importer and that id. Were the bundle's id kept where it is free, whether it was kept would
    tell the importer that some cube it may not read has that id."""
    value = int.from_bytes(hashlib.sha256(f"{actor}\n{cube_id}".encode()).digest()[:10], "big")
    return cube_id[:10] + "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(16)))


async def import_cubes(vault, cubes: list[MemCube], actor: str, origin: str, *,
                       keep_ids: bool = False) -> tuple[int, int, int]:
    """Store plaintext cubes as version 1 owned by `actor`, in one transaction; (stored, skipped, renamed).

    keep_ids (the admin's imports: it reads every cube anyway): a cube whose id is free keeps it. An agent's
    cubes get agent_id(actor, id). Either way a re-run skips what it stored before (same id, same namespace),
    and an id taken by another cube gets a new id, with the original one in derived_from."""
    if not cubes:
        return 0, 0, 0
    if any(c.kind is not MemoryKind.PLAINTEXT for c in cubes):
        raise ValueError("import_cubes takes plaintext cubes only")
    if not keep_ids:
        cubes = [replace(c, id=agent_id(actor, c.id)) for c in cubes]
    now = vault.clock()
    sql = vault.db.sql
    counts = [0, 0, 0]

    def job(conn: Conn) -> None:
        sql.tensors.lock_imports(conn)  # a concurrent import of these ids commits first, then is seen here
        taken = sql.tensors.namespaces_of(conn, [c.id for c in cubes])
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
        sql.tensors.insert_cubes(conn, [replace(c, owner=actor, state=_state(c, now), manifest=None) for c in fresh])
        counts[0] += len(fresh)

    await vault.db.write(job)
    if counts[0] and vault.dense is not None:
        vault.dense.wake()
    return counts[0], counts[1], counts[2]


def _state(c: MemCube, now: float) -> LifecycleState:
    if c.state is LifecycleState.ACTIVE and c.expires_at is not None and c.expires_at <= now:
        return LifecycleState.EXPIRED
    return c.state
