"""Turns servicer methods into gRPC handlers: safe decoding, error mapping, one log line per call."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from memos_mip.bounds import clip
from memosd.errors import InvalidArgument, MemosError, PermissionDenied, StaleToken, Unauthenticated
from memosd.server.auth import principal, set_principal, token_from
from memosd.server.status import status_for

log = logging.getLogger("memosd.requests")
# The status detail travels as gRPC metadata (16 KiB at most, percent-encoded): a detail past that limit
# reaches the client as RESOURCE_EXHAUSTED instead of the error. Errors quote values short already;
# this is the net under whatever message does not.
MAX_DETAIL_BYTES = 1024


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the handler can answer INVALID_ARGUMENT."""

    def __init__(self, type_name: str, reason: str):
        self.error = InvalidArgument(
            f"request is not a valid {type_name}: {reason} (text fields must be valid UTF-8)"
        )


def _decoder(cls):
    def decode(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return _Undecodable(cls.DESCRIPTOR.full_name, str(exc) or "cannot parse")

    return decode


def _fast_then(fast, slow):
    # A servicer may parse its hot messages itself (blob chunks, without copying them); whatever its
    # parser does not take (None) goes to protobuf.
    def decode(data: bytes):
        found = fast(data)
        return slow(data) if found is None else found

    return decode


def _encoder(cls):
    # A servicer may hand over bytes it already encoded (one event fanned out to many subscribers).
    def encode(message) -> bytes:
        return message if isinstance(message, bytes) else cls.SerializeToString(message)

    return encode


def _log(method: str, code: grpc.StatusCode, started: float, caller: str, detail: str = "") -> None:
    if log.isEnabledFor(logging.INFO):
        line = {"method": method, "status": code.name, "duration_ms": round((time.perf_counter() - started) * 1e3, 3),
                "caller": caller}
        if detail:
            line["error"] = detail
        # Failed calls of one method by one caller with one status are alike for the log's rate limit.
        log.info(json.dumps(line), extra={"similar": (method, code.name, caller)} if detail else None)


@contextlib.asynccontextmanager
async def _answering(method: str, context, governance, observe=None, any_epoch: bool = False):
    """Authenticates the caller, maps what the body raises to a status, audits denials, logs one line,
    reports the call to `observe(method, code name, seconds, denied)` (metrics), and aborts the call if
    it failed. A stale token is no denial (neither audited nor counted): the client renews it and retries."""
    started, code, detail, caller, denied = time.perf_counter(), grpc.StatusCode.OK, "", None, False
    try:
        caller = await governance.authenticate_call(token_from(context.invocation_metadata()), any_epoch=any_epoch)
        set_principal(caller)
        yield
    except MemosError as exc:
        code, detail = status_for(exc), clip(str(exc), MAX_DETAIL_BYTES)
        denied = isinstance(exc, (Unauthenticated, PermissionDenied)) and not isinstance(exc, StaleToken)
        if denied:
            await governance.record_denial(caller, method, "", detail)
        # The exact error class lets clients raise the same name (ModelMismatch, not just FAILED_PRECONDITION);
        # the policy epoch lets a client whose token is stale mint a fresh one and retry.
        trailers = [("memos-error", exc.wire_name or type(exc).__name__)]
        if isinstance(exc, Unauthenticated):
            trailers.append(("memos-policy-epoch", str(governance.epoch)))
        context.set_trailing_metadata(tuple(trailers))
    except grpc.aio.AbortError:  # the body aborted the call itself: pass it on, log what it set
        code = context.code() if isinstance(context.code(), grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        raise
    except Exception:
        code, detail = grpc.StatusCode.INTERNAL, "internal error in memosd; the daemon's log has the details"
        log.exception("unexpected error in %s", method)
    except BaseException:
        code = grpc.StatusCode.CANCELLED
        raise
    finally:
        _log(method, code, started, caller.name if caller else f"unauthenticated {context.peer()}", detail)
        if observe is not None:
            observe(method, code.name, time.perf_counter() - started, denied)
    if code is not grpc.StatusCode.OK:
        await context.abort(code, detail)


async def _checked(requests) -> AsyncIterator:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error
        yield request


def _check(request):
    if isinstance(request, _Undecodable):
        raise request.error
    return request


def _unary(method: str, impl, governance, observe=None, any_epoch: bool = False):
    async def handle(request, context):
        async with _answering(method, context, governance, observe, any_epoch):
            return await impl(_check(request), context)

    return handle


def _client_stream(method: str, impl, governance, observe=None):
    async def handle(requests, context):
        async with _answering(method, context, governance, observe):
            return await impl(_checked(requests), context)

    return handle


def _server_stream(method: str, impl, governance, client_streams: bool, observe=None):
    async def handle(request, context):
        async with _answering(method, context, governance, observe):
            source = _checked(request) if client_streams else _check(request)
            async for response in _until_revoked(impl(source, context), governance, principal()):
                yield response

    return handle


async def _until_revoked(responses, governance, caller) -> AsyncIterator:
    """Pass responses on, but end the stream as soon as the caller's agent is revoked, even while it
    waits; each servicer also re-checks its policies per message."""
    pending = None
    try:
        while True:
            changed = governance.changed()
            pending = pending or asyncio.ensure_future(responses.__anext__())
            watcher = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait((pending, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
            if pending.done():
                try:
                    response = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield response
            else:
                governance.still_valid(caller)
    finally:
        if pending is not None and pending.done():
            if not pending.cancelled():
                pending.exception()  # retrieved: the call is over either way
        elif pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await responses.aclose()


def service_handler(service_descriptor, servicer, governance, observe=None) -> grpc.GenericRpcHandler:
    """A handler for every method the descriptor declares, each authenticated by `governance` and
    reported to `observe` (Metrics.observe_request); fails fast if the servicer lacks one. The unary
    methods a servicer names in `any_epoch` accept a token of any policy epoch (WhoAmI, so that a
    client can learn the epoch before its first real call)."""
    handlers = {}
    any_epoch = getattr(servicer, "any_epoch", frozenset())
    for m in service_descriptor.methods:
        impl = getattr(servicer, m.name, None)
        if impl is None:
            raise TypeError(f"{type(servicer).__name__} does not implement {service_descriptor.full_name}.{m.name}")
        request_cls = message_factory.GetMessageClass(m.input_type)
        response_cls = message_factory.GetMessageClass(m.output_type)
        path = f"/{service_descriptor.full_name}/{m.name}"
        decode = _decoder(request_cls)
        fast = getattr(servicer, "wire_decoders", {}).get(m.name)
        if fast is not None:
            decode = _fast_then(fast, decode)
        kwargs = dict(request_deserializer=decode, response_serializer=_encoder(response_cls))
        if m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(_server_stream(path, impl, governance, True, observe), **kwargs)
        elif m.server_streaming and not inspect.isasyncgenfunction(impl):
            # A coroutine that writes with context.write() (it manages its own flow, e.g. Subscribe).
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(_unary(path, impl, governance, observe), **kwargs)
        elif m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(_server_stream(path, impl, governance, False, observe), **kwargs)
        elif m.client_streaming:
            handlers[m.name] = grpc.stream_unary_rpc_method_handler(_client_stream(path, impl, governance, observe), **kwargs)
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                _unary(path, impl, governance, observe, m.name in any_epoch), **kwargs)
    return grpc.method_handlers_generic_handler(service_descriptor.full_name, handlers)
