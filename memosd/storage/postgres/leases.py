"""Named leases on PostgreSQL: background work (expiry sweeps, compaction) that one member of a cluster does at a time."""

from __future__ import annotations


def take(conn, name: str, holder: str, now: float, until: float) -> bool:
    """Hold the lease `name` until `until` if it is free, ran out before `now`, or holder has it already; whether
    holder has it now. Two members asking at once meet at the primary key: one of them gets it."""
    return conn.execute("INSERT INTO leases AS l (name, holder, until) VALUES (%s, %s, %s) ON CONFLICT (name)"
                        " DO UPDATE SET holder = excluded.holder, until = excluded.until"
                        " WHERE l.until < %s OR l.holder = excluded.holder", (name, holder, until, now)).rowcount == 1
