"""MemScheduler's job records on PostgreSQL (the jobs table), one named function per query."""

from __future__ import annotations

_NAMES = ("id", "kind", "owner", "state", "created_at", "started_at", "finished_at", "done", "total", "message",
          "result_ids", "metrics", "error_type", "error")
_COLUMNS = ", ".join(_NAMES)


def save(conn, record: tuple) -> None:
    """Write a job's record (a row in _COLUMNS order), replacing the one it had."""
    updates = ", ".join(f"{name} = excluded.{name}" for name in _NAMES[1:])
    conn.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(_NAMES))})"
                 f" ON CONFLICT (id) DO UPDATE SET {updates}", record)


def fail_unfinished(conn, states: tuple[int, ...], failed: int, now: float, message: str, error: str) -> None:
    """Record every job in one of these states as failed (state `failed`, error type Unavailable) at `now`."""
    conn.execute("UPDATE jobs SET state = %s, finished_at = %s, message = %s, error_type = 'Unavailable', error = %s"
                 " WHERE state = ANY(%s)", (failed, now, message, error, list(states)))


def recent(conn, limit: int) -> list[tuple]:
    """Up to limit job records, newest first, as rows in _COLUMNS order."""
    return conn.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT %s", (limit,)).fetchall()
