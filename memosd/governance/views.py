"""What a caller is shown of a cube it wrote to: the whole cube if it may read it, its address alone if not."""

from __future__ import annotations

from memosd.cube import MemCube


def as_seen_by(governance, p, cube: MemCube) -> MemCube:
    """The cube for a reply to p. A grant to write is not a grant to read: a writer who may not read the cube
    learns its id, namespace, kind, version and state (what it needs to write again), never its text, tags,
    metadata, source, owner, lineage or payload. (created_at is in the id: a ULID carries its time.)"""
    if governance.may_read_cube(p, cube):
        return cube
    return MemCube(id=cube.id, namespace=cube.namespace, kind=cube.kind, created_at=cube.created_at,
                   updated_at=cube.updated_at, owner="", version=cube.version, parent_version=cube.parent_version,
                   state=cube.state)
