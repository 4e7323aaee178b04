"""MemCube domain types, shared by every core package (no gRPC, no SQL)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class MemoryKind(enum.IntEnum):
    """The paper's three memory kinds; values equal the protocol's enum numbers."""

    PLAINTEXT = 1
    ACTIVATION = 2
    PARAMETRIC = 3


class LifecycleState(enum.IntEnum):
    """MemLifecycle states; values equal the protocol's enum numbers."""

    ACTIVE = 1
    ARCHIVED = 2
    EXPIRED = 3
    DELETED = 4


class Visibility(enum.IntEnum):
    """Who may read a cube on top of its namespace's policies."""

    NAMESPACE = 1
    OWNER = 2


@dataclass(frozen=True)
class CubeDraft:
    """What a writer supplies for a new plaintext cube."""

    namespace: str
    text: str
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    source: str = ""
    priority: int = 0
    visibility: Visibility = Visibility.NAMESPACE
    expires_at: float | None = None
    ttl_seconds: int = 0
    # Indexed for full-text ranking (at a lower weight than the text), never returned: see the protocol's CubeDraft.
    context: str = ""


PATCHABLE = frozenset(
    {"text", "tags", "metadata", "source", "priority", "visibility", "expires_at", "ttl_seconds"}
)


@dataclass(frozen=True)
class CubePatch:
    """A partial change for Update: only `fields` are applied, taken from `values`."""

    fields: frozenset[str]
    values: CubeDraft
    state: LifecycleState | None = None
    expected_version: int = 0


@dataclass
class MemCube:
    """One version of a MemCube: the flat form of the paper's header plus its payload."""

    id: str
    namespace: str
    kind: MemoryKind
    created_at: float
    updated_at: float
    owner: str
    version: int = 1
    parent_version: int = 0
    state: LifecycleState = LifecycleState.ACTIVE
    text: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    source: str = ""
    visibility: Visibility = Visibility.NAMESPACE
    priority: int = 0
    expires_at: float | None = None
    access_count: int = 0
    last_accessed_at: float | None = None
    derived_from: tuple[str, ...] = ()
    manifest: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CubeFilter:
    """Which cubes a List or Search considers; every condition must hold."""

    namespace_prefix: str = ""
    kinds: frozenset[MemoryKind] = frozenset()
    tags: tuple[str, ...] = ()
    created_after: float | None = None
    created_before: float | None = None
    states: frozenset[LifecycleState] = frozenset({LifecycleState.ACTIVE})
    # Set by governance: what the caller may read (None: everything) and, for owner-only cubes, who asks.
    scope: tuple | None = None
    viewer: str | None = None
    # reader(cube) -> whether the caller may read it: a result's derived_from names only such sources.
    reader: Any = field(default=None, compare=False, repr=False)


class SearchMode(enum.IntEnum):
    """How Search ranks; values equal the protocol's enum numbers."""

    AUTO = 0
    BM25 = 1
    DENSE = 2
    HYBRID = 3


@dataclass
class SearchHit:
    """One ranked cube with the scores that placed it."""

    cube: MemCube
    score: float
    bm25_score: float | None = None
    dense_score: float | None = None
