"""Topic shares: which cubes are published on which topics, by whom, under what authority."""

from __future__ import annotations

import json
import sqlite3

from memosd.governance.policy import Share

_OWN = "own"


def _authority(share: Share) -> str | None:
    if share.own:
        return _OWN
    return None if share.policies is None else json.dumps(sorted(share.policies))


def _share(topic: str, publisher: str, authority: str | None) -> Share:
    if authority == _OWN:
        return Share(topic, publisher, own=True)
    return Share(topic, publisher, policies=None if authority is None else frozenset(json.loads(authority)))


class ShareIndex:
    """The shares in memory (governance consults them on every read), mirrored in topic_cubes."""

    def __init__(self):
        self._by_cube: dict[str, dict[tuple[str, str], Share]] = {}

    def load(self, conn: sqlite3.Connection) -> None:
        for topic, cube_id, publisher, authority in conn.execute(
                "SELECT topic, cube_id, publisher, authority FROM topic_cubes"):
            self.add(cube_id, _share(topic, publisher, authority))

    def of(self, cube_id: str):
        return self._by_cube.get(cube_id, {}).values()

    def on(self, topic: str, cube_id: str) -> list[Share]:
        return [s for s in self.of(cube_id) if s.topic == topic]

    def add(self, cube_id: str, share: Share) -> None:
        self._by_cube.setdefault(cube_id, {})[(share.topic, share.publisher)] = share

    def drop(self, cube_id: str, topic: str) -> None:
        found = self._by_cube.get(cube_id, {})
        for key in [k for k in found if k[0] == topic]:
            del found[key]


def publishers(conn: sqlite3.Connection, topic: str, cube_id: str) -> set[str]:
    """Who has the cube published on the topic now (empty: it is not)."""
    return {r[0] for r in conn.execute("SELECT publisher FROM topic_cubes WHERE topic = ? AND cube_id = ?",
                                       (topic, cube_id))}


def record(conn: sqlite3.Connection, cube_id: str, share: Share) -> None:
    # A publisher publishing again renews its share under the authority it holds now.
    conn.execute("INSERT INTO topic_cubes (topic, cube_id, publisher, authority) VALUES (?, ?, ?, ?)"
                 " ON CONFLICT (topic, cube_id, publisher) DO UPDATE SET authority = excluded.authority",
                 (share.topic, cube_id, share.publisher, _authority(share)))


def drop(conn: sqlite3.Connection, topic: str, cube_id: str) -> None:
    """A retraction ends every publisher's share of the cube on the topic."""
    conn.execute("DELETE FROM topic_cubes WHERE topic = ? AND cube_id = ?", (topic, cube_id))
