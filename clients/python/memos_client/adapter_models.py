"""Plain Python views of the parametric-memory messages: adapter manifests and query plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memos_client.kv_models import BlobRef
from memos_mip.adapter_format import AdapterManifest
from memos_mip.v1 import cube_pb2

if TYPE_CHECKING:
    from memos_client.models import Cube


@dataclass
class AdapterInfo:
    """The payload of a parametric cube: which LoRA adapter it holds and the base model it belongs to."""

    blob: BlobRef
    model_fingerprint: str
    dtype: str
    peft_type: str
    rank: int
    lora_alpha: float
    target_modules: list[str]
    task_type: str
    base_model_name: str
    num_modules: int
    num_parameters: int

    @classmethod
    def from_proto(cls, m: cube_pb2.ParametricManifest, binding: cube_pb2.ModelBinding) -> AdapterInfo:
        return cls(blob=BlobRef(m.blob.sha256, m.blob.size), model_fingerprint=binding.model_fingerprint,
                   dtype=binding.dtype, peft_type=m.peft_type, rank=m.rank, lora_alpha=m.lora_alpha,
                   target_modules=list(m.target_modules), task_type=m.task_type, base_model_name=m.base_model_name,
                   num_modules=m.num_modules, num_parameters=m.num_parameters)

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["blob"] = {"sha256": self.blob.sha256, "size": self.blob.size}
        return out


def manifest_to_proto(m: AdapterManifest) -> tuple[cube_pb2.ModelBinding, cube_pb2.ParametricManifest]:
    """The protocol form of an adapter manifest: the base model binding (header) and the payload description."""
    binding = cube_pb2.ModelBinding(model_fingerprint=m.model_fingerprint, dtype=m.dtype)
    msg = cube_pb2.ParametricManifest(
        blob=cube_pb2.BlobRef(sha256=m.blob_sha256, size=m.blob_size), peft_type=m.peft_type, rank=m.rank,
        lora_alpha=m.lora_alpha, target_modules=list(m.target_modules), task_type=m.task_type,
        base_model_name=m.base_model_name, num_modules=m.num_modules, num_parameters=m.num_parameters)
    return binding, msg


@dataclass
class PlanChoice:
    """One cube of a plan, how well it fits (higher is better) and why it was chosen."""

    cube: Cube
    score: float
    reason: str

    @classmethod
    def from_proto(cls, msg) -> PlanChoice:
        from memos_client.models import Cube

        return cls(Cube.from_proto(msg.cube), msg.score, msg.reason)

    def to_json(self) -> dict:
        cube = self.cube
        return {"id": cube.id, "kind": cube.kind.name.lower(), "namespace": cube.namespace, "score": self.score,
                "reason": self.reason, "tags": cube.tags, "text": cube.text}


@dataclass
class Plan:
    """MemScheduler's plan for a query: plaintext to put in the prompt, a KV cache to inject, adapters to load."""

    plaintext: list[PlanChoice] = field(default_factory=list)
    activation: PlanChoice | None = None
    matched_tokens: int = 0
    adapters: list[PlanChoice] = field(default_factory=list)

    @classmethod
    def from_proto(cls, msg) -> Plan:
        return cls([PlanChoice.from_proto(c) for c in msg.plaintext],
                   PlanChoice.from_proto(msg.activation) if msg.HasField("activation") else None,
                   msg.matched_tokens, [PlanChoice.from_proto(c) for c in msg.adapters])

    def to_json(self) -> dict:
        return {"plaintext": [c.to_json() for c in self.plaintext],
                "activation": self.activation.to_json() if self.activation else None,
                "matched_tokens": self.matched_tokens, "adapters": [c.to_json() for c in self.adapters]}
