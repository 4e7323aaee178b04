"""Dense retrieval (embedding backfill off the write path) and hybrid rank fusion."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import numpy as np

from memosd.cube import CubeFilter, MemoryKind, SearchHit
from memosd.vault import rows
from memosd.vault.db import Database
from memosd.vault.dense import DenseIndex
from memosd.vault.query import filter_sql

log = logging.getLogger("memosd.vault")
RRF_K = 60
BACKFILL_BATCH = 256


class DenseSearch:
    """Keeps a DenseIndex in step with the vault and answers nearest-neighbour queries."""

    def __init__(self, db: Database, embedder):
        self.db = db
        self.embedder = embedder
        self.model_name = embedder.name
        self.index = DenseIndex(embedder.dim)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.embedded = 0

    async def start(self) -> None:
        def load(conn: sqlite3.Connection):
            found = conn.execute("SELECT seq, vector FROM embeddings WHERE model = ?", (self.model_name,)).fetchall()
            return [s for s, _ in found], [np.frombuffer(v, dtype=np.float32) for _, v in found]

        seqs, vectors = await self.db.read(load)
        if seqs:
            self.index.add(seqs, np.stack(vectors))
        self._task = asyncio.create_task(self._backfill(), name="memosd-embedding-backfill")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def wake(self) -> None:
        self._wake.set()

    def forget(self, seqs) -> None:
        self.index.remove(seqs)

    async def backlog(self) -> int:
        """Plaintext cubes still waiting for a vector."""
        return await self.db.read(lambda conn: conn.execute(_BACKLOG, (self.model_name,)).fetchone()[0])

    async def _backfill(self) -> None:
        # Embeds cubes that have no vector yet, in batches, off the event loop; sleeps when none are left.
        while True:
            self._wake.clear()
            todo = await self.db.read(lambda conn: conn.execute(_MISSING, (self.model_name, BACKFILL_BATCH)).fetchall())
            if not todo:
                await self._wake.wait()
                continue
            seqs = [s for s, _ in todo]
            try:
                vectors = await asyncio.to_thread(self.embedder.encode, [t for _, t in todo])
            except Exception:
                log.exception("embedding %d cubes failed; retrying in 5 s", len(todo))
                await asyncio.sleep(5)
                continue
            await self.db.write(lambda conn: self._store(conn, seqs, vectors))
            self.index.add(seqs, vectors)
            self.embedded += len(seqs)

    def _store(self, conn: sqlite3.Connection, seqs, vectors) -> None:
        # Only cubes whose text is still the one embedded: an update meanwhile cleared the text's vector.
        conn.executemany(
            "INSERT OR REPLACE INTO embeddings (seq, model, vector) SELECT ?, ?, ? WHERE EXISTS"
            " (SELECT 1 FROM cubes WHERE seq = ? AND text IS NOT NULL)",
            [(s, self.model_name, v.astype(np.float32).tobytes(), s) for s, v in zip(seqs, vectors)],
        )

    async def search(self, query: str, f: CubeFilter, now: float, limit: int) -> list[tuple[dict, float]]:
        """Rows and cosine similarities of the best `limit` cubes passing the filter."""
        (vector,) = await asyncio.to_thread(self.embedder.encode, [query])
        where, params = filter_sql(f, now)
        k = limit * 4
        while True:
            nearest = self.index.search(vector, k)
            if not nearest:
                return []
            scores = dict(nearest)
            marks = ",".join("?" * len(scores))
            found = await self.db.read(lambda conn: conn.execute(
                f"SELECT {rows.COLUMNS} FROM cubes c WHERE c.seq IN ({marks}) AND c.kind = {int(MemoryKind.PLAINTEXT)}"
                f" AND {where}", [*scores, *params]).fetchall())
            if len(found) >= limit or len(nearest) < k:
                ranked = sorted((rows.row_dict(r) for r in found), key=lambda r: -scores[r["seq"]])
                return [(r, scores[r["seq"]]) for r in ranked[:limit]]
            k *= 8


_WITHOUT_VECTOR = (
    " FROM cubes c LEFT JOIN embeddings e ON e.seq = c.seq AND e.model = ?"
    f" WHERE c.kind = {int(MemoryKind.PLAINTEXT)} AND c.text IS NOT NULL AND e.seq IS NULL"
)
_MISSING = "SELECT c.seq, c.text" + _WITHOUT_VECTOR + " ORDER BY c.seq LIMIT ?"
_BACKLOG = "SELECT count(*)" + _WITHOUT_VECTOR


def fuse(lexical: list[tuple[dict, float]], semantic: list[tuple[dict, float]], limit: int, now: float) -> list[SearchHit]:
    """Reciprocal rank fusion of BM25 and dense rankings; a single ranking passes through in order."""
    if not semantic or not lexical:
        only = lexical or semantic
        key = "bm25_score" if lexical else "dense_score"
        return [SearchHit(rows.to_cube(r, now), s, **{key: s}) for r, s in only[:limit]]
    fused: dict[int, SearchHit] = {}
    for rank, (row, score) in enumerate(lexical):
        hit = fused.setdefault(row["seq"], SearchHit(rows.to_cube(row, now), 0.0))
        hit.score += 1.0 / (RRF_K + rank + 1)
        hit.bm25_score = score
    for rank, (row, score) in enumerate(semantic):
        hit = fused.setdefault(row["seq"], SearchHit(rows.to_cube(row, now), 0.0))
        hit.score += 1.0 / (RRF_K + rank + 1)
        hit.dense_score = score
    return sorted(fused.values(), key=lambda h: -h.score)[:limit]
