"""Random unit vectors written straight into a stopped daemon's vault, one per plaintext cube, as if the
embedding backfill had run: embedding 100k cubes for real takes over an hour on this machine, and search
latency does not depend on what the vectors say (their quality is not measured with them)."""

from __future__ import annotations

import sqlite3
import struct
import time
from pathlib import Path

import numpy as np

# Cubes written per transaction (SQLite) or per COPY (PostgreSQL).
CHUNK = 10_000
# PostgreSQL's binary COPY framing: signature, flags, header extension length; a row's field count; the end.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


def _unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def write_sqlite(data_dir: Path, model: str, dim: int, seed: int) -> dict:
    """Through the engine's own backfill functions (vectors.missing, then vectors.store, whose triggers log each
    vector for the daemon's HNSW index to pick up): exactly the rows the daemon's backfill writes."""
    from memosd.storage.sqlite import vectors

    rng = np.random.default_rng(seed)
    started, written, after = time.perf_counter(), 0, 0
    conn = sqlite3.connect(data_dir / "memos.db")
    try:
        while todo := vectors.missing(conn, model, dim, after, CHUNK):
            with conn:
                written += len(vectors.store(conn, model, todo, _unit_vectors(rng, len(todo), dim)))
            after = todo[-1][0]
    finally:
        conn.close()
    return {"vectors_written": written, "write_seconds": round(time.perf_counter() - started, 2)}


def write_postgres(url: str, model: str, dim: int, seed: int) -> dict:
    """The rows vectors.store writes (seq, model, vector; dims is generated), by binary COPY rather than its row
    at a time (100k rows in seconds, not minutes); then the model's HNSW index, which store() would have made at
    its first batch (schema.ensure_vector_index), and the table's statistics, which autovacuum would have read
    within a minute of the backfill's writes."""
    import psycopg

    from memosd.cube import MemoryKind
    from memosd.storage.postgres import schema

    rng = np.random.default_rng(seed)
    name = model.encode()
    out: dict = {}
    started = time.perf_counter()
    with psycopg.connect(url, options="-c statement_timeout=0") as conn:
        seqs = [s for (s,) in conn.execute(
            f"SELECT seq FROM cubes WHERE kind = {int(MemoryKind.PLAINTEXT)} AND text IS NOT NULL ORDER BY seq")]
        head = struct.pack(">i", len(name)) + name + struct.pack(">ihh", 4 + 4 * dim, dim, 0)
        with conn.cursor() as cur:
            for start in range(0, len(seqs), CHUNK):
                chunk = seqs[start:start + CHUNK]
                # vector_recv's form: int16 dims, int16 unused, big-endian float32s.
                values = _unit_vectors(rng, len(chunk), dim).astype(">f4")
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
