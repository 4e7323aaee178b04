"""Parametric cubes in MemVault: LoRA adapter manifests checked against their blobs, found by base model."""

from __future__ import annotations

from memos_mip.adapter_format import (
    AdapterManifest, FormatError, check_adapter, check_manifest, check_matches, manifest_of, read_adapter, read_header,
)
from memos_mip.tensor_format import header_length
from memosd.cube import CubeFilter, LifecycleState, MemCube, MemoryKind
from memosd.errors import FailedPrecondition, InvalidArgument
from memosd.limits import check_namespace_prefix
from memosd.vault import lineage, rows, tensor_cubes
from memosd.vault.tensor_cubes import TensorDraft
from memosd.storage import Conn

MAX_DERIVED_FROM = 1024
# Adapters of one base model considered by a plan: the most recent ones.
MAX_CANDIDATES = 1000


AdapterDraft = TensorDraft


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
        self.sql = vault.db.sql
        self.blobs = blobs
        self._audit = audit or (lambda conn, agent, action, target, **fields: None)
        self._known: dict[str, dict[str, tuple[int, int]]] = {}

    def learn_base(self, fingerprint: str, modules: dict[str, tuple[int, int]]) -> None:
        """Remember a base model's adaptable modules ({name: (in, out)}) under its fingerprint."""
        self._known[fingerprint] = dict(modules)

    async def put(self, draft: AdapterDraft, owner: str, guard=None) -> MemCube:
        """Check the draft and its blob, then store the cube and take a reference on its blob, in one transaction.
        The blob must be one owner may reference, as for ActivationVault.put."""
        limits, now = self.vault.limits, self.vault.clock()
        m = draft.manifest
        cube = tensor_cubes.new_cube(draft, MemoryKind.PARAMETRIC, owner, limits, now, MAX_DERIVED_FROM)
        try:
            check_manifest(m)
        except FormatError as exc:
            raise InvalidArgument(f"manifest: {exc}") from None
        await self._check_blob(m, owner, guard)
        await lineage.check_claimed(self.db, cube.derived_from, guard)
        cube.manifest = m.to_json()

        def job(conn: Conn) -> None:
            self._audit(conn, owner, "parametric.put", cube.namespace, id=cube.id, blob=m.blob_sha256)
            tensor_cubes.insert(self.sql, conn, cube, m.blob_sha256)

        await self.db.write(job)
        return cube

    async def _check_blob(self, m: AdapterManifest, owner: str, guard) -> None:
        size = await tensor_cubes.stored_size(self.blobs, m.blob_sha256, m.blob_size, owner, guard)
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
                       states=frozenset({LifecycleState.ACTIVE}), scope=f.scope, viewer=f.viewer,
                       reader=f.reader)
        now = self.vault.clock()
        if derived_from is not None and not derived_from:
            return []
        wanted = None if derived_from is None else sorted(derived_from)
        def job(conn: Conn) -> list[MemCube]:
            found = self.sql.tensors.of_model(conn, model_fingerprint, f, now, wanted, MAX_CANDIDATES)
            # Narrowed to what the reader may read: a plan credits a cube only with the sources its reader reads.
            return lineage.narrow(self.sql, conn, [rows.to_cube(rows.row_dict(r), now) for r in found], f.reader)

        return await self.db.read(job)
