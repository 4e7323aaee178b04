"""Plain Python views of the protocol's messages, returned by the clients."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, UTC
from typing import Any

from google.protobuf import json_format

from memos_client.adapter_models import AdapterInfo
from memos_client.kv_models import Activation
from memos_mip.v1 import cube_pb2


class Kind(enum.IntEnum):
    PLAINTEXT = cube_pb2.MEMORY_KIND_PLAINTEXT
    ACTIVATION = cube_pb2.MEMORY_KIND_ACTIVATION
    PARAMETRIC = cube_pb2.MEMORY_KIND_PARAMETRIC


class State(enum.IntEnum):
    ACTIVE = cube_pb2.LIFECYCLE_STATE_ACTIVE
    ARCHIVED = cube_pb2.LIFECYCLE_STATE_ARCHIVED
    EXPIRED = cube_pb2.LIFECYCLE_STATE_EXPIRED
    DELETED = cube_pb2.LIFECYCLE_STATE_DELETED


def _time(msg, name: str) -> datetime | None:
    if not msg.HasField(name):
        return None
    return getattr(msg, name).ToDatetime(tzinfo=UTC)


def _json(value):
    """Struct carries every number as a double; whole numbers come back as ints, as they were written."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


@dataclass
class Cube:
    """One version of a MemCube."""

    id: str
    namespace: str
    kind: Kind
    text: str | None
    tags: list[str]
    metadata: dict[str, Any]
    source: str
    owner: str
    state: State
    priority: int
    version: int
    parent_version: int
    created_at: datetime | None
    updated_at: datetime | None
    expires_at: datetime | None
    access_count: int
    last_accessed_at: datetime | None
    derived_from: list[str] = field(default_factory=list)
    # For activation cubes: which KV cache the payload holds and the model it belongs to.
    activation: Activation | None = None
    # For parametric cubes: which LoRA adapter the payload holds and the base model it belongs to.
    adapter: AdapterInfo | None = None

    @classmethod
    def from_proto(cls, msg: cube_pb2.MemCube) -> Cube:
        d, g, b = msg.header.descriptive, msg.header.governance, msg.header.behaviour
        return cls(
            id=d.id, namespace=d.namespace, kind=Kind(d.kind),
            text=msg.plaintext.text if msg.HasField("plaintext") else None,
            tags=list(d.tags), metadata=_json(json_format.MessageToDict(d.metadata)) if d.HasField("metadata") else {},
            source=d.source, owner=g.owner, state=State(g.state), priority=g.priority, version=b.version,
            parent_version=b.parent_version, created_at=_time(d, "created_at"), updated_at=_time(d, "updated_at"),
            expires_at=_time(g, "expires_at"), access_count=b.access_count,
            last_accessed_at=_time(b, "last_accessed_at"), derived_from=list(b.derived_from),
            activation=Activation.from_proto(msg.activation, d.model) if msg.HasField("activation") else None,
            adapter=AdapterInfo.from_proto(msg.parametric, d.model) if msg.HasField("parametric") else None,
        )

    def to_json(self) -> dict:
        """A JSON-ready dict (times as ISO 8601), as memosctl --json prints it."""
        out = {k: v for k, v in self.__dict__.items()}
        if self.activation is None:
            del out["activation"]
        else:
            out["activation"] = self.activation.to_json()
        if self.adapter is None:
            del out["adapter"]
        else:
            out["adapter"] = self.adapter.to_json()
        out["kind"] = self.kind.name.lower()
        out["state"] = self.state.name.lower()
        for key in ("created_at", "updated_at", "expires_at", "last_accessed_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


@dataclass
class Hit:
    """A search result: the cube and its scores (higher is better)."""

    cube: Cube
    score: float
    bm25_score: float | None = None
    dense_score: float | None = None

    @classmethod
    def from_proto(cls, msg) -> Hit:
        return cls(
            cube=Cube.from_proto(msg.cube), score=msg.score,
            bm25_score=msg.bm25_score if msg.HasField("bm25_score") else None,
            dense_score=msg.dense_score if msg.HasField("dense_score") else None,
        )

    def to_json(self) -> dict:
        return {"score": self.score, "bm25_score": self.bm25_score, "dense_score": self.dense_score,
                **self.cube.to_json()}


@dataclass
class Page:
    """One page of a listing."""

    cubes: list[Cube]
    next_page_token: str
    total_size: int


@dataclass
class Member:
    """One daemon of the cluster (the daemons sharing one vault), as the vault last heard of it."""

    member_id: str
    listen: str
    version: str
    started_at: datetime | None
    heard_at: datetime | None
    seconds_since_heard: float
    stale: bool  # not heard from for three heartbeats: stopped, cut off or hung (forgotten after a day)
    local: bool  # the daemon that answered

    @classmethod
    def from_proto(cls, msg) -> Member:
        return cls(msg.member_id, msg.listen, msg.version, _time(msg, "started_at"), _time(msg, "heard_at"),
                   msg.seconds_since_heard, msg.stale, msg.local)


@dataclass
class Status:
    """The daemon's status."""

    version: str
    uptime_seconds: float
    listen: str
    data_bytes: int
    counts: dict[str, dict[str, int]]
    embedding_model: str
    embedding_backlog: int
    # The daemon's metrics (DaemonMetrics as a dict with its proto field names); None unless admin.
    metrics: dict[str, Any] | None = None
    # This daemon's member id, the members of its cluster (this one included) and its bus's state ("": none).
    member_id: str = ""
    members: list[Member] = field(default_factory=list)
    bus: str = ""

    @classmethod
    def from_proto(cls, msg) -> Status:
        counts: dict[str, dict[str, int]] = {}
        for c in msg.counts:
            counts.setdefault(Kind(c.kind).name.lower(), {})[State(c.state).name.lower()] = c.count
        return cls(version=msg.version, uptime_seconds=msg.uptime_seconds, listen=msg.listen,
                   data_bytes=msg.data_bytes, counts=counts, embedding_model=msg.embedding_model,
                   embedding_backlog=msg.embedding_backlog,
                   metrics=_daemon_metrics(msg.metrics) if msg.HasField("metrics") else None,
                   member_id=msg.member_id, members=[Member.from_proto(m) for m in msg.members], bus=msg.bus)


def _daemon_metrics(m) -> dict[str, Any]:
    """DaemonMetrics as plain Python: numbers stay numbers, usage is {kind name: bytes}."""
    plain = {f.name: getattr(m, f.name) for f in m.DESCRIPTOR.fields if not f.is_repeated}
    plain["requests"] = [{"service": r.service, "method": r.method, "code": r.code, "count": r.count} for r in m.requests]
    plain["latencies"] = [{"service": x.service, "method": x.method, "count": x.count, "sum_seconds": x.sum_seconds,
                           "p50_seconds": x.p50_seconds, "p99_seconds": x.p99_seconds} for x in m.latencies]
    plain["usage"] = {Kind(u.kind).name.lower(): u.bytes for u in m.usage}
    return plain


@dataclass
class Agent:
    """An agent registered with the daemon."""

    name: str
    public_key: bytes
    groups: list[str]
    admin: bool
    created_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_proto(cls, msg) -> Agent:
        return cls(msg.name, msg.public_key, list(msg.groups), msg.admin, _time(msg, "created_at"),
                   _time(msg, "revoked_at"))

    def to_json(self) -> dict:
        from memos_client.auth import fingerprint

        return {"name": self.name, "key_fingerprint": fingerprint(self.public_key), "groups": self.groups,
                "admin": self.admin, "created_at": self.created_at.isoformat() if self.created_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


@dataclass
class Policy:
    """A signed policy: its document (parsed), the exact signed bytes and the signature."""

    document: dict[str, Any]
    signed_bytes: bytes
    signature: bytes
    revoked_at: datetime | None

    @classmethod
    def from_proto(cls, msg) -> Policy:
        import json

        return cls(json.loads(msg.document), msg.document, msg.signature, _time(msg, "revoked_at"))

    @property
    def id(self) -> str:
        return self.document["id"]

    def to_json(self) -> dict:
        return {**self.document, "signature": self.signature.hex(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


@dataclass
class AuditEntry:
    """One entry of the daemon's hash-chained audit log."""

    seq: int
    time: datetime | None
    agent: str
    action: str
    target: str
    decision: str
    detail: str
    prev_hash: str
    hash: str

    @classmethod
    def from_proto(cls, msg) -> AuditEntry:
        return cls(msg.seq, _time(msg, "time"), msg.agent, msg.action, msg.target, msg.decision, msg.detail,
                   msg.prev_hash, msg.hash)

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["time"] = self.time.isoformat() if self.time else None
        return out


@dataclass
class AuditReport:
    """What `audit verify` found. Tampering up to last_checkpoint_seq shows to anyone without the daemon's
    audit key; the unsigned_tail entries after it are only hash-chained."""

    ok: bool
    entries: int
    first_bad_seq: int
    reason: str
    checkpoints: int
    last_checkpoint_seq: int
    unsigned_tail: int
    audit_key_fingerprint: str

    @classmethod
    def from_proto(cls, msg) -> AuditReport:
        return cls(msg.ok, msg.entries, msg.first_bad_seq, msg.reason, msg.checkpoints, msg.last_checkpoint_seq,
                   msg.unsigned_tail, msg.audit_key_fingerprint)

    def to_json(self) -> dict:
        return dict(self.__dict__)


class EventKind(enum.IntEnum):
    PUBLISHED = 1
    UPDATED = 2
    RETRACTED = 3
    REDACTED = 4


@dataclass
class Event:
    """One event of a MemStore topic; `cube` is the cube at the published version (None when retracted)."""

    topic: str
    seq: int
    kind: EventKind
    cube_id: str
    cube_version: int
    publisher: str
    time: datetime | None
    cube: Cube | None

    @classmethod
    def from_proto(cls, msg) -> Event:
        return cls(msg.topic, msg.seq, EventKind(msg.kind), msg.cube_id, msg.cube_version, msg.publisher,
                   _time(msg, "time"), Cube.from_proto(msg.cube) if msg.HasField("cube") else None)

    def to_json(self) -> dict:
        return {"topic": self.topic, "seq": self.seq, "kind": self.kind.name.lower(), "cube_id": self.cube_id,
                "cube_version": self.cube_version, "publisher": self.publisher,
                "time": self.time.isoformat() if self.time else None,
                "cube": self.cube.to_json() if self.cube else None}


@dataclass
class Heartbeat:
    """Sent on an idle subscription: the last sequence delivered per topic."""

    delivered: dict[str, int]


@dataclass
class Topic:
    name: str
    owner: str
    last_seq: int
    first_seq: int
    max_age_seconds: int
    max_events: int

    @classmethod
    def from_proto(cls, msg) -> Topic:
        return cls(msg.name, msg.owner, msg.last_seq, msg.first_seq, msg.max_age_seconds, msg.max_events)
