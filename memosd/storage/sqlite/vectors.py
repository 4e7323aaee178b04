"""MemVault's stored embeddings on SQLite (float32 blobs, one per cube), and the cubes dense search may answer."""

from __future__ import annotations

import json
import sqlite3

import numpy as np

from memosd.cube import CubeFilter, MemoryKind
from memosd.storage.sqlite.filters import filter_sql
from memosd.vault import rows

# A vector of another width under the model's name (its encoder changed width) is no vector for the model: the
# cube is embedded again, and dense search never compares that vector with a query of the new width.
_CURRENT = "e.seq = c.seq AND e.model = ? AND length(e.vector) = ?"
_WITHOUT_VECTOR = (
    f" FROM cubes c LEFT JOIN embeddings e ON {_CURRENT}"
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


def missing(conn: sqlite3.Connection, model: str, dim: int, after: int, limit: int) -> list[tuple[int, str]]:
    """Up to limit (seq, text) of plaintext cubes after seq `after` with no `dim`-wide vector for the model, in seq
    order."""
    return conn.execute(_MISSING, (model, 4 * dim, after, limit)).fetchall()


def backlog(conn: sqlite3.Connection, model: str, dim: int) -> int:
    """How many plaintext cubes have text but no `dim`-wide vector for the model."""
    return conn.execute(_BACKLOG, (model, 4 * dim)).fetchone()[0]


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


def best(conn: sqlite3.Connection, model: str, dim: int, nearest: list[tuple[int, float]], f: CubeFilter,
         now: float, limit: int) -> list[tuple[dict, float]]:
    """Rows (dicts of rows.COLUMNS) and scores of the first `limit` of the nearest (seq, score), in their order,
    that are plaintext cubes the filter admits and whose `dim`-wide vector for the model is current in this snapshot (an
    update or delete committed a moment ago may not have reached the caller's index yet)."""
    where, params = filter_sql(f, now)
    scores = dict(nearest)
    passed = {s for (s,) in conn.execute(
        f"SELECT c.seq FROM cubes c WHERE c.seq IN (SELECT value FROM json_each(?))"
        f" AND c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}"
        f" AND EXISTS (SELECT 1 FROM embeddings e WHERE {_CURRENT})",
        [json.dumps(list(scores)), *params, model, 4 * dim])}
    chosen = [s for s, _ in nearest if s in passed][:limit]
    found = conn.execute(f"SELECT {rows.COLUMNS} FROM cubes c WHERE c.seq IN (SELECT value FROM json_each(?))",
                         [json.dumps(chosen)]).fetchall()
    by_seq = {r["seq"]: r for r in map(rows.row_dict, found)}
    return [(by_seq[s], scores[s]) for s in chosen]
