"""Dense retrieval (embedding backfill off the write path) and hybrid score fusion."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from memosd.cube import CubeFilter, SearchHit
from memosd.errors import MemosError
from memosd.vault import rows
from memosd.vault.dense import DenseIndex, top

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
    """Keeps a DenseIndex in step with the vault and answers nearest-neighbour queries.

    On PostgreSQL the vault is shared by the members of a cluster, each embedding its share of the cubes (the
    backfill's claims), so an index of this daemon's own would miss what the others embedded: there every query
    goes to pgvector's HNSW index, with the caller's filter in the same statement (vectors.nearest), and sees
    each member's vectors once committed, never a changed or deleted cube's (its vector goes in that commit)."""

    def __init__(self, db, embedder):
        self.db = db
        self.sql = db.sql
        self.embedder = embedder
        self.model_name = embedder.name
        self.index = DenseIndex(embedder.dim)
        self.in_vault = db.engine == "postgresql"
        self.embedded = 0
        # Vectors committed (or being committed) but not yet in the index: still backlog, as not yet searchable.
        self._unindexed = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # The backfill walks cubes in seq order; a changed text sends it back to that cube's seq.
        self._cursor = 0
        self._rewind: int | None = None

    async def start(self) -> None:
        if not self.in_vault:
            seqs, vectors = await self.db.read(lambda conn: self.sql.vectors.load(conn, self.model_name,
                                                                                  self.index.dim))
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
        """Plaintext cubes not yet searchable by vector: without one stored, or stored but not yet indexed."""
        missing = await self.db.read(lambda conn: self.sql.vectors.backlog(conn, self.model_name))
        # Read after the count: a batch committed since is either indexed already or still counted here (a
        # batch may count twice for a moment, but the backlog never reads 0 before its cubes are searchable).
        return missing + self._unindexed

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
        todo = await self.db.read(lambda conn: self.sql.vectors.missing(conn, self.model_name, cursor, BACKFILL_BATCH))
        if not todo:
            # A safety net for texts changed without forget(): one more pass from the start.
            if cursor > 0 and await self.backlog() > 0:
                self._cursor = 0
                return True
            return False
        vectors = await asyncio.to_thread(self.embedder.encode, [t for _, t in todo])
        self._unindexed = len(todo)
        try:
            stored = await self.db.write(lambda conn: self.sql.vectors.store(conn, self.model_name, todo, vectors))
            # Added after the commit, on the loop: in commit order with the forget() calls of writes, so a
            # text changed after it was read here is never left with this (stale) vector.
            if not self.in_vault:
                self.index.add([todo[i][0] for i in stored], vectors[stored])
        finally:
            self._unindexed = 0
        self._cursor = max(self._cursor, todo[-1][0])
        self.embedded += len(stored)
        return True

    def _score(self, query: str, candidates: int):
        seqs, scores = self.index.scores(self.embedder.encode([query])[0])
        return seqs, scores, top(seqs, scores, candidates)

    async def search(self, query: str, f: CubeFilter, now: float, limit: int) -> list[tuple[dict, float]]:
        """Rows and cosine similarities of the best `limit` cubes passing the filter, best first."""
        if self.in_vault:
            vector = (await asyncio.to_thread(self.embedder.encode, [query]))[0]
            model = self.model_name
            return await self.db.read(lambda conn: self.sql.vectors.nearest(conn, model, vector, f, now, limit))
        # Embedding, scoring and picking the candidates all happen off the event loop.
        seqs, scores, nearest = await asyncio.to_thread(self._score, query, limit * _CANDIDATES_PER_HIT)
        if not len(seqs):
            return []
        vectors, model = self.sql.vectors, self.model_name
        found = await self.db.read(lambda conn: vectors.best(conn, model, nearest, f, now, limit))
        if len(found) >= limit or len(nearest) == len(seqs):
            return found
        admitted = await self.db.read(lambda conn: vectors.admitted(conn, f, now))
        keep = np.isin(seqs, np.asarray(admitted, dtype=np.int64))
        nearest = top(seqs[keep], scores[keep], limit)
        return await self.db.read(lambda conn: vectors.best(conn, model, nearest, f, now, limit))


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
