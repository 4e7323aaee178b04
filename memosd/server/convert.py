"""Conversions between protocol messages and domain objects; the core never sees a protobuf."""

from __future__ import annotations

import logging
import math

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from memos_mip.v1 import cube_pb2, vault_pb2
from memosd.cube import (
    CubeDraft, CubeFilter, CubePatch, LifecycleState, MemCube, MemoryKind, SearchHit, SearchMode, Visibility,
)
from memosd.errors import InvalidArgument

log = logging.getLogger("memosd.server")


# What a Timestamp holds: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799


def to_timestamp(seconds: float | None) -> Timestamp | None:
    """A reply's time; one a Timestamp cannot hold (a row from an older daemon or edited by hand) is
    clamped, so that one stored value never fails every read that returns it."""
    if seconds is None:
        return None
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        log.warning("a stored time %r is not a number; answered as unset", seconds)
        return None
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        log.warning("a stored time %r is out of range; answered clamped", seconds)
        seconds = min(max(seconds, _MIN_SECONDS), _MAX_SECONDS)
    ts = Timestamp()
    ts.FromNanoseconds(int(round(seconds * 1e9)))
    return ts


def _seconds(msg, field: str) -> float | None:
    if not msg.HasField(field):
        return None
    ts = getattr(msg, field)
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument(f"{field} is not a valid Timestamp (years 1 to 9999, nanos 0 to 999999999)")
    return ts.seconds + ts.nanos / 1e9


def struct_to_dict(msg) -> dict:
    """A Struct field as a dict; NaN and infinity (which JSON cannot carry) are the caller's mistake."""
    try:
        return json_format.MessageToDict(msg)
    except ValueError:
        raise InvalidArgument("metadata numbers must be finite (no NaN or infinity)") from None


def _enum(cls, value: int, what: str):
    try:
        return cls(value)
    except ValueError:
        raise InvalidArgument(f"{what} {value} is not a known value") from None


def draft_from_proto(d: cube_pb2.CubeDraft) -> CubeDraft:
    return CubeDraft(
        namespace=d.namespace,
        text=d.text,
        tags=tuple(d.tags),
        metadata=struct_to_dict(d.metadata) if d.HasField("metadata") else None,
        source=d.source,
        priority=d.priority,
        visibility=_enum(Visibility, d.visibility, "visibility") if d.visibility else Visibility.NAMESPACE,
        expires_at=_seconds(d, "expires_at"),
        ttl_seconds=d.ttl_seconds,
    )


def patch_from_proto(req: vault_pb2.UpdateRequest) -> CubePatch:
    return CubePatch(
        fields=frozenset(req.update_mask.paths),
        values=draft_from_proto(req.cube),
        state=_enum(LifecycleState, req.state, "state") if req.state else None,
        expected_version=req.expected_version,
    )


def filter_from_proto(f: vault_pb2.CubeFilter) -> CubeFilter:
    states = frozenset(_enum(LifecycleState, s, "state") for s in f.states if s)
    return CubeFilter(
        namespace_prefix=f.namespace_prefix,
        kinds=frozenset(_enum(MemoryKind, k, "kind") for k in f.kinds if k),
        tags=tuple(f.tags),
        created_after=_seconds(f, "created_after"),
        created_before=_seconds(f, "created_before"),
        states=states or frozenset({LifecycleState.ACTIVE}),
    )


def mode_from_proto(mode: int) -> SearchMode:
    return _enum(SearchMode, mode, "search mode")


def fts_syntax_from_proto(syntax: int) -> bool:
    if syntax not in (vault_pb2.QUERY_SYNTAX_UNSPECIFIED, vault_pb2.QUERY_SYNTAX_FTS):
        raise InvalidArgument(f"query syntax {syntax} is not a known value")
    return syntax == vault_pb2.QUERY_SYNTAX_FTS


def cube_to_proto(c: MemCube) -> cube_pb2.MemCube:
    descriptive = cube_pb2.Descriptive(
        id=c.id, namespace=c.namespace, kind=int(c.kind), created_at=to_timestamp(c.created_at),
        updated_at=to_timestamp(c.updated_at), source=c.source, tags=c.tags,
    )
    if c.metadata:
        try:
            descriptive.metadata.update(c.metadata)
        except (ValueError, TypeError, OverflowError):
            # Stored before metadata was checked as strictly as now: answer the cube without it.
            descriptive.metadata.Clear()
            log.warning("cube %s has metadata a Struct cannot hold; answered without it", c.id)
    msg = cube_pb2.MemCube(
        header=cube_pb2.CubeHeader(
            descriptive=descriptive,
            governance=cube_pb2.Governance(
                owner=c.owner, visibility=int(c.visibility), priority=c.priority, state=int(c.state),
                expires_at=to_timestamp(c.expires_at),
            ),
            behaviour=cube_pb2.Behaviour(
                access_count=c.access_count, last_accessed_at=to_timestamp(c.last_accessed_at), version=c.version,
                parent_version=c.parent_version, derived_from=c.derived_from,
            ),
        )
    )
    if c.kind is MemoryKind.PLAINTEXT and c.text is not None:
        msg.plaintext.text = c.text
    elif c.kind is MemoryKind.ACTIVATION and c.manifest:
        from memosd.server.convert_tensor import fill_activation  # it imports this module

        fill_activation(msg, c)
    elif c.kind is MemoryKind.PARAMETRIC and c.manifest:
        from memosd.server.convert_parametric import fill_parametric  # it imports this module

        fill_parametric(msg, c)
    return msg


def hit_to_proto(h: SearchHit) -> vault_pb2.SearchHit:
    return vault_pb2.SearchHit(cube=cube_to_proto(h.cube), score=h.score, bm25_score=h.bm25_score,
                               dense_score=h.dense_score)
