"""Governance across the members of a cluster: several daemons on one PostgreSQL vault, polling it (no bus)."""

import contextlib
import signal
import threading
import time
from dataclasses import replace

import grpc
import pytest

from memos_client import AlreadyExists, MemosClient, NotFound, Unauthenticated
from memos_client.auth import AgentKey, sign_policy
from memos_mip.v1 import store_pb2 as spb
from tests.cluster import member_configs, running_members, share_admin_key
from tests.daemon import make_config, running, spawn_daemon
from tests.storage_engine import raw_connection
from tests.timing import wait_for

POLL = 0.2  # the members' governance_poll_interval in these tests
# How long a change made at one member may take to show at another: a poll, with room for a loaded machine.
BOUND = POLL + 5.0


@contextlib.contextmanager
def cluster(tmp_path, postgres_url, count=2, **overrides):
    configs = member_configs(tmp_path, postgres_url, count, **{"governance_poll_interval": POLL, **overrides})
    with running_members(configs) as daemons, contextlib.ExitStack() as stack:
        admins = [stack.enter_context(MemosClient(d.address, key=d.admin_key, timeout=30)) for d in daemons]
        yield daemons, admins


def refusal(client):
    """A condition: the Unauthenticated error the client's next call gets, else None."""
    def refused():
        try:
            client.whoami()
        except Unauthenticated as exc:
            return exc
        return None

    return refused


def connect(stack, daemon, key):
    return stack.enter_context(MemosClient(daemon.address, key=str(key), timeout=30))


def test_an_agent_added_at_one_member_authenticates_at_another_at_once(tmp_path, postgres_url):
    # No poll in time: the unknown signer makes the second member look at the vault before refusing.
    with cluster(tmp_path, postgres_url, governance_poll_interval=3600) as ((a, b), (admin_a, _)), \
            contextlib.ExitStack() as stack:
        admin_a.add_agent("alice", out=str(tmp_path / "alice.key"))
        alice_b = connect(stack, b, tmp_path / "alice.key")
        assert alice_b.whoami()[0].name == "alice"
        assert alice_b.get(alice_b.put("noted at b", "agents/alice/notes").id).text == "noted at b"


def test_agents_added_one_after_another_at_one_member_each_authenticate_at_another_at_once(tmp_path, postgres_url):
    # Each new agent's first call at B must find it, however soon after B last looked in the vault for another.
    with cluster(tmp_path, postgres_url, governance_poll_interval=3600) as ((a, b), (admin_a, _)), \
            contextlib.ExitStack() as stack:
        for name in ("carol", "dave", "erin"):
            admin_a.add_agent(name, out=str(tmp_path / f"{name}.key"))
            assert connect(stack, b, tmp_path / f"{name}.key").whoami()[0].name == name


def test_a_grant_at_one_member_lets_the_agent_read_at_another(tmp_path, postgres_url):
    with cluster(tmp_path, postgres_url) as ((a, b), (admin_a, _)), contextlib.ExitStack() as stack:
        admin_a.add_agent("alice", out=str(tmp_path / "alice.key"))
        admin_a.add_agent("bob", out=str(tmp_path / "bob.key"))
        alice_a, bob_b = connect(stack, a, tmp_path / "alice.key"), connect(stack, b, tmp_path / "bob.key")
        cube = alice_a.put("shared at a", "agents/alice/shared/notes")
        with pytest.raises(NotFound):
            bob_b.get(cube.id)
        alice_a.grant("agent:bob", ["read"], ["agents/alice/shared/**"])

        def reads():
            try:
                return bob_b.get(cube.id).text
            except NotFound:
                return None

        assert wait_for(reads, "b never heard of the grant", BOUND) == "shared at a"


def test_a_revocation_at_one_member_refuses_and_ends_streams_at_another(tmp_path, postgres_url):
    with cluster(tmp_path, postgres_url) as ((a, b), (admin_a, _)), contextlib.ExitStack() as stack:
        admin_a.add_agent("bob", out=str(tmp_path / "bob.key"))
        bob_b = connect(stack, b, tmp_path / "bob.key")
        bob_b.publish("agents/bob/news", bob_b.put("bob's news", "agents/bob/notes").id)
        stream = bob_b._store.Subscribe(spb.SubscribeRequest(topic="agents/bob/news"), timeout=30)
        assert [e.seq for e in next(stream).events] == [1]  # the stream is open at b
        ended: list[grpc.RpcError] = []
        waiter = threading.Thread(target=lambda: ended.append(_next_error(stream)))
        waiter.start()
        revoked_at = time.monotonic()
        admin_a.revoke_agent("bob")

        assert "revoked" in str(wait_for(refusal(bob_b), "b still lets bob in", BOUND))
        waiter.join(BOUND)
        assert time.monotonic() - revoked_at < BOUND
        assert ended and ended[0].code() is grpc.StatusCode.UNAUTHENTICATED and "revoked" in ended[0].details()


def _next_error(stream) -> grpc.RpcError | None:
    try:
        next(stream)
    except grpc.RpcError as exc:
        return exc
    return None


def test_status_at_each_member_lists_every_member(tmp_path, postgres_url):
    with cluster(tmp_path, postgres_url, 3) as (daemons, admins):
        addresses = sorted(str(d.address) for d in daemons)
        ids = set()
        for daemon, admin in zip(daemons, admins, strict=True):
            status = admin.status()
            assert sorted(m.listen for m in status.members) == addresses
            (me,) = [m for m in status.members if m.local]
            assert me.member_id == status.member_id and me.listen == str(daemon.address)
            assert all(m.version == status.version and not m.stale and m.seconds_since_heard < 60
                       for m in status.members)
            assert status.bus.startswith("no bus: catching up from the vault")  # they hear of each other there
            ids.add(status.member_id)
        assert len(ids) == 3


def test_a_member_keeps_its_id_across_a_restart_and_leaves_when_stopped(tmp_path, postgres_url):
    first, second = member_configs(tmp_path, postgres_url, 2)
    with running_members([first]) as (a,), MemosClient(a.address, key=a.admin_key, timeout=30) as admin:
        before = admin.status().member_id
    with running_members([first]) as (a,), MemosClient(a.address, key=a.admin_key, timeout=30) as admin:
        assert admin.status().member_id == before
        share_admin_key(first, second)
        with running(second):
            assert len(admin.status().members) == 2
        assert [m.member_id for m in admin.status().members] == [before]


def test_a_member_not_heard_from_shows_as_stale(tmp_path, postgres_url, monkeypatch):
    # A member killed (or cut off) stays listed, marked stale, until it is pruned a day later.
    monkeypatch.setenv("MEMOSD_MEMBER_HEARTBEAT_INTERVAL", "0.2")
    first, second = [replace(c, member_heartbeat_interval=0.2) for c in member_configs(tmp_path, postgres_url, 2)]
    with running_members([first]) as (a,), MemosClient(a.address, key=a.admin_key, timeout=30) as admin:
        share_admin_key(first, second)
        child = spawn_daemon(second)
        try:
            members = wait_for(lambda: len(ms := admin.status().members) == 2 and ms, "b never joined")
            (killed,) = [m for m in members if not m.local]
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate()

        def stale():
            (gone,) = [m for m in admin.status().members if m.member_id == killed.member_id]
            return gone if gone.stale and gone.seconds_since_heard >= 0.6 else None

        assert wait_for(stale, "the killed member never showed as stale", BOUND).listen == second.listen
        assert not [m for m in admin.status().members if m.local][0].stale


def test_refresh_loads_another_members_change_and_on_change_hears_local_ones(tmp_path, postgres_url):
    # What the bus does: a member that commits a change tells on_change's callbacks; another calls refresh().
    with cluster(tmp_path, postgres_url, governance_poll_interval=3600) as ((a, b), (admin_a, _)), \
            contextlib.ExitStack() as stack:
        heard: list[int] = []
        a.loop.call_soon_threadsafe(a.server.governance.on_change, heard.append)
        admin_a.add_agent("alice", out=str(tmp_path / "alice.key"))
        admin_a.add_agent("bob", out=str(tmp_path / "bob.key"))
        alice_a, bob_b = connect(stack, a, tmp_path / "alice.key"), connect(stack, b, tmp_path / "bob.key")
        cube = alice_a.put("shared at a", "agents/alice/shared/notes")
        assert b.call(b.server.governance.refresh()) is True  # b had not heard of alice and bob yet
        assert b.call(b.server.governance.refresh()) is False
        alice_a.grant("agent:bob", ["read"], ["agents/alice/shared/**"])
        with pytest.raises(NotFound):
            bob_b.get(cube.id)  # b polls once an hour here: it has not heard
        assert b.call(b.server.governance.refresh()) is True
        assert bob_b.get(cube.id).text == "shared at a"
        assert heard == sorted(heard) and len(heard) == 3 and heard[-1] == b.server.governance.version


def test_a_daemon_alone_on_sqlite_is_a_one_member_cluster_that_forgets_members_silent_for_a_day(tmp_path):
    config = replace(make_config(tmp_path), member_heartbeat_interval=0.2)
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as admin:
        (me,) = admin.status().members
        assert me.local and me.listen == str(daemon.address) and me.member_id == admin.status().member_id
        with raw_connection(config) as conn:  # a member last heard from 25 hours ago
            conn.execute("INSERT INTO members VALUES ('gone', 'unix:/gone.sock', '0.0.1', ?, ?)",
                         (time.time() - 90_000, time.time() - 90_000))
        assert wait_for(lambda: [m.member_id for m in admin.status().members] == [me.member_id],
                        "the member silent for a day was never forgotten", BOUND)


def test_a_policy_recorded_at_one_member_already_exists_at_another_that_has_not_heard_of_it(tmp_path, postgres_url):
    # B never polls in time: its memory has no such policy, and the vault's unique id must say AlreadyExists.
    with cluster(tmp_path, postgres_url, governance_poll_interval=3600) as ((a, b), (admin_a, admin_b)):
        document, signature = sign_policy(AgentKey.load(a.admin_key), subject="agent:admin", actions=["read"],
                                          namespaces=["shared/**"])
        admin_a.put_policy(document, signature)
        with pytest.raises(AlreadyExists, match="exists already"):
            admin_b.put_policy(document, signature)


def test_with_the_bus_a_revocation_reaches_another_member_without_waiting_for_its_poll(tmp_path, postgres_url,
                                                                                        nats_server):
    # B's poll is an hour away: only the bus's governance notice can make B refuse bob in time.
    with cluster(tmp_path, postgres_url, governance_poll_interval=3600, bus_url=nats_server.url) as \
            ((a, b), (admin_a, admin_b)), contextlib.ExitStack() as stack:
        admin_a.add_agent("bob", out=str(tmp_path / "bob.key"))
        bob_b = connect(stack, b, tmp_path / "bob.key")
        assert bob_b.whoami()[0].name == "bob"
        wait_for(lambda: "connected" in admin_b.status().bus, "b's bus never connected", 30)
        admin_a.revoke_agent("bob")

        assert "revoked" in str(wait_for(refusal(bob_b), "b still lets bob in: the bus did not tell it", 10))


def test_an_agent_is_shown_nothing_of_the_clusters_hosts_addresses_or_bus(tmp_path, postgres_url):
    with cluster(tmp_path, postgres_url, 2) as ((a, b), (admin_a, _)), contextlib.ExitStack() as stack:
        admin_a.add_agent("eve", out=str(tmp_path / "eve.key"))  # holds no grant at all
        status = connect(stack, b, tmp_path / "eve.key").status()
        assert (status.members, status.member_id, status.bus) == ([], "", "")
        assert len(admin_a.status().members) == 2  # the admin still sees them
