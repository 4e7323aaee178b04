"""MemStore delivery through the real daemon: one message per subscriber per commit group, a lone event sent at
once, and each subscriber's own view of a group, its encoding shared with those who see the same."""

from __future__ import annotations

import asyncio

import pytest

from memos_client.auth import AgentKey, TokenSource
from memos_client.channel import sync_channel
from memos_client.models import Event
from memos_mip.v1 import store_pb2, store_pb2_grpc
from memosd.governance import Principal
from memosd.server.store_service import _item
from memosd.store.memstore import EventKind, SubscribeSpec
from tests.daemon import admin_channel
from tests.kv_helpers import put_kv
from tests.store_checks import cancel_all
from tests.timing import wait_for

FEED = "teams/feed"
QUIET = 300  # seconds between heartbeats, the most: no heartbeat comes while a test runs
DEADLINE = 30  # a stream that never delivers fails with DEADLINE_EXCEEDED instead of hanging


def _streams_open(daemon, n: int) -> None:
    """Wait until n subscriptions are registered with the hub: from then on, no event can pass them by."""
    wait_for(lambda: len(daemon.server.store.hub) >= n, f"fewer than {n} subscriptions opened")


def _subscribe(channel, after_seq: int = 0):
    """A raw Subscribe (every SubscribeResponse as sent) on FEED."""
    return store_pb2_grpc.StoreServiceStub(channel).Subscribe(
        store_pb2.SubscribeRequest(topic=FEED, after_seq=after_seq, heartbeat_seconds=QUIET), timeout=DEADLINE)


def _publish_together(channel, cubes: list[str]) -> list[int]:
    """Publish the cubes on FEED in one PublishStream request: they arrive together, so they commit in one
    transaction (memosd/store/publishing.py). Returns their seqs."""
    request = store_pb2.PublishStreamRequest(publishes=[store_pb2.PublishRequest(topic=FEED, cube_id=c) for c in cubes])
    acks = store_pb2_grpc.StoreServiceStub(channel).PublishStream(iter([request]), timeout=DEADLINE)
    return [ack.seq for response in acks for ack in response.acks]


@pytest.fixture
def admin(daemon):
    with admin_channel(daemon.address, daemon.config.data_dir) as channel:
        yield channel


def test_a_commit_group_reaches_each_subscriber_as_one_message_in_order(daemon, client, admin):
    cubes = client.put_many([{"text": f"event {i}", "namespace": "agents/admin/n"} for i in range(13)])
    client.publish(FEED, cubes[0])
    streams = [_subscribe(admin) for _ in range(3)]
    # Each stream replays the first event, so it is in its live loop before the group commits.
    assert [[e.seq for e in next(s).events] for s in streams] == [[1]] * 3
    assert _publish_together(admin, cubes[1:]) == list(range(2, 14))
    for stream in streams:
        message = next(stream)
        assert [(e.seq, e.cube_id) for e in message.events] == list(zip(range(2, 14), cubes[1:]))
        assert not message.HasField("heartbeat")
        stream.cancel()


def test_a_lone_publish_is_sent_at_once(daemon, client, admin):
    first, lone = client.put_many([{"text": f"event {i}", "namespace": "agents/admin/n"} for i in range(2)])
    client.publish(FEED, first)
    stream = _subscribe(admin)
    assert [e.seq for e in next(stream).events] == [1]  # replayed: the stream is live from here
    assert client.publish(FEED, lone) == (2, False)
    # Nothing else is coming (no heartbeat for QUIET seconds, no other publish): a stream holding the event
    # back for company or a timer would not send it before the deadline.
    message = next(stream)
    assert [(e.seq, e.cube_id) for e in message.events] == [(2, lone)]
    stream.cancel()


@pytest.fixture
def readers(daemon, client, tmp_path):
    """bob subscribes to FEED; carol too, for activations only. The admin publishes a plaintext cube and an
    activation derived from a source neither may read, in one commit group."""
    keys = {}
    for name in ("bob", "carol"):
        keys[name] = tmp_path / f"{name}.key"
        client.add_agent(name, out=str(keys[name]))
    client.grant("agent:bob", ["subscribe"], [FEED])
    client.grant("agent:carol", ["subscribe"], [FEED], kinds=["activation"])
    secret = client.put("the admin's private source", "agents/admin/private")
    plain = client.put("for every subscriber", "agents/admin/n")
    derived = put_kv(client, [1, 2, 3], "agents/admin/kv", derived_from=[secret.id])
    with (sync_channel(daemon.address, TokenSource(AgentKey.load(keys["bob"]))) as bob,
          sync_channel(daemon.address, TokenSource(AgentKey.load(keys["carol"]))) as carol):
        yield {"bob": bob, "carol": carol}, secret.id, plain.id, derived.id


def _seen(message) -> list[tuple]:
    events = [Event.from_proto(e) for e in message.events]
    return [(e.seq, e.kind, e.cube_id, e.cube and e.cube.text, e.cube and e.cube.derived_from) for e in events]


def test_each_subscriber_gets_its_own_view_of_one_commit_group(daemon, client, admin, readers):
    channels, secret, plain, derived = readers
    opening = client.put("opening", "agents/admin/n").id
    client.publish(FEED, opening)
    streams = {"admin": _subscribe(admin), "bob": _subscribe(channels["bob"]), "carol": _subscribe(channels["carol"])}
    for stream in streams.values():
        assert [e.seq for e in next(stream).events] == [1]  # replayed (REDACTED for carol): live from here
    assert _publish_together(admin, [plain, derived]) == [2, 3]
    seen = {name: _seen(next(stream)) for name, stream in streams.items()}
    for stream in streams.values():
        stream.cancel()
    published, redacted = EventKind.PUBLISHED, EventKind.REDACTED
    assert seen == {
        "admin": [(2, published, plain, "for every subscriber", []), (3, published, derived, None, [secret])],
        # Shared by the publish: bob reads both cubes, not the source he may not read.
        "bob": [(2, published, plain, "for every subscriber", []), (3, published, derived, None, [])],
        # Carol's grant covers activations only: the plaintext cube is redacted, the activation narrowed.
        "carol": [(2, redacted, "", None, None), (3, published, derived, None, [])],
    }


def test_subscribers_with_the_same_view_share_one_encoding(daemon, client, admin, readers):
    """The servicer encodes an event once and keeps the encoding on it (store_service._fragment); MemStore hands
    every subscriber that sees the event as it is the same record, and a narrowed view a record of its own. Run
    on the daemon's loop as Subscribe runs them, bob's stream held up so that the admin's encode first."""
    _, secret, plain, derived = readers
    store, loop = daemon.server.store, daemon.loop
    sent: dict[str, list] = {"admin 1": [], "admin 2": [], "bob": []}
    hold = asyncio.Event()

    def sender(name: str):
        async def send(item):
            sent[name].append((item, _item(item)))  # encoded when written, as StoreService.Subscribe does
            if name == "bob" and len(sent[name]) == 1:
                await hold.wait()
        return send

    async def start():
        spec = SubscribeSpec(topic=FEED, live_only=True, heartbeat_seconds=QUIET)
        return [asyncio.ensure_future(store.run_subscription(
                    Principal("bob") if name == "bob" else Principal("admin", admin=True), spec, sender(name)))
                for name in sent]

    tasks = daemon.call(start())
    try:
        _streams_open(daemon, 3)
        client.publish(FEED, client.put("opening", "agents/admin/n").id)
        wait_for(lambda: all(len(s) == 1 for s in sent.values()), "the opening event was not delivered to all")
        assert _publish_together(admin, [plain, derived]) == [2, 3]
        wait_for(lambda: len(sent["admin 1"]) == len(sent["admin 2"]) == 2, "the group did not reach the admin's streams")
        loop.call_soon_threadsafe(hold.set)
        wait_for(lambda: len(sent["bob"]) == 2, "the group did not reach bob's stream")
    finally:
        daemon.call(cancel_all(tasks))
    (first, first_bytes), (second, second_bytes), (bobs, bobs_bytes) = (sent[n][1] for n in sent)
    assert [r.seq for r in first] == [r.seq for r in bobs] == [2, 3]
    # The admin's two streams: the same records, so one encoding of each.
    assert all(a is b for a, b in zip(first, second)) and first_bytes == second_bytes
    assert all(r.encoded is not None for r in first)
    # bob sees the plaintext cube as the admin does (the same record), the activation narrowed (a record of its own,
    # encoded for him: the admin's encoding, made first, names the source).
    assert bobs[0] is first[0]
    assert bobs[1] is not first[1] and bobs[1].kind is EventKind.PUBLISHED and bobs[1].cube.derived_from == ()
    assert secret.encode() in first_bytes and secret.encode() not in bobs_bytes
    shown = store_pb2.SubscribeResponse.FromString(bobs_bytes)
    assert [Event.from_proto(e).cube.derived_from for e in shown.events] == [[], []]
