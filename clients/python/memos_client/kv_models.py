"""Plain Python views of the tensor-memory messages: blob references, activation manifests, jobs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, UTC

from memos_mip.tensor_format import KVManifest, TensorSpec
from memos_mip.v1 import cube_pb2, job_pb2

_LAYOUTS = {cube_pb2.KV_LAYOUT_DYNAMIC_CACHE: "dynamic_cache"}
LAYOUT_NUMBERS = {name: number for number, name in _LAYOUTS.items()}


def _time(msg, name: str) -> datetime | None:
    return getattr(msg, name).ToDatetime(tzinfo=UTC) if msg.HasField(name) else None


@dataclass
class BlobRef:
    """A blob held by the daemon: its sha256 (its address) and size."""

    sha256: str
    size: int
    deduplicated: bool = False


@dataclass
class Activation:
    """The payload of an activation cube: which KV cache it holds and which model it belongs to."""

    blob: BlobRef
    token_ids: list[int]
    num_layers: int
    layers: list[tuple[TensorSpec, TensorSpec]]
    layout: str
    prefix_hash: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    dtype: str

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @classmethod
    def from_proto(cls, m: cube_pb2.ActivationManifest, binding: cube_pb2.ModelBinding) -> Activation:
        spec = lambda t: TensorSpec(t.dtype, tuple(t.shape))  # noqa: E731
        return cls(
            blob=BlobRef(m.blob.sha256, m.blob.size), token_ids=list(m.token_ids), num_layers=m.num_layers,
            layers=[(spec(layer.key), spec(layer.value)) for layer in m.layers],
            layout=_LAYOUTS.get(m.layout, "unspecified"), prefix_hash=m.prefix_hash,
            model_fingerprint=binding.model_fingerprint, tokenizer_fingerprint=binding.tokenizer_fingerprint,
            dtype=binding.dtype,
        )

    def manifest(self) -> KVManifest:
        return KVManifest(blob_sha256=self.blob.sha256, blob_size=self.blob.size, token_ids=tuple(self.token_ids),
                          layers=tuple(self.layers), model_fingerprint=self.model_fingerprint, dtype=self.dtype,
                          tokenizer_fingerprint=self.tokenizer_fingerprint, prefix_hash=self.prefix_hash,
                          layout=self.layout)

    def to_json(self, *, token_ids: bool = True) -> dict:
        out = {"model_fingerprint": self.model_fingerprint, "tokenizer_fingerprint": self.tokenizer_fingerprint,
               "dtype": self.dtype, "num_tokens": self.num_tokens, "num_layers": self.num_layers,
               "layout": self.layout, "prefix_hash": self.prefix_hash,
               "blob": {"sha256": self.blob.sha256, "size": self.blob.size},
               "layers": [{"key": k.to_json(), "value": v.to_json()} for k, v in self.layers]}
        if token_ids:
            out["token_ids"] = self.token_ids
        return out


def manifest_to_proto(m: KVManifest) -> tuple[cube_pb2.ModelBinding, cube_pb2.ActivationManifest]:
    """The protocol form of a manifest: the model binding (header) and the payload description."""
    binding = cube_pb2.ModelBinding(model_fingerprint=m.model_fingerprint, tokenizer_fingerprint=m.tokenizer_fingerprint,
                                    dtype=m.dtype)
    msg = cube_pb2.ActivationManifest(
        blob=cube_pb2.BlobRef(sha256=m.blob_sha256, size=m.blob_size), token_ids=list(m.token_ids),
        num_layers=m.num_layers, prefix_hash=m.prefix_hash, layout=LAYOUT_NUMBERS.get(m.layout, 0),
        layers=[cube_pb2.KVLayerSpec(key=cube_pb2.TensorSpec(dtype=k.dtype, shape=list(k.shape)),
                                     value=cube_pb2.TensorSpec(dtype=v.dtype, shape=list(v.shape)))
                for k, v in m.layers],
    )
    return binding, msg


class JobState(enum.IntEnum):
    QUEUED = job_pb2.JOB_STATE_QUEUED
    RUNNING = job_pb2.JOB_STATE_RUNNING
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED
    CANCELLED = job_pb2.JOB_STATE_CANCELLED


@dataclass
class Job:
    """A background job of the daemon (building a KV cache, training an adapter)."""

    id: str
    kind: str
    owner: str
    state: JobState
    done: int
    total: int
    message: str
    result_ids: list[str] = field(default_factory=list)
    error_code: str = ""
    error: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Numbers the job reports by name, e.g. "loss" while training an adapter.
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def from_proto(cls, msg: job_pb2.Job) -> Job:
        return cls(msg.id, msg.kind, msg.owner, JobState(msg.state), msg.done, msg.total, msg.message,
                   list(msg.result_ids), msg.error_code, msg.error, _time(msg, "created_at"),
                   _time(msg, "started_at"), _time(msg, "finished_at"), dict(msg.metrics))

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["state"] = self.state.name.lower()
        for key in ("created_at", "started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out
