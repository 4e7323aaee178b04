"""The audit chain on SQLite: entries in the audit table, the head (seq:hash) kept apart in settings."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from memosd.governance.audit import AuditEntry, entry_hash
from memosd.storage.records import AuditRow

_ENTRY = "SELECT seq, ts, agent, action, target, decision, detail, prev_hash, hash FROM audit"


def append(conn: sqlite3.Connection, ts: float, agent: str, action: str, target: str, decision: str,
           detail: str = "") -> None:
    """Append one entry; call inside the writing transaction so it commits with what it records."""
    # The head (last seq and hash) is kept apart from the entries, so dropping the newest entries shows too.
    row = conn.execute("SELECT value FROM settings WHERE key = 'audit_head'").fetchone()
    prev = row[0].split(":", 1)[1] if row else ""
    h = entry_hash(prev, ts, agent, action, target, decision, detail)
    seq = conn.execute(
        "INSERT INTO audit (ts, agent, action, target, decision, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ts, agent, action, target, decision, detail, prev, h),
    ).lastrowid
    conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('audit_head', ?)", (f"{seq}:{h}",))


def append_many(conn: sqlite3.Connection, entries: list[tuple[float, str, str, str, str, str]]) -> None:
    """Append entries (ts, agent, action, target, decision, detail) in order, as append() would one by one: the same
    links, with the head read and written once."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'audit_head'").fetchone()
    prev = row[0].split(":", 1)[1] if row else ""
    seq = None
    for ts, agent, action, target, decision, detail in entries:
        h = entry_hash(prev, ts, agent, action, target, decision, detail)
        seq = conn.execute(
            "INSERT INTO audit (ts, agent, action, target, decision, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (ts, agent, action, target, decision, detail, prev, h),
        ).lastrowid
        prev = h
    if seq is not None:
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('audit_head', ?)", (f"{seq}:{prev}",))


def read(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[AuditEntry]:
    """Up to limit entries after a seq, in order."""
    found = conn.execute(_ENTRY + " WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
    return [AuditEntry(*r) for r in found]


def entries(conn: sqlite3.Connection) -> Iterator[AuditRow]:
    """Every entry in seq order, as AuditRow tuples, streamed."""
    yield from conn.execute(_ENTRY + " ORDER BY seq")


def head(conn: sqlite3.Connection) -> str:
    """The head as 'seq:hash' ('' before the first entry)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'audit_head'").fetchone()
    return str(row[0]) if row else ""
