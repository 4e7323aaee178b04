"""Topic shares on PostgreSQL: who published which cube on which topic, under what authority."""

from __future__ import annotations

from memosd.governance.policy import Share


def all_shares(conn) -> list[tuple[str, str, str, str | None]]:
    """Every share as (topic, cube_id, publisher, authority)."""
    return conn.execute("SELECT topic, cube_id, publisher, authority FROM topic_cubes").fetchall()


def publishers(conn, topic: str, cube_id: str) -> set[str]:
    """Who has the cube published on the topic now (empty: it is not)."""
    return {r[0] for r in conn.execute("SELECT publisher FROM topic_cubes WHERE topic = %s AND cube_id = %s",
                                       (topic, cube_id))}


def record(conn, cube_id: str, share: Share, authority: str | None) -> None:
    # A publisher publishing again renews its share under the authority it holds now.
    conn.execute("INSERT INTO topic_cubes (topic, cube_id, publisher, authority) VALUES (%s, %s, %s, %s)"
                 " ON CONFLICT (topic, cube_id, publisher) DO UPDATE SET authority = excluded.authority",
                 (share.topic, cube_id, share.publisher, authority))


def record_many(conn, records: list[tuple[str, Share, str | None]]) -> None:
    """record() of several (cube_id, share, authority), each (topic, cube, publisher) once, in one statement. A
    share already recorded with the same authority (a cube published again) is not rewritten (no dead row)."""
    columns = [list(c) for c in zip(*((share.topic, cube_id, share.publisher, authority)
                                      for cube_id, share, authority in records))]
    conn.execute("INSERT INTO topic_cubes (topic, cube_id, publisher, authority)"
                 " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
                 " ON CONFLICT (topic, cube_id, publisher) DO UPDATE SET authority = excluded.authority"
                 " WHERE topic_cubes.authority IS DISTINCT FROM excluded.authority", columns)


def drop(conn, topic: str, cube_id: str, publisher: str | None = None) -> None:
    """A retraction ends one publisher's share of the cube on the topic, or (publisher None: its owner's) every one."""
    if publisher is None:
        conn.execute("DELETE FROM topic_cubes WHERE topic = %s AND cube_id = %s", (topic, cube_id))
    else:
        conn.execute("DELETE FROM topic_cubes WHERE topic = %s AND cube_id = %s AND publisher = %s",
                     (topic, cube_id, publisher))


def on_topic(conn, topic: str, cube_ids: list[str]) -> list[tuple[str, str, str, str | None]]:
    """The shares of these cubes on the topic as (topic, cube_id, publisher, authority): what another daemon's
    publishes left."""
    if not cube_ids:
        return []
    return conn.execute("SELECT topic, cube_id, publisher, authority FROM topic_cubes WHERE topic = %s"
                        " AND cube_id = ANY(%s)", (topic, list(cube_ids))).fetchall()
