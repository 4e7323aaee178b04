"""PublishStream through the real daemon: acknowledgements in order once durable, refusals, a stream cut by kill -9."""

import asyncio
import os
import signal
import threading

import pytest

from memos_client import InvalidArgument, MemosClient, NotFound, PermissionDenied, Unauthenticated, Unavailable
from memos_client.models import Event
from tests.daemon import spawn_daemon
from tests.store_checks import check_history, collect
from tests.timing import wait_for

TOTAL = 300


def test_acknowledgements_come_in_order_and_match_the_events(client):
    cubes = client.put_many([{"text": f"event {i}", "namespace": "agents/admin/n"} for i in range(50)])
    acks = list(client.publish_stream(("teams/s", cube) for cube in cubes))
    assert acks == [(seq, False) for seq in range(1, 51)]
    events = collect(client.subscribe("teams/s"), 50)
    check_history(events)
    assert [e.cube_id for e in events] == cubes
    # Retried with publish ids, in one stream and across streams: each is published once.
    ids = [("teams/s", cubes[0], "once"), ("teams/s", cubes[1], "once"), ("teams/s", cubes[2], "twice")]
    assert list(client.publish_stream(ids)) == [(51, False), (51, True), (52, False)]
    assert list(client.publish_stream(ids[2:])) == [(52, True)]


def test_the_first_refusal_ends_the_stream_and_nothing_after_it_is_published(client):
    good = [client.put(f"ok {i}", "agents/admin/n").id for i in range(3)]
    acks = []
    missing = "0" * 26  # a well-formed id no cube has
    with pytest.raises(NotFound):
        for ack in client.publish_stream([("teams/r", good[0]), ("teams/r", good[1]), ("teams/r", missing),
                                          ("teams/r", good[2])]):
            acks.append(ack)
    assert acks == [(1, False), (2, False)]
    [topic] = client.topics("teams/r")
    assert topic.last_seq == 2


def test_a_stream_needs_publish_on_each_topic(daemon, client, tmp_path):
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    client.grant("agent:alice", ["publish"], ["teams/open"])
    with MemosClient(daemon.address, key=str(tmp_path / "alice.key")) as alice:
        cube = alice.put("mine", "agents/alice/n").id
        acks = []
        with pytest.raises(PermissionDenied, match="publish"):
            for ack in alice.publish_stream([("teams/open", cube), ("teams/closed", cube), ("teams/open", cube)]):
                acks.append(ack)
        assert acks == [(1, False)]
    assert [t.last_seq for t in client.topics("teams/open")] == [1]
    assert client.topics("teams/closed") == []


def test_bad_publishes_are_refused_with_invalid_argument(client):
    cube = client.put("x", "agents/admin/n").id
    for bad in [("", cube), ("teams/x", "not-an-id"), ("teams/x", cube, "has space"), ("teams/x",)]:
        with pytest.raises(InvalidArgument):
            list(client.publish_stream([bad]))


@pytest.mark.slow
def test_a_stream_cut_by_kill_9_keeps_every_acknowledged_event_and_a_retry_adds_the_rest_once(config):
    key = config.data_dir / "admin.key"
    proc = spawn_daemon(config)
    try:
        with MemosClient(config.listen, key=key, timeout=10) as c:
            cubes = c.put_many([{"text": f"event {i}", "namespace": "agents/admin/n"} for i in range(TOTAL)])
        publishes = [("teams/cut", cube, f"p-{i}") for i, cube in enumerate(cubes)]
        acked: dict[int, int] = {}

        def half_then_kill():
            # The first half goes out ahead of its acknowledgements; once some have come back, the daemon
            # dies with others sent, committed or not, and unacknowledged. The second half is never sent.
            yield from publishes[:TOTAL // 2]
            wait_for(lambda: len(acked) >= TOTAL // 10, "no acknowledgement came back")
            os.kill(proc.pid, signal.SIGKILL)

        with MemosClient(config.listen, key=key, timeout=10) as c:
            with pytest.raises(Unavailable):
                for i, (seq, duplicate) in enumerate(c.publish_stream(half_then_kill())):
                    assert not duplicate
                    acked[i] = seq
        proc.wait(10)
        assert TOTAL // 10 <= len(acked) <= TOTAL // 2
        proc = spawn_daemon(config)
        with MemosClient(config.listen, key=key, timeout=30) as c:
            retried = list(c.publish_stream(publishes))  # all of them again, each with its publish id
            for i, seq in acked.items():
                assert retried[i] == (seq, True), f"acknowledged publish {i} was not kept as seq {seq}"
            assert sorted(seq for seq, _ in retried) == list(range(1, TOTAL + 1))
            events = collect(c.subscribe("teams/cut"), TOTAL)
            assert check_history(events) == {"teams/cut": TOTAL}
            assert all(isinstance(e, Event) for e in events)
            assert sorted(e.cube_id for e in events) == sorted(cubes)  # every publish exactly once
            assert {e.seq: e.cube_id for e in events} == {seq: cubes[i] for i, (seq, _) in enumerate(retried)}
    finally:
        proc.terminate()
        proc.wait(20)


def test_leaving_the_iteration_early_ends_the_stream(daemon, client):
    cubes = client.put_many([{"text": f"e {i}", "namespace": "agents/admin/n"} for i in range(3)])
    more = threading.Event()

    def publishes():
        yield "teams/e", cubes[0]
        more.wait(30)  # held open until the caller has left
        yield "teams/e", cubes[1]

    acks = client.publish_stream(publishes())
    assert next(acks) == (1, False)
    acks.close()
    more.set()
    assert client.publish("teams/e", cubes[2]) == (2, False)  # nothing of the abandoned stream was published


def test_the_async_client_publishes_over_a_stream(aclient_factory, client):
    cubes = client.put_many([{"text": f"a {i}", "namespace": "agents/admin/n"} for i in range(3)])

    async def go():
        async with aclient_factory() as c:
            listed = [ack async for ack in c.publish_stream([("teams/a", cube) for cube in cubes])]
            one_by_one = [ack async for ack in c.publish_stream(("teams/a", cube, f"id-{i}") for i, cube in enumerate(cubes))]
            return listed, one_by_one

    listed, one_by_one = asyncio.run(go())
    assert listed == [(1, False), (2, False), (3, False)]
    assert one_by_one == [(4, False), (5, False), (6, False)]
    assert [e.cube_id for e in collect(client.subscribe("teams/a"), 6)] == cubes + cubes


def test_revoking_the_publisher_ends_its_stream(daemon, client, tmp_path):
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    client.grant("agent:alice", ["publish"], ["teams/open"])
    revoked = threading.Event()
    with MemosClient(daemon.address, key=str(tmp_path / "alice.key")) as alice:
        cube = alice.put("mine", "agents/alice/n").id

        def publishes():
            yield "teams/open", cube
            revoked.wait(30)
            yield "teams/open", cube

        acks = []
        with pytest.raises(Unauthenticated, match="revoked"):
            for ack in alice.publish_stream(publishes()):
                acks.append(ack)
                client.revoke_agent("alice")
                revoked.set()
    assert acks == [(1, False)]
    assert [t.last_seq for t in client.topics("teams/open")] == [1]
