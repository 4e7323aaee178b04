"""An attack on same-host delivery (Subscribe with same_host) and the descriptor socket it shares with OpenLocal:
anyone who can connect to that socket (the socket's group: every agent's processes) sends what it likes on it, or
nothing; no connection may hold up another agent's ticket, and no ticket leads anywhere but to its own socket."""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from memos_client.auth import AgentKey, TokenSource
from memos_client.channel import sync_channel
from memos_client.fdpass import take, unix_path
from memos_mip.fdpass import ERROR, MAX_REPLY, TAKE
from memos_mip.frames import HEADER
from memos_mip.v1 import store_pb2, store_pb2_grpc
from memosd.server import fd_exchange
from tests.daemon import admin_channel
from tests.timing import ManualClock, wait_for

TOPIC = "teams/local"
QUIET = 300  # seconds between heartbeats: none comes while a test runs
DEADLINE = 30


def _subscribe(channel, **fields):
    return store_pb2_grpc.StoreServiceStub(channel).Subscribe(
        store_pb2.SubscribeRequest(**{"topic": TOPIC, "same_host": True, "heartbeat_seconds": QUIET, **fields}),
        timeout=DEADLINE)


def _connected(path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(str(path))
    return conn


@pytest.fixture
def admin(daemon):
    with admin_channel(daemon.address, daemon.config.data_dir) as channel:
        yield channel


def test_connections_that_send_nothing_hold_up_no_other_ticket(daemon, admin):
    # Each handler waited up to 2 s for a silent connection's ticket, four at a time: forty silent connections
    # (no token needed) made every ticket behind them wait 20 s, past its 10 s. A hundred: more than the daemon
    # keeps waiting (fd_exchange.MAX_WAITING), so the oldest are closed to make room, not the newest.
    path = daemon.server.exchange.path
    silent = [_connected(path) for _ in range(100)]
    stream = _subscribe(admin)
    try:
        first = next(stream)
        fd = take(unix_path(daemon.address).with_name(first.local.exchange_socket), first.local.ticket,
                  timeout=fd_exchange.CONNECTION_TIMEOUT)
        socket.socket(fileno=fd).close()
    finally:
        stream.cancel()
        for conn in silent:
            conn.close()


def _next_message(sock: socket.socket) -> store_pb2.SubscribeResponse | None:
    """The next frame on a same-host subscription's socket; None once the daemon closed it."""
    header = sock.recv(HEADER.size, socket.MSG_WAITALL)
    if not header:
        return None
    (length,) = HEADER.unpack(header)
    return store_pb2.SubscribeResponse.FromString(sock.recv(length, socket.MSG_WAITALL))


def test_nothing_published_after_the_subscribe_grant_ends_is_written(daemon, client, tmp_path):
    # The guard wakes a little after a grant's end, by the event loop's clock: until then (50 ms, or as long as
    # the wall clock has stepped past the end) the stream went on writing what was published after it.
    daemon.server.governance.clock = daemon.server.store.clock = clock = ManualClock(time.time() + 5)
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    ends = int(clock()) + 2  # policies carry whole seconds; the guard sleeps till then by the loop's clock
    client.grant("agent:bob", ["subscribe"], [TOPIC], expires_at=ends)
    with sync_channel(daemon.address, TokenSource(AgentKey.load(tmp_path / "bob.key"))) as channel:
        stream = _subscribe(channel)
        first = next(stream)
        fd = take(unix_path(daemon.address).with_name(first.local.exchange_socket), first.local.ticket)
        with socket.socket(fileno=fd) as sock:
            sock.settimeout(DEADLINE)
            wait_for(lambda: len(daemon.server.store.hub) == 1, "the subscription never opened")
            client.publish(TOPIC, client.put("before the end", "agents/admin/n").id)
            assert [e.seq for e in _next_message(sock).events] == [1]
            clock.now = ends + 0.01  # as when the wall clock steps, or within the guard's 50 ms
            client.publish(TOPIC, client.put("after the end", "agents/admin/n").id)
            assert _next_message(sock) is None
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED and "expired" in info.value.details()


def test_over_grpc_too_nothing_published_after_the_grant_ends_is_sent(daemon, client, tmp_path):
    daemon.server.governance.clock = daemon.server.store.clock = clock = ManualClock(time.time() + 5)
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    ends = int(clock()) + 2
    client.grant("agent:bob", ["subscribe"], [TOPIC], expires_at=ends)
    with sync_channel(daemon.address, TokenSource(AgentKey.load(tmp_path / "bob.key"))) as channel:
        stream = _subscribe(channel, same_host=False)
        wait_for(lambda: len(daemon.server.store.hub) == 1, "the subscription never opened")
        client.publish(TOPIC, client.put("before the end", "agents/admin/n").id)
        assert [e.seq for e in next(stream).events] == [1]
        clock.now = ends + 0.01
        client.publish(TOPIC, client.put("after the end", "agents/admin/n").id)
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_a_ticket_collected_after_a_revocation_leads_to_a_socket_already_over(daemon, client, tmp_path):
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    policy = client.grant("agent:bob", ["subscribe"], [TOPIC])
    with sync_channel(daemon.address, TokenSource(AgentKey.load(tmp_path / "bob.key"))) as channel:
        stream = _subscribe(channel)
        first = next(stream)  # the ticket, not collected yet
        wait_for(lambda: len(daemon.server.store.hub) == 1, "the subscription never opened")
        client.revoke_policy(policy)
        wait_for(lambda: len(daemon.server.store.hub) == 0, "the revoked subscription stayed registered")
        client.publish(TOPIC, client.put("after the revocation", "agents/admin/n").id)
        fd = take(unix_path(daemon.address).with_name(first.local.exchange_socket), first.local.ticket)
        with socket.socket(fileno=fd) as sock:
            sock.settimeout(DEADLINE)
            assert _next_message(sock) is None
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_malformed_requests_get_a_short_answer_and_burn_no_ticket(daemon, admin):
    path = daemon.server.exchange.path
    stream = _subscribe(admin)
    try:
        ticket = next(stream).local.ticket
        for request in (b"", b"X" + ticket, TAKE + ticket + b"!", TAKE + ticket[:-1], TAKE + ticket * 4000):
            with _connected(path) as conn:
                conn.settimeout(DEADLINE)
                conn.send(request)
                reply = conn.recv(MAX_REPLY)
                assert reply.startswith(ERROR) and len(reply) < 100 and ticket not in reply, request[:20]
        _connected(path).close()  # and one that connects and leaves
        socket.socket(fileno=take(path, ticket)).close()  # still good, once
    finally:
        stream.cancel()
