"""Topic shares on SQLite: who published which cube on which topic, under what authority."""

from __future__ import annotations

import sqlite3

from memosd.governance.policy import Share


def all_shares(conn: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    """Every share as (topic, cube_id, publisher, authority)."""
    return conn.execute("SELECT topic, cube_id, publisher, authority FROM topic_cubes").fetchall()


def publishers(conn: sqlite3.Connection, topic: str, cube_id: str) -> set[str]:
    """Who has the cube published on the topic now (empty: it is not)."""
    return {r[0] for r in conn.execute("SELECT publisher FROM topic_cubes WHERE topic = ? AND cube_id = ?",
                                       (topic, cube_id))}


def record(conn: sqlite3.Connection, cube_id: str, share: Share, authority: str | None) -> None:
    # A publisher publishing again renews its share under the authority it holds now.
    conn.execute("INSERT INTO topic_cubes (topic, cube_id, publisher, authority) VALUES (?, ?, ?, ?)"
                 " ON CONFLICT (topic, cube_id, publisher) DO UPDATE SET authority = excluded.authority",
                 (share.topic, cube_id, share.publisher, authority))


def record_many(conn: sqlite3.Connection, records: list[tuple[str, Share, str | None]]) -> None:
    """record() of several (cube_id, share, authority), each (topic, cube, publisher) once, as one batch."""
    conn.executemany("INSERT INTO topic_cubes (topic, cube_id, publisher, authority) VALUES (?, ?, ?, ?)"
                     " ON CONFLICT (topic, cube_id, publisher) DO UPDATE SET authority = excluded.authority",
                     [(share.topic, cube_id, share.publisher, authority) for cube_id, share, authority in records])


def drop(conn: sqlite3.Connection, topic: str, cube_id: str, publisher: str | None = None) -> None:
    """A retraction ends one publisher's share of the cube on the topic, or (publisher None: its owner's) every one."""
    if publisher is None:
        conn.execute("DELETE FROM topic_cubes WHERE topic = ? AND cube_id = ?", (topic, cube_id))
    else:
        conn.execute("DELETE FROM topic_cubes WHERE topic = ? AND cube_id = ? AND publisher = ?",
                     (topic, cube_id, publisher))


def on_topic(conn: sqlite3.Connection, topic: str, cube_ids: list[str]) -> list[tuple[str, str, str, str | None]]:
    """The shares of these cubes on the topic as (topic, cube_id, publisher, authority): what another daemon's
    publishes left."""
    if not cube_ids:
        return []
    marks = ",".join("?" * len(cube_ids))
    return conn.execute(f"SELECT topic, cube_id, publisher, authority FROM topic_cubes WHERE topic = ?"
                        f" AND cube_id IN ({marks})", (topic, *cube_ids)).fetchall()
