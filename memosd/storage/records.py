"""Records as every engine returns them: plain values the core reads, never an engine's row type."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

AgentRow = tuple[str, bytes, tuple[str, ...], bool, float, float | None]
PolicyRow = tuple[bytes, bytes, float, float | None]
CheckpointRow = tuple  # (n, seq, hash, ts, signature) as stored: the signer checks the types itself
# (seq, ts, agent, action, target, decision, detail, prev_hash, hash), in seq order.
AuditRow = tuple[int, float, str, str, str, str, str, str, str]
# A cube's current row by column name (memosd.vault.rows.COLUMNS), tags, metadata, derived_from and manifest as
# JSON text whatever an engine stores: the core builds a new version from it, rows.to_cube reads it.
CubeRow = dict[str, Any]


@dataclass
class Topic:
    name: str
    owner: str
    last_seq: int
    first_seq: int
    max_age: float
    max_events: int


class JobState(enum.IntEnum):
    """Values equal the protocol's JobState numbers."""

    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class ScopeStats:
    """BM25's statistics counted over the cubes a caller may read, never the whole vault, so that no score (nor
    which words decide a search) tells anything of cubes outside them: how many hold text, their total length,
    and how many of them hold each query word (counts) and each of the engine's own terms (terms: lexemes on
    PostgreSQL, words on SQLite)."""

    docs: int
    length: int
    counts: dict[str, int]
    terms: dict[str, int]
