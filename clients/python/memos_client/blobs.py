"""Chunked, resumable, digest-checked blob transfers: the parts the sync and asyncio clients share."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator

from memos_client.errors import DataLoss, InvalidArgument
from memos_mip.payload import Payload
from memos_mip.wire import ChunkView, encode_upload_chunk, parse_download_chunk
from memos_mip.v1 import blob_pb2

# Retries of a broken transfer, each resuming where the daemon's committed bytes end.
RETRIES = 3


UPLOAD = "/memos.v1.BlobService/Upload"
DOWNLOAD = "/memos.v1.BlobService/Download"


def upload_requests(payload: Payload, namespace: str, kind: int, offset: int) -> Iterator:
    """The start message, then each chunk already encoded (see encode_message)."""
    yield blob_pb2.UploadRequest(start=blob_pb2.UploadStart(
        sha256=payload.sha256, size=payload.size, namespace=namespace, kind=kind, offset=offset))
    for at, data in payload.chunks(offset):
        yield encode_upload_chunk(at, data)


def encode_message(message) -> bytes:
    """Request serializer of Upload: chunks come encoded already, the start is a protobuf message."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def decode_download(data: bytes):
    """Response deserializer of Download: chunks as views (ChunkView), the first message (which names the
    blob) and anything unusual through protobuf."""
    return parse_download_chunk(data) or blob_pb2.DownloadResponse.FromString(data)


def feed(receiver: Receiver | None, message, into) -> Receiver:
    """Take one Download message: the first creates the receiver (it names the blob), each adds its bytes."""
    if receiver is None:
        if isinstance(message, ChunkView) or not message.HasField("blob"):
            raise DataLoss("the daemon's download did not start with the blob's size and digest")
        receiver = Receiver(message.blob.size, message.blob.sha256, into)
    receiver.feed(message if isinstance(message, ChunkView) else message.chunk)
    return receiver


def allocate(size: int):
    """A writable buffer of `size` bytes to download into: private anonymous memory, in transparent huge
    pages where the kernel allows (faulting in a fresh buffer 4 KiB at a time costs more than filling it)."""
    try:
        import mmap

        buffer = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (ImportError, AttributeError, OSError, ValueError):
        return bytearray(size)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return buffer if size else bytearray(0)


def payload_buffer(size: int):
    """A uint8 torch tensor to download a payload into (see allocate); pulled tensors are views of it."""
    import torch

    return torch.frombuffer(allocate(size), dtype=torch.uint8, count=size)


def transfer_timeout(base: float, size: int) -> float:
    """A deadline for moving `size` bytes: the client's timeout plus time at a pessimistic 20 MB/s."""
    return base + size / 20e6


class Receiver:
    """Collects a Download stream into one buffer, in order, hashing it on a second thread as it arrives
    (hashlib lets go of the GIL), and checks size and sha256 at the end."""

    def __init__(self, size: int, sha256: str, buffer=None):
        self.size, self.sha256 = size, sha256
        self.buffer = memoryview(buffer if buffer is not None else allocate(size)).cast("B")
        if len(self.buffer) != size:
            raise InvalidArgument(f"the receive buffer has {len(self.buffer)} bytes; the blob has {size}")
        self.received = 0
        self._hasher = hashlib.sha256()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._hash, name="memos-download-hash", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (view := self._queue.get()) is not None:
            self._hasher.update(view)

    def feed(self, chunk) -> None:
        data = chunk.data
        if chunk.offset != self.received:
            raise DataLoss(f"the daemon sent bytes at offset {chunk.offset}, expected {self.received}")
        end = self.received + len(data)
        if end > self.size:
            raise DataLoss(f"the daemon sent more than the blob's {self.size} bytes")
        target = self.buffer[self.received:end]
        target[:] = data
        self._queue.put(target)
        self.received = end

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def finish(self) -> memoryview:
        """The filled buffer, once its size and digest are right; DataLoss otherwise."""
        self.close()
        if self.received != self.size:
            raise DataLoss(f"the download ended after {self.received} of {self.size} bytes")
        if self._hasher.hexdigest() != self.sha256:
            raise DataLoss(f"downloaded bytes do not match sha256 {self.sha256}")
        return self.buffer
