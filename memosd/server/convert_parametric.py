"""Conversions for parametric memory: adapter manifests, drafts and distillation requests, between protocol and
domain."""

from __future__ import annotations

from memos_mip.adapter_format import AdapterManifest
from memos_mip.v1 import cube_pb2, parametric_pb2
from memosd.cube import MemCube, MemoryKind
from memosd.scheduler.distill import SourceSpec, TrainSpec
from memosd.server.convert_tensor import tensor_draft_from_proto
from memosd.vault.tensor_cubes import TensorDraft


def manifest_from_proto(binding: cube_pb2.ModelBinding, m: cube_pb2.ParametricManifest) -> AdapterManifest:
    return AdapterManifest(
        blob_sha256=m.blob.sha256, blob_size=m.blob.size, model_fingerprint=binding.model_fingerprint,
        dtype=binding.dtype, peft_type=m.peft_type, rank=m.rank, lora_alpha=m.lora_alpha,
        target_modules=tuple(m.target_modules), task_type=m.task_type, base_model_name=m.base_model_name,
        num_modules=m.num_modules, num_parameters=m.num_parameters,
    )


def adapter_draft_from_proto(r: parametric_pb2.PutAdapterRequest) -> TensorDraft:
    return tensor_draft_from_proto(r, manifest_from_proto)


def fill_parametric(msg: cube_pb2.MemCube, c: MemCube) -> None:
    """Put an adapter cube's manifest into its protocol form: the payload and the header's model binding."""
    if c.kind is not MemoryKind.PARAMETRIC or not c.manifest:
        return
    m = AdapterManifest.from_json(c.manifest)
    msg.header.descriptive.model.CopyFrom(cube_pb2.ModelBinding(model_fingerprint=m.model_fingerprint, dtype=m.dtype))
    msg.parametric.CopyFrom(cube_pb2.ParametricManifest(
        blob=cube_pb2.BlobRef(sha256=m.blob_sha256, size=m.blob_size), peft_type=m.peft_type, rank=m.rank,
        lora_alpha=m.lora_alpha, target_modules=m.target_modules, task_type=m.task_type,
        base_model_name=m.base_model_name, num_modules=m.num_modules, num_parameters=m.num_parameters,
    ))


def source_from_proto(s: parametric_pb2.DistillSource) -> SourceSpec:
    return SourceSpec(cube_ids=tuple(s.cube_ids), namespace_prefix=s.namespace_prefix, tags=tuple(s.tags),
                      query=s.query, limit=s.limit)


def train_spec_from_proto(p: parametric_pb2.DistillParams) -> TrainSpec:
    return TrainSpec(rank=p.rank, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                     target_modules=tuple(p.target_modules), steps=p.steps, learning_rate=p.learning_rate,
                     batch_size=p.batch_size, max_tokens=p.max_tokens, seed=p.seed).resolved()
