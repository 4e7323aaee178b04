"""Conversions between protocol messages and whole cubes, hits and plans, over convert_base, convert_tensor and
convert_parametric (which never import this module); the core never sees a protobuf."""

from __future__ import annotations

import logging

from memos_mip.v1 import cube_pb2, parametric_pb2, vault_pb2
from memosd.cube import (
    CubeDraft, CubeFilter, CubePatch, LifecycleState, MemCube, MemoryKind, SearchHit, SearchMode, Visibility,
)
from memosd.errors import InvalidArgument
from memosd.scheduler.plan import Choice, Plan
from memosd.server.convert_base import enum_value, struct_to_dict, timestamp_seconds, to_timestamp
from memosd.server.convert_parametric import fill_parametric
from memosd.server.convert_tensor import fill_activation

log = logging.getLogger("memosd.server")


def draft_from_proto(d: cube_pb2.CubeDraft) -> CubeDraft:
    return CubeDraft(
        namespace=d.namespace,
        text=d.text,
        tags=tuple(d.tags),
        metadata=struct_to_dict(d.metadata) if d.HasField("metadata") else None,
        source=d.source,
        priority=d.priority,
        visibility=enum_value(Visibility, d.visibility, "visibility") if d.visibility else Visibility.NAMESPACE,
        expires_at=timestamp_seconds(d, "expires_at"),
        ttl_seconds=d.ttl_seconds,
        context=d.context,
    )


def patch_from_proto(req: vault_pb2.UpdateRequest) -> CubePatch:
    return CubePatch(
        fields=frozenset(req.update_mask.paths),
        values=draft_from_proto(req.cube),
        state=enum_value(LifecycleState, req.state, "state") if req.state else None,
        expected_version=req.expected_version,
    )


def filter_from_proto(f: vault_pb2.CubeFilter) -> CubeFilter:
    states = frozenset(enum_value(LifecycleState, s, "state") for s in f.states if s)
    return CubeFilter(
        namespace_prefix=f.namespace_prefix,
        kinds=frozenset(enum_value(MemoryKind, k, "kind") for k in f.kinds if k),
        tags=tuple(f.tags),
        created_after=timestamp_seconds(f, "created_after"),
        created_before=timestamp_seconds(f, "created_before"),
        states=states or frozenset({LifecycleState.ACTIVE}),
    )


def mode_from_proto(mode: int) -> SearchMode:
    return enum_value(SearchMode, mode, "search mode")


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
        fill_activation(msg, c)
    elif c.kind is MemoryKind.PARAMETRIC and c.manifest:
        fill_parametric(msg, c)
    return msg


def hit_to_proto(h: SearchHit) -> vault_pb2.SearchHit:
    return vault_pb2.SearchHit(cube=cube_to_proto(h.cube), score=h.score, bm25_score=h.bm25_score,
                               dense_score=h.dense_score)


def _choice(c: Choice) -> parametric_pb2.PlanChoice:
    return parametric_pb2.PlanChoice(cube=cube_to_proto(c.cube), score=c.score, reason=c.reason)


def plan_to_proto(plan: Plan) -> parametric_pb2.PlanResponse:
    response = parametric_pb2.PlanResponse(plaintext=[_choice(c) for c in plan.plaintext],
                                           matched_tokens=plan.matched_tokens,
                                           adapters=[_choice(c) for c in plan.adapters])
    if plan.activation is not None:
        response.activation.CopyFrom(_choice(plan.activation))
    return response
