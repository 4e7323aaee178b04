"""What activation and parametric cubes share: the draft a writer supplies, its checks, and the row
that stores it with a reference on its payload blob."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memosd.cube import CubeDraft, MemCube, MemoryKind, Visibility
from memosd.errors import InvalidArgument, NotFound
from memosd.ids import is_id, new_id
from memosd.limits import (
    Limits, check_metadata, check_namespace, check_priority, check_source, check_tags, resolve_expiry,
)
from memosd.storage import Conn


@dataclass(frozen=True)
class TensorDraft:
    """What a writer supplies for a new tensor cube; its payload blob is uploaded already."""

    namespace: str
    manifest: Any  # KVManifest or AdapterManifest
    tags: tuple[str, ...] = ()
    metadata: dict | None = None
    source: str = ""
    derived_from: tuple[str, ...] = ()
    ttl_seconds: int = 0
    visibility: Visibility = Visibility.NAMESPACE
    priority: int = 0


def new_cube(draft: TensorDraft, kind: MemoryKind, owner: str, limits: Limits, now: float,
             max_derived_from: int) -> MemCube:
    """The cube a draft becomes, its header checked (InvalidArgument if not). The caller checks the
    manifest and then sets cube.manifest."""
    check_namespace(draft.namespace)
    tags = check_tags(draft.tags, limits)
    check_metadata(draft.metadata, limits)
    check_source(draft.source, limits)
    check_priority(draft.priority)
    expires_at = resolve_expiry(CubeDraft("", "", ttl_seconds=draft.ttl_seconds), now)
    if len(draft.derived_from) > max_derived_from or not all(is_id(i) for i in draft.derived_from):
        raise InvalidArgument(f"derived_from must be at most {max_derived_from} cube ids")
    return MemCube(
        id=new_id(now), namespace=draft.namespace, kind=kind, created_at=now, updated_at=now, owner=owner,
        tags=tags, metadata=draft.metadata or None, source=draft.source, visibility=draft.visibility,
        priority=draft.priority, expires_at=expires_at, derived_from=tuple(dict.fromkeys(draft.derived_from)),
    )


def insert(sql, conn: Conn, cube: MemCube, blob_sha256: str) -> int:
    """Take a reference on the payload blob and store the cube's row and tags with the engine's record
    functions (sql); returns its seq. Call inside the writing transaction."""
    if not sql.tensors.reference_blob(conn, blob_sha256):
        raise NotFound(f"blob {blob_sha256} is not stored (collected meanwhile?); upload it again")
    (seq,) = sql.tensors.insert_cubes(conn, [cube])
    return seq


async def stored_size(blobs, sha256: str, declared: int, owner: str, guard=None) -> int:
    """The size of a stored payload blob owner may reference (see blob_access), checked against its manifest;
    one it may not answers as one not stored, before anything about it is checked."""
    size = await blobs.referable_size(owner, sha256, guard)
    if size is None:
        raise NotFound(f"blob {sha256} is not stored; upload it with BlobService.Upload first")
    if size != declared:
        raise InvalidArgument(f"manifest: the blob has {size} bytes, the manifest says {declared}")
    return size
