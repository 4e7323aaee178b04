"""MemVault's cube records on PostgreSQL: current rows, earlier versions, tombstones, List pages and settings,
correct under several daemons writing at once."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import errors as pg_errors

from memosd.cube import CubeFilter, LifecycleState, MemCube
from memosd.storage.postgres.filters import filter_sql
from memosd.storage.records import CubeRow
from memosd.vault import rows

_SELECT = f"SELECT {rows.COLUMNS} FROM cubes"
# pg_advisory_xact_lock key held from allocating a batch's seqs to its commit, in every daemon on the database.
# Readers walk seq (List page tokens, the embedding backfill, MemStore's replay) and go on after the last seq they
# saw: a seq committed after a larger one would be skipped. Under the lock seqs are taken in commit order: the
# next batch takes its seqs only once ours is committed (and visible: a lock goes after the commit is).
SEQ_LOCK = 0x6D656D6F_73640002
_COLUMNS = ("seq, id, namespace, kind, state, version, parent_version, text, tags, metadata, source, owner,"
            " visibility, priority, created_at, updated_at, expires_at, derived_from, manifest")


# -- writes --------------------------------------------------------------------------------------

def insert_cubes(conn, cubes: list[MemCube], contexts: Sequence[str] | None = None) -> None:
    """Store new plaintext cubes (active, version 1), listed after every cube stored before, in this order;
    contexts: each cube's search context (indexed, never returned), "" or None for none."""
    rows_ = [(c.id, c.namespace, int(c.kind), int(LifecycleState.ACTIVE), c.text, rows.dumps(list(c.tags)),
              rows.dumps(c.metadata), c.source, c.owner, int(c.visibility), c.priority, c.created_at, c.updated_at,
              c.expires_at, "[]", None) for c in cubes]
    copy_cubes(conn, rows_, [c.tags for c in cubes], contexts)


def copy_cubes(conn, values: Sequence[tuple], tags: Sequence[Sequence[str]],
               contexts: Sequence[str] | None = None) -> list[int]:
    """Store version 1 rows (the _COLUMNS after seq, in order) and their tags with COPY, under SEQ_LOCK;
    returns their seqs, increasing in the order given (tensors.insert_cubes shares it). contexts: the rows'
    search contexts, if any has one."""
    if not values:
        return []
    seqs = allocate_seqs(conn, len(values))
    columns = _COLUMNS + (", search_context" if contexts else "")
    with conn.cursor() as cur:
        with cur.copy(f"COPY cubes ({columns}) FROM STDIN") as copy:
            for i, (seq, row) in enumerate(zip(seqs, values)):
                copy.write_row(_full_row(seq, row) + ((contexts[i] or None,) if contexts else ()))
        pairs = [(tag, seq) for seq, cube_tags in zip(seqs, tags) for tag in cube_tags]
        if pairs:
            with cur.copy("COPY cube_tags (tag, seq) FROM STDIN") as copy:
                for pair in pairs:
                    copy.write_row(pair)
    return seqs


def _full_row(seq: int, row: tuple) -> tuple:
    # row: (id, namespace, kind, state, text, tags, metadata, source, owner, visibility, priority, created_at,
    # updated_at, expires_at, derived_from, manifest); version 1 of parent 0 goes in between.
    return (seq, row[0], row[1], row[2], row[3], 1, 0, *row[4:])


def allocate_seqs(conn, n: int) -> list[int]:
    """n new seqs in increasing order, taken under SEQ_LOCK (held to the commit) from the cubes' own sequence."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEQ_LOCK,))
    found = conn.execute("SELECT nextval(pg_get_serial_sequence('cubes', 'seq')) FROM generate_series(1, %s)",
                         (n,)).fetchall()
    return sorted(int(s) for (s,) in found)


def write_version(conn, old: CubeRow, new: CubeRow, *, tags: tuple[str, ...] | None = None,
                  text_changed: bool = False) -> None:
    """Keep the current row `old` as an earlier version and make `new` (the same seq) current. tags: the new
    version's tags when they change; text_changed: its text changed, so the embedding of the old one goes."""
    unknown = set(new) - set(rows.NAMES)
    if unknown:
        raise ValueError(f"not columns of cubes: {sorted(unknown)}")
    cols = [k for k in new if k != "seq" and new[k] != old[k]]
    if cols:
        changed = conn.execute(f"UPDATE cubes SET {', '.join(f'{k} = %s' for k in cols)}"
                               " WHERE seq = %s AND version = %s", [new[k] for k in cols] + [old["seq"], old["version"]])
    else:
        changed = conn.execute("SELECT 1 FROM cubes WHERE seq = %s AND version = %s FOR UPDATE",
                               (old["seq"], old["version"]))
    _check_current(changed.rowcount, old)
    _keep_version(conn, old)
    if tags is not None:
        _set_tags(conn, old["seq"], tags)
    if text_changed:
        conn.execute("DELETE FROM embeddings WHERE seq = %s", (old["seq"],))


def tombstone(conn, row: CubeRow, now: float) -> int:
    """Replace the current row by a tombstone (no text, no tags, no embedding), keeping it as an earlier
    version; returns the tombstone's version."""
    version = row["version"] + 1
    changed = conn.execute(
        "UPDATE cubes SET state = %s, text = NULL, search_context = NULL, version = %s, parent_version = %s,"
        " updated_at = %s WHERE seq = %s AND version = %s",
        (int(LifecycleState.DELETED), version, row["version"], now, row["seq"], row["version"]))
    _check_current(changed.rowcount, row)
    _keep_version(conn, row)
    conn.execute("DELETE FROM cube_tags WHERE seq = %s", (row["seq"],))
    conn.execute("DELETE FROM embeddings WHERE seq = %s", (row["seq"],))
    return version


def _check_current(rowcount: int, old: CubeRow) -> None:
    # The update is conditional on the version the job read. current_row locked the row in this transaction, so
    # it is still that version; a row read without the lock (in an earlier transaction, or by a caller that did
    # not use current_row) may have been replaced by another daemon's write since: ours then matches nothing,
    # and the job runs again from the start (Database retries a serialization failure) on top of the version
    # now current. No version is lost, none is written twice.
    if rowcount != 1:
        raise pg_errors.SerializationFailure(
            f"cube {old['id']} changed after version {old['version']} was read; the write is retried")


def expire_due(conn, now: float) -> int:
    """Mark active cubes whose expiry is at or before now as expired; returns how many."""
    return conn.execute(
        "UPDATE cubes SET state = %s WHERE state = %s AND expires_at IS NOT NULL AND expires_at <= %s",
        (int(LifecycleState.EXPIRED), int(LifecycleState.ACTIVE), now)).rowcount


def expire_batch(conn, now: float, limit: int) -> list[str]:
    """Mark up to limit active cubes whose expiry is at or before now as expired; their ids. Rows another
    writer is expiring at that moment are skipped (it audits them)."""
    return [i for (i,) in conn.execute(
        "UPDATE cubes SET state = %s WHERE seq IN (SELECT seq FROM cubes WHERE state = %s AND expires_at IS NOT NULL"
        " AND expires_at <= %s ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id",
        (int(LifecycleState.EXPIRED), int(LifecycleState.ACTIVE), now, limit))]


def setting(conn, key: str, default: str) -> str:
    """The stored value of a setting, storing default first if it has none (inside a write)."""
    row = conn.execute("SELECT value FROM settings WHERE key = %s", (key,)).fetchone()
    if row:
        return row[0]
    # Two daemons' first starts meet at the primary key: the second waits for the first's commit, stores
    # nothing, and its next statement (a new snapshot) reads the first's value.
    conn.execute("INSERT INTO settings (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, default))
    return conn.execute("SELECT value FROM settings WHERE key = %s", (key,)).fetchone()[0]


def _keep_version(conn, row: CubeRow) -> None:
    conn.execute("INSERT INTO cube_versions (id, version, snapshot) VALUES (%s, %s, %s)",
                 (row["id"], row["version"], rows.snapshot(row)))


def _set_tags(conn, seq: int, tags: tuple[str, ...]) -> None:
    conn.execute("DELETE FROM cube_tags WHERE seq = %s", (seq,))
    if tags:
        conn.cursor().executemany("INSERT INTO cube_tags (tag, seq) VALUES (%s, %s)", [(t, seq) for t in tags])


# -- reads ---------------------------------------------------------------------------------------

def current_row(conn, cube_id: str) -> CubeRow | None:
    """The cube's current row, tombstones included; None for an unknown id. Inside a write the row stays
    locked to the commit, so that the version written next is on top of this one."""
    row = conn.execute(f"SELECT {rows.COLUMNS}, current_setting('transaction_read_only') FROM cubes WHERE id = %s",
                       (cube_id,)).fetchone()
    if row is not None and row[-1] == "off":
        # A write (update, delete) reads, checks and writes on top of the row it reads here: FOR UPDATE waits
        # for another daemon's write of the cube to commit and returns the version it wrote. A read takes no lock.
        row = conn.execute(f"{_SELECT} WHERE id = %s FOR UPDATE", (cube_id,)).fetchone()
    return rows.row_dict(row) if row is not None else None


def _row(conn, cube_id: str) -> CubeRow | None:
    row = conn.execute(f"{_SELECT} WHERE id = %s", (cube_id,)).fetchone()
    return rows.row_dict(row) if row is not None else None


def earlier_version(conn, cube_id: str, version: int) -> MemCube | None:
    """One of the cube's replaced versions (None for the current version and for one it never had)."""
    found = conn.execute("SELECT snapshot FROM cube_versions WHERE id = %s AND version = %s",
                         (cube_id, version)).fetchone()
    return rows.from_snapshot(found[0]) if found else None


def earlier_versions(conn, cube_id: str) -> list[MemCube]:
    """Every replaced version of the cube, oldest first (the current one is its row)."""
    older = conn.execute("SELECT snapshot FROM cube_versions WHERE id = %s ORDER BY version", (cube_id,)).fetchall()
    return [rows.from_snapshot(s) for (s,) in older]


def current_cube(conn, cube_id: str, now: float | None = None) -> MemCube | None:
    """A cube's current version unless it is deleted (for readers outside MemVault, e.g. MemStore's publish)."""
    row = conn.execute(f"{_SELECT} WHERE id = %s AND state != %s", (cube_id, int(LifecycleState.DELETED))).fetchone()
    return rows.to_cube(rows.row_dict(row), now) if row is not None else None



def current_cubes(conn, cube_ids: Sequence[str], now: float | None = None) -> dict[str, MemCube]:
    """current_cube of several cubes in one query, by id (those deleted or unknown left out)."""
    if not cube_ids:
        return {}
    found = conn.execute(f"{_SELECT} WHERE id = ANY(%s) AND state != %s", (list(cube_ids), int(LifecycleState.DELETED)))
    return {cube.id: cube for cube in (rows.to_cube(rows.row_dict(r), now) for r in found.fetchall())}

def cube_at_version(conn, cube_id: str, version: int, now: float | None = None) -> MemCube | None:
    """One version of a cube, current or earlier (for readers outside MemVault, e.g. MemStore's replay)."""
    row = _row(conn, cube_id)  # no lock: MemStore's replay only reads
    if row is None:
        return None
    if row["version"] == version:
        return rows.to_cube(row, now)
    return earlier_version(conn, cube_id, version)


def list_page(conn, f: CubeFilter, now: float, after_seq: int, limit: int, *,
              count: bool) -> tuple[list[CubeRow], int | None]:
    """Up to limit rows the filter selects at now with a seq after after_seq, in seq order; and, with count,
    how many rows it selects in all (None without)."""
    where, params = filter_sql(f, now)
    found = conn.execute(f"{_SELECT} c WHERE c.seq > %s AND {where} ORDER BY c.seq LIMIT %s",
                         [after_seq, *params, limit]).fetchall()
    total = conn.execute(f"SELECT count(*) FROM cubes c WHERE {where}", params).fetchone()[0] if count else None
    return [rows.row_dict(r) for r in found], total


def counts(conn) -> list[tuple[int, int, int]]:
    """How many cubes there are of each (kind, state) present, as (kind, state, n)."""
    return conn.execute("SELECT kind, state, count(*) FROM cubes GROUP BY kind, state").fetchall()
