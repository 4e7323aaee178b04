"""Named leases on SQLite: the same as on PostgreSQL, always the one daemon's (a data directory has one)."""

from __future__ import annotations

import sqlite3


def take(conn: sqlite3.Connection, name: str, holder: str, now: float, until: float) -> bool:
    """Hold the lease `name` until `until` if it is free, ran out before `now`, or holder has it already; whether
    holder has it now."""
    return conn.execute("INSERT INTO leases (name, holder, until) VALUES (?, ?, ?) ON CONFLICT (name)"
                        " DO UPDATE SET holder = excluded.holder, until = excluded.until"
                        " WHERE leases.until < ? OR leases.holder = excluded.holder",
                        (name, holder, until, now)).rowcount == 1


def holder(conn: sqlite3.Connection, name: str, now: float) -> str | None:
    """Who holds the lease `name` at `now` (None: nobody, or it ran out)."""
    found = conn.execute("SELECT holder FROM leases WHERE name = ? AND until >= ?", (name, now)).fetchone()
    return None if found is None else found[0]


def release(conn: sqlite3.Connection, name: str, holder: str) -> None:
    """Give the lease `name` up, if holder has it."""
    conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))


def release_earlier(conn: sqlite3.Connection, prefix: str, member: str, holder: str) -> int:
    """Give up the leases named `prefix...` that earlier runs of this member (holders `member:...`) left behind
    (a kill -9 releases nothing); returns how many."""
    return conn.execute("DELETE FROM leases WHERE substr(name, 1, ?) = ? AND substr(holder, 1, ?) = ?"
                        " AND holder != ?", (len(prefix), prefix, len(member) + 1, member + ":", holder)).rowcount
