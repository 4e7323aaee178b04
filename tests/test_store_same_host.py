"""Same-host delivery of a subscription through the real daemon: the first response names a ticket, the
events come as frames on a socket of their own, governed as Subscribe is: a revocation, a stalled reader's
overflow and shutdown close the socket and end the call with the status that says why; a client closing its
socket ends the subscription; a daemon on TCP, or a descriptor socket out of reach, delivers over gRPC.
The MemStore validator tests (tests/test_store.py, test_store_faults.py) run over both paths."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import threading

import grpc
import pytest

from memos_client import FailedPrecondition, MemosClient
from memos_client.auth import AgentKey, TokenSource
from memos_client.channel import sync_channel
from memos_client.fdpass import take, unix_path
from memos_client.local_delivery import LocalFrames
from memos_client.models import Event
from memos_mip.frames import HEADER
from memos_mip.v1 import store_pb2, store_pb2_grpc
from tests.daemon import admin_channel, make_config, running
from tests.store_checks import check_history, collect
from tests.timing import wait_for

TOPIC = "teams/local"
QUIET = 300  # seconds between heartbeats: none comes while a test runs unless it asks
DEADLINE = 30


def _subscribe(channel, **fields):
    return store_pb2_grpc.StoreServiceStub(channel).Subscribe(
        store_pb2.SubscribeRequest(**{"topic": TOPIC, "same_host": True, "heartbeat_seconds": QUIET, **fields}),
        timeout=DEADLINE)


def _socket_of(daemon, stream) -> int:
    """The subscription's socket descriptor, collected with the ticket its first response names."""
    first = next(stream)
    assert first.HasField("local") and not first.events and not first.HasField("heartbeat")
    return take(unix_path(daemon.address).with_name(first.local.exchange_socket), first.local.ticket)


def _read_all(fd: int) -> bytes:
    """Everything the daemon writes on the socket until it closes it (a hang fails the test instead)."""
    with socket.socket(fileno=fd) as sock:
        sock.settimeout(DEADLINE)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)


def _frames(data: bytes) -> list[store_pb2.SubscribeResponse]:
    found = []
    while len(data) >= HEADER.size:
        (length,) = HEADER.unpack(data[:HEADER.size])
        if len(data) < HEADER.size + length:
            break
        found.append(store_pb2.SubscribeResponse.FromString(data[HEADER.size:HEADER.size + length]))
        data = data[HEADER.size + length:]
    return found


def _status(stream) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    return info.value


@pytest.fixture
def admin(daemon):
    with admin_channel(daemon.address, daemon.config.data_dir) as channel:
        yield channel


@pytest.fixture
def bob(daemon, client, tmp_path):
    """bob, who may subscribe to TOPIC: (his raw channel, his grant's policy id)."""
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    policy = client.grant("agent:bob", ["subscribe"], [TOPIC])
    with sync_channel(daemon.address, TokenSource(AgentKey.load(tmp_path / "bob.key"))) as channel:
        yield channel, policy


def test_the_client_takes_the_socket_and_sees_what_grpc_delivery_shows(daemon, client):
    cube = client.put("v1", "agents/admin/n")
    client.publish(TOPIC, cube.id)
    client.update(cube.id, text="v2")
    client.publish(TOPIC, cube.id)
    client.retract(TOPIC, cube.id)
    local = client.subscribe(TOPIC, heartbeat_seconds=1, heartbeats=True)
    items = iter(local)
    first = next(items)
    assert local.same_host is True
    rest = [next(items) for _ in range(3)]  # two events, then the heartbeat that says where it stands
    local.close()
    with MemosClient(daemon.address, key=daemon.admin_key, local_transfers=False) as plain:
        over_grpc = plain.subscribe(TOPIC, heartbeat_seconds=1, heartbeats=True)
        expected = collect(over_grpc, 4)
        assert over_grpc.same_host is False
    assert [first, *rest] == expected
    check_history(expected)
    assert expected[-1].delivered == {TOPIC: 3} and expected[0].cube.text == "v1"


def test_frames_carry_events_in_order_and_a_ticket_is_good_once(daemon, client, admin):
    stream = _subscribe(admin)
    first = next(stream)
    path = unix_path(daemon.address).with_name(first.local.exchange_socket)
    fd = take(path, first.local.ticket)
    with pytest.raises(FailedPrecondition, match="unknown, used or expired"):
        take(path, first.local.ticket)
    frames = LocalFrames(fd)
    try:
        cubes = [client.put(f"c{i}", "agents/admin/n").id for i in range(5)]
        for cube_id in cubes:
            client.publish(TOPIC, cube_id)
        seen = []
        while len(seen) < 5:
            seen += [(e.seq, e.cube_id) for e in next(frames).events]
        assert seen == list(zip(range(1, 6), cubes, strict=True))
    finally:
        frames.close()
        stream.cancel()


def test_revocation_closes_the_socket_and_the_call_says_why(daemon, client, bob):
    channel, policy = bob
    stream = _subscribe(channel)
    fd = _socket_of(daemon, stream)
    wait_for(lambda: len(daemon.server.store.hub) == 1, "the subscription never opened")
    client.revoke_policy(policy)
    assert _read_all(fd) == b""  # closed by the daemon, nothing written after the revocation
    error = _status(stream)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED and "revoked" in error.details()
    wait_for(lambda: len(daemon.server.store.hub) == 0, "the revoked subscription stayed registered")


def test_a_stalled_same_host_subscriber_is_cut_off_and_the_others_go_on(tmp_path):
    config = dataclasses.replace(make_config(tmp_path), subscriber_queue=4)
    with running(config) as d, MemosClient(d.address, key=d.admin_key) as c, \
            admin_channel(d.address, d.config.data_dir) as channel:
        cube = c.put("y" * 60000, "agents/admin/n")
        stalled = _subscribe(channel, live_only=True)
        fd = _socket_of(d, stalled)  # and never read, until the end
        healthy = c.subscribe(TOPIC, live_only=True, resume_for=0)
        got = []
        reader = threading.Thread(target=lambda: got.extend(collect(healthy, 60, timeout=60)))
        reader.start()
        wait_for(lambda: len(d.server.store.hub) == 2, "the subscriptions never opened")
        for _ in range(60):
            c.publish(TOPIC, cube.id)
        reader.join(60)
        assert [e.seq for e in got] == list(range(1, 61))
        error = _status(stalled)
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "last delivered" in error.details()
        received = [e.seq for f in _frames(_read_all(fd)) for e in f.events]
        assert received == list(range(1, len(received) + 1)) and len(received) < 60


def test_a_subscriber_closing_its_socket_ends_the_subscription(daemon, admin):
    stream = _subscribe(admin, heartbeat_seconds=1)
    os.close(_socket_of(daemon, stream))
    # The next heartbeat finds the socket closed: the subscription ends and its call with it.
    error = _status(stream)
    assert error.code() is grpc.StatusCode.UNAVAILABLE and "socket was closed" in error.details()
    wait_for(lambda: len(daemon.server.store.hub) == 0, "the subscription outlived its socket")


def test_closing_the_subscription_mid_read_ends_both_sides(daemon, client):
    sub = client.subscribe(TOPIC, live_only=True, heartbeat_seconds=1, heartbeats=True)
    items = iter(sub)
    next(items)  # a heartbeat: the socket is open, and the next read blocks on it
    assert sub.same_host
    threading.Timer(0.2, sub.close).start()
    assert list(items) == []  # close() from another thread ended the blocked read
    wait_for(lambda: len(daemon.server.store.hub) == 0, "the subscription outlived its client")


def test_a_daemon_on_tcp_delivers_on_the_stream(tmp_path):
    with running(make_config(tmp_path, listen="127.0.0.1:0")) as d, \
            admin_channel(d.address, d.config.data_dir) as channel:
        stream = _subscribe(channel, heartbeat_seconds=1)
        first = next(stream)
        assert first.HasField("heartbeat") and not first.HasField("local")
        stream.cancel()


def test_without_the_descriptor_socket_the_client_falls_back_to_grpc(daemon, client):
    cube = client.put("x", "agents/admin/n")
    client.publish(TOPIC, cube.id)
    path = daemon.server.exchange.path
    moved = path.with_name("moved.fd")
    path.rename(moved)  # as from another mount namespace: the gRPC socket reachable, the descriptor one not
    try:
        sub = client.subscribe(TOPIC)
        items = iter(sub)
        event = next(items)
        assert isinstance(event, Event) and event.seq == 1 and sub.same_host is False
        sub.close()
    finally:
        moved.rename(path)
    wait_for(lambda: len(daemon.server.store.hub) == 0, "the abandoned same-host subscription stayed open")


def test_the_async_client_subscribes_over_the_socket(aclient_factory, client):
    cubes = [client.put(f"a{i}", "agents/admin/n").id for i in range(3)]
    for cube_id in cubes:
        client.publish(TOPIC, cube_id)

    async def scenario():
        async with aclient_factory() as c:
            sub = c.subscribe(TOPIC)
            seen, same_host = [], []
            async for event in sub:
                seen.append(event)
                same_host.append(sub.same_host)
                if len(seen) == 3:
                    break
            return seen, same_host

    seen, same_host = asyncio.run(scenario())
    assert [e.cube_id for e in seen] == cubes and same_host == [True] * 3
    check_history(seen)
