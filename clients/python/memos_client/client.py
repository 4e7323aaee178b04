"""MemosClient: the synchronous Python client of memosd."""

from __future__ import annotations

from typing import Iterable, Iterator

import grpc

from memos_client import requests as rq
from memos_client.defaults import resolve_addr
from memos_client.errors import from_rpc_error
from memos_client.models import Cube, Hit, Page, Status
from memos_mip.v1 import daemon_pb2, daemon_pb2_grpc, vault_pb2, vault_pb2_grpc

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]


class MemosClient:
    """Talks to memosd at `addr` (else $MEMOS_ADDR, else the default socket). Use as a context manager."""

    def __init__(self, addr: str | None = None, *, timeout: float = 30.0):
        self.target = resolve_addr(addr)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._vault = vault_pb2_grpc.VaultServiceStub(self._channel)
        self._daemon = daemon_pb2_grpc.DaemonServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "MemosClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None

    def put(self, text: str, namespace: str = rq.DEFAULT_NAMESPACE, **fields) -> Cube:
        """Store one plaintext cube; fields: tags, metadata, source, priority, ttl, expires_at."""
        request = vault_pb2.PutRequest(cube=rq.draft(text, namespace, **fields))
        return Cube.from_proto(self._call(self._vault.Put, request).cube)

    def put_many(self, drafts: Iterable, *, batch_size: int = 500, on_batch=None) -> list[str]:
        """Store many cubes (dicts like {"text", "namespace", "tags", "metadata"} or CubeDrafts) over one
        stream; returns their ids. on_batch(acknowledged_so_far) is called after each durable batch."""
        ids: list[str] = []
        try:
            for ack in self._vault.PutStream(rq.batches(drafts, batch_size)):
                ids.extend(ack.ids)
                if on_batch:
                    on_batch(ack.acknowledged)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None
        return ids

    def get(self, cube_id: str, version: int = 0) -> Cube:
        return Cube.from_proto(self._call(self._vault.Get, vault_pb2.GetRequest(id=cube_id, version=version)).cube)

    def update(self, cube_id: str, **changes) -> Cube:
        """Write a new version; changes: text, tags, metadata, source, priority, ttl, expires_at, state,
        expected_version."""
        return Cube.from_proto(self._call(self._vault.Update, rq.update(cube_id, **changes)).cube)

    def delete(self, cube_id: str) -> int:
        return self._call(self._vault.Delete, vault_pb2.DeleteRequest(id=cube_id)).version

    def list_page(self, namespace: str | None = None, *, page_size: int = 100, page_token: str = "", **filters) -> Page:
        request = vault_pb2.ListRequest(filter=rq.cube_filter(namespace, **filters), page_size=page_size,
                                        page_token=page_token)
        resp = self._call(self._vault.List, request)
        return Page([Cube.from_proto(c) for c in resp.cubes], resp.next_page_token, resp.total_size)

    def list(self, namespace: str | None = None, *, page_size: int = 100, **filters) -> Iterator[Cube]:
        """Every matching cube, oldest first, fetching pages as the iteration goes."""
        token = ""
        while True:
            page = self.list_page(namespace, page_size=page_size, page_token=token, **filters)
            yield from page.cubes
            token = page.next_page_token
            if not token:
                return

    def search(self, query: str, namespace: str | None = None, *, limit: int = 10, mode: str = "auto",
               fts: bool = False, **filters) -> list[Hit]:
        """Ranked plaintext hits; mode is auto, bm25, dense or hybrid; fts=True reads FTS5 query syntax."""
        request = rq.search(query, limit=limit, mode=mode, fts=fts, namespace=namespace, **filters)
        return [Hit.from_proto(h) for h in self._call(self._vault.Search, request).hits]

    def history(self, cube_id: str) -> list[Cube]:
        return [Cube.from_proto(c) for c in self._call(self._vault.History, vault_pb2.HistoryRequest(id=cube_id)).versions]

    def status(self) -> Status:
        return Status.from_proto(self._call(self._daemon.Status, daemon_pb2.StatusRequest()))
