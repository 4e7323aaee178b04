"""Activation cubes in MemVault: KV-cache manifests checked against their payloads, found by token prefix."""

from __future__ import annotations

from memos_mip.tensor_format import (
    BLOCK_TOKENS, FormatError, KVManifest, block_keys, check_manifest, check_payload, common_prefix, header_length,
    parse_header, root_key,
)
from memosd.cube import CubeFilter, LifecycleState, MemCube, MemoryKind
from memosd.errors import FailedPrecondition, InvalidArgument
from memosd.limits import check_namespace_prefix
from memosd.vault import lineage, rows, tensor_cubes
from memosd.vault.tensor_cubes import TensorDraft
from memosd.storage import Conn

MAX_DERIVED_FROM = 64
# Candidates compared token by token after the block index has narrowed them down.
MAX_CANDIDATES = 16


ActivationDraft = TensorDraft


def manifest_of(cube: MemCube) -> KVManifest:
    """The KV manifest of an activation cube; FailedPrecondition for any other cube."""
    if cube.kind is not MemoryKind.ACTIVATION or not cube.manifest:
        raise FailedPrecondition(f"cube {cube.id} is a {cube.kind.name.lower()} cube, not a KV cache")
    return KVManifest.from_json(cube.manifest)


def payload_of(cube: MemCube) -> tuple[str, int]:
    """(sha256, size) of a tensor cube's payload; FailedPrecondition for a cube without one."""
    blob = (cube.manifest or {}).get("blob") if cube.kind is not MemoryKind.PLAINTEXT else None
    if not blob:
        raise FailedPrecondition(f"cube {cube.id} is a {cube.kind.name.lower()} cube; it has no payload to download")
    return blob["sha256"], int(blob["size"])


class ActivationVault:
    """Stores activation cubes (rows of MemVault's cubes table whose payload is a blob) and finds them."""

    def __init__(self, vault, blobs, audit=None):
        self.vault = vault
        self.db = vault.db
        self.sql = vault.db.sql
        self.blobs = blobs
        self._audit = audit or (lambda conn, agent, action, target, **fields: None)

    async def put(self, draft: ActivationDraft, owner: str, guard=None) -> MemCube:
        """Check the draft and its payload's header, then store the cube, take a reference on its blob
        and index its prefix, in one transaction. The blob must be one owner holds, or (with guard, which
        raises PermissionDenied for a cube owner may not read) one named by a live cube owner may read."""
        limits, now = self.vault.limits, self.vault.clock()
        m = draft.manifest
        cube = tensor_cubes.new_cube(draft, MemoryKind.ACTIVATION, owner, limits, now, MAX_DERIVED_FROM)
        try:
            check_manifest(m)
        except FormatError as exc:
            raise InvalidArgument(f"manifest: {exc}") from None
        await self._check_payload(m, owner, guard)
        await lineage.check_claimed(self.db, cube.derived_from, guard)
        cube.manifest = m.to_json()
        keys = block_keys(m.model_fingerprint, m.token_ids)
        index = [(key, (i + 1) * BLOCK_TOKENS) for i, key in enumerate(keys)] or [(root_key(m.model_fingerprint),
                                                                                  m.num_tokens)]

        def job(conn: Conn) -> None:
            self._audit(conn, owner, "activation.put", cube.namespace, id=cube.id, blob=m.blob_sha256)
            seq = tensor_cubes.insert(self.sql, conn, cube, m.blob_sha256)
            self.sql.tensors.index_prefixes(conn, seq, index)

        await self.db.write(job)
        return cube

    async def _check_payload(self, m: KVManifest, owner: str, guard) -> None:
        size = await tensor_cubes.stored_size(self.blobs, m.blob_sha256, m.blob_size, owner, guard)
        try:
            start = header_length(await self.blobs.read_header(m.blob_sha256, size, 8), size)
            header = parse_header(await self.blobs.read_header(m.blob_sha256, size, start), size)
            check_payload(m, header)
        except FormatError as exc:
            raise InvalidArgument(f"payload: {exc}") from None

    async def find_by_prefix(self, model_fingerprint: str, token_ids: list[int],
                             f: CubeFilter) -> tuple[MemCube | None, int]:
        """The readable, active activation cube of this model sharing the longest prefix with token_ids,
        and the length of that prefix; (None, 0) when none shares a token."""
        if not token_ids:
            raise InvalidArgument("token_ids is empty")
        if any(not (0 <= t < 2**63) for t in token_ids):
            raise InvalidArgument("token ids must be non-negative")
        if len(model_fingerprint) != 64:
            raise InvalidArgument("model_fingerprint must be a hex sha256 (64 characters)")
        check_namespace_prefix(f.namespace_prefix)
        f = CubeFilter(namespace_prefix=f.namespace_prefix.rstrip("/"), kinds=frozenset({MemoryKind.ACTIVATION}),
                       states=frozenset({LifecycleState.ACTIVE}), scope=f.scope, viewer=f.viewer,
                       reader=f.reader)
        now = self.vault.clock()
        keys = block_keys(model_fingerprint, token_ids)
        found = await self.db.read(lambda conn: self.sql.tensors.prefix_candidates(
            conn, keys, root_key(model_fingerprint), f, now, MAX_CANDIDATES))
        best, best_len = None, 0
        for cube in (rows.to_cube(rows.row_dict(r), now) for r in found):
            shared = common_prefix(token_ids, (cube.manifest or {}).get("token_ids", ()))
            if shared > best_len:
                best, best_len = cube, shared
        if best is not None:
            (best,) = await lineage.shown(self.db, [best], f.reader)
        return best, best_len
