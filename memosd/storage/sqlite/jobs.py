"""MemScheduler's job records on SQLite (the jobs table of schema m0004, leases of m0008), one named function per
query: the same leases as on PostgreSQL, held by the one daemon a data directory has."""

from __future__ import annotations

import json
import sqlite3

from memosd.storage.records import JobState

_NAMES = ("id", "kind", "owner", "state", "created_at", "started_at", "finished_at", "done", "total", "message",
          "result_ids", "metrics", "error_type", "error", "runner", "lease_until")
_COLUMNS = ", ".join(_NAMES)
_QUEUED = f"{JobState.QUEUED:d}"
_UNFINISHED = f"state IN ({JobState.QUEUED:d}, {JobState.RUNNING:d})"


def create(conn: sqlite3.Connection, record: tuple, spec: str | None) -> None:
    """Record a new job (a row in _COLUMNS order) with what another member needs to run it (spec, JSON or None)."""
    conn.execute(f"INSERT INTO jobs ({_COLUMNS}, spec) VALUES ({', '.join('?' * (len(_NAMES) + 1))})", (*record, spec))


def save(conn: sqlite3.Connection, record: tuple) -> bool:
    """Write a job's record (a row in _COLUMNS order) over the one it had, unless another runner holds it now
    (it was taken over); whether it was written."""
    updates = ", ".join(f"{name} = excluded.{name}" for name in _NAMES[1:])
    return conn.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * len(_NAMES))})"
                        f" ON CONFLICT (id) DO UPDATE SET {updates} WHERE jobs.runner IS excluded.runner",
                        record).rowcount == 1


def fail_unfinished(conn: sqlite3.Connection, states: tuple[int, ...], failed: int, now: float, message: str,
                    error: str) -> None:
    """Record every job in one of these states as failed (state `failed`, error type Unavailable) at `now`."""
    conn.execute(f"UPDATE jobs SET state = ?, finished_at = ?, message = ?, error_type = 'Unavailable', error = ?"
                 f" WHERE state IN ({','.join('?' * len(states))})", (failed, now, message, error, *states))


def fail_expired(conn: sqlite3.Connection, failed: int, before: float, now: float, message: str, error: str) -> int:
    """Record as failed the unfinished jobs whose lease ran out before `before` (no member took them over)."""
    return conn.execute(f"UPDATE jobs SET state = ?, finished_at = ?, message = ?, error_type = 'Unavailable',"
                        f" error = ? WHERE {_UNFINISHED} AND lease_until < ?",
                        (failed, now, message, error, before)).rowcount


def recent(conn: sqlite3.Connection, limit: int) -> list[tuple]:
    """Up to limit job records, newest first, as rows in _COLUMNS order."""
    return conn.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()


def renew(conn: sqlite3.Connection, job_id: str, runner: str, until: float, done: int, total: int, message: str,
          metrics: str) -> bool | None:
    """Extend runner's lease on an unfinished job and record its progress; whether a stop was asked for it, or
    None when runner holds it no longer (it finished, or another member took it over)."""
    row = conn.execute(f"UPDATE jobs SET lease_until = ?, done = ?, total = ?, message = ?, metrics = ?"
                       f" WHERE id = ? AND runner = ? AND {_UNFINISHED} RETURNING cancel_requested",
                       (until, done, total, message, metrics, job_id, runner)).fetchone()
    return None if row is None else bool(row[0])


def claim(conn: sqlite3.Connection, runner: str, kinds: list[str], now: float,
          until: float) -> tuple[tuple, str, bool] | None:
    """Take the oldest unfinished job of one of these kinds whose lease ran out (its runner died): queued again
    under runner's lease. Its record, spec and whether a stop was asked for it; None when there is none."""
    row = conn.execute(
        f"UPDATE jobs SET runner = ?, lease_until = ?, state = {_QUEUED}, started_at = NULL, message = 'taken over'"
        f" WHERE id = (SELECT id FROM jobs WHERE {_UNFINISHED} AND lease_until < ? AND spec IS NOT NULL"
        " AND kind IN (SELECT value FROM json_each(?)) ORDER BY created_at LIMIT 1)"
        f" RETURNING {_COLUMNS}, spec, cancel_requested", (runner, until, now, json.dumps(kinds))).fetchone()
    if row is None:
        return None
    return tuple(row[:len(_NAMES)]), row[len(_NAMES)], bool(row[len(_NAMES) + 1])


def request_cancel(conn: sqlite3.Connection, job_id: str) -> tuple | None:
    """Ask whichever member runs an unfinished job to stop it; its record, or None when it is not unfinished."""
    return conn.execute(f"UPDATE jobs SET cancel_requested = 1, message = 'cancelling' WHERE id = ? AND {_UNFINISHED}"
                        f" RETURNING {_COLUMNS}", (job_id,)).fetchone()


def release(conn: sqlite3.Connection, job_id: str, runner: str) -> bool:
    """Hand an unfinished job runner holds back to the cluster at once (runner is stopping): queued, no lease."""
    return conn.execute(f"UPDATE jobs SET runner = NULL, lease_until = 0, state = {_QUEUED}, started_at = NULL,"
                        f" message = 'queued (its daemon stopped)' WHERE id = ? AND runner = ? AND {_UNFINISHED}",
                        (job_id, runner)).rowcount == 1
