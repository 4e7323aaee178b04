"""Stores imported tensor cubes through the daemon's own tensor memory (blob store, then the activation or
parametric vault, which check the manifest against the payload)."""

from __future__ import annotations

import asyncio
import mmap
from pathlib import Path

from memos_mip.adapter_format import AdapterManifest
from memos_mip.tensor_format import FormatError, KVManifest
from memosd.cube import MemCube, MemoryKind
from memosd.errors import DataLoss, FailedPrecondition, InvalidArgument
from memosd.vault.tensor_cubes import TensorDraft

_MANIFESTS: dict[MemoryKind, type[KVManifest] | type[AdapterManifest]] = {MemoryKind.ACTIVATION: KVManifest, MemoryKind.PARAMETRIC: AdapterManifest}


class TensorMemorySink:
    """A TensorSink for activation and parametric cubes. The payload goes through the blob store, the
    cube through ActivationVault.put or ParametricVault.put, so the cube gets a new id and times. A cube
    with the same payload in the same namespace counts as imported before, which keeps a re-run from
    storing it twice. The payload's bytes are stored and checked against the manifest first: a bundle that
    names a digest must carry its bytes, and learns nothing about a stored blob until it has."""

    def __init__(self, vault, tensors):
        self.vault = vault
        self.tensors = tensors
        # One check-then-store at a time per payload and namespace: two imports of one bundle at once would
        # both find it absent and store it twice. (Within this daemon; two members of a cluster may still.)
        self._storing: dict[tuple, tuple[asyncio.Lock, list[int]]] = {}  # the lock and how many want it

    async def put(self, cube: MemCube, blob: Path, owner: str, *, any_owner: bool = False) -> bool:
        """True if stored, False if the namespace holds the same payload already: in a cube of owner's (whoever's
        with any_owner, the admin's imports). Another's cube would tell an agent that someone it may not read
        stored these very bytes."""
        if cube.kind not in _MANIFESTS:
            raise FailedPrecondition(f"cube {cube.id} is {cube.kind.name.lower()}; it carries no tensors")
        if cube.manifest is None:  # records.py gives every tensor cube one; checked so from_json sees a dict
            raise InvalidArgument(f"cube {cube.id}: it carries no manifest")
        try:
            manifest = _MANIFESTS[cube.kind].from_json(cube.manifest)
        except (FormatError, KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"cube {cube.id}: its manifest is malformed ({exc})") from None
        size = blob.stat().st_size  # noqa: ASYNC240 (one local stat)
        if size == 0:
            raise InvalidArgument(f"cube {cube.id}: its payload is empty")
        # Opening and mapping are cheap; put_parts copies and hashes in its executor, off the event loop.
        with open(blob, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:  # noqa: ASYNC230
            sha256, stored = await self.tensors.blobs.put_parts([view], owner)
        if sha256 != manifest.blob_sha256 or stored != manifest.blob_size:
            raise DataLoss(f"cube {cube.id}: its payload does not match the manifest's sha256 and size")
        key = (cube.namespace, cube.kind, manifest.blob_sha256)
        lock, wanted = self._storing.setdefault(key, (asyncio.Lock(), [0]))
        wanted[0] += 1
        try:
            async with lock:
                if await self._present(*key, None if any_owner else owner):
                    return False
                now = self.vault.clock()
                ttl = 0 if cube.expires_at is None else max(1, int(cube.expires_at - now))
                draft = TensorDraft(namespace=cube.namespace, manifest=manifest, tags=cube.tags,
                                    metadata=cube.metadata, source=cube.source, derived_from=cube.derived_from,
                                    ttl_seconds=ttl, visibility=cube.visibility, priority=cube.priority)
                store = self.tensors.activations if cube.kind is MemoryKind.ACTIVATION else self.tensors.parametric
                await store.put(draft, owner)
                return True
        finally:
            wanted[0] -= 1
            if not wanted[0]:
                del self._storing[key]

    async def _present(self, namespace: str, kind: MemoryKind, sha256: str, owner: str | None) -> bool:
        db = self.vault.db
        return await db.read(lambda conn: db.sql.tensors.has_live_payload(conn, namespace, kind, sha256, owner))
