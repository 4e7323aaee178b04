"""Tensor cubes and imports on SQLite: new cube rows, the blob reference they take, FindByPrefix's block index,
adapters by base model, and the import's id and payload checks."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from memosd.cube import CubeFilter, LifecycleState, MemCube, MemoryKind
from memosd.vault import rows
from memosd.storage.sqlite.filters import filter_sql

# Block keys looked up per statement, well under SQLite's variable limit (32766 by default).
KEYS_PER_QUERY = 4096
# Ids looked up per statement, for the same reason.
IDS_PER_QUERY = 4096


def insert_cubes(conn: sqlite3.Connection, cubes: Sequence[MemCube]) -> list[int]:
    """Store new cubes as version 1 rows with their tags, as given (kind, state, owner, times, text, manifest);
    returns their seqs, in order."""
    (top,) = conn.execute("SELECT coalesce(max(seq), 0) FROM cubes").fetchone()
    seqs = list(range(top + 1, top + 1 + len(cubes)))
    conn.executemany(
        "INSERT INTO cubes (seq, id, namespace, kind, state, version, parent_version, text, tags, metadata,"
        " source, owner, visibility, priority, created_at, updated_at, expires_at, derived_from, manifest)"
        " VALUES (?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(seq, c.id, c.namespace, int(c.kind), int(c.state), c.text, rows.dumps(list(c.tags)), rows.dumps(c.metadata),
          c.source, c.owner, int(c.visibility), c.priority, c.created_at, c.updated_at, c.expires_at,
          rows.dumps(list(c.derived_from)), rows.dumps(c.manifest)) for seq, c in zip(seqs, cubes)])
    conn.executemany("INSERT INTO cube_tags (tag, seq) VALUES (?, ?)",
                     [(tag, seq) for seq, c in zip(seqs, cubes) for tag in c.tags])
    return seqs


def reference_blob(conn: sqlite3.Connection, sha256: str) -> bool:
    """Take one reference on a stored blob (it is no longer collectable); False when it is not stored."""
    return conn.execute("UPDATE blobs SET refcount = refcount + 1, unreferenced_since = NULL WHERE sha256 = ?",
                        (sha256,)).rowcount > 0


def index_prefixes(conn: sqlite3.Connection, seq: int, index: Sequence[tuple[bytes, int]]) -> None:
    """Index an activation cube under its prefix keys, each with the number of tokens it covers."""
    conn.executemany("INSERT OR IGNORE INTO activation_prefixes (key, seq, tokens) VALUES (?, ?, ?)",
                     [(key, seq, tokens) for key, tokens in index])


def prefix_candidates(conn: sqlite3.Connection, keys: Sequence[bytes], root: bytes, f: CubeFilter, now: float,
                      limit: int) -> list[tuple]:
    """The rows (rows.COLUMNS) of up to `limit` cubes the filter selects that are indexed under the longest of
    the chained block keys any of them has (all of them tied at that length), newest first; failing that,
    those indexed under the root key (shorter than one block). Empty when none is."""
    where, params = filter_sql(f, now)
    seqs: list[int] = []
    # Keys are chained, so later blocks are longer prefixes: the last group of keys with a match holds the best.
    for start in reversed(range(0, len(keys), KEYS_PER_QUERY)):
        group = list(keys[start:start + KEYS_PER_QUERY])
        found = conn.execute(
            f"SELECT p.tokens, c.seq FROM activation_prefixes p JOIN cubes c ON c.seq = p.seq"
            f" WHERE p.key IN ({','.join('?' * len(group))}) AND {where}"
            " ORDER BY p.tokens DESC, c.seq DESC LIMIT ?", [*group, *params, limit]).fetchall()
        if found:
            seqs = [seq for tokens, seq in found if tokens == found[0][0]]
            break
    if not seqs:
        seqs = [seq for (seq,) in conn.execute(
            f"SELECT c.seq FROM activation_prefixes p JOIN cubes c ON c.seq = p.seq WHERE p.key = ?"
            f" AND {where} ORDER BY c.seq DESC LIMIT ?", [root, *params, limit]).fetchall()]
    if not seqs:
        return []
    return conn.execute(f"SELECT {rows.COLUMNS} FROM cubes WHERE seq IN ({','.join('?' * len(seqs))})"
                        " ORDER BY seq DESC", seqs).fetchall()


def of_model(conn: sqlite3.Connection, model_fingerprint: str, f: CubeFilter, now: float,
             derived_from: Sequence[str] | None, limit: int) -> list[tuple]:
    """The rows (rows.COLUMNS) of up to `limit` cubes the filter selects whose manifest names this model,
    newest first; with derived_from, only those derived from at least one of those ids."""
    where, params = filter_sql(f, now)
    lineage, lineage_params = "", []
    if derived_from is not None:
        if not derived_from:
            return []
        lineage = (f" AND EXISTS (SELECT 1 FROM json_each(c.derived_from) d WHERE d.value IN"
                   f" ({','.join('?' * len(derived_from))}))")
        lineage_params = list(derived_from)
    return conn.execute(
        f"SELECT {rows.COLUMNS} FROM cubes c WHERE c.manifest IS NOT NULL"
        f" AND json_extract(c.manifest, '$.model.model_fingerprint') = ?"
        f" AND {where}{lineage} ORDER BY c.seq DESC LIMIT ?",
        [model_fingerprint, *params, *lineage_params, limit]).fetchall()


def lock_imports(conn: sqlite3.Connection) -> None:
    """Nothing to wait for: SQLite's one writer runs one import's transaction at a time already."""


def namespaces_of(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    """The namespace of each of these ids that a cube has, by id (ids no cube has are left out)."""
    found: dict[str, str] = {}
    for start in range(0, len(ids), IDS_PER_QUERY):
        group = list(ids[start:start + IDS_PER_QUERY])
        found.update(conn.execute(f"SELECT id, namespace FROM cubes WHERE id IN ({','.join('?' * len(group))})",
                                  group).fetchall())
    return found


def has_live_payload(conn: sqlite3.Connection, namespace: str, kind: MemoryKind, sha256: str,
                     owner: str | None = None) -> bool:
    """Whether a cube of this kind in the namespace (owned by owner, if given), not deleted, has the payload with
    this sha256."""
    mine, params = ("", ()) if owner is None else (" AND owner = ?", (owner,))
    return conn.execute("SELECT 1 FROM cubes WHERE namespace = ? AND kind = ? AND state != ?"
                        f" AND json_extract(manifest, '$.blob.sha256') = ?{mine}",
                        (namespace, int(kind), int(LifecycleState.DELETED), sha256, *params)).fetchone() is not None
