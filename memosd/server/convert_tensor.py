"""Conversions for tensor memory: activation manifests, their drafts and jobs, between protocol and domain."""

from __future__ import annotations

from memos_mip.tensor_format import LAYOUT_DYNAMIC_CACHE, KVManifest, TensorSpec
from memos_mip.v1 import activation_pb2, cube_pb2, job_pb2
from memosd.cube import MemCube, MemoryKind, Visibility
from memosd.errors import InvalidArgument, MemosError
from memosd.scheduler.jobs import Job
from memosd.server.auth import principal
from memosd.server.convert_base import struct_to_dict, to_timestamp
from memosd.server.status import status_for
from memosd.vault.tensor_cubes import TensorDraft

_LAYOUTS = {cube_pb2.KV_LAYOUT_DYNAMIC_CACHE: LAYOUT_DYNAMIC_CACHE}
_LAYOUT_NUMBERS = {name: number for number, name in _LAYOUTS.items()}


def manifest_from_proto(binding: cube_pb2.ModelBinding, m: cube_pb2.ActivationManifest) -> KVManifest:
    if m.layout not in _LAYOUTS:
        raise InvalidArgument(f"manifest: layout {m.layout} is not supported; use KV_LAYOUT_DYNAMIC_CACHE")
    if m.num_layers != len(m.layers):
        raise InvalidArgument(f"manifest: num_layers is {m.num_layers} but {len(m.layers)} layers are described")
    spec = lambda t: TensorSpec(t.dtype, tuple(t.shape))  # noqa: E731
    return KVManifest(
        blob_sha256=m.blob.sha256, blob_size=m.blob.size, token_ids=tuple(m.token_ids),
        layers=tuple((spec(layer.key), spec(layer.value)) for layer in m.layers),
        model_fingerprint=binding.model_fingerprint, dtype=binding.dtype,
        tokenizer_fingerprint=binding.tokenizer_fingerprint, prefix_hash=m.prefix_hash, layout=_LAYOUTS[m.layout],
    )


def tensor_draft_from_proto(r, manifest_from) -> TensorDraft:
    """The draft of a PutActivation or PutAdapter request; manifest_from(model, manifest) parses its manifest."""
    if not r.HasField("manifest") or not r.HasField("model"):
        raise InvalidArgument("model and manifest are required")
    try:
        visibility = Visibility(r.visibility) if r.visibility else Visibility.NAMESPACE
    except ValueError:
        raise InvalidArgument(f"visibility {r.visibility} is not a known value") from None
    return TensorDraft(
        namespace=r.namespace, manifest=manifest_from(r.model, r.manifest), tags=tuple(r.tags),
        metadata=struct_to_dict(r.metadata) if r.HasField("metadata") else None, source=r.source,
        derived_from=tuple(r.derived_from), ttl_seconds=r.ttl_seconds, visibility=visibility, priority=r.priority,
    )


def activation_draft_from_proto(r: activation_pb2.PutActivationRequest) -> TensorDraft:
    return tensor_draft_from_proto(r, manifest_from_proto)


def fill_activation(msg: cube_pb2.MemCube, c: MemCube) -> None:
    """Put an activation cube's manifest into its protocol form: the payload and the header's model binding."""
    if c.kind is not MemoryKind.ACTIVATION or not c.manifest:
        return
    m = KVManifest.from_json(c.manifest)
    msg.header.descriptive.model.CopyFrom(cube_pb2.ModelBinding(
        model_fingerprint=m.model_fingerprint, tokenizer_fingerprint=m.tokenizer_fingerprint, dtype=m.dtype))
    msg.activation.CopyFrom(cube_pb2.ActivationManifest(
        blob=cube_pb2.BlobRef(sha256=m.blob_sha256, size=m.blob_size), token_ids=m.token_ids,
        num_layers=m.num_layers, prefix_hash=m.prefix_hash, layout=_LAYOUT_NUMBERS.get(m.layout, 0),
        layers=[cube_pb2.KVLayerSpec(key=cube_pb2.TensorSpec(dtype=k.dtype, shape=k.shape),
                                     value=cube_pb2.TensorSpec(dtype=v.dtype, shape=v.shape)) for k, v in m.layers],
    ))


def _caller_is_admin() -> bool:
    try:
        return principal().admin
    except LookupError:  # outside a call (no caller): show the least
        return False


def job_to_proto(job: Job) -> job_pb2.Job:
    msg = job_pb2.Job(
        id=job.id, kind=job.kind, owner=job.owner, state=int(job.state), done=job.done, total=job.total,
        # Which member of the cluster runs it, for the admin (agents are shown no host of the cluster, as in
        # Status): the protocol's Job has no field of its own for it yet.
        message=f"{job.message} (on {job.runner})" if job.runner and _caller_is_admin() else job.message,
        result_ids=job.result_ids, created_at=to_timestamp(job.created_at),
        started_at=to_timestamp(job.started_at), finished_at=to_timestamp(job.finished_at),
    )
    msg.metrics.update(job.metrics)
    if job.error is not None:
        msg.error_code = status_for(job.error).name if type(job.error) is not MemosError else "INTERNAL"
        msg.error = str(job.error)
    return msg
