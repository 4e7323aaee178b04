"""Activation cubes in MemVault: KV-cache manifests checked against their payloads, found by token prefix."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from memos_client.tensor_format import (
    BLOCK_TOKENS, FormatError, KVManifest, block_keys, check_manifest, check_payload, common_prefix, header_length,
    parse_header, root_key,
)
from memosd.cube import CubeDraft, CubeFilter, LifecycleState, MemCube, MemoryKind, Visibility
from memosd.errors import FailedPrecondition, InvalidArgument, NotFound
from memosd.ids import is_id, new_id
from memosd.limits import check_metadata, check_namespace, check_namespace_prefix, check_tags, resolve_expiry
from memosd.vault import rows
from memosd.vault.query import filter_sql

MAX_DERIVED_FROM = 64
# Candidates compared token by token after the block index has narrowed them down.
MAX_CANDIDATES = 16


@dataclass(frozen=True)
class ActivationDraft:
    """What a writer supplies for a new activation cube; its payload is uploaded already."""

    namespace: str
    manifest: KVManifest
    tags: tuple[str, ...] = ()
    metadata: dict | None = None
    source: str = ""
    derived_from: tuple[str, ...] = ()
    ttl_seconds: int = 0
    visibility: Visibility = Visibility.NAMESPACE
    priority: int = 0


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
        self.blobs = blobs
        self._audit = audit or (lambda conn, agent, action, target, **fields: None)

    async def put(self, draft: ActivationDraft, owner: str) -> MemCube:
        """Check the draft and its payload's header, then store the cube, take a reference on its blob
        and index its prefix, in one transaction."""
        limits, now = self.vault.limits, self.vault.clock()
        m = draft.manifest
        check_namespace(draft.namespace)
        tags = check_tags(draft.tags, limits)
        check_metadata(draft.metadata, limits)
        if len(draft.source) > limits.max_source_chars:
            raise InvalidArgument(f"source is over {limits.max_source_chars} characters")
        expires_at = resolve_expiry(CubeDraft("", "", ttl_seconds=draft.ttl_seconds), now)
        if len(draft.derived_from) > MAX_DERIVED_FROM or not all(is_id(i) for i in draft.derived_from):
            raise InvalidArgument(f"derived_from must be at most {MAX_DERIVED_FROM} cube ids")
        try:
            check_manifest(m)
        except FormatError as exc:
            raise InvalidArgument(f"manifest: {exc}") from None
        await self._check_payload(m)
        cube = MemCube(
            id=new_id(now), namespace=draft.namespace, kind=MemoryKind.ACTIVATION, created_at=now, updated_at=now,
            owner=owner, tags=tags, metadata=draft.metadata or None, source=draft.source,
            visibility=draft.visibility, priority=draft.priority, expires_at=expires_at,
            derived_from=tuple(dict.fromkeys(draft.derived_from)), manifest=m.to_json(),
        )
        keys = block_keys(m.model_fingerprint, m.token_ids)
        index = [(key, (i + 1) * BLOCK_TOKENS) for i, key in enumerate(keys)] or [(root_key(m.model_fingerprint),
                                                                                  m.num_tokens)]

        def job(conn: sqlite3.Connection) -> None:
            self._audit(conn, owner, "activation.put", cube.namespace, id=cube.id, blob=m.blob_sha256)
            taken = conn.execute("UPDATE blobs SET refcount = refcount + 1, unreferenced_since = NULL WHERE sha256 = ?",
                                 (m.blob_sha256,)).rowcount
            if not taken:
                raise NotFound(f"blob {m.blob_sha256} is not stored (collected meanwhile?); upload it again")
            (top,) = conn.execute("SELECT coalesce(max(seq), 0) FROM cubes").fetchone()
            seq = top + 1
            conn.execute(
                "INSERT INTO cubes (seq, id, namespace, kind, state, version, parent_version, text, tags, metadata,"
                " source, owner, visibility, priority, created_at, updated_at, expires_at, derived_from, manifest)"
                " VALUES (?, ?, ?, ?, 1, 1, 0, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, cube.id, cube.namespace, int(cube.kind), rows.dumps(list(cube.tags)), rows.dumps(cube.metadata),
                 cube.source, owner, int(cube.visibility), cube.priority, now, now, cube.expires_at,
                 rows.dumps(list(cube.derived_from)), rows.dumps(cube.manifest)))
            conn.executemany("INSERT INTO cube_tags (tag, seq) VALUES (?, ?)", [(t, seq) for t in cube.tags])
            conn.executemany("INSERT OR IGNORE INTO activation_prefixes (key, seq, tokens) VALUES (?, ?, ?)",
                             [(key, seq, tokens) for key, tokens in index])

        await self.db.write(job)
        return cube

    async def _check_payload(self, m: KVManifest) -> None:
        size = await self.blobs.stored_size(m.blob_sha256)
        if size is None:
            raise NotFound(f"blob {m.blob_sha256} is not stored; upload it with BlobService.Upload first")
        if size != m.blob_size:
            raise InvalidArgument(f"manifest: the blob has {size} bytes, the manifest says {m.blob_size}")
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
                       states=frozenset({LifecycleState.ACTIVE}), scope=f.scope, viewer=f.viewer)
        now = self.vault.clock()
        where, params = filter_sql(f, now)
        keys = block_keys(model_fingerprint, token_ids)

        def job(conn: sqlite3.Connection):
            candidates = []
            if keys:
                found = conn.execute(
                    f"SELECT p.tokens, c.seq FROM activation_prefixes p JOIN cubes c ON c.seq = p.seq"
                    f" WHERE p.key IN ({','.join('?' * len(keys))}) AND {where}"
                    " ORDER BY p.tokens DESC, c.seq DESC LIMIT ?", [*keys, *params, MAX_CANDIDATES]).fetchall()
                candidates = [seq for tokens, seq in found if tokens == found[0][0]]
            if not candidates:  # no shared block: cubes shorter than a block may still share a prefix
                candidates = [seq for (seq,) in conn.execute(
                    f"SELECT c.seq FROM activation_prefixes p JOIN cubes c ON c.seq = p.seq WHERE p.key = ?"
                    f" AND {where} ORDER BY c.seq DESC LIMIT ?",
                    [root_key(model_fingerprint), *params, MAX_CANDIDATES]).fetchall()]
            if not candidates:
                return None, 0
            found_rows = conn.execute(f"SELECT {rows.COLUMNS} FROM cubes WHERE seq IN ({','.join('?' * len(candidates))})"
                                      " ORDER BY seq DESC", candidates).fetchall()
            best, best_len = None, 0
            for row in map(rows.row_dict, found_rows):
                manifest = rows.to_cube(row, now).manifest or {}
                shared = common_prefix(token_ids, manifest.get("token_ids", ()))
                if shared > best_len:
                    best, best_len = row, shared
            return (rows.to_cube(best, now), best_len) if best is not None else (None, 0)

        return await self.db.read(job)
