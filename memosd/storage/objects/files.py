"""Blob bytes as files in the data directory, named by their sha256 (the embedded default, `blob_url = "file:"`).

    DATA_DIR/blobs/sha256/ab/abcdef...   complete, verified blobs (read-only), one file per distinct content
    DATA_DIR/blobs/tmp/                  uploads in progress (the BlobStore's staging)

A staged file is fsynced by the caller, renamed into place here, and its directory fsynced: after a crash a
blob is whole or absent. Same-host clients get a descriptor of the stored file itself.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from memosd.errors import DataLoss, NotFound
from memosd.storage.objects.base import ObjectReader, ObjectStore


class FileObjectStore(ObjectStore):
    """Objects under root/sha256/, staging under root/tmp/ (one file system: a rename publishes)."""

    local = True
    orphan_grace = 0.0  # only this daemon writes its data directory

    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "sha256"
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="memosd-blob-read")

    @property
    def staging(self) -> Path:
        return self.root / "tmp"

    def path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    async def start(self) -> None:
        for path in (self.root, self.staging, self.objects):
            path.mkdir(mode=0o700, exist_ok=True)

    async def close(self) -> None:
        self._io.shutdown(wait=True)

    async def put(self, staged: Path, sha256: str, size: int) -> None:
        await asyncio.to_thread(self._place, staged, sha256)

    def _place(self, staged: Path, sha256: str) -> None:
        target = self.path(sha256)
        if not target.parent.exists():
            target.parent.mkdir(mode=0o700, exist_ok=True)
            _fsync_dir(self.objects)
        if target.exists():
            staged.unlink(missing_ok=True)
            return
        os.chmod(staged, 0o400)
        os.replace(staged, target)
        _fsync_dir(target.parent)

    async def size(self, sha256: str) -> int | None:
        try:
            return (await asyncio.to_thread(os.stat, self.path(sha256))).st_size
        except FileNotFoundError:
            return None

    async def open(self, sha256: str, size: int) -> ObjectReader:
        try:
            fd = os.open(self.path(sha256), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"the payload {sha256} is not stored on this daemon") from None
        return _FileReader(fd, self._io)

    async def read_all(self, sha256: str, size: int, limit: int) -> bytes:
        def read() -> bytes:
            with open(self.path(sha256), "rb") as f:
                return f.read(min(limit, size))
        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is not stored") from None

    async def open_local(self, sha256: str, size: int) -> int:
        try:
            fd = os.open(self.path(sha256), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"the payload {sha256} is not stored on this daemon") from None
        on_disk = os.fstat(fd).st_size
        if on_disk != size:  # mapping past the end of a file faults: refuse it here
            os.close(fd)
            raise DataLoss(f"blob {sha256} is {on_disk} bytes on disk, {size} recorded")
        return fd

    async def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    async def keys(self) -> list[tuple[str, float]]:
        def scan() -> list[tuple[str, float]]:
            found = []
            for sub in self.objects.iterdir():
                for path in sub.iterdir() if sub.is_dir() else ():
                    found.append((path.name, path.stat().st_mtime))
            return found
        return await asyncio.to_thread(scan)


class _FileReader(ObjectReader):
    """One descriptor held for the whole read: a blob collected meanwhile stays readable to it."""

    def __init__(self, fd: int, io: ThreadPoolExecutor):
        self._fd, self._io = fd, io

    async def read(self, offset: int, length: int) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._io, os.pread, self._fd, length, offset)

    async def close(self) -> None:
        os.close(self._fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
