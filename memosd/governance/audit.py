"""The append-only, hash-chained audit log: each entry's hash covers the one before it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from memosd.storage.records import AuditRow


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


@dataclass
class ChainCheck:
    """What walking the chain found: the verdict, the newest seq, and the hashes at the seqs asked for."""

    ok: bool
    entries: int
    first_bad_seq: int
    reason: str
    last_seq: int
    hashes: dict[int, str]


def check_chain(entries: Iterable[AuditRow], head: str, wanted=frozenset()) -> ChainCheck:
    """Recompute every hash and link of the entries (in seq order) up to the stored head ('seq:hash'),
    collecting the hashes at the seqs in `wanted`."""
    prev, count, last = "", 0, 0
    hashes: dict[int, str] = {}
    for seq, ts, agent, action, target, decision, detail, prev_hash, h in entries:
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
    if head != (f"{last}:{prev}" if count else ""):
        head_seq = head.split(":")[0]
        return ChainCheck(False, count, int(head_seq) if head_seq.isdigit() else last + 1,
                          "the newest entries were removed (head does not match)", last, hashes)
    return ChainCheck(True, count, 0, "", last, hashes)


def verify(entries: Iterable[AuditRow], head: str) -> tuple[bool, int, int, str]:
    """(ok, entries checked, first bad seq, reason) of the chain alone, without its checkpoints."""
    found = check_chain(entries, head)
    return found.ok, found.entries, found.first_bad_seq, found.reason


def detail(**fields) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
