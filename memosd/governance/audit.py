"""The append-only, hash-chained audit log: each entry's hash covers the one before it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass


@dataclass
class AuditEntry:
    seq: int
    ts: float
    agent: str
    action: str
    target: str
    decision: str
    detail: str
    prev_hash: str
    hash: str


def entry_hash(prev_hash: str, ts: float, agent: str, action: str, target: str, decision: str, detail: str) -> str:
    body = json.dumps([ts, agent, action, target, decision, detail], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev_hash.encode() + body.encode()).hexdigest()


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


def read(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[AuditEntry]:
    found = conn.execute(
        "SELECT seq, ts, agent, action, target, decision, detail, prev_hash, hash FROM audit WHERE seq > ?"
        " ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
    return [AuditEntry(*r) for r in found]


def verify(conn: sqlite3.Connection) -> tuple[bool, int, int, str]:
    """(ok, entries checked, first bad seq, reason): recomputes every hash and link in order."""
    prev, count, expected_seq = "", 0, None
    for seq, ts, agent, action, target, decision, detail, prev_hash, h in conn.execute(
            "SELECT seq, ts, agent, action, target, decision, detail, prev_hash, hash FROM audit ORDER BY seq"):
        count += 1
        if expected_seq is not None and seq != expected_seq:
            return False, count, seq, f"entries {expected_seq}..{seq - 1} are missing"
        if prev_hash != prev:
            return False, count, seq, "prev_hash does not match the previous entry's hash"
        if entry_hash(prev, ts, agent, action, target, decision, detail) != h:
            return False, count, seq, "entry was changed after it was written"
        prev, expected_seq = h, seq + 1
    row = conn.execute("SELECT value FROM settings WHERE key = 'audit_head'").fetchone()
    head = row[0] if row else ""
    if head != (f"{expected_seq - 1}:{prev}" if count else ""):
        return False, count, int(head.split(":")[0] or 0), "the newest entries were removed (head does not match)"
    return True, count, 0, ""


def detail(**fields) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
