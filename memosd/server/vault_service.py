"""VaultService: each RPC validates, converts, asks MemGovernance, calls MemVault, converts back."""

from __future__ import annotations

from memos_mip.v1 import vault_pb2
from memosd.cube import MemoryKind
from memosd.errors import InvalidArgument
from memosd.governance import MemGovernance
from memosd.governance.views import as_seen_by
from memosd.limits import check_page_size
from memosd.server import convert
from memosd.server.auth import principal
from memosd.vault import MemVault


class VaultService:
    def __init__(self, vault: MemVault, governance: MemGovernance):
        self.vault = vault
        self.gov = governance

    def _guard(self, action: str):
        p = principal()
        return lambda cube: self.gov.check_cube(p, action, cube)

    def _scoped(self, proto_filter):
        return self.gov.readable(principal(), convert.filter_from_proto(proto_filter))

    async def _put(self, drafts):
        p = principal()
        for namespace in {d.namespace for d in drafts}:
            if namespace:
                self.gov.check(p, "write", namespace, MemoryKind.PLAINTEXT)
        return await self.vault.put_many(drafts, p.name)

    async def Put(self, request, context):
        if not request.HasField("cube"):
            raise InvalidArgument("cube is required")
        (cube,) = await self._put([convert.draft_from_proto(request.cube)])
        return vault_pb2.PutResponse(cube=convert.cube_to_proto(cube))

    async def PutStream(self, requests, context):
        acknowledged = 0
        async for batch in requests:
            # Decided per batch: a revocation mid-stream stops the next batch.
            cubes = await self._put([convert.draft_from_proto(d) for d in batch.cubes])
            acknowledged += len(cubes)
            yield vault_pb2.PutBatchResponse(ids=[c.id for c in cubes], acknowledged=acknowledged)

    async def Get(self, request, context):
        cube = await self.vault.get(request.id, request.version, guard=self._guard("read"))
        return vault_pb2.GetResponse(cube=convert.cube_to_proto(cube))

    async def Update(self, request, context):
        p = principal()
        cube = await self.vault.update(request.id, convert.patch_from_proto(request), p.name, guard=self._guard("write"),
                                       reader=self.gov.reader(p))
        return vault_pb2.UpdateResponse(cube=convert.cube_to_proto(as_seen_by(self.gov, p, cube)))

    async def Delete(self, request, context):
        version = await self.vault.delete(request.id, principal().name, guard=self._guard("delete"))
        return vault_pb2.DeleteResponse(version=version)

    async def List(self, request, context):
        size = check_page_size(request.page_size, self.vault.limits)
        page = await self.vault.list(self._scoped(request.filter), size, request.page_token)
        return vault_pb2.ListResponse(cubes=[convert.cube_to_proto(c) for c in page.cubes],
                                      next_page_token=page.next_token, total_size=page.total)

    async def Search(self, request, context):
        hits, mode = await self.vault.search(
            request.query, self._scoped(request.filter), request.limit,
            convert.mode_from_proto(request.mode), fts_syntax=convert.fts_syntax_from_proto(request.syntax),
        )
        return vault_pb2.SearchResponse(hits=[convert.hit_to_proto(h) for h in hits], mode=int(mode))

    async def History(self, request, context):
        versions = await self.vault.history(request.id, guard=self._guard("read"))
        return vault_pb2.HistoryResponse(versions=[convert.cube_to_proto(c) for c in versions])
