"""The object-store interface: verified blob bytes under their sha256, written once, read by range, listed for GC."""

from __future__ import annotations

import asyncio
import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

from memosd.errors import DataLoss, NotFound

COPY_PIECE = 4 << 20  # bytes per read of copy_to


class ObjectReader(ABC):
    """An open stored object: byte ranges of it, until closed."""

    @abstractmethod
    async def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`; fewer only at the end of the object."""

    @abstractmethod
    async def close(self) -> None: ...


class ObjectStore(ABC):
    """Where blob bytes live, each under the key of its sha256. Every method raises memosd.errors: NotFound for
    a key not stored, Unavailable when the store cannot be reached, DataLoss when what it holds does not match
    its digest. The BlobStore above it keeps the rows; nothing here knows about them.

    Publishing is two steps so that a slow store does not hold the BlobStore's publish lock: push() (outside
    it) may send the bytes ahead, put() (under it) makes sure they are stored once garbage collection cannot
    interleave. The staged file has been verified against sha256 by the caller; the store verifies what it
    stored."""

    # Whether the objects are files a descriptor of which same-host clients can be handed as they are (the
    # local store), or copies in a bounded local cache (a remote one).
    local: bool = True
    # How old an object nobody recorded must be before start-up reconciliation removes it: 0 where this
    # daemon is the only writer (the data directory), the upload grace where several daemons may share it.
    orphan_grace: float = 0.0

    @property
    @abstractmethod
    def staging(self) -> Path:
        """The directory uploads are staged in (same file system as the store's own files, if it has any)."""

    @abstractmethod
    async def start(self) -> None:
        """Create what the store needs and check it can be reached."""

    async def close(self) -> None:
        """Let go of connections and threads."""
        return None

    async def push(self, staged: Path, sha256: str, size: int) -> None:
        """Send a staged file's bytes ahead of put(), outside the publish lock; the staged file stays. A local
        store has nothing to send ahead: its put() is a rename."""
        return None

    @abstractmethod
    async def put(self, staged: Path, sha256: str, size: int) -> None:
        """Make sure the object sha256 is stored, whole and verified (a copy stored already wins); the staged
        file may be consumed. Visible under its key only once complete."""

    @abstractmethod
    async def size(self, sha256: str) -> int | None:
        """The stored object's size in bytes, None if it is not stored."""

    @abstractmethod
    async def open(self, sha256: str, size: int) -> ObjectReader:
        """A reader of the stored object of the recorded `size`."""

    @abstractmethod
    async def open_local(self, sha256: str, size: int) -> int:
        """A read-only descriptor of a whole, verified file holding the object, for a same-host client."""

    @abstractmethod
    async def delete(self, sha256: str) -> None:
        """Remove the object; one not stored is no error."""

    @abstractmethod
    async def keys(self) -> list[tuple[str, float]]:
        """(sha256, last modified as a Unix time) of every stored object, for reconciliation."""

    async def copy_to(self, sha256: str, dest: Path, size: int | None = None) -> None:
        """Write the object into the new file dest, checked against sha256 (DataLoss if it does not match,
        NotFound if it is not stored): a whole copy for an export or a backup. size: the recorded size, if known."""
        if size is None:
            size = await self.size(sha256)
            if size is None:
                raise NotFound(f"blob {sha256} is not stored")
        reader = await self.open(sha256, size)
        digest, seen = hashlib.sha256(), 0
        try:
            with open(dest, "xb") as out:  # noqa: ASYNC230 (a new local file; the reads are the slow part)
                while seen < size:
                    piece = await reader.read(seen, min(COPY_PIECE, size - seen))
                    if not piece:
                        break
                    await asyncio.to_thread(out.write, piece)
                    digest.update(piece)
                    seen += len(piece)
        finally:
            await reader.close()
        if seen != size or digest.hexdigest() != sha256:
            raise DataLoss(f"blob {sha256} in the object store does not match its sha256")

    async def read_all(self, sha256: str, size: int, limit: int) -> bytes:
        """The first min(limit, size) bytes of the object."""
        reader = await self.open(sha256, size)
        try:
            return await reader.read(0, min(limit, size))
        finally:
            await reader.close()
