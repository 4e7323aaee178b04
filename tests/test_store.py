"""MemStore through the real daemon: publish/subscribe, sharing through governance, retention, bad input."""

import dataclasses
import threading

import grpc
import pytest

from memos_client import (
    Compacted, FailedPrecondition, InvalidArgument, MemosClient, NotFound, PermissionDenied, ResourceExhausted,
)
from memos_client.models import Event, EventKind, Heartbeat
from memos_mip.v1 import store_pb2, store_pb2_grpc
from memos_client.auth import AgentKey, TokenSource
from memos_client.channel import _SyncAuth
from tests.daemon import make_config, running
from tests.store_checks import check_history, collect
from tests.existence import assert_hidden
from tests.timing import wait_for
from tests.store_checks import delivery_path, parametrize_paths as pytest_generate_tests, publish_path  # noqa: F401

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)


def streams_open(daemon, n: int) -> None:
    """Wait until n subscriptions are registered with the daemon's hub: from then on, no event can pass them by."""
    wait_for(lambda: len(daemon.server.store.hub) >= n, f"fewer than {n} subscriptions opened")


@pytest.fixture
def team(daemon, client, tmp_path):
    """alice (publisher) and bob (subscriber of teams/news)."""
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    client.grant("agent:alice", ["publish"], ["teams/news/**", "teams/news"])
    client.grant("agent:bob", ["subscribe"], ["teams/news/**", "teams/news"])
    alice = MemosClient(daemon.address, key=str(tmp_path / "alice.key"))
    bob = MemosClient(daemon.address, key=str(tmp_path / "bob.key"))
    yield alice, bob
    alice.close()
    bob.close()


def test_replay_then_live_in_order_with_kinds(client):
    cube = client.put("v1", "agents/admin/n")
    assert client.publish("teams/news", cube.id) == (1, False)
    client.update(cube.id, text="v2")
    assert client.publish("teams/news", cube.id) == (2, False)
    sub = client.subscribe("teams/news", heartbeat_seconds=1, heartbeats=True)
    later = threading.Timer(0.3, lambda: client.retract("teams/news", cube.id))
    later.start()
    items = collect(sub, 4)
    later.join()  # its call answered before the client closes
    events = [i for i in items if isinstance(i, Event)]
    assert [(e.seq, e.kind, e.cube_version) for e in events] == [
        (1, EventKind.PUBLISHED, 1), (2, EventKind.UPDATED, 2), (3, EventKind.RETRACTED, 2)]
    assert events[0].cube.text == "v1" and events[1].cube.text == "v2" and events[2].cube is None
    check_history(items)
    assert isinstance(items[-1], Heartbeat) and items[-1].delivered == {"teams/news": 3}


def test_idempotent_publish(client):
    cube = client.put("x", "agents/admin/n")
    assert client.publish("t/a", cube.id, publish_id="job-7") == (1, False)
    assert client.publish("t/a", cube.id, publish_id="job-7") == (1, True)
    assert client.publish("t/a", cube.id, publish_id="job-8") == (2, False)


def test_publishing_shares_the_cube_with_subscribers(team, client):
    alice, bob = team
    cube = alice.put("alice's summary", "agents/alice/summaries")
    assert_hidden(bob.get, cube.id)
    alice.publish("teams/news", cube.id)
    [event] = collect(bob.subscribe("teams/news"), 1)
    assert event.cube.text == "alice's summary"
    assert bob.get(cube.id).text == "alice's summary"  # the payload fetch is allowed once published
    alice.retract("teams/news", cube.id)
    assert_hidden(bob.get, cube.id)


def test_publish_and_subscribe_need_their_grants(team, client, tmp_path):
    alice, bob = team
    theirs = client.put("admin's cube", "teams/secret/x")
    assert_hidden(lambda i: alice.publish("teams/news", i), theirs.id)  # a cube she may not even read
    client.grant("agent:alice", ["read"], ["teams/secret/**"])
    with pytest.raises(PermissionDenied, match="share"):
        alice.publish("teams/news", theirs.id)  # publish on the topic, read but no share on the cube
    mine = bob.put("bob's", "agents/bob/n")
    with pytest.raises(PermissionDenied, match="publish"):
        bob.publish("teams/news", mine.id)
    with pytest.raises(PermissionDenied, match="subscribe"):
        list(alice.subscribe("teams/news"))
    with pytest.raises(PermissionDenied):
        list(bob.subscribe("teams/**"))  # wider than the grant


def test_kind_restricted_subscription_sees_redacted_events(daemon, client, tmp_path):
    client.add_agent("carol", out=str(tmp_path / "carol.key"))
    client.grant("agent:carol", ["subscribe"], ["teams/mixed"], kinds=["activation"])
    cube = client.put("plaintext", "agents/admin/n")
    client.publish("teams/mixed", cube.id)
    with MemosClient(daemon.address, key=str(tmp_path / "carol.key")) as carol:
        [event] = collect(carol.subscribe("teams/mixed"), 1)
        assert event.kind is EventKind.REDACTED and event.cube is None and event.seq == 1
        assert_hidden(carol.get, cube.id)


def test_revoking_the_grant_ends_the_stream(team, client, daemon):
    alice, bob = team
    cube = alice.put("x", "agents/alice/n")
    alice.publish("teams/news", cube.id)
    [policy] = [p for p in client.list_policies("agent:bob")]
    sub = bob.subscribe("teams/news", heartbeat_seconds=30)
    items = []
    reader = threading.Thread(target=lambda: items.extend(_drain(sub)))
    reader.start()
    streams_open(daemon, 1)
    client.revoke_policy(policy.id)
    reader.join(10)
    assert not reader.is_alive()
    assert isinstance(items[-1], PermissionDenied) and "revoked" in str(items[-1])


def test_a_revocation_landing_while_the_stream_opens_ends_it(team, client, daemon, monkeypatch):
    # The grant is revoked after Subscribe's own check passed and before the stream's guard began to watch.
    alice, bob = team
    alice.publish("teams/news", alice.put("x", "agents/alice/n").id)
    [policy] = [p for p in client.list_policies("agent:bob")]
    store = daemon.server.store
    opening = store._start_positions

    async def revoked_meanwhile(*args, **kwargs):
        await store.gov.revoke_policy(store.gov._principal(store.gov.agent("admin")), policy.id)
        return await opening(*args, **kwargs)

    monkeypatch.setattr(store, "_start_positions", revoked_meanwhile)
    items = []
    reader = threading.Thread(target=lambda: items.extend(_drain(bob.subscribe("teams/news", heartbeat_seconds=30))))
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "the stream stayed open after its grant was revoked"
    assert isinstance(items[-1], PermissionDenied) and "revoked" in str(items[-1])


def _drain(sub):
    out = []
    try:
        for item in sub:
            out.append(item)
    except Exception as exc:  # noqa: BLE001
        out.append(exc)
    return out


def test_retention_compaction_and_resume_points(client, daemon):
    cube = client.put("x", "agents/admin/n")
    for _ in range(10):
        client.publish("teams/log", cube.id)
    client.set_retention("teams/log", max_events=3)
    daemon.call(daemon.server.store.compact())
    [topic] = client.topics("teams/log")
    assert (topic.first_seq, topic.last_seq) == (8, 10)
    with pytest.raises(Compacted, match="oldest retained is 8"):
        list(client.subscribe("teams/log"))
    with pytest.raises(FailedPrecondition):
        list(client.subscribe("teams/log", after_seq=6))
    items = collect(client.subscribe("teams/log", after_seq=7), 3)  # exactly at the oldest retained
    assert [e.seq for e in items] == [8, 9, 10]
    check_history(items, start={"teams/log": 7})


def test_compaction_while_a_subscriber_is_behind(client, daemon):
    cube = client.put("x", "agents/admin/n")
    for _ in range(5):
        client.publish("teams/slow", cube.id)
    first = collect(client.subscribe("teams/slow"), 2)
    for _ in range(20):
        client.publish("teams/slow", cube.id)
    client.set_retention("teams/slow", max_events=5)
    daemon.call(daemon.server.store.compact())
    with pytest.raises(Compacted):
        list(client.subscribe("teams/slow", after_seq=first[-1].seq))


def test_pattern_subscription_across_topics(client):
    cube = client.put("x", "agents/admin/n")
    client.publish("teams/a/x", cube.id)
    client.publish("teams/b/y", cube.id)
    sub = client.subscribe("teams/**")
    later = threading.Timer(0.3, lambda: client.publish("teams/c/z", cube.id))
    later.start()
    items = collect(sub, 3)
    later.join()  # its call answered before the client closes
    assert sorted((e.topic, e.seq) for e in items) == [("teams/a/x", 1), ("teams/b/y", 1), ("teams/c/z", 1)]
    check_history(items)


def test_slow_subscriber_is_cut_off_with_its_position_and_others_are_unaffected(tmp_path):
    config = dataclasses.replace(make_config(tmp_path), subscriber_queue=4)
    with running(config) as d, MemosClient(d.address, key=d.admin_key) as c:
        cube = c.put("y" * 60000, "agents/admin/n")
        # A subscriber that reads nothing; without BDP probing its flow-control window stays small, so the
        # daemon's writes to it block after a few events.
        raw = grpc.insecure_channel(d.address, options=[("grpc.http2.bdp_probe", 0),
                                                        ("grpc.max_receive_message_length", 1 << 26)])
        with grpc.intercept_channel(raw, _SyncAuth(TokenSource(AgentKey.load(d.admin_key)))) as channel:
            stalled = store_pb2_grpc.StoreServiceStub(channel).Subscribe(
                store_pb2.SubscribeRequest(topic="teams/big", live_only=True))
            healthy = c.subscribe("teams/big", live_only=True, resume_for=0)
            got = []
            reader = threading.Thread(target=lambda: got.extend(collect(healthy, 60, timeout=60)))
            reader.start()
            streams_open(d, 2)
            for _ in range(60):
                c.publish("teams/big", cube.id)
            reader.join(60)
            assert [e.seq for e in got] == list(range(1, 61))
            received = []
            with pytest.raises(grpc.RpcError) as info:
                for msg in stalled:
                    received.extend(e.seq for e in msg.events)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "last delivered" in info.value.details()
            assert received == list(range(1, len(received) + 1)) and len(received) < 60


def test_thirty_two_subscribers_four_publishers(client, daemon):
    cubes = [client.put(f"c{i}", "agents/admin/n") for i in range(4)]
    subs = [client.subscribe("teams/busy") for _ in range(32)]
    results = [None] * 32

    def read(i):
        results[i] = collect(subs[i], 100, timeout=60)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(32)]
    for r in readers:
        r.start()
    streams_open(daemon, 32)

    def publish(cube):
        with MemosClient(daemon.address, key=daemon.admin_key) as c:
            for _ in range(25):
                c.publish("teams/busy", cube.id)

    publishers = [threading.Thread(target=publish, args=(cube,)) for cube in cubes]
    for p in publishers:
        p.start()
    for t in publishers + readers:
        t.join(60)
    for items in results:
        assert [e.seq for e in items] == list(range(1, 101))
        check_history(items)


def test_durable_subscription_acks_and_redelivery(client, daemon):
    cube = client.put("x", "agents/admin/n")
    for _ in range(3):
        client.publish("teams/jobs", cube.id)
    items = collect(client.subscribe("teams/jobs", durable_name="worker", ack_timeout_seconds=1), 3)
    assert [e.seq for e in items] == [1, 2, 3]
    # An ack may come after the stream closed, for what that stream delivered; never beyond it.
    assert client.ack("worker", "teams/jobs", 2) == 2
    with pytest.raises(InvalidArgument, match="never delivered"):
        client.ack("worker", "teams/jobs", 9)
    with pytest.raises(NotFound):
        client.ack("nobody", "teams/jobs", 1)
    sub = client.subscribe("teams/jobs", durable_name="worker", ack_timeout_seconds=1)
    seen = []
    for event in sub:
        seen.append(event.seq)
        if len(seen) == 2:
            break  # 3 was never acknowledged: it came again after the ack timeout
    sub.close()
    assert seen == [3, 3]
    # The cursor survives a restart of the daemon.
    daemon.call(daemon.server.stop(grace=1))
    daemon.call(daemon.server.start())
    with MemosClient(daemon.address, key=daemon.admin_key) as again:
        assert [e.seq for e in collect(again.subscribe("teams/jobs", durable_name="worker"), 1)] == [3]


@pytest.mark.parametrize("topic", ["", "Teams/x", "teams//x", "teams/../x", "teams/*/x", "teams/**/x", "teams/*"])
def test_bad_topic_names_and_patterns(client, topic):
    cube = client.put("x", "agents/admin/n")
    with pytest.raises(InvalidArgument):
        client.publish(topic, cube.id)
    with pytest.raises(InvalidArgument):
        list(client.subscribe(topic))


def test_bad_positions_and_publishes(client, team):
    alice, _ = team
    cube = client.put("x", "agents/admin/n")
    client.publish("teams/p", cube.id)
    with pytest.raises(InvalidArgument, match="future"):
        list(client.subscribe("teams/p", after_seq=5))
    with pytest.raises(InvalidArgument, match="future"):
        list(client.subscribe("teams/none-yet", after_seq=1))
    with pytest.raises(InvalidArgument, match="after_seq"):
        list(client.subscribe("teams/p", after_seq=-1))
    with pytest.raises(NotFound):
        client.publish("teams/p", "01JAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(InvalidArgument):
        client.publish("teams/p", "not-an-id")
    with pytest.raises(InvalidArgument, match="publish_id"):
        client.publish("teams/p", cube.id, publish_id="has space")
    with pytest.raises(NotFound, match="not published"):
        client.retract("teams/other", cube.id)
    client.delete(cube.id)
    with pytest.raises(NotFound):
        client.publish("teams/p", cube.id)


def test_flood_of_subscriptions_hits_the_per_agent_limit(tmp_path):
    config = dataclasses.replace(make_config(tmp_path), subscriptions_per_agent=3)
    with running(config) as d, MemosClient(d.address, key=d.admin_key) as c:
        subs = [c.subscribe("teams/t", live_only=True, heartbeat_seconds=1, heartbeats=True) for _ in range(3)]
        opened = []
        for s in subs:
            it = iter(s)
            opened.append((s, it))
            next(it)  # a heartbeat: the stream is open
        with pytest.raises(ResourceExhausted, match="limit"):
            list(c.subscribe("teams/t", resume_for=0))
        for s, _ in opened:
            s.close()
