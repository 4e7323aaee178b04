"""StoreService: MemStore's publish/subscribe over gRPC."""

from __future__ import annotations

from memos_mip.v1 import store_pb2 as pb
from memosd.errors import InvalidArgument
from memosd.server.auth import principal
from memosd.server.convert import cube_to_proto, to_timestamp
from memosd.server.fd_exchange import FdExchange
from memosd.server.local_delivery import SameHostStream
from memosd.store import MemStore
from memosd.store.memstore import EventRecord, SubscribeSpec


def _spec(r: pb.SubscribeRequest) -> SubscribeSpec:
    if r.after_seq < 0 or any(v < 0 for v in r.after.values()):
        raise InvalidArgument("after_seq must be 0 or more (0: from the oldest retained event)")
    if not 0 <= r.heartbeat_seconds <= 300:
        raise InvalidArgument("heartbeat_seconds must be between 1 and 300 (0 for 10)")
    if not 0 <= r.ack_timeout_seconds <= 3600:
        raise InvalidArgument("ack_timeout_seconds must be between 1 and 3600 (0 for 30)")
    if r.live_only and (r.after_seq or r.after or r.durable_name):
        raise InvalidArgument("live_only starts at the live end: do not combine it with after_seq, after or durable_name")
    return SubscribeSpec(topic=r.topic, after_seq=r.after_seq, after=dict(r.after), live_only=r.live_only,
                         heartbeat_seconds=r.heartbeat_seconds or 10, durable_name=r.durable_name,
                         ack_timeout=r.ack_timeout_seconds or 30)


def _item(item) -> bytes:
    """The encoded response. Each event is encoded once however many subscribers it goes to, as a
    `events` field fragment, so a batch is the concatenation of its events' fragments."""
    if not isinstance(item, list):
        return pb.SubscribeResponse(heartbeat=pb.Heartbeat(delivered=item.delivered)).SerializeToString()
    return b"".join(_fragment(record) for record in item)


def _fragment(record: EventRecord) -> bytes:
    if record.encoded is None:
        record.encoded = pb.SubscribeResponse(events=[_event(record)]).SerializeToString()
    return record.encoded


def _event(item: EventRecord) -> pb.Event:
    event = pb.Event(topic=item.topic, seq=item.seq, kind=int(item.kind), cube_id=item.cube_id,
                     cube_version=item.cube_version, publisher=item.publisher, time=to_timestamp(item.ts))
    if item.cube is not None:
        event.cube.CopyFrom(cube_to_proto(item.cube))
    return event


def _topic(t) -> pb.Topic:
    return pb.Topic(name=t.name, owner=t.owner, last_seq=t.last_seq, first_seq=t.first_seq,
                    max_age_seconds=int(t.max_age), max_events=t.max_events)


class StoreService:
    def __init__(self, store: MemStore, exchange: FdExchange | None = None):
        self.store = store
        self.exchange = exchange  # None when the daemon listens on TCP: no same-host delivery

    async def Publish(self, request, context):
        seq, duplicate = await self.store.publish(principal(), request.topic, request.cube_id, request.publish_id)
        return pb.PublishResponse(seq=seq, duplicate=duplicate)

    async def PublishStream(self, requests, context):
        async def batches():
            async for r in requests:
                yield [(q.topic, q.cube_id, q.publish_id) for q in r.publishes]

        async for acks in self.store.publish_stream(principal(), batches()):
            yield pb.PublishStreamResponse(acks=[pb.PublishResponse(seq=seq, duplicate=dup) for seq, dup in acks])

    async def Retract(self, request, context):
        seq, duplicate = await self.store.publish(principal(), request.topic, request.cube_id, request.publish_id,
                                                  retract=True)
        return pb.PublishResponse(seq=seq, duplicate=duplicate)

    async def Subscribe(self, request, context):
        # A coroutine writing with context.write (not a generator), so that MemStore can race each write
        # against its subscriber's queue overflowing.
        p, spec = principal(), _spec(request)
        if not (request.same_host and self.exchange is not None):
            await self.store.run_subscription(p, spec, lambda item: context.write(_item(item)))
            return
        local = SameHostStream(self.exchange, p.name)
        try:
            await self.store.run_subscription(p, spec, lambda item: local.send(_item(item)),
                                              opened=lambda: local.open(context))
        finally:
            local.close()

    async def Ack(self, request, context):
        acked = await self.store.ack(principal(), request.durable_name, request.topic, request.seq)
        return pb.AckResponse(acked_seq=acked)

    async def ListTopics(self, request, context):
        return pb.ListTopicsResponse(topics=[_topic(t) for t in await self.store.list_topics(principal(), request.prefix)])

    async def SetRetention(self, request, context):
        return _topic(await self.store.set_retention(principal(), request.topic, request.max_age_seconds,
                                                     request.max_events))
