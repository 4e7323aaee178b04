"""Dense retrieval (embedding backfill off the write path) and hybrid score fusion."""

from __future__ import annotations

import asyncio
import logging

from memosd.cube import CubeFilter, SearchHit
from memosd.errors import MemosError
from memosd.vault import rows
from memosd.vault.keeper import IndexKeeper

log = logging.getLogger("memosd.vault")
# Cubes embedded per pass of the backfill: large enough to batch well, small enough that each pass
# commits (and becomes searchable) within seconds on a CPU.
BACKFILL_BATCH = 128
# Share of the fused score that BM25 contributes; the rest is dense. Chosen on the LoCoMo dev split
# (bench/locomo.py): 0.5 to 0.7 do about equally well there; below 0.5 a weak encoder drags BM25 down.
BM25_WEIGHT = 0.6
# Candidates beyond the wanted hits taken from the index (which applies the filter's namespace, scope, kinds, time
# and tag conditions), for cubes that fail the conditions only SQL knows (lifecycle state, expiry, owner-only).
_SLACK = 8


class DenseSearch:
    """Keeps a DenseIndex in step with the vault and answers nearest-neighbour queries.

    On PostgreSQL the vault is shared by the members of a cluster, each embedding its share of the cubes (the
    backfill's claims), so an index of this daemon's own would miss what the others embedded: there every query
    goes to pgvector's HNSW index, with the caller's filter in the same statement (vectors.nearest), and sees
    each member's vectors once committed, never a changed or deleted cube's (its vector goes in that commit)."""

    def __init__(self, db, embedder, data_dir=None):
        self.db = db
        self.sql = db.sql
        self.embedder = embedder
        self.model_name = embedder.name
        # With the name, the width: vectors the model's name stored at another width are not the model's.
        self.dim = embedder.dim
        self.in_vault = db.engine == "postgresql"
        folder = None if self.in_vault or data_dir is None else data_dir / "dense"
        self.keeper = IndexKeeper(db, self.model_name, embedder.dim, folder)
        self.embedded = 0
        # Vectors committed (or being committed) but not yet in the index: still backlog, as not yet searchable.
        self._unindexed = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # The backfill walks cubes in seq order; a changed text sends it back to that cube's seq.
        self._cursor = 0
        self._rewind: int | None = None

    @property
    def index(self):
        return self.keeper.index

    async def start(self) -> None:
        if not self.in_vault:
            await self.keeper.start()
        self._task = asyncio.create_task(self._backfill(), name="memosd-embedding-backfill")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if not self.in_vault:
            await self.keeper.stop()

    def wake(self) -> None:
        self._wake.set()

    def forget(self, seqs) -> None:
        """Drop the vectors of cubes whose text changed or went; the backfill re-embeds changed ones."""
        seqs = [int(s) for s in seqs]
        if not self.in_vault:
            self.keeper.forget(seqs)
        if seqs:
            low = min(seqs) - 1
            self._rewind = low if self._rewind is None else min(self._rewind, low)

    async def backlog(self) -> int:
        """Plaintext cubes not yet searchable by vector: without one stored, or stored but not yet indexed."""
        missing = await self.db.read(lambda conn: self.sql.vectors.backlog(conn, self.model_name, self.dim))
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
        todo = await self.db.read(
            lambda conn: self.sql.vectors.missing(conn, self.model_name, self.dim, cursor, BACKFILL_BATCH))
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
            # The index replays the vault's vector log: what this batch stored, and any change since.
            if not self.in_vault:
                await self.keeper.sync()
        finally:
            self._unindexed = 0
        self._cursor = max(self._cursor, todo[-1][0])
        self.embedded += len(stored)
        return True

    async def search(self, query: str, f: CubeFilter, now: float, limit: int) -> list[tuple[dict, float]]:
        """Rows and cosine similarities of the best `limit` cubes passing the filter, best first."""
        vector = (await asyncio.to_thread(self.embedder.encode, [query]))[0]
        model, dim, vectors = self.model_name, self.dim, self.sql.vectors
        if self.in_vault:
            return await self.db.read(lambda conn: vectors.nearest(conn, model, vector, f, now, limit))
        tagged = await self.db.read(lambda conn: self.sql.vector_index.tagged(conn, f.tags)) if f.tags else None
        nearest, admitted = await self.keeper.nearest(vector, f, limit + _SLACK, tagged)
        found = await self.db.read(lambda conn: vectors.best(conn, model, dim, nearest, f, now, limit))
        if len(found) >= limit or len(nearest) >= admitted:
            return found
        # Too many of the nearest failed a condition only SQL knows: search just the cubes SQL admits.
        allowed = await self.db.read(lambda conn: vectors.admitted(conn, f, now))
        nearest, _ = await self.keeper.nearest(vector, f, limit, allowed)
        return await self.db.read(lambda conn: vectors.best(conn, model, dim, nearest, f, now, limit))


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
