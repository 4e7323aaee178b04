"""Vectors written straight into a stopped daemon's vault, one per plaintext cube, as if the embedding backfill had
run: random unit vectors by default (embedding 100k cubes at the daemon's fp32 takes over an hour on this machine),
or the model's own vectors of each text (`Encoded`: at bf16 on every core where this CPU has bf16 kernels, 7 to 18
minutes for 100k on the machines here, kept in a cache file between runs). Both remember each text's vector, for
the bench to rank exactly what the daemon ranked approximately. A graph index's search cost depends on the
vectors: random ones in 384 dimensions have no structure for HNSW to follow, real embeddings do."""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Cubes written per transaction (SQLite) or per COPY (PostgreSQL).
CHUNK = 10_000
# PostgreSQL's binary COPY framing: signature, flags, header extension length; a row's field count; the end.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


class Remembered:
    """Vectors by text, made once and remembered (the bench writes the same corpus into each engine's vault, and
    ranks it exactly against the same vectors to measure what the daemon's index found)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.known: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.known))
        started = time.perf_counter()
        if todo:
            self.known.update(zip(todo, self._make(todo)))
        self.seconds += time.perf_counter() - started
        return np.stack([self.known[t] for t in texts]) if texts else np.empty((0, self.dim), np.float32)

    def _make(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class RandomUnit(Remembered):
    """Random unit stand-ins, the same for a text in each engine's vault."""

    def __init__(self, dim: int, seed: int):
        super().__init__(dim)
        self.rng = np.random.default_rng(seed)

    def _make(self, texts: list[str]) -> np.ndarray:
        vectors = self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


class Encoded(Remembered):
    """The model's vectors of texts on every core, at bf16 where this CPU runs it (else fp32); with a cache file,
    those of an earlier run of the same encoder are read from it (and new ones written to it by save())."""

    def __init__(self, model_dir: str, cache: Path | None = None):
        import os

        from memosd.runtime.embedder import Embedder

        self.encoder = Embedder(model_dir, precision="bf16", threads=os.cpu_count())
        super().__init__(self.encoder.dim)
        self.cache, self.cached = cache, 0
        if cache is not None and cache.exists():
            with np.load(cache, allow_pickle=False) as saved:
                if str(saved["encoder"]) == self.encoder.name:  # the name carries the weights' hash and precision
                    self.known.update(zip(saved["texts"].tolist(), saved["vectors"]))
            self.cached = len(self.known)

    def _make(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([self.encoder.encode(texts[start:start + 512]) for start in range(0, len(texts), 512)])

    def save(self) -> None:
        if self.cache is None or len(self.known) == self.cached:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache.with_suffix(".partial.npz")
        np.savez(partial, encoder=np.array(self.encoder.name), texts=np.array(list(self.known)),
                 vectors=np.stack(list(self.known.values())))
        partial.replace(self.cache)
        self.cached = len(self.known)


def write_sqlite(data_dir: Path, model: str, vectors_of: Remembered) -> dict:
    """Through the engine's own backfill functions (vectors.missing, then vectors.store, whose triggers log each
    vector for the daemon's HNSW index to pick up): exactly the rows the daemon's backfill writes."""
    from memosd.storage.sqlite import vectors

    dim = vectors_of.dim
    started, written, after = time.perf_counter(), 0, 0
    conn = sqlite3.connect(data_dir / "memos.db")
    try:
        while todo := vectors.missing(conn, model, dim, after, CHUNK):
            with conn:
                values = vectors_of([t for _, t in todo])
                written += len(vectors.store(conn, model, todo, values))
            after = todo[-1][0]
    finally:
        conn.close()
    return {"vectors_written": written, "write_seconds": round(time.perf_counter() - started, 2)}


def write_postgres(url: str, model: str, vectors_of: Remembered) -> dict:
    """The rows vectors.store writes (seq, model, vector; dims is generated), by binary COPY rather than its row
    at a time (100k rows in seconds, not minutes); then the model's HNSW index, which store() would have made at
    its first batch (schema.ensure_vector_index), and the table's statistics, which autovacuum would have read
    within a minute of the backfill's writes."""
    import psycopg

    from memosd.cube import MemoryKind
    from memosd.storage.postgres import schema

    dim = vectors_of.dim
    name = model.encode()
    out: dict = {}
    started = time.perf_counter()
    with psycopg.connect(url, options="-c statement_timeout=0") as conn:
        found = conn.execute(f"SELECT seq, text FROM cubes WHERE kind = {int(MemoryKind.PLAINTEXT)} AND text IS NOT NULL"
                             " ORDER BY seq").fetchall()
        seqs, texts = [s for s, _ in found], [t for _, t in found]
        head = struct.pack(">i", len(name)) + name + struct.pack(">ihh", 4 + 4 * dim, dim, 0)
        with conn.cursor() as cur:
            for start in range(0, len(seqs), CHUNK):
                chunk = seqs[start:start + CHUNK]
                # vector_recv's form: int16 dims, int16 unused, big-endian float32s.
                values = vectors_of(texts[start:start + CHUNK]).astype(">f4")
                rows = b"".join(struct.pack(">hiq", 3, 8, seq) + head + v.tobytes() for seq, v in zip(chunk, values))
                with cur.copy("COPY embeddings (seq, model, vector) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(_COPY_HEADER + rows + _COPY_TRAILER)
        conn.commit()
        out["vectors_written"] = len(seqs)
        out["write_seconds"] = round(time.perf_counter() - started, 2)
        # The graph built in memory, not spilled (100k 384-wide vectors are ~150 MB, the default 64 MB): the bench's
        # own session only, for a build in a minute rather than many; the index is the same.
        conn.execute("SET maintenance_work_mem = '1GB'")
        t = time.perf_counter()
        out["hnsw_index"] = schema.ensure_vector_index(conn, model, dim)
        conn.commit()
        out["hnsw_build_seconds"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        conn.execute("ANALYZE embeddings")
        conn.commit()
        out["analyze_seconds"] = round(time.perf_counter() - t, 2)
    return out
