"""The events of a topic as MemStore hands them to subscribers (no gRPC here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from memosd.cube import MemCube


class EventKind(enum.IntEnum):
    """Values equal the protocol's EventKind numbers."""

    PUBLISHED = 1
    UPDATED = 2
    RETRACTED = 3
    REDACTED = 4


@dataclass
class EventRecord:
    topic: str
    seq: int
    kind: EventKind
    cube_id: str
    cube_version: int
    publisher: str
    ts: float
    cube: MemCube | None = None
    # The cube's sources (lineage.sources() of its derived_from): view() shows each subscriber those it may read.
    sources: dict[str, MemCube] | None = field(default=None, repr=False, compare=False)
    # The transport's encoding of this event, made once and shared by every subscriber it goes to.
    encoded: bytes | None = field(default=None, repr=False, compare=False)
    # Each reader's view of this event, decided once for all its streams (memosd/store/views.py). Not an init
    # field: replace() makes a view without it, never sharing the original's.
    views: dict | None = field(default=None, init=False, repr=False, compare=False)
