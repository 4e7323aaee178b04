"""One upload in progress: its staging file, written and hashed block by block on I/O threads while chunks arrive."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from memosd.errors import DataLoss, InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    from memosd.vault.blobs import BlobStore

CHUNK_BYTES = 1 << 20
# Chunks are written (and hashed) and read in blocks of this size on an I/O thread: a thread hop per
# 1 MiB chunk costs more than the chunk (the GIL hand-off), one per block keeps the event loop streaming.
IO_BLOCK = 8 << 20


@dataclass
class Upload:
    """An unfinished upload: its staging file, how much of it is written and hashed, and its lock."""

    owner: str
    sha256: str
    size: int
    path: Path
    fd: int
    touched: float
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    checksum: xxhash.xxh3_128 = field(default_factory=xxhash.xxh3_128)
    committed: int = 0  # written and hashed; advanced on the I/O thread
    accepted: int = 0  # committed plus the write in flight
    inflight: Future | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class UploadSession:
    """One stream's turn at an upload: write chunks in order, then finish. Chunks are gathered into blocks
    written while the next ones arrive; a block not yet written when the stream breaks is sent again."""

    def __init__(self, store: BlobStore, up: Upload):
        self._store, self._up = store, up
        self._block: list[bytes] = []
        self._block_bytes = 0

    @property
    def committed(self) -> int:
        return self._up.committed

    async def write(self, offset: int, data: bytes) -> None:
        up = self._up
        if not data:
            raise InvalidArgument(f"chunk at offset {offset} is empty")
        if len(data) > CHUNK_BYTES:
            raise InvalidArgument(f"chunk at offset {offset} has {len(data)} bytes; at most {CHUNK_BYTES}")
        if offset != up.accepted:
            raise InvalidArgument(f"chunk at offset {offset} is out of order: the next byte expected is {up.accepted}")
        if offset + len(data) > up.size:
            raise InvalidArgument(f"chunk at offset {offset} ends at byte {offset + len(data)}, past the declared"
                                  f" size of {up.size} bytes")
        self._block.append(data)
        self._block_bytes += len(data)
        up.accepted = offset + len(data)
        up.touched = time.time()
        if self._block_bytes >= IO_BLOCK:
            await self._flush()

    async def _flush(self) -> None:
        await self._settle()
        if self._block:
            up = self._up
            block, self._block, self._block_bytes = self._block, [], 0
            # Writing and hashing run on a thread while the next chunks are received.
            up.inflight = self._store._io.submit(_append, up, block, up.accepted - sum(map(len, block)),
                                                 self._store._writers)

    async def _settle(self) -> None:
        up = self._up
        if up.inflight is None:
            return
        # Cleared only once the write has landed: a stream cancelled meanwhile keeps the upload locked
        # until then (see BlobStore._locked).
        try:
            await asyncio.wrap_future(up.inflight)
        except OSError as exc:
            # The hash may have taken bytes the file did not: this upload cannot be resumed.
            up.inflight = None
            self._store._discard(up)
            raise ResourceExhausted(f"the daemon could not store the upload ({exc.strerror or exc});"
                                    " start it again") from None
        up.inflight = None

    async def finish(self) -> int:
        """Verify and publish the blob; returns its size. The bytes so far stay for a resume if the stream
        ended early; a digest mismatch discards them."""
        await self._flush()
        await self._settle()
        up = self._up
        if up.committed != up.size:
            raise InvalidArgument(f"the upload stream ended after {up.committed} of {up.size} declared bytes; the"
                                  f" daemon keeps them: resume with offset {up.committed}")
        if up.hasher.hexdigest() != up.sha256:
            self._store._discard(up)
            raise DataLoss(f"the uploaded bytes do not match the declared sha256 {up.sha256}; nothing was stored")
        await self._store._publish(up)
        return up.size


def _append(up: Upload, block: list, offset: int, writers: ThreadPoolExecutor) -> None:
    """Write a block at offset while hashing it (on two threads: both let go of the GIL), then count it."""
    written = writers.submit(_write, up.fd, block, offset)
    for data in block:
        up.hasher.update(data)
        up.checksum.update(data)
    up.committed = written.result()


def _write(fd: int, block: list, offset: int) -> int:
    for data in block:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    return offset
