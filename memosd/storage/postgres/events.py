"""MemStore's storage on PostgreSQL: topics, events and durable cursors, correct under concurrent writers."""

from __future__ import annotations

import json

from memosd.governance.policy import Pattern
from memosd.storage.records import Topic

_TOPIC = "SELECT name, owner, last_seq, first_seq, max_age, max_events FROM topics"
# pg_advisory_xact_lock(class, hashtext(topic)): one publisher at a time per topic from the publish-id check to
# the commit, in every daemon on the database (a hash collision only makes two topics wait for each other).
_TOPIC_LOCK = "SELECT pg_advisory_xact_lock(1835363695, hashtext(%s))"


def find_published(conn, topic: str, publish_id: str) -> tuple[int, str] | None:
    """(seq, publisher) of the event published on the topic under publish_id, if any. It takes the topic's lock
    first (held to the commit), so that a concurrent publish under the same id is either seen here or waits."""
    conn.execute(_TOPIC_LOCK, (topic,))
    return conn.execute("SELECT seq, publisher FROM events WHERE topic = %s AND publish_id = %s",
                        (topic, publish_id)).fetchone()


def append_event(conn, topic: str, kind: int, cube_id: str, cube_version: int, publisher: str,
                 ts: float, publish_id: str | None, *, max_age: float, max_events: int) -> int:
    """Append an event (creating the topic, owned by the publisher, with these retention limits); returns its seq."""
    conn.execute(_TOPIC_LOCK, (topic,))
    # Two first publishes meet at the primary key: one creates the topic, the other finds it.
    conn.execute("INSERT INTO topics (name, owner, created_at, max_age, max_events) VALUES (%s, %s, %s, %s, %s)"
                 " ON CONFLICT (name) DO NOTHING", (topic, publisher, ts, max_age, max_events))
    # The update takes the topic row's lock: the next writer's update waits for our commit and counts on from it.
    (seq,) = conn.execute("UPDATE topics SET last_seq = last_seq + 1 WHERE name = %s RETURNING last_seq",
                          (topic,)).fetchone()
    conn.execute("INSERT INTO events (topic, seq, kind, cube_id, cube_version, publisher, ts, publish_id)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                 (topic, seq, kind, cube_id, cube_version, publisher, ts, publish_id))
    return int(seq)


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
