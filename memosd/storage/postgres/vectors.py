"""MemVault's stored embeddings on PostgreSQL (pgvector, one per cube), the cubes dense search may answer, and
the backfill's claims that keep two daemons from embedding the same cube."""

from __future__ import annotations

import psycopg
import numpy as np

from memosd.cube import CubeFilter, MemoryKind
from memosd.storage.postgres import schema
from memosd.storage.postgres.filters import filter_sql
from memosd.storage.postgres.fulltext import _scalar
from memosd.vault import rows

# How long a cube handed to one daemon's backfill stays its own: long enough to embed a batch on a CPU, short
# enough that the cubes of a daemon that died are taken up by another soon after.
CLAIM_SECONDS = 300.0
_PLAINTEXT = f"c.kind = {int(MemoryKind.PLAINTEXT)}"
# A vector of another width under the model's name (its encoder changed width) is no vector for the model: the
# cube is embedded again, and dense search never compares that vector with a query of the new width.
_CURRENT = "e.seq = c.seq AND e.model = %(model)s AND e.dims = %(dim)s"
_WITHOUT_VECTOR = (f" FROM cubes c WHERE {_PLAINTEXT} AND c.text IS NOT NULL"
                   f" AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE {_CURRENT})")
_NOW = "extract(epoch FROM clock_timestamp())"
# Cubes a caller's filter admits in a dense search: the HNSW index's own order, scanned on past the rows the
# filter drops (pgvector's iterative scans) until `limit` pass. Set with the index's lookup in one round trip
# (set_config(..., true) is SET LOCAL).
_CUBE_COLUMNS = ", ".join(f"c.{c.strip()}" for c in rows.COLUMNS.split(","))
_PREPARE = ("SELECT to_regclass(%s), set_config('hnsw.iterative_scan', 'relaxed_order', true),"
            " set_config('hnsw.ef_search', %s, true)")


def load(conn: psycopg.Connection, model: str, dim: int) -> tuple[list[int], list[np.ndarray]]:
    """The seqs and float32 vectors stored for the model, leaving out any that are not `dim` wide."""
    # vector_send: pgvector's binary form (int16 dims, int16 unused, big-endian float32s), read without parsing text.
    found = conn.execute("SELECT seq, vector_send(vector) FROM embeddings WHERE model = %s AND dims = %s"
                         " ORDER BY seq", (model, dim)).fetchall()
    return [s for s, _ in found], [np.frombuffer(v, dtype=">f4", offset=4).astype(np.float32) for _, v in found]


def missing(conn: psycopg.Connection, model: str, dim: int, after: int, limit: int) -> list[tuple[int, str]]:
    """Up to limit (seq, text) of plaintext cubes after seq `after` with no `dim`-wide vector for the model, in seq order,
    claimed for this daemon: another daemon is not handed them until they are stored or the claim runs out
    (CLAIM_SECONDS). It must be its read's first statement, as the backfill calls it (the claim is a write)."""
    conn.execute("SET TRANSACTION READ WRITE")
    args = {"model": model, "dim": dim, "after": after, "limit": limit, "lease": CLAIM_SECONDS}
    # Rows another daemon is claiming right now are locked, and skipped; its committed claims are skipped too.
    found = conn.execute(
        "WITH me AS (SELECT coalesce(current_setting('memosd.instance', true), pg_backend_pid()::text) AS id),"
        " todo AS (SELECT c.seq, c.text" + _WITHOUT_VECTOR + " AND c.seq > %(after)s AND NOT EXISTS (SELECT 1 FROM"
        f" embedding_claims k, me WHERE k.seq = c.seq AND k.model = %(model)s AND k.claimant != me.id AND k.until > {_NOW})"
        " ORDER BY c.seq LIMIT %(limit)s FOR UPDATE OF c SKIP LOCKED),"
        " claimed AS (INSERT INTO embedding_claims AS k (seq, model, claimant, until)"
        f" SELECT todo.seq, %(model)s, me.id, {_NOW} + %(lease)s FROM todo, me"
        " ON CONFLICT (seq, model) DO UPDATE SET claimant = excluded.claimant, until = excluded.until RETURNING seq)"
        " SELECT seq, text FROM todo WHERE seq IN (SELECT seq FROM claimed) ORDER BY seq", args).fetchall()
    return [(s, t) for s, t in found]


def backlog(conn: psycopg.Connection, model: str, dim: int) -> int:
    """How many plaintext cubes have text but no `dim`-wide vector for the model."""
    return _scalar(conn.execute("SELECT count(*)" + _WITHOUT_VECTOR, {"model": model, "dim": dim}))


def store(conn: psycopg.Connection, model: str, todo: list[tuple[int, str]], vectors: np.ndarray) -> list[int]:
    """Record the vectors (one row each) of the (seq, text) in todo whose cube still has that text, replacing
    the cube's vector; their positions in todo."""
    stored = []
    dims = set()
    for i, ((seq, text), vector) in enumerate(zip(todo, vectors)):
        values = np.asarray(vector, dtype=np.float32)
        # Each float32 written as the shortest decimal that reads back as the same float32: exact.
        literal = "[" + ",".join(map(repr, values.tolist())) + "]"
        if conn.execute(
            "INSERT INTO embeddings (seq, model, vector) SELECT %s, %s, %s::vector"
            " WHERE EXISTS (SELECT 1 FROM cubes WHERE seq = %s AND text = %s)"
            " ON CONFLICT (seq) DO UPDATE SET model = excluded.model, vector = excluded.vector",
            (seq, model, literal, seq, text),
        ).rowcount:
            stored.append(i)
            dims.add(len(values))
    if todo:
        conn.execute("DELETE FROM embedding_claims WHERE model = %s AND seq = ANY(%s)", (model, [s for s, _ in todo]))
    for dim in dims:
        _index(conn, model, dim)
    return stored


def _index(conn: psycopg.Connection, model: str, dim: int) -> None:
    # Looked up before creating: CREATE INDEX IF NOT EXISTS would lock the table against writers every time.
    name = schema.vector_index_name(model, dim)
    if _scalar(conn.execute("SELECT to_regclass(%s)", (name,))) is None:
        schema.ensure_vector_index(conn, model, dim)


def admitted(conn: psycopg.Connection, f: CubeFilter, now: float) -> list[int]:
    """The seqs of the plaintext cubes the filter admits at `now`."""
    where, params = filter_sql(f, now)
    return [s for (s,) in conn.execute(f"SELECT c.seq FROM cubes c WHERE {_PLAINTEXT} AND {where}", params)]


def best(conn: psycopg.Connection, model: str, dim: int, nearest: list[tuple[int, float]], f: CubeFilter,
         now: float, limit: int) -> list[tuple[dict, float]]:
    """Rows (dicts of rows.COLUMNS) and scores of the first `limit` of the nearest (seq, score), in their order,
    that are plaintext cubes the filter admits and whose `dim`-wide vector for the model is current in this snapshot (an
    update or delete committed a moment ago may not have reached the caller's index yet)."""
    if not nearest or limit <= 0:
        return []
    where, params = filter_sql(f, now)
    scores = dict(nearest)
    passed = {s for (s,) in conn.execute(
        f"SELECT c.seq FROM cubes c WHERE c.seq = ANY(%s) AND {_PLAINTEXT} AND {where}"
        " AND EXISTS (SELECT 1 FROM embeddings e WHERE e.seq = c.seq AND e.model = %s AND e.dims = %s)",
        [list(scores), *params, model, dim])}
    chosen = [s for s, _ in nearest if s in passed][:limit]
    found = conn.execute(f"SELECT {rows.COLUMNS} FROM cubes c WHERE c.seq = ANY(%s)", [chosen]).fetchall()
    by_seq = {r["seq"]: r for r in map(rows.row_dict, found)}
    return [(by_seq[s], scores[s]) for s in chosen]


def nearest(conn: psycopg.Connection, model: str, vector: np.ndarray, f: CubeFilter, now: float,
            limit: int) -> list[tuple[dict, float]]:
    """The `limit` plaintext cubes the filter admits whose vectors for the model are nearest the query vector
    (cosine similarity, higher first), from the model's HNSW index with the filter in the same query: what a
    daemon sharing the database with others asks instead of its own in-memory index (which only holds the
    vectors it loaded and embedded itself)."""
    values = np.asarray(vector, dtype=np.float32)
    dim = len(values)
    if limit <= 0:
        return []
    index = conn.execute(_PREPARE, (schema.vector_index_name(model, dim), str(max(40, min(1000, 2 * int(limit)))))
                         ).fetchone()
    if index is None or index[0] is None:
        return []  # nothing was stored for this model at this width
    where, params = filter_sql(f, now)
    literal = "[" + ",".join(map(repr, values.tolist())) + "]"
    found = conn.execute(
        f"SELECT {_CUBE_COLUMNS}, 1 - (e.vector::vector({dim}) <=> %s::vector({dim})) FROM embeddings e"
        # The width spelled as the index's predicate is (a literal), for the planner to match them; a vector of
        # another width is filtered out before the cast, which would fail on it.
        f" JOIN cubes c ON c.seq = e.seq WHERE e.model = %s AND e.dims = {dim} AND {_PLAINTEXT}"
        f" AND {where}"
        f" ORDER BY e.vector::vector({dim}) <=> %s::vector({dim}) LIMIT %s",
        [literal, model, *params, literal, limit]).fetchall()
    # relaxed_order may hand back a few rows slightly out of order: put them back in it.
    hits = [(rows.row_dict(r[:-1]), float(r[-1])) for r in found]
    return sorted(hits, key=lambda h: -h[1])
