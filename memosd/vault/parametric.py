"""Parametric cubes in MemVault: LoRA adapter manifests checked against their blobs, found by base model."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from memos_client.adapter_format import (
    AdapterManifest, FormatError, check_adapter, check_manifest, check_matches, manifest_of, read_adapter, read_header,
)
from memos_client.tensor_format import header_length
from memosd.cube import CubeDraft, CubeFilter, LifecycleState, MemCube, MemoryKind, Visibility
from memosd.errors import FailedPrecondition, InvalidArgument, NotFound
from memosd.ids import is_id, new_id
from memosd.limits import check_metadata, check_namespace, check_namespace_prefix, check_tags, resolve_expiry
from memosd.vault import rows
from memosd.vault.query import filter_sql

MAX_DERIVED_FROM = 1024
# Adapters of one base model considered by a plan: the most recent ones.
MAX_CANDIDATES = 1000


@dataclass(frozen=True)
class AdapterDraft:
    """What a writer supplies for a new adapter cube; its blob is uploaded already."""

    namespace: str
    manifest: AdapterManifest
    tags: tuple[str, ...] = ()
    metadata: dict | None = None
    source: str = ""
    derived_from: tuple[str, ...] = ()
    ttl_seconds: int = 0
    visibility: Visibility = Visibility.NAMESPACE
    priority: int = 0


def adapter_manifest_of(cube: MemCube) -> AdapterManifest:
    """The adapter manifest of a parametric cube; FailedPrecondition for any other cube."""
    if cube.kind is not MemoryKind.PARAMETRIC or not cube.manifest:
        raise FailedPrecondition(f"cube {cube.id} is a {cube.kind.name.lower()} cube, not an adapter")
    return AdapterManifest.from_json(cube.manifest)


class ParametricVault:
    """Stores adapter cubes (rows of MemVault's cubes table whose payload is a blob) and finds them by base model.
    Base models the daemon has loaded itself are remembered by fingerprint with their module shapes, and
    adapters for them are checked against those shapes too."""

    def __init__(self, vault, blobs, audit=None):
        self.vault = vault
        self.db = vault.db
        self.blobs = blobs
        self._audit = audit or (lambda conn, agent, action, target, **fields: None)
        self._known: dict[str, dict[str, tuple[int, int]]] = {}

    def learn_base(self, fingerprint: str, modules: dict[str, tuple[int, int]]) -> None:
        """Remember a base model's adaptable modules ({name: (in, out)}) under its fingerprint."""
        self._known[fingerprint] = dict(modules)

    async def put(self, draft: AdapterDraft, owner: str) -> MemCube:
        """Check the draft and its blob, then store the cube and take a reference on its blob, in one transaction."""
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
        await self._check_blob(m)
        cube = MemCube(
            id=new_id(now), namespace=draft.namespace, kind=MemoryKind.PARAMETRIC, created_at=now, updated_at=now,
            owner=owner, tags=tags, metadata=draft.metadata or None, source=draft.source,
            visibility=draft.visibility, priority=draft.priority, expires_at=expires_at,
            derived_from=tuple(dict.fromkeys(draft.derived_from)), manifest=m.to_json(),
        )

        def job(conn: sqlite3.Connection) -> None:
            self._audit(conn, owner, "parametric.put", cube.namespace, id=cube.id, blob=m.blob_sha256)
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

        await self.db.write(job)
        return cube

    async def _check_blob(self, m: AdapterManifest) -> None:
        size = await self.blobs.stored_size(m.blob_sha256)
        if size is None:
            raise NotFound(f"blob {m.blob_sha256} is not stored; upload it with BlobService.Upload first")
        if size != m.blob_size:
            raise InvalidArgument(f"manifest: the blob has {size} bytes, the manifest says {m.blob_size}")
        try:
            start = header_length(await self.blobs.read_header(m.blob_sha256, size, 8), size)
            adapter = read_adapter(read_header(await self.blobs.read_header(m.blob_sha256, size, start), size))
            check_adapter(adapter, self._known.get(m.model_fingerprint))
            check_matches(m, manifest_of(adapter, m.blob_sha256, size, m.model_fingerprint))
        except FormatError as exc:
            raise InvalidArgument(f"adapter: {exc}") from None

    async def of_model(self, model_fingerprint: str, f: CubeFilter, kind: MemoryKind = MemoryKind.PARAMETRIC,
                       derived_from: set[str] | None = None) -> list[MemCube]:
        """The readable, active tensor cubes of `kind` made for a model, newest first; with derived_from, only
        those derived from at least one of those cubes."""
        if len(model_fingerprint) != 64:
            raise InvalidArgument("model_fingerprint must be a hex sha256 (64 characters)")
        check_namespace_prefix(f.namespace_prefix)
        f = CubeFilter(namespace_prefix=f.namespace_prefix.rstrip("/"), kinds=frozenset({kind}),
                       states=frozenset({LifecycleState.ACTIVE}), scope=f.scope, viewer=f.viewer)
        now = self.vault.clock()
        where, params = filter_sql(f, now)
        lineage, lineage_params = "", []
        if derived_from is not None:
            if not derived_from:
                return []
            lineage = (f" AND EXISTS (SELECT 1 FROM json_each(c.derived_from) d WHERE d.value IN"
                       f" ({','.join('?' * len(derived_from))}))")
            lineage_params = sorted(derived_from)

        def job(conn: sqlite3.Connection) -> list[MemCube]:
            found = conn.execute(
                f"SELECT {rows.COLUMNS} FROM cubes c WHERE c.manifest IS NOT NULL"
                f" AND json_extract(c.manifest, '$.model.model_fingerprint') = ?"
                f" AND {where}{lineage} ORDER BY c.seq DESC LIMIT ?",
                [model_fingerprint, *params, *lineage_params, MAX_CANDIDATES]).fetchall()
            return [rows.to_cube(rows.row_dict(r), now) for r in found]

        return await self.db.read(job)
