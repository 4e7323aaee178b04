"""MemVault's cube records on SQLite: current rows, earlier versions, tombstones, List pages and settings."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from memosd.cube import CubeFilter, LifecycleState, MemCube
from memosd.storage.records import CubeRow
from memosd.storage.sqlite.filters import filter_sql
from memosd.vault import rows

_SELECT = f"SELECT {rows.COLUMNS} FROM cubes"


# -- writes --------------------------------------------------------------------------------------

def insert_cubes(conn: sqlite3.Connection, cubes: list[MemCube], contexts: Sequence[str] | None = None) -> None:
    """Store new plaintext cubes (active, version 1), listed after every cube stored before, in this order;
    contexts: each cube's search context (indexed, never returned), "" or None for none."""
    (top,) = conn.execute("SELECT coalesce(max(seq), 0) FROM cubes").fetchone()
    contexts = contexts or [""] * len(cubes)
    conn.executemany(
        "INSERT INTO cubes (seq, id, namespace, kind, state, version, parent_version, text, tags,"
        " metadata, source, owner, visibility, priority, created_at, updated_at, expires_at, search_context)"
        " VALUES (?, ?, ?, ?, 1, 1, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (top + i + 1, c.id, c.namespace, int(c.kind), c.text, rows.dumps(list(c.tags)),
             rows.dumps(c.metadata), c.source, c.owner, int(c.visibility), c.priority, c.created_at, c.updated_at,
             c.expires_at, context or None)
            for i, (c, context) in enumerate(zip(cubes, contexts, strict=True))
        ],
    )
    conn.executemany(
        "INSERT INTO cube_tags (tag, seq) VALUES (?, ?)",
        [(tag, top + i + 1) for i, c in enumerate(cubes) for tag in c.tags],
    )


def write_version(conn: sqlite3.Connection, old: CubeRow, new: CubeRow, *, tags: tuple[str, ...] | None = None,
                  text_changed: bool = False) -> None:
    """Keep the current row `old` as an earlier version and make `new` (the same seq) current. tags: the new
    version's tags when they change; text_changed: its text changed, so the embedding of the old one goes."""
    unknown = set(new) - set(rows.NAMES)
    if unknown:
        raise ValueError(f"not columns of cubes: {sorted(unknown)}")
    _keep_version(conn, old)
    if tags is not None:
        _set_tags(conn, old["seq"], tags)
    cols = [k for k in new if k != "seq" and new[k] != old[k]]
    if cols:
        conn.execute(f"UPDATE cubes SET {', '.join(f'{k} = ?' for k in cols)} WHERE seq = ?",
                     [new[k] for k in cols] + [old["seq"]])
    if text_changed:
        conn.execute("DELETE FROM embeddings WHERE seq = ?", (old["seq"],))


def tombstone(conn: sqlite3.Connection, row: CubeRow, now: float) -> int:
    """Replace the current row by a tombstone (no text, no tags, no embedding), keeping it as an earlier
    version; returns the tombstone's version."""
    version = row["version"] + 1
    _keep_version(conn, row)
    conn.execute(
        "UPDATE cubes SET state = ?, text = NULL, search_context = NULL, version = ?, parent_version = ?,"
        " updated_at = ? WHERE seq = ?", (LifecycleState.DELETED, version, row["version"], now, row["seq"]))
    conn.execute("DELETE FROM cube_tags WHERE seq = ?", (row["seq"],))
    conn.execute("DELETE FROM embeddings WHERE seq = ?", (row["seq"],))
    return version


def expire_due(conn: sqlite3.Connection, now: float) -> int:
    """Mark active cubes whose expiry is at or before now as expired; returns how many."""
    return conn.execute(
        "UPDATE cubes SET state = ? WHERE state = ? AND expires_at IS NOT NULL AND expires_at <= ?",
        (LifecycleState.EXPIRED, LifecycleState.ACTIVE, now)).rowcount


def expire_batch(conn: sqlite3.Connection, now: float, limit: int) -> list[str]:
    """Mark up to limit active cubes whose expiry is at or before now as expired; their ids."""
    return [i for (i,) in conn.execute(
        "UPDATE cubes SET state = ? WHERE seq IN (SELECT seq FROM cubes WHERE state = ? AND expires_at IS NOT NULL"
        " AND expires_at <= ? ORDER BY expires_at LIMIT ?) RETURNING id",
        (LifecycleState.EXPIRED, LifecycleState.ACTIVE, now, limit))]


def setting(conn: sqlite3.Connection, key: str, default: str) -> str:
    """The stored value of a setting, storing default first if it has none (inside a write)."""
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    if row:
        return row[0]
    conn.execute("INSERT INTO settings(key, value) VALUES (?, ?)", (key, default))
    return default


def _keep_version(conn: sqlite3.Connection, row: CubeRow) -> None:
    conn.execute("INSERT INTO cube_versions (id, version, snapshot) VALUES (?, ?, ?)",
                 (row["id"], row["version"], rows.snapshot(row)))


def _set_tags(conn: sqlite3.Connection, seq: int, tags: tuple[str, ...]) -> None:
    conn.execute("DELETE FROM cube_tags WHERE seq = ?", (seq,))
    conn.executemany("INSERT INTO cube_tags (tag, seq) VALUES (?, ?)", [(t, seq) for t in tags])


# -- reads ---------------------------------------------------------------------------------------

def current_row(conn: sqlite3.Connection, cube_id: str) -> CubeRow | None:
    """The cube's current row, tombstones included; None for an unknown id."""
    row = conn.execute(f"{_SELECT} WHERE id = ?", (cube_id,)).fetchone()
    return rows.row_dict(row) if row is not None else None


def earlier_version(conn: sqlite3.Connection, cube_id: str, version: int) -> MemCube | None:
    """One of the cube's replaced versions (None for the current version and for one it never had)."""
    found = conn.execute("SELECT snapshot FROM cube_versions WHERE id = ? AND version = ?",
                         (cube_id, version)).fetchone()
    return rows.from_snapshot(found[0]) if found else None


def earlier_versions(conn: sqlite3.Connection, cube_id: str) -> list[MemCube]:
    """Every replaced version of the cube, oldest first (the current one is its row)."""
    older = conn.execute("SELECT snapshot FROM cube_versions WHERE id = ? ORDER BY version", (cube_id,)).fetchall()
    return [rows.from_snapshot(s) for (s,) in older]


def current_cube(conn: sqlite3.Connection, cube_id: str, now: float | None = None) -> MemCube | None:
    """A cube's current version unless it is deleted (for readers outside MemVault, e.g. MemStore's publish)."""
    row = conn.execute(f"{_SELECT} WHERE id = ? AND state != ?", (cube_id, LifecycleState.DELETED)).fetchone()
    return rows.to_cube(rows.row_dict(row), now) if row is not None else None



def current_cubes(conn: sqlite3.Connection, cube_ids: Sequence[str], now: float | None = None) -> dict[str, MemCube]:
    """current_cube of several cubes in few queries, by id (those deleted or unknown left out)."""
    found: dict[str, MemCube] = {}
    ids = list(cube_ids)
    for start in range(0, len(ids), 500):  # well under SQLite's limit on bound parameters
        part = ids[start:start + 500]
        marks = ",".join("?" * len(part))
        for r in conn.execute(f"{_SELECT} WHERE id IN ({marks}) AND state != ?", (*part, LifecycleState.DELETED)):
            cube = rows.to_cube(rows.row_dict(r), now)
            found[cube.id] = cube
    return found

def cube_at_version(conn: sqlite3.Connection, cube_id: str, version: int, now: float | None = None) -> MemCube | None:
    """One version of a cube, current or earlier (for readers outside MemVault, e.g. MemStore's replay)."""
    row = current_row(conn, cube_id)
    if row is None:
        return None
    if row["version"] == version:
        return rows.to_cube(row, now)
    return earlier_version(conn, cube_id, version)


def list_page(conn: sqlite3.Connection, f: CubeFilter, now: float, after_seq: int, limit: int, *,
              count: bool) -> tuple[list[CubeRow], int | None]:
    """Up to limit rows the filter selects at now with a seq after after_seq, in seq order; and, with count,
    how many rows it selects in all (None without)."""
    where, params = filter_sql(f, now)
    found = conn.execute(f"{_SELECT} c WHERE c.seq > ? AND {where} ORDER BY c.seq LIMIT ?",
                         [after_seq, *params, limit]).fetchall()
    total = conn.execute(f"SELECT count(*) FROM cubes c WHERE {where}", params).fetchone()[0] if count else None
    return [rows.row_dict(r) for r in found], total


def counts(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
    """How many cubes there are of each (kind, state) present, as (kind, state, n)."""
    return conn.execute("SELECT kind, state, count(*) FROM cubes GROUP BY kind, state").fetchall()
