"""The parametric-memory methods of both clients: adapter cubes, distillation, the query plan, and the PEFT
helpers (push_adapter, load_adapter), which import torch and peft only when called."""

from __future__ import annotations

import os
from pathlib import Path

from memos_mip.adapter_format import AdapterManifest, FormatError, peft_files
from memos_client.adapter_models import Plan, manifest_to_proto
from memos_client.errors import DataLoss, FailedPrecondition, InvalidArgument
from memos_client.kv_models import Job
from memos_client.models import Cube, Kind
from memos_client.steps import Offload, method
from memos_mip.v1 import parametric_pb2 as ppb, parametric_pb2_grpc

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
DISTILL_PARAMS = ("rank", "lora_alpha", "lora_dropout", "target_modules", "steps", "learning_rate", "batch_size",
                  "max_tokens", "seed")


def adapter_namespace(client, namespace: str | None) -> str:
    """agents/AGENT/adapters for the client's agent, unless a namespace is given."""
    return namespace if namespace is not None else client.default_namespace.rsplit("/", 1)[0] + "/adapters"


def put_adapter_request(manifest: AdapterManifest, namespace: str, *, tags=(), metadata=None, source: str = "",
                        derived_from=(), ttl: float | None = None, priority: int = 0) -> ppb.PutAdapterRequest:
    binding, msg = manifest_to_proto(manifest)
    request = ppb.PutAdapterRequest(namespace=namespace, model=binding, manifest=msg, tags=list(tags), source=source,
                                    derived_from=list(derived_from), ttl_seconds=int(ttl or 0), priority=priority)
    if metadata:
        request.metadata.update(metadata)
    return request


def distill_request(namespace: str, *, cube_ids=(), namespace_prefix: str = "", tags=(), query: str = "",
                    limit: int = 0, template: str = "", adapter_tags=(), metadata=None, model_fingerprint: str = "",
                    **params) -> ppb.DistillRequest:
    unknown = set(params) - set(DISTILL_PARAMS)
    if unknown:
        raise InvalidArgument(f"unknown distill settings {', '.join(sorted(unknown))}; known: {', '.join(DISTILL_PARAMS)}")
    params["target_modules"] = list(params.get("target_modules") or ())
    request = ppb.DistillRequest(
        source=ppb.DistillSource(cube_ids=list(cube_ids), namespace_prefix=namespace_prefix or "", tags=list(tags),
                                 query=query, limit=limit),
        namespace=namespace, params=ppb.DistillParams(**{k: v for k, v in params.items() if v}), template=template,
        tags=list(adapter_tags), model_fingerprint=model_fingerprint)
    if metadata:
        request.metadata.update(metadata)
    return request


def plan_request(query: str, *, model_fingerprint: str = "", token_ids=None, namespace: str | None = None,
                 limit: int = 0, max_adapters: int = 0, agent: str = "") -> ppb.PlanRequest:
    return ppb.PlanRequest(query=query, model_fingerprint=model_fingerprint or "",
                           token_ids=[int(t) for t in (token_ids or ())], namespace_prefix=namespace or "",
                           limit=limit, max_adapters=max_adapters, agent=agent)


def plan_inputs(query: str, model, model_fingerprint: str | None, tokenizer, prompt: str | None, token_ids):
    """(fingerprint, token ids) for a plan: the model's base fingerprint, the prompt (or query) tokenized."""
    if model is not None:
        from memos_mip.fingerprint import base_model_fingerprint

        model_fingerprint = base_model_fingerprint(model)
    if token_ids is None and tokenizer is not None:
        token_ids = tokenizer(prompt if prompt is not None else query)["input_ids"]
    return model_fingerprint or "", token_ids


def adapter_of(cube: Cube):
    if cube.kind is not Kind.PARAMETRIC or cube.adapter is None:
        raise FailedPrecondition(f"cube {cube.id} is a {cube.kind.name.lower()} cube, not an adapter")
    return cube.adapter


def write_peft_directory(blob, directory: str | os.PathLike) -> Path:
    """adapter_config.json and adapter_model.safetensors from a verified adapter blob, written into a new or empty
    directory (each file whole or not at all)."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise InvalidArgument(f"{directory} is not empty; pull into a new or empty directory")
    try:
        config, weights = peft_files(blob)
    except FormatError as exc:
        raise DataLoss(f"the adapter blob is corrupt: {exc}") from None
    directory.mkdir(parents=True, exist_ok=True)
    for name, parts in ((CONFIG_FILE, [config]), (WEIGHTS_FILE, weights)):
        partial = directory / f".{name}.partial"
        with open(partial, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        partial.rename(directory / name)
    return directory


class ParametricMethods:
    """The parametric-memory methods of MemosClient and AsyncMemosClient (memos_client.steps), after
    TensorMethods, whose blob transfers they use; the tensor work (fingerprints, encoding, loading) is
    offloaded, so AsyncMemosClient's event loop keeps serving."""

    @property
    def _parametric(self):
        return self._stub("_parametric_stub", parametric_pb2_grpc.ParametricServiceStub)

    @method
    def put_adapter(self, manifest: AdapterManifest, namespace: str | None = None, **fields) -> Cube:
        """Store an adapter cube whose blob is uploaded; fields: tags, metadata, source, derived_from, ttl,
        priority."""
        request = put_adapter_request(manifest, adapter_namespace(self, namespace), **fields)
        return Cube.from_proto((yield self._call(self._parametric.PutAdapter, request)).cube)

    @method
    def distill(self, namespace: str | None = None, **fields) -> tuple[Job, list[str]]:
        """Have the daemon train a LoRA adapter on plaintext cubes with its base model and store it in namespace
        (default agents/AGENT/adapters); returns the job (watch_job follows it) and the ids it trains on.
        Sources: cube_ids, or namespace_prefix / tags / query / limit. Settings: rank, lora_alpha, lora_dropout,
        target_modules, steps, learning_rate, batch_size, max_tokens, seed. Also template, adapter_tags,
        metadata, model_fingerprint."""
        request = distill_request(adapter_namespace(self, namespace), **fields)
        r = yield self._call(self._parametric.Distill, request)
        return Job.from_proto(r.job), list(r.source_ids)

    @method
    def plan(self, query: str, model=None, *, model_fingerprint: str | None = None, tokenizer=None,
             prompt: str | None = None, token_ids=None, namespace: str | None = None, limit: int = 0,
             max_adapters: int = 0, agent: str = "") -> Plan:
        """MemScheduler's plan for a query: plaintext hits, the best activation cube and the adapters for the
        model the agent runs (`model`, or its base model_fingerprint), each with a score and a reason. With a
        tokenizer (or token_ids) the activation cube is the one covering the longest prefix of the prompt."""
        fingerprint, ids = yield Offload(plan_inputs, query, model, model_fingerprint, tokenizer, prompt, token_ids)
        request = plan_request(query, model_fingerprint=fingerprint, token_ids=ids, namespace=namespace, limit=limit,
                               max_adapters=max_adapters, agent=agent)
        return Plan.from_proto((yield self._call(self._parametric.Plan, request)))

    # -- PEFT -----------------------------------------------------------------------------------------

    @method
    def push_adapter(self, adapter, base_model=None, *, namespace: str | None = None, adapter_name: str = "default",
                     model_fingerprint: str | None = None, allow_pickle: bool = False, **fields) -> str:
        """Store a LoRA adapter as a parametric cube; returns its id. `adapter` is a PeftModel (its adapter
        `adapter_name`) or a PEFT adapter directory, then with its base_model (or the base model's
        model_fingerprint). A directory's adapter_model.bin (a pickle) is read only with allow_pickle, by torch's
        weights-only unpickler. fields: tags, metadata, source, derived_from, ttl, priority."""
        from memos_client import adapters

        payload, manifest = yield Offload(adapters.prepare_push, adapter, base_model, adapter_name=adapter_name,
                                          model_fingerprint=model_fingerprint, allow_pickle=allow_pickle)
        namespace = adapter_namespace(self, namespace)
        yield self.upload_blob(payload, namespace, kind=Kind.PARAMETRIC)
        return (yield self.put_adapter(manifest, namespace, **fields)).id

    @method
    def load_adapter(self, cube_id: str, base_model, *, adapter_name: str = "default", is_trainable: bool = False,
                     hotswap: bool = False):
        """The adapter of a parametric cube loaded onto base_model, as PeftModel.from_pretrained would: a new
        PeftModel around a transformers model; for a PeftModel, another adapter named adapter_name (not made
        active: set_adapter does that), or with hotswap=True new weights for its adapter of that name, in place.
        ModelMismatch if the adapter was made for another base model."""
        from memos_client import adapters

        cube = yield self.get(cube_id)
        meta = yield Offload(adapters.check_base, cube, base_model)
        payload = yield self.fetch_payload(cube_id, meta.blob)
        return (yield Offload(adapters.finish_load, payload, meta, base_model, adapter_name=adapter_name,
                              is_trainable=is_trainable, hotswap=hotswap))

    @method
    def pull_adapter(self, cube_id: str, directory: str | os.PathLike) -> Path:
        """Write an adapter cube as a PEFT directory (adapter_config.json, adapter_model.safetensors) that
        PeftModel.from_pretrained reads; no torch needed."""
        meta = adapter_of((yield self.get(cube_id)))
        blob = yield self.download_blob(cube_id, size=meta.blob.size)
        return (yield Offload(write_peft_directory, blob, directory))
