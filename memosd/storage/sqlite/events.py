"""MemStore's storage on SQLite: topics, events and durable cursors, one named function per query."""

from __future__ import annotations

import json
import sqlite3

from memosd.governance.policy import Pattern
from memosd.storage.records import Topic

_TOPIC = "SELECT name, owner, last_seq, first_seq, max_age, max_events FROM topics"


def find_published(conn: sqlite3.Connection, topic: str, publish_id: str) -> tuple[int, str] | None:
    """(seq, publisher) of the event published on the topic under publish_id, if any."""
    return conn.execute("SELECT seq, publisher FROM events WHERE topic = ? AND publish_id = ?",
                        (topic, publish_id)).fetchone()


def append_event(conn: sqlite3.Connection, topic: str, kind: int, cube_id: str, cube_version: int, publisher: str,
                 ts: float, publish_id: str | None, *, max_age: float, max_events: int) -> int:
    """Append an event (creating the topic, owned by the publisher, with these retention limits); returns its seq."""
    top = conn.execute("SELECT last_seq FROM topics WHERE name = ?", (topic,)).fetchone()
    if top is None:
        conn.execute("INSERT INTO topics (name, owner, created_at, max_age, max_events) VALUES (?, ?, ?, ?, ?)",
                     (topic, publisher, ts, max_age, max_events))
    seq = (top[0] if top else 0) + 1
    conn.execute("INSERT INTO events (topic, seq, kind, cube_id, cube_version, publisher, ts, publish_id)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (topic, seq, kind, cube_id, cube_version, publisher, ts, publish_id))
    conn.execute("UPDATE topics SET last_seq = ? WHERE name = ?", (seq, topic))
    return seq


def events_after(conn: sqlite3.Connection, topic: str, after: int, limit: int) -> list[tuple]:
    """Up to limit events after a position, in order, as (seq, kind, cube_id, cube_version, publisher, ts)."""
    return conn.execute("SELECT seq, kind, cube_id, cube_version, publisher, ts FROM events"
                        " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?", (topic, after, limit)).fetchall()


def topics(conn: sqlite3.Connection, pattern: Pattern | None) -> dict[str, Topic]:
    """The topics a pattern names (all of them for None), by name."""
    if pattern is None:
        found = conn.execute(_TOPIC).fetchall()
    elif pattern.subtree:
        found = conn.execute(_TOPIC + " WHERE name = ? OR (name >= ? AND name < ?)",
                             (pattern.namespace, pattern.namespace + "/", pattern.namespace + "0")).fetchall()
    else:
        found = conn.execute(_TOPIC + " WHERE name = ?", (pattern.namespace,)).fetchall()
    return {r[0]: Topic(*r) for r in found}


def set_retention(conn: sqlite3.Connection, topic: str, max_age: float, max_events: int) -> None:
    conn.execute("UPDATE topics SET max_age = ?, max_events = ? WHERE name = ?", (max_age, max_events, topic))


def compact(conn: sqlite3.Connection, now: float) -> int:
    """Delete events beyond each topic's retention (the newest event stays); returns how many."""
    removed = 0
    for name, last, max_age, max_events in conn.execute(
            "SELECT name, last_seq, max_age, max_events FROM topics WHERE max_age > 0 OR max_events > 0").fetchall():
        if max_events:
            removed += conn.execute("DELETE FROM events WHERE topic = ? AND seq <= ?", (name, last - max_events)).rowcount
        if max_age:
            removed += conn.execute("DELETE FROM events WHERE topic = ? AND ts < ? AND seq < ?",
                                    (name, now - max_age, last)).rowcount
        first = conn.execute("SELECT min(seq) FROM events WHERE topic = ?", (name,)).fetchone()[0]
        conn.execute("UPDATE topics SET first_seq = ? WHERE name = ?", (first or last + 1, name))
    return removed


def open_cursor(conn: sqlite3.Connection, agent: str, name: str, pattern: str, now: float) -> tuple[str, dict[str, int]]:
    """The agent's named durable cursor (created on first use for pattern): (its pattern, acked seq per topic)."""
    conn.execute("INSERT OR IGNORE INTO durable_subscriptions (agent, name, pattern, created_at) VALUES (?, ?, ?, ?)",
                 (agent, name, pattern, now))
    found, acked = conn.execute("SELECT pattern, acked FROM durable_subscriptions WHERE agent = ? AND name = ?",
                                (agent, name)).fetchone()
    return found, {k: int(v) for k, v in json.loads(acked).items()}


def save_cursor(conn: sqlite3.Connection, agent: str, name: str, acked: dict[str, int]) -> None:
    conn.execute("UPDATE durable_subscriptions SET acked = ? WHERE agent = ? AND name = ?",
                 (json.dumps(acked), agent, name))
