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


@dataclass
class ChainCheck:
    """What walking the chain found: the verdict, the newest seq, and the hashes at the seqs asked for."""

    ok: bool
    entries: int
    first_bad_seq: int
    reason: str
    last_seq: int
    hashes: dict[int, str]


def check_chain(conn: sqlite3.Connection, wanted=frozenset()) -> ChainCheck:
    """Recompute every hash and link in order, collecting the hashes at the seqs in `wanted`."""
    prev, count, last = "", 0, 0
    hashes: dict[int, str] = {}
    for seq, ts, agent, action, target, decision, detail, prev_hash, h in conn.execute(
            "SELECT seq, ts, agent, action, target, decision, detail, prev_hash, hash FROM audit ORDER BY seq"):
        count += 1
        # From 1: the log is never pruned, so missing first entries are as telling as missing middle ones.
        if seq != last + 1:
            return ChainCheck(False, count, seq, f"entries {last + 1}..{seq - 1} are missing", last, hashes)
        if prev_hash != prev:
            return ChainCheck(False, count, seq, "prev_hash does not match the previous entry's hash", last, hashes)
        if entry_hash(prev, ts, agent, action, target, decision, detail) != h:
            return ChainCheck(False, count, seq, "entry was changed after it was written", last, hashes)
        if seq in wanted:
            hashes[seq] = h
        prev, last = h, seq
    row = conn.execute("SELECT value FROM settings WHERE key = 'audit_head'").fetchone()
    head = row[0] if row else ""
    if head != (f"{last}:{prev}" if count else ""):
        head_seq = head.split(":")[0]
        return ChainCheck(False, count, int(head_seq) if head_seq.isdigit() else last + 1,
                          "the newest entries were removed (head does not match)", last, hashes)
    return ChainCheck(True, count, 0, "", last, hashes)


def verify(conn: sqlite3.Connection) -> tuple[bool, int, int, str]:
    """(ok, entries checked, first bad seq, reason) of the chain alone, without its checkpoints."""
    found = check_chain(conn)
    return found.ok, found.entries, found.first_bad_seq, found.reason


def detail(**fields) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
