"""A bounded local read-through cache of a remote store's blobs, for the same-host descriptor path (OpenLocal)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("memosd.blobs")

# fetch(sha256, size, path) writes the object into a new file at path, verified against sha256 (DataLoss if not).
Fetch = Callable[[str, int, Path], Awaitable[None]]


class ReadCache:
    """Whole blobs as read-only files under root, at most max_bytes together, the least recently used evicted
    first. A file is used only once its sha256 is checked: as it is fetched, or (one left by an earlier run)
    before its first use. An evicted file a client holds a descriptor of stays readable to that client."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, int] = OrderedDict()  # sha256 -> size, least recently used first
        self._verified: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self.total = 0

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def start(self) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)
        found = []
        for entry in self.root.iterdir():
            if entry.name.endswith(".part") or not entry.is_file():
                entry.unlink(missing_ok=True)  # a fetch the daemon did not finish
            else:
                stat = entry.stat()
                found.append((stat.st_atime, entry.name, stat.st_size))
        for _, name, size in sorted(found):
            self._entries[name] = size
            self.total += size
        self._evict(keep=None)

    async def open(self, sha256: str, size: int, fetch: Fetch) -> int:
        """A read-only descriptor of the cached, verified blob, fetched first if it is not cached."""
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        try:
            async with lock:
                path = self.path(sha256)
                if sha256 in self._entries and sha256 not in self._verified:
                    if await asyncio.to_thread(_holds, path, sha256, size):
                        self._verified.add(sha256)
                    else:
                        log.warning("dropped cached blob %s: its bytes do not match its digest", sha256[:16])
                        self._drop(sha256)
                if sha256 not in self._entries:
                    part = self.root / f"{sha256}.{secrets.token_hex(4)}.part"
                    try:
                        await fetch(sha256, size, part)
                        os.chmod(part, 0o400)
                        os.replace(part, path)
                    finally:
                        part.unlink(missing_ok=True)
                    self._entries[sha256] = size
                    self.total += size
                    self._verified.add(sha256)
                self._entries.move_to_end(sha256)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._evict(keep=sha256)
                return fd
        finally:
            if not lock.locked():
                self._locks.pop(sha256, None)

    def _evict(self, keep: str | None) -> None:
        # `keep` was just used, so it is the newest: it goes only when it alone is larger than the whole cache
        # (then it is served from the descriptor just opened, and not kept).
        while self.total > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            if oldest == keep:
                return

    def _drop(self, sha256: str) -> None:
        if sha256 not in self._entries:  # evicted while its first check ran
            return
        self.total -= self._entries.pop(sha256)
        self._verified.discard(sha256)
        self.path(sha256).unlink(missing_ok=True)


def _holds(path: Path, sha256: str, size: int) -> bool:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                return False
            return hashlib.file_digest(f, "sha256").hexdigest() == sha256
    except OSError:
        return False
