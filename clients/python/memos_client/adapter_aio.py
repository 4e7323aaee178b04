"""The parametric-memory methods of AsyncMemosClient, the asyncio twins of memos_client.adapter_client's; the
tensor work (fingerprints, encoding, loading) runs in a thread so the event loop keeps serving."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from memos_client.adapter_client import (
    adapter_namespace, adapter_of, distill_request, plan_inputs, plan_request, put_adapter_request,
    write_peft_directory,
)
from memos_mip.adapter_format import AdapterManifest
from memos_client.adapter_models import Plan
from memos_client.kv_models import Job
from memos_client.models import Cube, Kind
from memos_mip.v1 import parametric_pb2_grpc


class AsyncParametricMethods:
    """Mixed into AsyncMemosClient (after AsyncTensorMethods, whose blob transfers it uses)."""

    @property
    def _parametric(self):
        return self._stub("_parametric_stub", parametric_pb2_grpc.ParametricServiceStub)

    async def put_adapter(self, manifest: AdapterManifest, namespace: str | None = None, **fields) -> Cube:
        request = put_adapter_request(manifest, adapter_namespace(self, namespace), **fields)
        return Cube.from_proto((await self._call(self._parametric.PutAdapter, request)).cube)

    async def distill(self, namespace: str | None = None, **fields) -> tuple[Job, list[str]]:
        request = distill_request(adapter_namespace(self, namespace), **fields)
        r = await self._call(self._parametric.Distill, request)
        return Job.from_proto(r.job), list(r.source_ids)

    async def plan(self, query: str, model=None, *, model_fingerprint: str | None = None, tokenizer=None,
                   prompt: str | None = None, token_ids=None, namespace: str | None = None, limit: int = 0,
                   max_adapters: int = 0, agent: str = "") -> Plan:
        fingerprint, ids = await asyncio.to_thread(plan_inputs, query, model, model_fingerprint, tokenizer, prompt,
                                                   token_ids)
        request = plan_request(query, model_fingerprint=fingerprint, token_ids=ids, namespace=namespace, limit=limit,
                               max_adapters=max_adapters, agent=agent)
        return Plan.from_proto(await self._call(self._parametric.Plan, request))

    async def push_adapter(self, adapter, base_model=None, *, namespace: str | None = None,
                           adapter_name: str = "default", model_fingerprint: str | None = None,
                           allow_pickle: bool = False, **fields) -> str:
        from memos_client import adapters

        payload, manifest = await asyncio.to_thread(
            adapters.prepare_push, adapter, base_model, adapter_name=adapter_name, model_fingerprint=model_fingerprint,
            allow_pickle=allow_pickle)
        namespace = adapter_namespace(self, namespace)
        await self.upload_blob(payload, namespace, kind=Kind.PARAMETRIC)
        return (await self.put_adapter(manifest, namespace, **fields)).id

    async def load_adapter(self, cube_id: str, base_model, *, adapter_name: str = "default",
                           is_trainable: bool = False, hotswap: bool = False):
        from memos_client import adapters

        cube = await self.get(cube_id)
        meta = await asyncio.to_thread(adapters.check_base, cube, base_model)
        return await asyncio.to_thread(adapters.finish_load, await self.fetch_payload(cube_id, meta.blob), meta, base_model, adapter_name=adapter_name,
                                       is_trainable=is_trainable, hotswap=hotswap)

    async def pull_adapter(self, cube_id: str, directory: str | os.PathLike) -> Path:
        meta = adapter_of(await self.get(cube_id))
        blob = await self.download_blob(cube_id, size=meta.blob.size)
        return await asyncio.to_thread(write_peft_directory, blob, directory)
