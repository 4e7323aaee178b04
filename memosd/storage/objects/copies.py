"""Verified local copies of a remote object store's blobs, for the export and backup threads, which block."""

from __future__ import annotations

import asyncio
from pathlib import Path

from memosd.storage.objects.base import ObjectStore


class RemoteCopies:
    """Fetches blobs from a remote store (S3) into files, from a worker thread, on the daemon's event loop: an
    export or backup of a vault whose blobs are not in the data directory holds every one, not only the cached."""

    def __init__(self, objects: ObjectStore, loop: asyncio.AbstractEventLoop):
        self.objects = objects
        self.loop = loop

    def copy(self, sha256: str, dest: Path, size: int | None = None) -> Path:
        """A new file dest holding the blob, checked against sha256; blocking (never call it on the loop)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        asyncio.run_coroutine_threadsafe(self.objects.copy_to(sha256, dest, size), self.loop).result()
        return dest


def remote_copies(objects: ObjectStore | None) -> RemoteCopies | None:
    """RemoteCopies for a remote store, on the running loop; None for the data directory's own files."""
    if objects is None or objects.local:
        return None
    return RemoteCopies(objects, asyncio.get_running_loop())
