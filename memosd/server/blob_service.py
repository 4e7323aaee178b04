"""BlobService: chunked, resumable uploads into the blob store and downloads of tensor cubes' payloads."""

from __future__ import annotations

from memos_mip.wire import ChunkView, encode_download, parse_upload_chunk
from memos_mip.v1 import blob_pb2, cube_pb2
from memosd.cube import MemoryKind
from memosd.errors import FailedPrecondition, InvalidArgument
from memosd.server.auth import principal
from memosd.vault.activation import payload_of


def _chunk(request):
    if isinstance(request, ChunkView):
        return request
    if request.WhichOneof("part") != "chunk":
        raise InvalidArgument("only the first message of an upload may be `start`; send chunks after it")
    return request.chunk


class BlobService:
    # Upload chunks are parsed as views of the received bytes, not copied into protobuf messages.
    wire_decoders = {"Upload": parse_upload_chunk}

    def __init__(self, vault, blobs, governance, exchange=None):
        self.vault = vault
        self.blobs = blobs
        self.gov = governance
        self.exchange = exchange  # FdExchange; None when the daemon listens on TCP

    def _authorize_upload(self, namespace: str, kind: int) -> None:
        # A blob is only ever reachable through a cube, so an upload needs the right to write that cube.
        if kind not in (cube_pb2.MEMORY_KIND_UNSPECIFIED, MemoryKind.ACTIVATION, MemoryKind.PARAMETRIC):
            raise InvalidArgument("kind must be MEMORY_KIND_ACTIVATION or MEMORY_KIND_PARAMETRIC; plaintext has no blob")
        self.gov.check(principal(), "write", namespace, MemoryKind(kind or MemoryKind.ACTIVATION))

    def _reads(self, p):
        # A blob counts as the caller's when it may read a cube naming it (see memosd.vault.blob_access).
        return lambda cube: self.gov.check_cube(p, "read", cube)

    async def Upload(self, requests, context):
        first = await anext(requests, None)
        if first is None or isinstance(first, ChunkView) or first.WhichOneof("part") != "start":
            raise InvalidArgument("the first message of an upload must be `start` (sha256, size, namespace)")
        start = first.start
        self._authorize_upload(start.namespace, start.kind)
        ref = cube_pb2.BlobRef(sha256=start.sha256, size=start.size)
        p = principal()
        async with self.blobs.upload(p.name, start.sha256, start.size, start.offset, self._reads(p)) as session:
            if session is None:
                return blob_pb2.UploadResponse(blob=ref, deduplicated=True)
            async for request in requests:
                chunk = _chunk(request)
                await session.write(chunk.offset, chunk.data)
            await session.finish()
        return blob_pb2.UploadResponse(blob=ref)

    async def GetUploadStatus(self, request, context):
        self._authorize_upload(request.namespace, request.kind)
        p = principal()
        stored, committed = await self.blobs.status(p.name, request.sha256, request.size, self._reads(p))
        return blob_pb2.GetUploadStatusResponse(stored=stored, committed_size=committed)

    async def Download(self, request, context):
        p = principal()
        cube = await self.vault.get(request.cube_id, guard=lambda c: self.gov.check_cube(p, "read", c))
        sha256, size = payload_of(cube)
        blob = (sha256, size)
        async for offset, data in self.blobs.chunks(sha256, size, request.offset, request.length):
            # Encoded here, in one copy of the data: the first message also names the blob.
            yield encode_download(offset, data, blob)
            blob = None
        if blob is not None:  # nothing left from that offset: still say what the blob is
            yield encode_download(request.offset, b"", blob)

    async def OpenLocal(self, request, context):
        if self.exchange is None:
            raise FailedPrecondition("this daemon listens on TCP: descriptors cannot reach another host; use Download")
        p = principal()
        cube = await self.vault.get(request.cube_id, guard=lambda c: self.gov.check_cube(p, "read", c))
        sha256, size = payload_of(cube)
        fd, checksum = await self.blobs.open_local(sha256, size)
        ticket = self.exchange.deposit(fd, p.name)
        return blob_pb2.OpenLocalResponse(blob=cube_pb2.BlobRef(sha256=sha256, size=size), xxh3_128=checksum,
                                          ticket=ticket, exchange_socket=self.exchange.path.name,
                                          ticket_ttl_ms=int(self.exchange.ttl * 1000))
