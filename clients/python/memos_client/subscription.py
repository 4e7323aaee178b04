"""Subscriptions to MemStore topics that resume by themselves after a dropped connection or restart."""

from __future__ import annotations

import time

import grpc

from memos_client import local_delivery
from memos_client.errors import FailedPrecondition, InternalError, ResourceExhausted, StaleToken, Unavailable, from_rpc_error
from memos_client.fdpass import unix_path
from memos_client.models import Event, Heartbeat
from memos_client.steps import END, Item, Next, Offload, Sleep
from memos_mip.v1 import store_pb2

# Errors after which the same subscription can go on from where it was: the daemon restarting or
# unreachable for a moment, this subscriber having fallen too far behind, a token to renew.
_RESUMABLE = (Unavailable, ResourceExhausted, StaleToken)


class _Position:
    """What a subscription has seen, and the request that resumes after it."""

    def __init__(self, topic: str, after_seq: int, live_only: bool, durable_name: str, heartbeat_seconds: int,
                 ack_timeout_seconds: int):
        self.topic, self.durable_name = topic, durable_name
        self.after_seq, self.after, self.live_only = after_seq, {}, live_only
        self.heartbeat_seconds, self.ack_timeout_seconds = heartbeat_seconds, ack_timeout_seconds

    def request(self, same_host: bool) -> store_pb2.SubscribeRequest:
        return store_pb2.SubscribeRequest(
            topic=self.topic, after_seq=0 if self.durable_name else self.after_seq,
            after={} if self.durable_name else self.after, live_only=self.live_only,
            heartbeat_seconds=self.heartbeat_seconds, durable_name=self.durable_name,
            ack_timeout_seconds=self.ack_timeout_seconds, same_host=same_host)

    def items(self, msg, heartbeats: bool):
        """The message's events (and heartbeat), each counted as seen just before the caller gets it."""
        if msg.HasField("heartbeat"):
            self._adopt(msg.heartbeat.delivered)
            if heartbeats:
                yield Heartbeat(dict(msg.heartbeat.delivered))
            return
        for proto in msg.events:
            event = Event.from_proto(proto)
            if self.topic.endswith("/**"):
                self.after[event.topic] = event.seq
            else:
                self.after_seq = event.seq
            self.live_only = False  # a resumed stream continues after what was seen, not at the live end
            yield event

    def _adopt(self, delivered) -> None:
        # A heartbeat names where the stream stands on topics it has delivered nothing of yet (a live_only
        # stream's starting point): resuming, at this daemon or another, goes on from there, so that events
        # published while the stream was down are not skipped (nor, for a pattern, replayed from the start).
        if self.durable_name:
            return  # the daemon resumes a durable subscription from its acknowledged cursor
        if self.topic.endswith("/**"):
            for topic, seq in delivered.items():
                self.after.setdefault(topic, seq)
            self.live_only = False
        elif self.live_only and self.topic in delivered:
            self.after_seq, self.live_only = delivered[self.topic], False


def _resume_or_raise(sub, exc: grpc.RpcError, failing_since: float | None, member) -> tuple[float, float]:
    """Raise the typed error unless the subscription may resume; returns when the failures began and
    how long to wait before resubscribing (not at all with a renewed token, nor at the next daemon of
    several until each has failed once)."""
    client = sub._client
    error = from_rpc_error(exc, member.target)
    if isinstance(error, StaleToken) and client.tokens and client.tokens.learn_epoch(exc):
        return failing_since or time.monotonic(), 0.0
    failing_since = failing_since or time.monotonic()
    if not isinstance(error, _RESUMABLE) or time.monotonic() - failing_since > sub._resume_for:
        raise error from None
    if isinstance(error, Unavailable) and client._move_on(member, exc):
        sub._moves += 1
        if sub._moves < len(client._members.all):
            return failing_since, 0.0
        sub._moves = 0  # every daemon failed once: wait a moment before the next round
    return failing_since, 0.2


class Subscription:
    """Iterate a topic's events (heartbeats too with heartbeats=True). After a dropped connection, a daemon
    restart or a slow-subscriber cut-off it resubscribes from the last event seen (per topic), at the next
    of the client's daemons when its daemon went away, for up to `resume_for` seconds; a durable one from
    its acknowledged cursor. memos_client.Compacted if that point is no longer retained.
    From a daemon on a Unix socket of this host, the events come over a socket of their own (same_host:
    LocalDelivery in protos/memos/v1/store.proto) unless the client's local_transfers is off; where that socket
    cannot be collected (another mount namespace), over the gRPC stream."""

    def __init__(self, client, position: _Position, *, heartbeats: bool, resume_for: float):
        self._client, self._position = client, position
        self._heartbeats, self._resume_for = heartbeats, resume_for
        self._call = None
        self._frames: local_delivery.LocalFrames | None = None
        self._closed = False
        self._moves = 0  # daemons moved on from since the last message
        self._same_host = client.local_transfers
        self.same_host = False  # whether the events now come over a same-host socket

    def _events(self):
        """The steps (memos_client.steps) of both clients' iteration."""
        failing_since = None
        while not self._closed:
            member = self._client._members.current
            same_host = self._same_host and unix_path(member.target) is not None
            try:
                self._call = self._client._store.Subscribe.at(member)(self._position.request(same_host))
                receive = Next(self._call)
                msg = yield receive
                if msg is not END and msg.HasField("local"):
                    try:
                        self._frames = yield Offload(local_delivery.collect, member.target, msg.local)
                    except FailedPrecondition:
                        self._same_host = False  # out of this client's reach: over the gRPC stream from now on
                        self._call.cancel()
                        continue
                    self.same_host, receive = True, Next(self._frames)
                    msg = yield receive
                while msg is not END:
                    failing_since, self._moves = None, 0
                    for item in self._position.items(msg, self._heartbeats):
                        yield Item(item)
                    msg = yield receive
                if self._frames is not None:
                    # The socket is over: the call's status says why (the daemon ends it once the socket is closed).
                    if (yield Next(self._call)) is not END:
                        raise InternalError("the daemon sent a same-host subscription's events on its gRPC stream")
                return
            except grpc.RpcError as exc:
                if self._closed:
                    return
                failing_since, pause = _resume_or_raise(self, exc, failing_since, member)
                yield Sleep(pause)
            finally:
                if self._frames is not None:
                    self._frames.close()
                    self._call.cancel()  # ended already, unless the iteration was left early
                    self._frames, self.same_host = None, False

    def __iter__(self):
        return self._client._iterate(self._events())

    def ack(self, event: Event) -> int:
        """Acknowledge `event` and everything before it on its topic (durable subscriptions)."""
        return self._client.ack(self._position.durable_name, event.topic, event.seq)

    def close(self) -> None:
        """End the iteration (from another thread or task too)."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        frames = self._frames
        if frames is not None:
            frames.interrupt()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSubscription(Subscription):
    """The asyncio form of Subscription: `async for event in client.subscribe(...)`; ack is awaited."""

    __iter__ = None  # an async iterator only

    def __aiter__(self):
        return self._client._iterate(self._events())
