"""The tensor-memory methods of both clients: blob transfers, activation cubes, jobs, and the transformers
helpers (push_kv, pull_kv, generate_with_kv), which import torch only when called."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from memos_client.blobs import (
    DOWNLOAD, RETRIES, UPLOAD, Payload, Receiver, decode_download, payload_buffer, encode_message, feed, transfer_timeout,
    upload_requests,
)
from memos_client.errors import Cancelled, DataLoss, FailedPrecondition, Unauthenticated, Unavailable, from_rpc_error
from memos_client.fdpass import FALL_BACK, collect, unix_path
from memos_client.kv_models import BlobRef, Job, manifest_to_proto
from memos_client.models import Cube, Kind
from memos_client.steps import END, Item, Next, Offload, iterating, method
from memos_mip.tensor_format import KVManifest
from memos_mip.v1 import activation_pb2 as apb, activation_pb2_grpc, blob_pb2, blob_pb2_grpc, job_pb2, job_pb2_grpc

# Broken transfers worth resuming: the connection went away, not the daemon saying no; for an upload also
# a resume that raced the end of the broken stream (the daemon then holds more than it said).
RESUMABLE = (Unavailable, Cancelled)
RESUMABLE_UPLOAD = (*RESUMABLE, FailedPrecondition)


def put_activation_request(manifest: KVManifest, namespace: str, *, tags=(), metadata=None, source: str = "",
                           derived_from=(), ttl: float | None = None, priority: int = 0) -> apb.PutActivationRequest:
    binding, msg = manifest_to_proto(manifest)
    request = apb.PutActivationRequest(namespace=namespace, model=binding, manifest=msg, tags=list(tags), source=source,
                                       derived_from=list(derived_from), ttl_seconds=int(ttl or 0), priority=priority)
    if metadata:
        request.metadata.update(metadata)
    return request


def build_request(source_ids, namespace: str, *, template: str = "", separator: str = "", prefix: str = "",
                  suffix: str = "", tags=(), metadata=None, special_tokens: bool = True) -> apb.BuildFromPlaintextRequest:
    request = apb.BuildFromPlaintextRequest(source_ids=list(source_ids), namespace=namespace, template=template,
                                            separator=separator, prefix=prefix, suffix=suffix, tags=list(tags),
                                            no_special_tokens=not special_tokens)
    if metadata:
        request.metadata.update(metadata)
    return request


def kv_namespace(client, namespace: str | None) -> str:
    return namespace if namespace is not None else client.default_namespace.rsplit("/", 1)[0] + "/kv"


class TensorMethods:
    """The tensor-memory methods of MemosClient and AsyncMemosClient (memos_client.steps): the tensor work
    (fingerprints, encoding, decoding) is offloaded, so AsyncMemosClient's event loop keeps serving. Their
    stubs are made on first use; the channel decides sync or asyncio."""

    def _stub(self, name: str, factory):
        """A service of the daemon in use (memos_client.failover.Service) for a generated stub class; for
        another factory of the channel, what it makes for the daemon in use."""
        if isinstance(factory, type):
            return self._service(factory)
        return self._members.current.stub(name, factory)

    @property
    def _blobs(self):
        return self._stub("_blob_stub", blob_pb2_grpc.BlobServiceStub)

    @property
    def _upload(self):
        # Chunks go out encoded by memos_mip.wire and come back as views: not the generated stub.
        return self._stub("_upload_call", lambda channel: channel.stream_unary(
            UPLOAD, request_serializer=encode_message, response_deserializer=blob_pb2.UploadResponse.FromString))

    @property
    def _download(self):
        return self._stub("_download_call", lambda channel: channel.unary_stream(
            DOWNLOAD, request_serializer=blob_pb2.DownloadRequest.SerializeToString,
            response_deserializer=decode_download))

    @property
    def _activations(self):
        return self._stub("_activation_stub", activation_pb2_grpc.ActivationServiceStub)

    @property
    def _jobs(self):
        return self._stub("_job_stub", job_pb2_grpc.JobServiceStub)

    def _renewed(self, exc: grpc.RpcError):
        """The typed error; None when the token was stale and a retry with a fresh one should follow."""
        error = from_rpc_error(exc, self.target)
        if isinstance(error, Unauthenticated) and self.tokens and self.tokens.learn_epoch(exc):
            return None
        return error

    # -- blobs ------------------------------------------------------------------------------------

    @method
    def upload_status(self, sha256: str, size: int, namespace: str | None = None, *,
                      kind: Kind = Kind.ACTIVATION) -> tuple[bool, int]:
        """(stored and usable by this agent without sending it, bytes of its unfinished upload the daemon holds)."""
        request = blob_pb2.GetUploadStatusRequest(sha256=sha256, size=size, namespace=kv_namespace(self, namespace),
                                                  kind=int(kind))
        r = yield self._call(self._blobs.GetUploadStatus, request)
        return r.stored, r.committed_size

    @method
    def upload_blob(self, data, namespace: str | None = None, *, kind: Kind = Kind.ACTIVATION) -> BlobRef:
        """Upload bytes (or a Payload of several buffers) in 1 MiB chunks; a broken connection is resumed from
        what the daemon committed, and nothing is sent for a blob it holds already."""
        payload = Payload.of(data)
        if payload._sha256 is None:
            yield Offload(lambda: payload.sha256)
        namespace = kv_namespace(self, namespace)
        attempt = 0
        while True:
            stored, committed = yield self.upload_status(payload.sha256, payload.size, namespace, kind=kind)
            if stored:
                return BlobRef(payload.sha256, payload.size, deduplicated=True)
            requests = upload_requests(payload, namespace, int(kind), committed)
            try:
                r = yield self._upload(requests, timeout=transfer_timeout(self.timeout, payload.size - committed))
                return BlobRef(r.blob.sha256, r.blob.size, r.deduplicated)
            except grpc.RpcError as exc:
                error = None if (yield self._stale(exc)) else from_rpc_error(exc, self.target)
                attempt += 1
                if error is not None and not (isinstance(error, RESUMABLE_UPLOAD) and attempt <= RETRIES):
                    raise error from None

    @method
    def download_blob(self, cube_id: str, *, into=None, size: int | None = None) -> memoryview:
        """The payload of a tensor cube, verified against its sha256 (DataLoss otherwise), in `into` (a
        writable buffer of the blob's size) or a new bytearray; a broken stream is resumed. With `size`
        (the manifest's) the call gets a deadline fitting that size; without, none."""
        receiver: Receiver | None = None
        attempt = 0
        try:
            while True:
                offset = receiver.received if receiver else 0
                total = receiver.size if receiver else size
                stream = None
                try:
                    stream = self._download(blob_pb2.DownloadRequest(cube_id=cube_id, offset=offset),
                                            timeout=transfer_timeout(self.timeout, total - offset) if total else None)
                    receive = Next(stream)
                    while (message := (yield receive)) is not END:
                        receiver = feed(receiver, message, into)
                    if receiver is None:
                        raise DataLoss("the daemon sent no data")
                    return (yield Offload(receiver.finish))
                except grpc.RpcError as exc:
                    error = self._renewed(exc)
                    attempt += 1
                    if error is not None and not (isinstance(error, RESUMABLE) and attempt <= RETRIES):
                        raise error from None
                finally:
                    if stream is not None:
                        stream.cancel()
        finally:
            if receiver is not None:
                receiver.close()

    @method
    def open_local(self, cube_id: str, *, sha256: str | None = None):
        """The payload of a tensor cube as a private, copy-on-write mapping of the daemon's own file (no bytes
        copied; writing to it never reaches the stored blob), checked against the XXH3-128 the daemon recorded
        with its sha256 (DataLoss otherwise). FailedPrecondition where the daemon is not on this host."""
        if unix_path(self.target) is None:
            raise FailedPrecondition("file descriptors only pass over a Unix socket; use download_blob")
        response = yield self._call(self._blobs.OpenLocal, blob_pb2.OpenLocalRequest(cube_id=cube_id))
        return (yield Offload(collect, self.target, response, sha256))

    @method
    def fetch_payload(self, cube_id: str, blob: BlobRef):
        """A uint8 tensor of a tensor cube's verified payload: mapped from the daemon's file where it runs on
        this host (open_local), else streamed over gRPC (download_blob)."""
        if self.local_transfers:
            try:
                mapped = yield self.open_local(cube_id, sha256=blob.sha256)
            except FALL_BACK:
                self.local_transfers = False  # another host, mount namespace or an older daemon: stream
            else:
                import torch

                return torch.frombuffer(mapped, dtype=torch.uint8)
        buffer = payload_buffer(blob.size)
        yield self.download_blob(cube_id, into=buffer.numpy(), size=blob.size)
        return buffer

    # -- activation cubes ---------------------------------------------------------------------------

    @method
    def put_activation(self, manifest: KVManifest, namespace: str | None = None, **fields) -> Cube:
        """Store an activation cube whose payload is uploaded; fields: tags, metadata, source, derived_from,
        ttl, priority."""
        request = put_activation_request(manifest, kv_namespace(self, namespace), **fields)
        return Cube.from_proto((yield self._call(self._activations.PutActivation, request)).cube)

    @method
    def find_kv(self, model_fingerprint: str, token_ids, namespace: str | None = None) -> tuple[Cube | None, int]:
        """The readable activation cube of this model sharing the longest prefix with token_ids, and how many
        tokens it covers; (None, 0) when none does."""
        request = apb.FindByPrefixRequest(model_fingerprint=model_fingerprint, token_ids=[int(t) for t in token_ids],
                                          namespace_prefix=namespace or "")
        r = yield self._call(self._activations.FindByPrefix, request)
        return (Cube.from_proto(r.cube) if r.HasField("cube") else None), r.matched_tokens

    @method
    def build_kv(self, source_ids, namespace: str | None = None, **fields) -> Job:
        """Have the daemon prefill its configured model with plaintext cubes and store the KV cache; returns the
        job (watch_job follows it). fields: template, separator, prefix, suffix, tags, metadata, special_tokens."""
        request = build_request(source_ids, kv_namespace(self, namespace), **fields)
        return Job.from_proto((yield self._call(self._activations.BuildFromPlaintext, request)).job)

    # -- jobs ---------------------------------------------------------------------------------------

    @method
    def get_job(self, job_id: str) -> Job:
        """A job's state and progress."""
        return Job.from_proto((yield self._call(self._jobs.GetJob, job_pb2.GetJobRequest(id=job_id))).job)

    @iterating
    def watch_job(self, job_id: str) -> Iterator[Job]:
        """The job now and at each change, until it ends."""
        while True:
            stream, watched = None, False
            try:
                stream = self._jobs.WatchJob(job_pb2.WatchJobRequest(id=job_id))
                receive = Next(stream)
                while (message := (yield receive)) is not END:
                    watched = True
                    yield Item(Job.from_proto(message.job))
                return
            except grpc.RpcError as exc:
                error = self._renewed(exc)  # None: refused for a stale token, before anything came
                if error is not None or watched:
                    raise error or from_rpc_error(exc, self.target) from None
            finally:
                if stream is not None:
                    stream.cancel()

    @method
    def cancel_job(self, job_id: str) -> Job:
        """Ask a job to stop: it ends CANCELLED at its next checkpoint (unless it has ended already)."""
        return Job.from_proto((yield self._call(self._jobs.CancelJob, job_pb2.CancelJobRequest(id=job_id))).job)

    @method
    def list_jobs(self, include_finished: bool = False) -> list[Job]:
        """This agent's jobs (every agent's for the admin); those that have ended too with include_finished."""
        r = yield self._call(self._jobs.ListJobs, job_pb2.ListJobsRequest(include_finished=include_finished))
        return [Job.from_proto(j) for j in r.jobs]

    # -- transformers -------------------------------------------------------------------------------

    @method
    def push_kv(self, cache, input_ids, model, *, namespace: str | None = None, tokenizer=None, **fields) -> str:
        """Store a DynamicCache (or legacy ((k, v), ...) tuple) that `model` computed for input_ids as an
        activation cube; returns its id. The cache is read, never changed."""
        from memos_client import kv

        ids, specs, payload, fingerprint, tokenizer_fp = yield Offload(kv.prepare_push, cache, input_ids, model, tokenizer)
        yield self.upload_blob(payload, namespace)
        manifest = kv.make_manifest(ids, specs, payload, fingerprint, tokenizer_fp, model)
        return (yield self.put_activation(manifest, namespace, **fields)).id

    @method
    def pull_kv(self, cube_id: str, model, *, tokenizer=None, num_tokens: int | None = None):
        """A fresh DynamicCache on the model's device from an activation cube, cut to its first num_tokens
        tokens if given. ModelMismatch if the cube was made by another model (fingerprint, dtype, layers)."""
        from memos_client import kv

        cube = yield self.get(cube_id)
        act = yield Offload(kv.check_binding, cube, model, tokenizer)
        buffer = yield self.fetch_payload(cube_id, act.blob)
        return (yield Offload(kv.finish_pull, buffer, act, model, num_tokens))

    @method
    def generate_with_kv(self, model, input_ids, *, namespace: str | None = None, tokenizer=None, **generate_kwargs):
        """model.generate(input_ids, ...) that starts from the longest cached prefix of input_ids the daemon
        holds for this model (if any), so only the rest is prefilled. Returns what generate returns."""
        from memos_client import kv
        from memos_mip.fingerprint import model_fingerprint

        ids = kv.token_list(input_ids)
        cube, matched = yield self.find_kv((yield Offload(model_fingerprint, model)), ids, namespace)
        cache = None
        usable = min(matched, len(ids) - 1)  # generate needs at least one token to run
        if cube is not None and usable > 0:
            cache = yield self.pull_kv(cube.id, model, tokenizer=tokenizer, num_tokens=usable)
        tensor, mask = kv.generation_inputs(model, ids)
        return (yield Offload(model.generate, tensor, attention_mask=mask, **{kv.cache_keyword(model): cache},
                              **generate_kwargs))
