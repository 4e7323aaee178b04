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
