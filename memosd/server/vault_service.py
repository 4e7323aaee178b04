"""VaultService: each RPC validates, converts, calls MemVault, converts back."""

from __future__ import annotations

from memos_mip.v1 import vault_pb2
from memosd.errors import InvalidArgument
from memosd.limits import check_page_size
from memosd.server import convert
from memosd.vault import MemVault


class VaultService:
    def __init__(self, vault: MemVault, owner_of):
        self.vault = vault
        self._owner_of = owner_of

    async def Put(self, request, context):
        if not request.HasField("cube"):
            raise InvalidArgument("cube is required")
        (cube,) = await self.vault.put_many([convert.draft_from_proto(request.cube)], self._owner_of(context))
        return vault_pb2.PutResponse(cube=convert.cube_to_proto(cube))

    async def PutStream(self, requests, context):
        owner, acknowledged = self._owner_of(context), 0
        async for batch in requests:
            cubes = await self.vault.put_many([convert.draft_from_proto(d) for d in batch.cubes], owner)
            acknowledged += len(cubes)
            yield vault_pb2.PutBatchResponse(ids=[c.id for c in cubes], acknowledged=acknowledged)

    async def Get(self, request, context):
        cube = await self.vault.get(request.id, request.version)
        return vault_pb2.GetResponse(cube=convert.cube_to_proto(cube))

    async def Update(self, request, context):
        cube = await self.vault.update(request.id, convert.patch_from_proto(request))
        return vault_pb2.UpdateResponse(cube=convert.cube_to_proto(cube))

    async def Delete(self, request, context):
        return vault_pb2.DeleteResponse(version=await self.vault.delete(request.id))

    async def List(self, request, context):
        size = check_page_size(request.page_size, self.vault.limits)
        page = await self.vault.list(convert.filter_from_proto(request.filter), size, request.page_token)
        return vault_pb2.ListResponse(cubes=[convert.cube_to_proto(c) for c in page.cubes],
                                      next_page_token=page.next_token, total_size=page.total)

    async def Search(self, request, context):
        hits, mode = await self.vault.search(
            request.query, convert.filter_from_proto(request.filter), request.limit,
            convert.mode_from_proto(request.mode), fts_syntax=convert.fts_syntax_from_proto(request.syntax),
        )
        return vault_pb2.SearchResponse(hits=[convert.hit_to_proto(h) for h in hits], mode=int(mode))

    async def History(self, request, context):
        versions = await self.vault.history(request.id)
        return vault_pb2.HistoryResponse(versions=[convert.cube_to_proto(c) for c in versions])
