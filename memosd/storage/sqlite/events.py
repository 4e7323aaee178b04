"""MemStore's storage on SQLite: topics, events and durable cursors, one named function per query."""

from __future__ import annotations

import json
import sqlite3

from memosd.governance.policy import Pattern
from memosd.storage.records import Topic

_TOPIC = "SELECT name, owner, last_seq, first_seq, max_age, max_events FROM topics"


def lock_topic(conn: sqlite3.Connection, topic: str) -> None:
    """Nothing to take: the one writer thread already publishes one transaction at a time."""


def find_published(conn: sqlite3.Connection, topic: str, publish_id: str) -> tuple[int, str] | None:
    """(seq, publisher) of the event published on the topic under publish_id, if any."""
    return find_published_many(conn, topic, [publish_id]).get(publish_id)


def find_published_many(conn: sqlite3.Connection, topic: str, publish_ids: list[str]) -> dict[str, tuple[int, str]]:
    """{publish_id: (seq, publisher)} of the events published on the topic under these ids."""
    found: dict[str, tuple[int, str]] = {}
    ids = list(publish_ids)
    for start in range(0, len(ids), 500):  # well under SQLite's limit on bound parameters
        part = ids[start:start + 500]
        marks = ",".join("?" * len(part))
        for publish_id, seq, publisher in conn.execute(
                f"SELECT publish_id, seq, publisher FROM events WHERE topic = ? AND publish_id IN ({marks})",
                (topic, *part)):
            found[publish_id] = (seq, publisher)
    return found


def append_event(conn: sqlite3.Connection, topic: str, kind: int, cube_id: str, cube_version: int, publisher: str,
                 ts: float, publish_id: str | None, *, max_age: float, max_events: int) -> int:
    """Append an event (creating the topic, owned by the publisher, with these retention limits); returns its seq."""
    return append_events(conn, topic, [(kind, cube_id, cube_version, publisher, ts, publish_id)],
                         max_age=max_age, max_events=max_events)


def append_events(conn: sqlite3.Connection, topic: str, rows: list[tuple[int, str, int, str, float, str | None]], *,
                  max_age: float, max_events: int) -> int:
    """Append events (kind, cube_id, cube_version, publisher, ts, publish_id), in order, with consecutive seqs;
    returns the first's. The topic is created by the first, owned by its publisher, with these retention limits."""
    (last,) = conn.execute(
        "INSERT INTO topics (name, owner, created_at, max_age, max_events, last_seq) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET last_seq = last_seq + excluded.last_seq RETURNING last_seq",
        (topic, rows[0][3], rows[0][4], max_age, max_events, len(rows))).fetchall()[0]
    first = last - len(rows) + 1
    conn.executemany("INSERT INTO events (topic, seq, kind, cube_id, cube_version, publisher, ts, publish_id)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(topic, first + i, *row) for i, row in enumerate(rows)])
    return first


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
