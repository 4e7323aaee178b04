"""Channels that carry the caller's token on every call (sync and asyncio)."""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from pathlib import Path

import grpc
import grpc.experimental

from memos_client.auth import WHOAMI, TokenSource
from memos_mip.v1 import governance_pb2

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A local daemon restarts in about a second: reconnect quickly, and keep each client's connection
    # state its own (gRPC otherwise shares one, backoff included, between channels to the same address,
    # so a new client could fail at once because another one had failed a moment before).
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


def _with_token(details, tokens: TokenSource | None):
    if tokens is None:
        return details
    metadata = list(details.metadata or []) + [tokens.metadata()]
    return _Details(details.method, details.timeout, metadata, details.credentials,
                    getattr(details, "wait_for_ready", None), getattr(details, "compression", None))


# How long the epoch look-up may take when the call it precedes has no deadline.
LOOKUP_TIMEOUT = 30.0


def _needs_epoch(details, tokens: TokenSource | None) -> bool:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method  # bytes in grpc.aio
    return tokens is not None and not tokens.known and method != WHOAMI


def _lookup_timeout(details) -> float:
    return details.timeout if details.timeout is not None else LOOKUP_TIMEOUT


class _SyncAuth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token; before a client's first call, learns the policy epoch from WhoAmI on `raw`
    (the channel under this interceptor), so that no call goes out with a stale token."""

    def __init__(self, tokens, raw: grpc.Channel | None = None):
        self.tokens = tokens
        self._whoami = raw.unary_unary(WHOAMI, request_serializer=governance_pb2.WhoAmIRequest.SerializeToString,
                                       response_deserializer=governance_pb2.WhoAmIResponse.FromString) if raw else None
        self._lock = threading.Lock()

    def _ready(self, details):
        if self._whoami is None or not _needs_epoch(details, self.tokens):
            return _with_token(details, self.tokens)
        with self._lock:
            if not self.tokens.known:
                # A refusal here (a revoked agent, say) is this call's refusal: it raises, once.
                try:
                    r = self._whoami(governance_pb2.WhoAmIRequest(), metadata=[self.tokens.metadata()],
                                     timeout=_lookup_timeout(details))
                    self.tokens.adopt_epoch(r.policy_epoch)
                except grpc.RpcError as exc:
                    if not self.tokens.learn_epoch(exc):  # an older daemon names it in its refusal
                        raise
        return _with_token(details, self.tokens)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._ready(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._ready(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._ready(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._ready(details), requests)


def tls_credentials(tls_ca: str | None) -> grpc.ChannelCredentials | None:
    """TLS for a TCP target: the CA file from the argument or $MEMOS_TLS_CA, and a client certificate
    from $MEMOS_TLS_CERT/$MEMOS_TLS_KEY when the daemon asks for one. None means plaintext."""
    tls_ca = tls_ca or os.environ.get("MEMOS_TLS_CA")
    if not tls_ca:
        return None
    cert, key = os.environ.get("MEMOS_TLS_CERT"), os.environ.get("MEMOS_TLS_KEY")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )


# Server streams (Subscribe, Download, WatchJob) of the sync client are read by the thread that iterates
# them, not handed over from gRPC's polling thread: one wake-up per message instead of two. With 32
# subscriptions in one process this halves its CPU and cut the 32-subscriber p99 of bench/pubsub.py 3x.
SYNC_OPTIONS = [*CHANNEL_OPTIONS, (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]


def sync_channel(target: str, tokens: TokenSource | None, tls_ca: str | None = None) -> grpc.Channel:
    creds = tls_credentials(tls_ca) if not target.startswith("unix:") else None
    base = (grpc.secure_channel(target, creds, options=SYNC_OPTIONS) if creds
            else grpc.insecure_channel(target, options=SYNC_OPTIONS))
    return grpc.intercept_channel(base, _SyncAuth(tokens, base))


class _AioEpoch:
    """The asyncio form of _SyncAuth's epoch look-up: WhoAmI over the client's own channel (whose
    interceptors add the token), once, before the first other call."""

    def __init__(self, tokens: TokenSource | None):
        self.tokens = tokens
        self.channel: grpc.aio.Channel | None = None
        self._lock: asyncio.Lock | None = None

    async def ready(self, details):
        if self.channel is None or not _needs_epoch(details, self.tokens):
            return _aio_details(details, self.tokens)
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if not self.tokens.known:
                whoami = self.channel.unary_unary(
                    WHOAMI, request_serializer=governance_pb2.WhoAmIRequest.SerializeToString,
                    response_deserializer=governance_pb2.WhoAmIResponse.FromString)
                try:
                    r = await whoami(governance_pb2.WhoAmIRequest(), timeout=_lookup_timeout(details))
                    self.tokens.adopt_epoch(r.policy_epoch)
                except grpc.RpcError as exc:
                    if not self.tokens.learn_epoch(exc):
                        raise
        return _aio_details(details, self.tokens)


class _AioAuth:
    def __init__(self, epoch: _AioEpoch):
        self.epoch = epoch


# grpc.aio files each interceptor under the first call type it implements, so one class per type.
class _AioUnaryUnary(_AioAuth, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(await self.epoch.ready(details), request)


class _AioUnaryStream(_AioAuth, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(await self.epoch.ready(details), request)


class _AioStreamUnary(_AioAuth, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, requests):
        return await continuation(await self.epoch.ready(details), requests)


class _AioStreamStream(_AioAuth, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, requests):
        return await continuation(await self.epoch.ready(details), requests)


def _aio_details(details, tokens):
    if tokens is None:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()), tokens.metadata())
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                      details.wait_for_ready)


def aio_channel(target: str, tokens: TokenSource | None, tls_ca: str | None = None) -> grpc.aio.Channel:
    creds = tls_credentials(tls_ca) if not target.startswith("unix:") else None
    epoch = _AioEpoch(tokens)
    interceptors = [kind(epoch) for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)]
    if creds:
        channel = grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS, interceptors=interceptors)
    else:
        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
    epoch.channel = channel
    return channel
