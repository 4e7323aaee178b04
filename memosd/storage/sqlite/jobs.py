"""MemScheduler's job records on SQLite (the jobs table of schema m0004), one named function per query."""

from __future__ import annotations

import sqlite3

_COLUMNS = ("id, kind, owner, state, created_at, started_at, finished_at, done, total, message, result_ids,"
            " metrics, error_type, error")


def save(conn: sqlite3.Connection, record: tuple) -> None:
    """Write a job's record (a row in _COLUMNS order), replacing the one it had."""
    conn.execute(f"INSERT OR REPLACE INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 record)


def fail_unfinished(conn: sqlite3.Connection, states: tuple[int, ...], failed: int, now: float, message: str,
                    error: str) -> None:
    """Record every job in one of these states as failed (state `failed`, error type Unavailable) at `now`."""
    conn.execute(f"UPDATE jobs SET state = ?, finished_at = ?, message = ?, error_type = 'Unavailable', error = ?"
                 f" WHERE state IN ({','.join('?' * len(states))})", (failed, now, message, error, *states))


def recent(conn: sqlite3.Connection, limit: int) -> list[tuple]:
    """Up to limit job records, newest first, as rows in _COLUMNS order."""
    return conn.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
