"""Keeps the embedded vault's HNSW index in step with its stored vectors: loaded, caught up, saved, compacted."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from memosd.cube import CubeFilter
from memosd.vault import ann_file
from memosd.vault.ann import AnnIndex

log = logging.getLogger("memosd.vault")
# Vectors read from the vault per transaction while building the index from scratch.
_PAGE = 20_000
# A save writes the whole index (1.8 GB at a million 384-dim vectors): often enough that a restart replays little
# of the log, rarely enough to cost nothing much. Every change is in the vault's log until a save covers it.
SAVE_CHANGES = 2_000
SAVE_SECONDS = 60.0
SAVE_ALWAYS = 50_000
# Dead rows (removed or re-embedded vectors) the graph carries before it is rebuilt from its live ones.
COMPACT_MIN_DEAD = 5_000
COMPACT_DEAD_SHARE = 0.25


class IndexKeeper:
    """The index and the vector-log rev it covers. Every change reaches the index through sync(), which replays
    the vault's vector log after that rev (and re-reads the seqs forget() was told of), so what the index holds is
    always what the vault held at some commit, plus removals the vault has since committed."""

    def __init__(self, db, model: str, dim: int, folder: Path | None):
        self.db = db
        self.sql = db.sql
        self.model = model
        self.dim = dim
        self.folder = folder
        self.index = AnnIndex(dim)
        self.rev = 0
        self._pending: set[int] = set()
        self._sync_lock = asyncio.Lock()
        self._unsaved = 0
        self._saved_at = time.monotonic()

    async def start(self) -> None:
        loaded = await asyncio.to_thread(ann_file.load, self.folder, self.model, self.dim) if self.folder else None
        head = await self.db.read(self.sql.vector_index.log_head)
        if loaded is not None and loaded[1] > head:
            # Saved after changes this vault never had (a restored backup): it cannot be caught up.
            log.warning("saved dense index is newer than the vault: rebuilding it")
            loaded = None
        async with self._sync_lock:
            if loaded is not None:
                self.index, self.rev = loaded
            else:
                await self._build()
                self._unsaved = SAVE_ALWAYS  # the next sync saves what was built
        await self.sync()

    async def stop(self) -> None:
        async with self._sync_lock:
            if self._unsaved and self.folder is not None:
                await self._save()

    def forget(self, seqs: list[int]) -> None:
        """Cubes whose vector was just deleted (text changed, cube deleted): out of results at once, and
        re-read at the next sync."""
        self.index.remove(seqs)
        self._pending.update(seqs)

    async def sync(self) -> None:
        """Bring the index up to the vault's latest committed vectors; save or compact it when due."""
        async with self._sync_lock:
            also = sorted(self._pending)
            rev, model, dim = self.rev, self.model, self.dim
            head, present, gone = await self.db.read(lambda conn: self.sql.vector_index.changed(conn, model, dim, rev, also))
            if present or gone:
                await asyncio.to_thread(_apply, self.index, present, gone)
            self._pending.difference_update(also)
            self.rev = head
            self._unsaved += len(present) + len(gone)
            index = self.index
            if index.dead >= COMPACT_MIN_DEAD and index.dead >= COMPACT_DEAD_SHARE * len(index):
                await self._compact()
            if self.folder is not None and self._save_due():
                await self._save()

    def _save_due(self) -> bool:
        if self._unsaved >= SAVE_ALWAYS:
            return True
        return self._unsaved >= SAVE_CHANGES and time.monotonic() - self._saved_at >= SAVE_SECONDS

    async def _save(self) -> None:
        assert self.folder is not None
        rev = self.rev
        await asyncio.to_thread(ann_file.save, self.index, self.folder, self.model, rev)
        await self.db.write(lambda conn: self.sql.vector_index.trim_log(conn, rev))
        self._unsaved = 0
        self._saved_at = time.monotonic()

    async def _build(self) -> None:
        """A new index from every vector the vault holds for the model, covering the log's head read first:
        pages read later may hold newer changes, which the log replays again (applying a change is idempotent)."""
        model, dim = self.model, self.dim
        head = await self.db.read(self.sql.vector_index.log_head)
        fresh = AnnIndex(dim)
        after = 0
        started = time.monotonic()
        while True:
            page = await self.db.read(lambda conn, after=after: self.sql.vector_index.page(conn, model, dim, after, _PAGE))
            if not page:
                break
            await asyncio.to_thread(_apply, fresh, page, [])
            after = page[-1][0]
        if len(fresh):
            log.info("dense index built from the vault: %d vectors in %.1f s", len(fresh), time.monotonic() - started)
        self.index, self.rev = fresh, head

    async def _compact(self) -> None:
        # Rebuilt from the live rows (searches use the old graph meanwhile); removals told to forget() while it
        # runs reach only the old graph, so they are re-read (they are in _pending) at the next sync.
        old = self.index
        fresh = await asyncio.to_thread(_compacted, old)
        self.index = fresh
        self._unsaved = SAVE_ALWAYS

    async def nearest(self, vector: np.ndarray, f: CubeFilter, k: int, among: list[int] | None = None
                      ) -> tuple[list[tuple[int, float]], int]:
        """The index's k nearest seqs the filter admits (see AnnIndex.nearest), off the event loop."""
        seqs = None if among is None else np.asarray(among, dtype=np.int64)
        return await asyncio.to_thread(self.index.nearest, vector, f, k, seqs)


def _apply(index: AnnIndex, present: list[tuple[int, bytes, str, float]], gone: list[int]) -> None:
    index.remove(gone)
    if present:
        vectors = np.frombuffer(b"".join(r[1] for r in present), dtype=np.float32).reshape(len(present), index.dim)
        index.add([r[0] for r in present], vectors, [r[2] for r in present], [r[3] for r in present])


def _compacted(old: AnnIndex) -> AnnIndex:
    with old.lock:
        live = np.flatnonzero(old.row_seq >= 0)
        seqs = old.row_seq[live].copy()
        namespaces = [old.namespaces[i] for i in old.row_ns[live].tolist()]
        created = old.row_created[live].copy()
        vectors = old._matrix()[live].copy()
    fresh = AnnIndex(old.dim)
    fresh.add(seqs, vectors, namespaces, created)
    return fresh
