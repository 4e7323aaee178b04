"""The vault's gauges for metrics and Status: cubes and payload bytes by kind, blob store, database and WAL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from memosd.cube import LifecycleState, MemoryKind
from memosd.metrics import Family

_KIND = {k: k.name.lower() for k in MemoryKind}
_STATE = {s: s.name.lower() for s in LifecycleState}


class VaultUsage:
    """Reads usage from the database and the data directory, at most once per `min_interval` seconds
    (a count over every cube is a table scan; scrapes and Status calls share the result)."""

    def __init__(self, vault, *, min_interval: float = 5.0, clock=time.monotonic):
        self.vault = vault
        self.data_dir = Path(vault.data_dir)
        self.min_interval = min_interval
        self.clock = clock
        self._cached: list[Family] | None = None
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def families(self) -> list[Family]:
        async with self._lock:
            if self._cached is None or self.clock() - self._at >= self.min_interval:
                self._cached = await self._read()
                self._at = self.clock()
            return self._cached

    async def _read(self) -> list[Family]:
        rows = await self.vault.db.read(self.vault.db.sql.usage.by_kind_and_state)
        files = await asyncio.to_thread(self._files)
        cubes = Family("memosd_cubes", "gauge", "Cubes by kind and lifecycle state (deleted: tombstones).")
        payload = Family("memosd_cube_bytes", "gauge",
                         "Payload bytes of cubes that are not deleted, by kind: UTF-8 text, or the size of the blob.")
        by_kind: dict[str, int] = {name: 0 for name in _KIND.values()}
        for kind, state, n, text_bytes, blob_bytes in rows:
            kind_name = _KIND.get(kind, str(kind))
            cubes.samples.append(({"kind": kind_name, "state": _STATE.get(state, str(state))}, n))
            if state != LifecycleState.DELETED:
                by_kind[kind_name] = by_kind.get(kind_name, 0) + int(text_bytes or 0) + int(blob_bytes or 0)
        payload.samples = [({"kind": k}, v) for k, v in sorted(by_kind.items())]
        families = [cubes, payload]
        for name, help_text, value in (
            ("memosd_blob_store_bytes", "Bytes of the files in the content-addressed blob store.", files["blob_bytes"]),
            ("memosd_blob_store_files", "Files in the content-addressed blob store.", files["blob_files"]),
            ("memosd_database_bytes", "Size of the SQLite database file.", files["db_bytes"]),
            ("memosd_wal_bytes", "Size of the SQLite write-ahead log (shrinks at checkpoints).", files["wal_bytes"]),
        ):
            families.append(Family(name, "gauge", help_text, [({}, value)]))
        dense = getattr(self.vault, "dense", None)
        backlog = await dense.backlog() if dense is not None else 0
        families.append(Family("memosd_embedding_backlog", "gauge",
                               "Plaintext cubes waiting for their embedding vector.", [({}, backlog)]))
        return families

    def _files(self) -> dict[str, int]:
        blob_bytes = blob_files = 0
        root = self.data_dir / "blobs"
        if root.is_dir():
            for path in root.rglob("*"):
                try:
                    info = path.lstat()
                except OSError:  # removed while we walked
                    continue
                if path.is_file():
                    blob_bytes += info.st_size
                    blob_files += 1
        return {"blob_bytes": blob_bytes, "blob_files": blob_files, "db_bytes": _size(self.data_dir / "memos.db"),
                "wal_bytes": _size(self.data_dir / "memos.db-wal")}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
