"""Dense retrieval (embedding backfill off the write path) and hybrid score fusion."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3

import numpy as np

from memosd.cube import CubeFilter, MemoryKind, SearchHit
from memosd.errors import MemosError
from memosd.vault import rows
from memosd.storage.sqlite.db import Database
from memosd.vault.dense import DenseIndex, top
from memosd.storage.sqlite.filters import filter_sql

log = logging.getLogger("memosd.vault")
# Cubes embedded per pass of the backfill: large enough to batch well, small enough that each pass
# commits (and becomes searchable) within seconds on a CPU.
BACKFILL_BATCH = 128
# Share of the fused score that BM25 contributes; the rest is dense. Chosen on the LoCoMo dev split
# (bench/locomo.py): 0.5 to 0.7 do about equally well there; below 0.5 a weak encoder drags BM25 down.
BM25_WEIGHT = 0.6
# Nearest candidates taken per wanted hit before the filter is applied. When too few pass, the filter
# admits under about an eighth of the cubes, and asking SQL which ones is cheaper than casting wider.
_CANDIDATES_PER_HIT = 8


class DenseSearch:
    """Keeps a DenseIndex in step with the vault and answers nearest-neighbour queries."""

    def __init__(self, db: Database, embedder):
        self.db = db
        self.embedder = embedder
        self.model_name = embedder.name
        self.index = DenseIndex(embedder.dim)
        self.embedded = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # The backfill walks cubes in seq order; a changed text sends it back to that cube's seq.
        self._cursor = 0
        self._rewind: int | None = None

    async def start(self) -> None:
        def load(conn: sqlite3.Connection):
            found = conn.execute("SELECT seq, vector FROM embeddings WHERE model = ?", (self.model_name,)).fetchall()
            width = 4 * self.index.dim
            good = [(s, v) for s, v in found if len(v) == width]
            return [s for s, _ in good], [np.frombuffer(v, dtype=np.float32) for _, v in good]

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
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    def forget(self, seqs) -> None:
        """Drop the vectors of cubes whose text changed or went; the backfill re-embeds changed ones."""
        seqs = [int(s) for s in seqs]
        self.index.remove(seqs)
        if seqs:
            low = min(seqs) - 1
            self._rewind = low if self._rewind is None else min(self._rewind, low)

    async def backlog(self) -> int:
        """Plaintext cubes still waiting for a vector."""
        return await self.db.read(lambda conn: conn.execute(_BACKLOG, (self.model_name,)).fetchone()[0])

    async def _backfill(self) -> None:
        # Embeds cubes that have no vector yet, in batches, off the event loop; sleeps when none are left.
        try:
            await asyncio.to_thread(self.embedder.load)
        except MemosError as exc:
            log.error("dense search is unavailable: %s", exc)
            return
        while True:
            self._wake.clear()
            try:
                if not await self._backfill_batch():
                    await self._wake.wait()
            except Exception:
                log.exception("embedding backfill failed; retrying in 5 s")
                await asyncio.sleep(5)

    async def _backfill_batch(self) -> bool:
        """Embed and store the next batch; False when there was nothing to embed."""
        if self._rewind is not None:
            self._cursor, self._rewind = min(self._cursor, self._rewind), None
        cursor = self._cursor
        todo = await self.db.read(lambda conn: conn.execute(_MISSING, (self.model_name, cursor, BACKFILL_BATCH)).fetchall())
        if not todo:
            # A safety net for texts changed without forget(): one more pass from the start.
            if cursor > 0 and await self.backlog() > 0:
                self._cursor = 0
                return True
            return False
        vectors = await asyncio.to_thread(self.embedder.encode, [t for _, t in todo])
        stored = await self.db.write(lambda conn: _store(conn, self.model_name, todo, vectors))
        # Added after the commit, on the loop: in commit order with the forget() calls of writes, so a
        # text changed after it was read here is never left with this (stale) vector.
        self.index.add([todo[i][0] for i in stored], vectors[stored])
        self._cursor = max(self._cursor, todo[-1][0])
        self.embedded += len(stored)
        return True

    def _score(self, query: str, candidates: int):
        seqs, scores = self.index.scores(self.embedder.encode([query])[0])
        return seqs, scores, top(seqs, scores, candidates)

    async def search(self, query: str, f: CubeFilter, now: float, limit: int) -> list[tuple[dict, float]]:
        """Rows and cosine similarities of the best `limit` cubes passing the filter, best first."""
        # Embedding, scoring and picking the candidates all happen off the event loop.
        seqs, scores, nearest = await asyncio.to_thread(self._score, query, limit * _CANDIDATES_PER_HIT)
        if not len(seqs):
            return []
        where, params = filter_sql(f, now)
        found = await self.db.read(lambda conn: self._best(conn, nearest, where, params, limit))
        if len(found) >= limit or len(nearest) == len(seqs):
            return found

        def admitted(conn: sqlite3.Connection) -> list[int]:
            return [s for (s,) in conn.execute(
                f"SELECT c.seq FROM cubes c WHERE c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}", params)]

        keep = np.isin(seqs, np.asarray(await self.db.read(admitted), dtype=np.int64))
        nearest = top(seqs[keep], scores[keep], limit)
        return await self.db.read(lambda conn: self._best(conn, nearest, where, params, limit))

    def _best(self, conn: sqlite3.Connection, nearest: list[tuple[int, float]], where: str, params: list,
              limit: int) -> list[tuple[dict, float]]:
        """Rows of the best `limit` candidates that pass the filter and whose vector is current in this
        snapshot (an update or delete committed a moment ago may not have reached the index yet)."""
        scores = dict(nearest)
        passed = {s for (s,) in conn.execute(
            f"SELECT c.seq FROM cubes c WHERE c.seq IN (SELECT value FROM json_each(?))"
            f" AND c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}"
            " AND EXISTS (SELECT 1 FROM embeddings e WHERE e.seq = c.seq AND e.model = ?)",
            [json.dumps(list(scores)), *params, self.model_name])}
        best = [s for s, _ in nearest if s in passed][:limit]
        found = conn.execute(f"SELECT {rows.COLUMNS} FROM cubes c WHERE c.seq IN (SELECT value FROM json_each(?))",
                             [json.dumps(best)]).fetchall()
        by_seq = {r["seq"]: r for r in map(rows.row_dict, found)}
        return [(by_seq[s], scores[s]) for s in best]


def _store(conn: sqlite3.Connection, model: str, todo, vectors: np.ndarray) -> list[int]:
    """Record the vectors of cubes whose text is still the one embedded; their positions in todo."""
    stored = []
    for i, ((seq, text), vector) in enumerate(zip(todo, vectors)):
        if conn.execute(
            "INSERT OR REPLACE INTO embeddings (seq, model, vector) SELECT ?, ?, ?"
            " WHERE EXISTS (SELECT 1 FROM cubes WHERE seq = ? AND text = ?)",
            (seq, model, vector.astype(np.float32).tobytes(), seq, text),
        ).rowcount:
            stored.append(i)
    return stored


_WITHOUT_VECTOR = (
    " FROM cubes c LEFT JOIN embeddings e ON e.seq = c.seq AND e.model = ?"
    f" WHERE c.kind = {int(MemoryKind.PLAINTEXT)} AND c.text IS NOT NULL AND e.seq IS NULL"
)
_MISSING = "SELECT c.seq, c.text" + _WITHOUT_VECTOR + " AND c.seq > ? ORDER BY c.seq LIMIT ?"
_BACKLOG = "SELECT count(*)" + _WITHOUT_VECTOR


def fuse(lexical: list[tuple[dict, float]], semantic: list[tuple[dict, float]], limit: int, now: float) -> list[SearchHit]:
    """Convex combination of min-max normalised BM25 and cosine scores (Bruch et al., 2023, found it
    more accurate than reciprocal rank fusion); a single ranking passes through in order."""
    if not semantic or not lexical:
        only = lexical or semantic
        key = "bm25_score" if lexical else "dense_score"
        return [SearchHit(rows.to_cube(r, now), s, **{key: s}) for r, s in only[:limit]]
    fused: dict[int, list] = {}  # seq -> [row, fused score, bm25 score, dense score]
    for ranking, weight, slot in ((lexical, BM25_WEIGHT, 2), (semantic, 1.0 - BM25_WEIGHT, 3)):
        for (row, score), norm in zip(ranking, _min_max([s for _, s in ranking])):
            entry = fused.setdefault(row["seq"], [row, 0.0, None, None])
            entry[1] += weight * norm
            entry[slot] = score
    best = sorted(fused.values(), key=lambda e: -e[1])[:limit]
    return [SearchHit(rows.to_cube(row, now), score, bm25_score=b, dense_score=d) for row, score, b, d in best]


def _min_max(scores: list[float]) -> list[float]:
    # A candidate missing from one ranking scores as that ranking's worst: 0.
    low, high = min(scores), max(scores)
    if high <= low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]
