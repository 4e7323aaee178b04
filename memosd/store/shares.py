"""Topic shares: which cubes are published on which topics, by whom, under what authority."""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Iterable

from memosd.governance.policy import Share

_OWN = "own"


def authority(share: Share) -> str | None:
    """The authority a share is made under, as its record stores it."""
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
        # Moved for a cube at each share of it made or ended, so that a decision taken on its shares is known
        # stale (memosd/store/views.py): the count of changes at its last one, unique across cubes and time.
        self._changes = 0
        self._stamps: dict[str, int] = {}

    def stamp(self, cube_id: str) -> int:
        """Changes when a share of the cube is made or ended, on any topic (0: none ever was)."""
        return self._stamps.get(cube_id, 0)

    def _changed(self, cube_id: str) -> None:
        self._changes += 1
        self._stamps[cube_id] = self._changes

    def load(self, records: Iterable[tuple[str, str, str, str | None]]) -> None:
        """Fill the index from the stored shares, (topic, cube_id, publisher, authority) each."""
        for topic, cube_id, publisher, made_under in records:
            self.add(cube_id, _share(topic, publisher, made_under))

    def of(self, cube_id: str):
        return self._by_cube.get(cube_id, {}).values()

    def on(self, topic: str, cube_id: str) -> list[Share]:
        return [s for s in self.of(cube_id) if s.topic == topic]

    def add(self, cube_id: str, share: Share) -> None:
        self._by_cube.setdefault(cube_id, {})[(share.topic, share.publisher)] = share
        self._changed(cube_id)

    def drop(self, cube_id: str, topic: str, publisher: str | None = None) -> None:
        """End one publisher's share of the cube on the topic, or (None) every one."""
        found = self._by_cube.get(cube_id, {})
        for key in [k for k in found if k[0] == topic and publisher in (None, k[1])]:
            del found[key]
            self._changed(cube_id)

    def apply(self, cube_id: str, topic: str, change: Share | Ended | None) -> None:
        """A committed publish's change: a share made (Share), one publisher's ended (Ended), or all ended (None)."""
        if change is None:
            self.drop(cube_id, topic)
        elif isinstance(change, Ended):
            self.drop(cube_id, topic, change.publisher)
        else:
            self.add(cube_id, change)


@dataclass(frozen=True)
class Ended:
    """A retraction by one publisher: its share ended, the other publishers' stay."""

    publisher: str

