"""The tensor-memory methods of AsyncMemosClient, the asyncio twins of memos_client.kv_client's; the tensor
work (fingerprints, encoding, decoding) runs in a thread so the event loop keeps serving."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from memos_client.blobs import Payload, Receiver, RETRIES, feed, payload_buffer, transfer_timeout, upload_requests
from memos_client.errors import DataLoss, FailedPrecondition, from_rpc_error
from memos_client.fdpass import FALL_BACK, collect, unix_path
from memos_client.kv_client import (
    RESUMABLE, RESUMABLE_UPLOAD, TensorStubs, build_request, kv_namespace, put_activation_request,
)
from memos_client.kv_models import BlobRef, Job
from memos_client.models import Cube, Kind
from memos_mip.tensor_format import KVManifest
from memos_mip.v1 import activation_pb2 as apb, blob_pb2, job_pb2


class AsyncTensorMethods(TensorStubs):
    """Mixed into AsyncMemosClient; uses its channel, timeout and token source."""

    # -- blobs ------------------------------------------------------------------------------------

    async def upload_status(self, sha256: str, size: int, namespace: str | None = None, *,
                            kind: Kind = Kind.ACTIVATION) -> tuple[bool, int]:
        request = blob_pb2.GetUploadStatusRequest(sha256=sha256, size=size, namespace=kv_namespace(self, namespace),
                                                  kind=int(kind))
        r = await self._call(self._blobs.GetUploadStatus, request)
        return r.stored, r.committed_size

    async def upload_blob(self, data, namespace: str | None = None, *, kind: Kind = Kind.ACTIVATION) -> BlobRef:
        payload = Payload.of(data)
        if payload._sha256 is None:
            await asyncio.to_thread(lambda: payload.sha256)
        namespace = kv_namespace(self, namespace)
        attempt = 0
        while True:
            stored, committed = await self.upload_status(payload.sha256, payload.size, namespace, kind=kind)
            if stored:
                return BlobRef(payload.sha256, payload.size, deduplicated=True)
            requests = upload_requests(payload, namespace, int(kind), committed)
            try:
                r = await self._upload(requests, timeout=transfer_timeout(self.timeout, payload.size - committed))
                return BlobRef(r.blob.sha256, r.blob.size, r.deduplicated)
            except grpc.RpcError as exc:
                error = None if await self._stale(exc) else from_rpc_error(exc, self.target)
                attempt += 1
                if error is not None and not (isinstance(error, RESUMABLE_UPLOAD) and attempt <= RETRIES):
                    raise error from None

    async def download_blob(self, cube_id: str, *, into=None, size: int | None = None) -> memoryview:
        receiver: Receiver | None = None
        attempt = 0
        try:
            while True:
                offset = receiver.received if receiver else 0
                total = receiver.size if receiver else size
                stream = self._download(blob_pb2.DownloadRequest(cube_id=cube_id, offset=offset),
                                              timeout=transfer_timeout(self.timeout, total - offset) if total else None)
                try:
                    async for message in stream:
                        receiver = feed(receiver, message, into)
                    if receiver is None:
                        raise DataLoss("the daemon sent no data")
                    return await asyncio.to_thread(receiver.finish)
                except grpc.RpcError as exc:
                    error = self._renewed(exc)
                    attempt += 1
                    if error is not None and not (isinstance(error, RESUMABLE) and attempt <= RETRIES):
                        raise error from None
                finally:
                    stream.cancel()
        finally:
            if receiver is not None:
                receiver.close()

    async def open_local(self, cube_id: str, *, sha256: str | None = None):
        if unix_path(self.target) is None:
            raise FailedPrecondition("file descriptors only pass over a Unix socket; use download_blob")
        response = await self._call(self._blobs.OpenLocal, blob_pb2.OpenLocalRequest(cube_id=cube_id))
        return await asyncio.to_thread(collect, self.target, response, sha256)

    async def fetch_payload(self, cube_id: str, blob: BlobRef):
        if self.local_transfers:
            try:
                mapped = await self.open_local(cube_id, sha256=blob.sha256)
            except FALL_BACK:
                self.local_transfers = False  # another host, mount namespace or an older daemon: stream
            else:
                import torch

                return torch.frombuffer(mapped, dtype=torch.uint8)
        buffer = payload_buffer(blob.size)
        await self.download_blob(cube_id, into=buffer.numpy(), size=blob.size)
        return buffer

    # -- activation cubes ---------------------------------------------------------------------------

    async def put_activation(self, manifest: KVManifest, namespace: str | None = None, **fields) -> Cube:
        request = put_activation_request(manifest, kv_namespace(self, namespace), **fields)
        return Cube.from_proto((await self._call(self._activations.PutActivation, request)).cube)

    async def find_kv(self, model_fingerprint: str, token_ids, namespace: str | None = None) -> tuple[Cube | None, int]:
        request = apb.FindByPrefixRequest(model_fingerprint=model_fingerprint, token_ids=[int(t) for t in token_ids],
                                          namespace_prefix=namespace or "")
        r = await self._call(self._activations.FindByPrefix, request)
        return (Cube.from_proto(r.cube) if r.HasField("cube") else None), r.matched_tokens

    async def build_kv(self, source_ids, namespace: str | None = None, **fields) -> Job:
        request = build_request(source_ids, kv_namespace(self, namespace), **fields)
        return Job.from_proto((await self._call(self._activations.BuildFromPlaintext, request)).job)

    # -- jobs ---------------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        return Job.from_proto((await self._call(self._jobs.GetJob, job_pb2.GetJobRequest(id=job_id))).job)

    async def watch_job(self, job_id: str) -> AsyncIterator[Job]:
        while True:
            stream, watched = self._jobs.WatchJob(job_pb2.WatchJobRequest(id=job_id)), False
            try:
                async for message in stream:
                    watched = True
                    yield Job.from_proto(message.job)
                return
            except grpc.RpcError as exc:
                error = self._renewed(exc)  # None: refused for a stale token, before anything came
                if error is not None or watched:
                    raise error or from_rpc_error(exc, self.target) from None
            finally:
                stream.cancel()

    async def cancel_job(self, job_id: str) -> Job:
        return Job.from_proto((await self._call(self._jobs.CancelJob, job_pb2.CancelJobRequest(id=job_id))).job)

    async def list_jobs(self, include_finished: bool = False) -> list[Job]:
        r = await self._call(self._jobs.ListJobs, job_pb2.ListJobsRequest(include_finished=include_finished))
        return [Job.from_proto(j) for j in r.jobs]

    # -- transformers -------------------------------------------------------------------------------

    async def push_kv(self, cache, input_ids, model, *, namespace: str | None = None, tokenizer=None, **fields) -> str:
        from memos_client import kv

        ids, specs, payload, fingerprint, tokenizer_fp = await asyncio.to_thread(
            kv.prepare_push, cache, input_ids, model, tokenizer)
        await self.upload_blob(payload, namespace)
        manifest = kv.make_manifest(ids, specs, payload, fingerprint, tokenizer_fp, model)
        return (await self.put_activation(manifest, namespace, **fields)).id

    async def pull_kv(self, cube_id: str, model, *, tokenizer=None, num_tokens: int | None = None):
        from memos_client import kv

        cube = await self.get(cube_id)
        act = await asyncio.to_thread(kv.check_binding, cube, model, tokenizer)
        buffer = await self.fetch_payload(cube_id, act.blob)
        return await asyncio.to_thread(kv.finish_pull, buffer, act, model, num_tokens)

    async def generate_with_kv(self, model, input_ids, *, namespace: str | None = None, tokenizer=None,
                               **generate_kwargs):
        from memos_client import kv
        from memos_mip.fingerprint import model_fingerprint

        ids = kv.token_list(input_ids)
        cube, matched = await self.find_kv(await asyncio.to_thread(model_fingerprint, model), ids, namespace)
        cache = None
        usable = min(matched, len(ids) - 1)
        if cube is not None and usable > 0:
            cache = await self.pull_kv(cube.id, model, tokenizer=tokenizer, num_tokens=usable)
        tensor, mask = kv.generation_inputs(model, ids)
        return await asyncio.to_thread(model.generate, tensor, attention_mask=mask, **{kv.cache_keyword(model): cache},
                                       **generate_kwargs)
