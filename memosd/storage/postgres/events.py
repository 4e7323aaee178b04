"""MemStore's storage on PostgreSQL: topics, events and durable cursors, correct under concurrent writers."""

from __future__ import annotations

import json

from memosd.governance.policy import Pattern
from memosd.storage.records import Topic

_TOPIC = "SELECT name, owner, last_seq, first_seq, max_age, max_events FROM topics"
# pg_advisory_xact_lock(class, hashtext(topic)): one publisher at a time per topic from the publish-id check to
# the commit, in every daemon on the database (a hash collision only makes two topics wait for each other).
_TOPIC_LOCK = "SELECT pg_advisory_xact_lock(1835363695, hashtext(%s))"


def lock_topic(conn, topic: str) -> None:
    """Wait for the topic's lock, held to the commit: publishers of a topic, in every daemon on the database, go one
    at a time from their publish-id check to their commit, so a concurrent publish under one id is seen or waits."""
    conn.execute(_TOPIC_LOCK, (topic,))


def find_published(conn, topic: str, publish_id: str) -> tuple[int, str] | None:
    """(seq, publisher) of the event published on the topic under publish_id, if any (the topic's lock taken)."""
    lock_topic(conn, topic)
    return find_published_many(conn, topic, [publish_id]).get(publish_id)


def find_published_many(conn, topic: str, publish_ids: list[str]) -> dict[str, tuple[int, str]]:
    """{publish_id: (seq, publisher)} of the events published on the topic under these ids; call with its lock held."""
    if not publish_ids:
        return {}
    found = conn.execute("SELECT publish_id, seq, publisher FROM events WHERE topic = %s AND publish_id = ANY(%s)",
                         (topic, list(publish_ids))).fetchall()
    return {r[0]: (int(r[1]), r[2]) for r in found}


def append_event(conn, topic: str, kind: int, cube_id: str, cube_version: int, publisher: str,
                 ts: float, publish_id: str | None, *, max_age: float, max_events: int) -> int:
    """Append an event (creating the topic, owned by the publisher, with these retention limits); returns its seq."""
    lock_topic(conn, topic)
    return append_events(conn, topic, [(kind, cube_id, cube_version, publisher, ts, publish_id)],
                         max_age=max_age, max_events=max_events)


# One statement for a group of events: the topic's row (created by its first event, owned by that publisher) moves
# last_seq on by the count, which takes the row's lock, so the next writer's waits for our commit and counts on from
# it; the events take the seqs below the new last_seq, in order. ON CONFLICT DO UPDATE: two first publishes meet at
# the primary key, and the second adds to the first's count once it commits.
_APPEND = """
WITH top AS (
    INSERT INTO topics (name, owner, created_at, max_age, max_events, last_seq) VALUES (%(topic)s, %(owner)s, %(ts)s,
        %(max_age)s, %(max_events)s, %(n)s)
    ON CONFLICT (name) DO UPDATE SET last_seq = topics.last_seq + excluded.last_seq
    RETURNING last_seq
)
INSERT INTO events (topic, seq, kind, cube_id, cube_version, publisher, ts, publish_id)
SELECT %(topic)s, top.last_seq - %(n)s + e.ord, e.kind, e.cube_id, e.cube_version, e.publisher, e.ts, e.publish_id
FROM top, unnest(%(kinds)s::integer[], %(cubes)s::text[], %(versions)s::bigint[], %(publishers)s::text[],
                 %(ts_all)s::double precision[], %(ids)s::text[])
     WITH ORDINALITY AS e(kind, cube_id, cube_version, publisher, ts, publish_id, ord)
RETURNING seq
"""


def append_events(conn, topic: str, rows: list[tuple[int, str, int, str, float, str | None]], *,
                  max_age: float, max_events: int) -> int:
    """Append events (kind, cube_id, cube_version, publisher, ts, publish_id), in order, with consecutive seqs;
    returns the first's. The topic is created by the first, owned by its publisher, with these retention limits.
    Call with the topic's lock held when a publish id was looked up."""
    kinds, cubes, versions, publishers, ts_all, ids = (list(c) for c in zip(*rows))
    seqs = conn.execute(_APPEND, {"topic": topic, "owner": publishers[0], "ts": ts_all[0], "max_age": max_age,
                                  "max_events": max_events, "n": len(rows), "kinds": kinds, "cubes": cubes,
                                  "versions": versions, "publishers": publishers, "ts_all": ts_all,
                                  "ids": ids}).fetchall()
    return int(min(r[0] for r in seqs))


def events_after(conn, topic: str, after: int, limit: int) -> list[tuple]:
    """Up to limit events after a position, in order, as (seq, kind, cube_id, cube_version, publisher, ts)."""
    return conn.execute("SELECT seq, kind, cube_id, cube_version, publisher, ts FROM events"
                        " WHERE topic = %s AND seq > %s ORDER BY seq LIMIT %s", (topic, after, limit)).fetchall()


def topics(conn, pattern: Pattern | None) -> dict[str, Topic]:
    """The topics a pattern names (all of them for None), by name."""
    if pattern is None:
        found = conn.execute(_TOPIC).fetchall()
    elif pattern.subtree:
        found = conn.execute(_TOPIC + " WHERE name = %s OR (name >= %s AND name < %s)",
                             (pattern.namespace, pattern.namespace + "/", pattern.namespace + "0")).fetchall()
    else:
        found = conn.execute(_TOPIC + " WHERE name = %s", (pattern.namespace,)).fetchall()
    return {r[0]: Topic(*r) for r in found}


def set_retention(conn, topic: str, max_age: float, max_events: int) -> None:
    conn.execute("UPDATE topics SET max_age = %s, max_events = %s WHERE name = %s", (max_age, max_events, topic))


def compact(conn, now: float) -> int:
    """Delete events beyond each topic's retention (the newest event stays); returns how many."""
    removed = 0
    # Each topic row locked while its events go, so a concurrent publish's new last_seq is the one counted from.
    for (name,) in conn.execute("SELECT name FROM topics WHERE max_age > 0 OR max_events > 0 ORDER BY name").fetchall():
        row = conn.execute("SELECT last_seq, max_age, max_events FROM topics WHERE name = %s FOR UPDATE",
                           (name,)).fetchone()
        if row is None:
            continue
        last, max_age, max_events = row
        if max_events:
            removed += conn.execute("DELETE FROM events WHERE topic = %s AND seq <= %s",
                                    (name, last - max_events)).rowcount
        if max_age:
            removed += conn.execute("DELETE FROM events WHERE topic = %s AND ts < %s AND seq < %s",
                                    (name, now - max_age, last)).rowcount
        (first,) = conn.execute("SELECT min(seq) FROM events WHERE topic = %s", (name,)).fetchone()
        conn.execute("UPDATE topics SET first_seq = %s WHERE name = %s", (first or last + 1, name))
    return removed


def open_cursor(conn, agent: str, name: str, pattern: str, now: float) -> tuple[str, dict[str, int]]:
    """The agent's named durable cursor (created on first use for pattern): (its pattern, acked seq per topic)."""
    conn.execute("INSERT INTO durable_subscriptions (agent, name, pattern, created_at) VALUES (%s, %s, %s, %s)"
                 " ON CONFLICT (agent, name) DO NOTHING", (agent, name, pattern, now))
    found, acked = conn.execute("SELECT pattern, acked FROM durable_subscriptions WHERE agent = %s AND name = %s",
                                (agent, name)).fetchone()
    return found, {k: int(v) for k, v in json.loads(acked).items()}


def save_cursor(conn, agent: str, name: str, acked: dict[str, int]) -> None:
    conn.execute("UPDATE durable_subscriptions SET acked = %s WHERE agent = %s AND name = %s",
                 (json.dumps(acked), agent, name))
