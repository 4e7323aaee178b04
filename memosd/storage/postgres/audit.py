"""The audit chain on PostgreSQL: entries in the audit table, the head (seq:hash) in settings, locked while appending."""

from __future__ import annotations

from collections.abc import Iterator

from memosd.governance.audit import AuditEntry, entry_hash
from memosd.storage.records import AuditRow

_ENTRY = "SELECT seq, ts, agent, action, target, decision, detail, prev_hash, hash FROM audit"


def append(conn, ts: float, agent: str, action: str, target: str, decision: str, detail: str = "") -> None:
    """Append one entry; call inside the writing transaction so it commits with what it records."""
    # The head row's lock orders concurrent writers (of this daemon or another): each appends after the head it
    # read, and the next waits for that commit and reads the new head. The row exists from the first append on;
    # two first appends meet at the primary key, and the loser then waits on the winner's row.
    conn.execute("INSERT INTO settings (key, value) VALUES ('audit_head', '') ON CONFLICT (key) DO NOTHING")
    (value,) = conn.execute("SELECT value FROM settings WHERE key = 'audit_head' FOR UPDATE").fetchone()
    last, _, prev = value.partition(":") if value else ("0", "", "")
    h = entry_hash(prev, ts, agent, action, target, decision, detail)
    seq = int(last) + 1
    conn.execute("INSERT INTO audit (seq, ts, agent, action, target, decision, detail, prev_hash, hash)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", (seq, ts, agent, action, target, decision, detail, prev, h))
    conn.execute("UPDATE settings SET value = %s WHERE key = 'audit_head'", (f"{seq}:{h}",))


def append_many(conn, entries: list[tuple[float, str, str, str, str, str]]) -> None:
    """Append entries (ts, agent, action, target, decision, detail) in order, as append() would one by one: the same
    links, with the head locked, read and written once."""
    if not entries:
        return
    # One statement for append()'s two: the upsert takes the head row's lock (waiting for another writer's commit)
    # and returns the head as that commit left it.
    (value,) = conn.execute("INSERT INTO settings (key, value) VALUES ('audit_head', '') ON CONFLICT (key)"
                            " DO UPDATE SET value = settings.value RETURNING value").fetchone()
    last, _, prev = value.partition(":") if value else ("0", "", "")
    seq, rows = int(last), []
    for ts, agent, action, target, decision, detail in entries:
        h = entry_hash(prev, ts, agent, action, target, decision, detail)
        seq += 1
        rows.append((seq, ts, agent, action, target, decision, detail, prev, h))
        prev = h
    columns = [list(c) for c in zip(*rows)]
    conn.execute("INSERT INTO audit (seq, ts, agent, action, target, decision, detail, prev_hash, hash)"
                 " SELECT * FROM unnest(%s::bigint[], %s::double precision[], %s::text[], %s::text[], %s::text[],"
                 " %s::text[], %s::text[], %s::text[], %s::text[])", columns)
    conn.execute("UPDATE settings SET value = %s WHERE key = 'audit_head'", (f"{seq}:{prev}",))


def read(conn, after_seq: int, limit: int) -> list[AuditEntry]:
    """Up to limit entries after a seq, in order."""
    found = conn.execute(_ENTRY + " WHERE seq > %s ORDER BY seq LIMIT %s", (after_seq, limit)).fetchall()
    return [AuditEntry(*r) for r in found]


def entries(conn) -> Iterator[AuditRow]:
    """Every entry in seq order, as AuditRow tuples, streamed (a server-side cursor, in this transaction)."""
    with conn.cursor(name="memosd_audit_entries") as cursor:
        cursor.itersize = 2000
        cursor.execute(_ENTRY + " ORDER BY seq")
        yield from cursor


def head(conn) -> str:
    """The head as 'seq:hash' ('' before the first entry)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'audit_head'").fetchone()
    return str(row[0]) if row else ""
