"""Named leases on PostgreSQL: background work (expiry sweeps, compaction) that one member of a cluster does at a time."""

from __future__ import annotations


def take(conn, name: str, holder: str, now: float, until: float) -> bool:
    """Hold the lease `name` until `until` if it is free, ran out before `now`, or holder has it already; whether
    holder has it now. Two members asking at once meet at the primary key: one of them gets it."""
    return conn.execute("INSERT INTO leases AS l (name, holder, until) VALUES (%s, %s, %s) ON CONFLICT (name)"
                        " DO UPDATE SET holder = excluded.holder, until = excluded.until"
                        " WHERE l.until < %s OR l.holder = excluded.holder", (name, holder, until, now)).rowcount == 1


def holder(conn, name: str, now: float) -> str | None:
    """Who holds the lease `name` at `now` (None: nobody, or it ran out)."""
    found = conn.execute("SELECT holder FROM leases WHERE name = %s AND until >= %s", (name, now)).fetchone()
    return None if found is None else found[0]


def release(conn, name: str, holder: str) -> None:
    """Give the lease `name` up, if holder has it."""
    conn.execute("DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder))


def release_earlier(conn, prefix: str, member: str, holder: str) -> int:
    """Give up the leases named `prefix...` that earlier runs of this member (holders `member:...`) left behind
    (a kill -9 releases nothing); returns how many."""
    return conn.execute("DELETE FROM leases WHERE left(name, %s) = %s AND left(holder, %s) = %s AND holder <> %s",
                        (len(prefix), prefix, len(member) + 1, member + ":", holder)).rowcount
