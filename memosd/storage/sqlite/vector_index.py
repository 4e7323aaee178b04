"""The embedded engine's own index support: the vector change log the daemon's saved HNSW index (memosd/vault/keeper.py)
replays to build itself and catch up, and the tag lookup its filter uses. PostgreSQL needs none of it: its
vectors are searched in the database (pgvector's HNSW, postgres/vectors.py)."""

from __future__ import annotations

import json
import sqlite3


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
