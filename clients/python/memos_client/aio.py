"""AsyncMemosClient: the asyncio Python client of memosd, with the same methods as MemosClient."""

from __future__ import annotations

from typing import AsyncIterator, Iterable

import grpc

from memos_client import requests as rq
from memos_client.client import CHANNEL_OPTIONS
from memos_client.defaults import resolve_addr
from memos_client.errors import from_rpc_error
from memos_client.models import Cube, Hit, Page, Status
from memos_mip.v1 import daemon_pb2, daemon_pb2_grpc, vault_pb2, vault_pb2_grpc


class AsyncMemosClient:
    """Talks to memosd at `addr` (else $MEMOS_ADDR, else the default socket). Use with `async with`."""

    def __init__(self, addr: str | None = None, *, timeout: float = 30.0):
        self.target = resolve_addr(addr)
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._vault = vault_pb2_grpc.VaultServiceStub(self._channel)
        self._daemon = daemon_pb2_grpc.DaemonServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncMemosClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None

    async def put(self, text: str, namespace: str = rq.DEFAULT_NAMESPACE, **fields) -> Cube:
        request = vault_pb2.PutRequest(cube=rq.draft(text, namespace, **fields))
        return Cube.from_proto((await self._call(self._vault.Put, request)).cube)

    async def put_many(self, drafts: Iterable, *, batch_size: int = 500, on_batch=None) -> list[str]:
        ids: list[str] = []
        try:
            async for ack in self._vault.PutStream(rq.batches(drafts, batch_size)):
                ids.extend(ack.ids)
                if on_batch:
                    on_batch(ack.acknowledged)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None
        return ids

    async def get(self, cube_id: str, version: int = 0) -> Cube:
        resp = await self._call(self._vault.Get, vault_pb2.GetRequest(id=cube_id, version=version))
        return Cube.from_proto(resp.cube)

    async def update(self, cube_id: str, **changes) -> Cube:
        return Cube.from_proto((await self._call(self._vault.Update, rq.update(cube_id, **changes))).cube)

    async def delete(self, cube_id: str) -> int:
        return (await self._call(self._vault.Delete, vault_pb2.DeleteRequest(id=cube_id))).version

    async def list_page(self, namespace: str | None = None, *, page_size: int = 100, page_token: str = "",
                        **filters) -> Page:
        request = vault_pb2.ListRequest(filter=rq.cube_filter(namespace, **filters), page_size=page_size,
                                        page_token=page_token)
        resp = await self._call(self._vault.List, request)
        return Page([Cube.from_proto(c) for c in resp.cubes], resp.next_page_token, resp.total_size)

    async def list(self, namespace: str | None = None, *, page_size: int = 100, **filters) -> AsyncIterator[Cube]:
        token = ""
        while True:
            page = await self.list_page(namespace, page_size=page_size, page_token=token, **filters)
            for cube in page.cubes:
                yield cube
            token = page.next_page_token
            if not token:
                return

    async def search(self, query: str, namespace: str | None = None, *, limit: int = 10, mode: str = "auto",
                     fts: bool = False, **filters) -> list[Hit]:
        request = rq.search(query, limit=limit, mode=mode, fts=fts, namespace=namespace, **filters)
        return [Hit.from_proto(h) for h in (await self._call(self._vault.Search, request)).hits]

    async def history(self, cube_id: str) -> list[Cube]:
        resp = await self._call(self._vault.History, vault_pb2.HistoryRequest(id=cube_id))
        return [Cube.from_proto(c) for c in resp.versions]

    async def status(self) -> Status:
        return Status.from_proto(await self._call(self._daemon.Status, daemon_pb2.StatusRequest()))
