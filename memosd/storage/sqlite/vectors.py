"""MemVault's stored embeddings on SQLite (float32 blobs, one per cube), and the cubes dense search may answer."""

from __future__ import annotations

import json
import sqlite3

import numpy as np

from memosd.cube import CubeFilter, MemoryKind
from memosd.storage.sqlite.filters import filter_sql
from memosd.vault import rows

_WITHOUT_VECTOR = (
    " FROM cubes c LEFT JOIN embeddings e ON e.seq = c.seq AND e.model = ?"
    f" WHERE c.kind = {int(MemoryKind.PLAINTEXT)} AND c.text IS NOT NULL AND e.seq IS NULL"
)
_MISSING = "SELECT c.seq, c.text" + _WITHOUT_VECTOR + " AND c.seq > ? ORDER BY c.seq LIMIT ?"
_BACKLOG = "SELECT count(*)" + _WITHOUT_VECTOR


def load(conn: sqlite3.Connection, model: str, dim: int) -> tuple[list[int], list[np.ndarray]]:
    """The seqs and float32 vectors stored for the model, leaving out any that are not `dim` wide."""
    found = conn.execute("SELECT seq, vector FROM embeddings WHERE model = ?", (model,)).fetchall()
    width = 4 * dim
    good = [(s, v) for s, v in found if len(v) == width]
    return [s for s, _ in good], [np.frombuffer(v, dtype=np.float32) for _, v in good]


def missing(conn: sqlite3.Connection, model: str, after: int, limit: int) -> list[tuple[int, str]]:
    """Up to limit (seq, text) of plaintext cubes after seq `after` with no vector for the model, in seq order."""
    return conn.execute(_MISSING, (model, after, limit)).fetchall()


def backlog(conn: sqlite3.Connection, model: str) -> int:
    """How many plaintext cubes have text but no vector for the model."""
    return conn.execute(_BACKLOG, (model,)).fetchone()[0]


def store(conn: sqlite3.Connection, model: str, todo: list[tuple[int, str]], vectors: np.ndarray) -> list[int]:
    """Record the vectors (one row each) of the (seq, text) in todo whose cube still has that text, replacing
    the cube's vector; their positions in todo."""
    stored = []
    for i, ((seq, text), vector) in enumerate(zip(todo, vectors)):
        if conn.execute(
            "INSERT OR REPLACE INTO embeddings (seq, model, vector) SELECT ?, ?, ?"
            " WHERE EXISTS (SELECT 1 FROM cubes WHERE seq = ? AND text = ?)",
            (seq, model, vector.astype(np.float32).tobytes(), seq, text),
        ).rowcount:
            stored.append(i)
    return stored


def admitted(conn: sqlite3.Connection, f: CubeFilter, now: float) -> list[int]:
    """The seqs of the plaintext cubes the filter admits at `now`."""
    where, params = filter_sql(f, now)
    return [s for (s,) in conn.execute(
        f"SELECT c.seq FROM cubes c WHERE c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}", params)]


def best(conn: sqlite3.Connection, model: str, nearest: list[tuple[int, float]], f: CubeFilter, now: float,
         limit: int) -> list[tuple[dict, float]]:
    """Rows (dicts of rows.COLUMNS) and scores of the first `limit` of the nearest (seq, score), in their order,
    that are plaintext cubes the filter admits and whose vector for the model is current in this snapshot (an
    update or delete committed a moment ago may not have reached the caller's index yet)."""
    where, params = filter_sql(f, now)
    scores = dict(nearest)
    passed = {s for (s,) in conn.execute(
        f"SELECT c.seq FROM cubes c WHERE c.seq IN (SELECT value FROM json_each(?))"
        f" AND c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}"
        " AND EXISTS (SELECT 1 FROM embeddings e WHERE e.seq = c.seq AND e.model = ?)",
        [json.dumps(list(scores)), *params, model])}
    chosen = [s for s, _ in nearest if s in passed][:limit]
    found = conn.execute(f"SELECT {rows.COLUMNS} FROM cubes c WHERE c.seq IN (SELECT value FROM json_each(?))",
                         [json.dumps(chosen)]).fetchall()
    by_seq = {r["seq"]: r for r in map(rows.row_dict, found)}
    return [(by_seq[s], scores[s]) for s in chosen]


# -- what the daemon's saved HNSW index (memosd/vault/keeper.py) reads to build itself and catch up -----------

def log_head(conn: sqlite3.Connection) -> int:
    """The rev of the latest change to any stored vector (0 before the first)."""
    found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'vector_log'").fetchone()
    return int(found[0]) if found else 0


def page(conn: sqlite3.Connection, model: str, dim: int, after: int, limit: int
         ) -> list[tuple[int, bytes, str, float]]:
    """Up to limit (seq, float32 bytes, namespace, created_at) of the model's `dim`-wide vectors after seq
    `after`, in seq order."""
    return conn.execute(
        "SELECT e.seq, e.vector, c.namespace, c.created_at FROM embeddings e JOIN cubes c ON c.seq = e.seq"
        " WHERE e.seq > ? AND e.model = ? AND length(e.vector) = ? ORDER BY e.seq LIMIT ?",
        (after, model, 4 * dim, limit)).fetchall()


def changed(conn: sqlite3.Connection, model: str, dim: int, after_rev: int, also: list[int]
            ) -> tuple[int, list[tuple[int, bytes, str, float]], list[int]]:
    """What changed after log rev `after_rev` (and for the seqs in `also`): the log's head, then the rows as
    page() gives them of those seqs that now have a vector for the model, and the seqs that have none."""
    head = log_head(conn)
    seqs = {s for (s,) in conn.execute("SELECT DISTINCT seq FROM vector_log WHERE rev > ? AND rev <= ?",
                                       (after_rev, head))}
    seqs.update(also)
    if not seqs:
        return head, [], []
    present = conn.execute(
        "SELECT e.seq, e.vector, c.namespace, c.created_at FROM embeddings e JOIN cubes c ON c.seq = e.seq"
        " WHERE e.seq IN (SELECT value FROM json_each(?)) AND e.model = ? AND length(e.vector) = ? ORDER BY e.seq",
        (json.dumps(sorted(seqs)), model, 4 * dim)).fetchall()
    have = {r[0] for r in present}
    return head, present, sorted(seqs - have)


def trim_log(conn: sqlite3.Connection, upto_rev: int) -> None:
    """Forget the log's changes up to a rev a saved index covers."""
    conn.execute("DELETE FROM vector_log WHERE rev <= ?", (upto_rev,))


def tagged(conn: sqlite3.Connection, tags: tuple[str, ...]) -> list[int]:
    """The seqs of the cubes carrying every one of the tags."""
    query = " INTERSECT ".join(["SELECT seq FROM cube_tags WHERE tag = ?"] * len(tags))
    return [s for (s,) in conn.execute(query, list(tags))]
