"""MemStore across daemons: several members on one PostgreSQL vault and one NATS bus (real processes), each
subscriber's history ordered, unique and gap-free whichever member published, with the bus up, down or absent."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace

import grpc
import psycopg
import pytest

from memos_client import MemosClient, Unavailable
from memos_mip.v1 import store_pb2 as spb
from memos_client.models import Event
from memosd.metrics import sample_value
from memosd.store.durables import lease_name
from tests.cluster import member_configs, share_admin_key
from tests.daemon import running
from tests.store_checks import check_history
from tests.timing import wait_for

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def members(tmp_path, postgres_url, count, setup=None, **overrides):
    """`count` members on one vault; setup(first) runs before the others start (they load governance then)."""
    configs = member_configs(tmp_path, postgres_url, count, **overrides)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(running(configs[0]))
        if setup is not None:
            setup(first)
        others = []
        for config in configs[1:]:
            share_admin_key(configs[0], config)
            others.append(stack.enter_context(running(config)))
        yield [first, *others]


class Reader:
    """A subscription read on a thread, so that the test can publish while it waits for what arrives."""

    def __init__(self, sub):
        self.sub, self.items = sub, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for item in self.sub:
                self.items.append(item)
        except Exception as exc:  # noqa: BLE001 - the test sees it among the items
            self.items.append(exc)

    def events(self, n: int, what: str, timeout: float = 30) -> list[Event]:
        def enough():
            failed = [i for i in self.items if isinstance(i, Exception)]
            assert not failed, f"the subscription failed: {failed[0]!r}"
            return len([i for i in self.items if isinstance(i, Event)]) >= n

        wait_for(enough, what, timeout)
        return [i for i in self.items if isinstance(i, Event)]

    def close(self):
        self.sub.close()


def subscribers_open(daemon, n: int = 1) -> None:
    wait_for(lambda: len(daemon.server.store.hub) >= n, f"fewer than {n} subscriptions opened at {daemon.address}")


def state(daemon) -> str:
    return daemon.server.core.cluster_state()


async def _families(daemon):
    return await daemon.server.metrics.collect()


def metric(daemon, name: str) -> float:
    return sample_value(daemon.call(_families(daemon)), name)


def bus_connected(*daemons) -> None:
    for d in daemons:
        wait_for(lambda d=d: state(d).startswith("bus connected"), f"the bus never connected at {d.address}")


def team(tmp_path):
    """alice publishes on teams/news, bob subscribes to it and may not read alice's namespace himself."""
    def setup(daemon):
        with MemosClient(daemon.address, key=daemon.admin_key) as admin:
            admin.add_agent("alice", out=str(tmp_path / "alice.key"))
            admin.add_agent("bob", out=str(tmp_path / "bob.key"))
            admin.grant("agent:alice", ["publish"], ["teams/news"])
            admin.grant("agent:bob", ["subscribe"], ["teams/news"])

    return setup


def test_a_cube_published_at_a_reaches_a_subscriber_at_b_replayed_then_live(tmp_path, postgres_url, nats_server):
    with members(tmp_path, postgres_url, 2, team(tmp_path), bus_url=nats_server.url) as (a, b), \
            MemosClient(a.address, key=str(tmp_path / "alice.key")) as alice, \
            MemosClient(b.address, key=str(tmp_path / "bob.key")) as bob:
        first = alice.put("before B listened", "agents/alice/s")
        assert alice.publish("teams/news", first.id) == (1, False)
        bus_connected(a, b)
        reader = Reader(bob.subscribe("teams/news"))
        subscribers_open(b)
        later = [alice.put(f"live {i}", "agents/alice/s") for i in range(3)]
        for cube in later:
            alice.publish("teams/news", cube.id)
        events = reader.events(4, "the events published at A never all reached B")
        reader.close()
        assert [e.seq for e in events] == [1, 2, 3, 4]
        check_history(events)
        # Publishing at A shared the cubes with B's subscriber: B's share index learnt of them.
        assert [e.cube.text for e in events] == ["before B listened", "live 0", "live 1", "live 2"]
        assert bob.get(later[-1].id).text == "live 2"
        assert metric(b, "memosd_bus_notices_received_total") >= 1
        assert metric(a, "memosd_bus_notices_sent_total") >= 3
        assert metric(b, "memosd_bus_up") == 1


def test_concurrent_publishers_at_two_members_keep_every_subscriber_ordered_unique_gap_free(
        tmp_path, postgres_url, nats_server):
    per_member = 40
    with members(tmp_path, postgres_url, 2, bus_url=nats_server.url) as daemons, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(MemosClient(d.address, key=d.admin_key, timeout=30)) for d in daemons]
        bus_connected(*daemons)
        readers = [Reader(c.subscribe("teams/race")) for c in clients for _ in range(2)]
        for d in daemons:
            subscribers_open(d, 2)
        cubes = [c.put("x", "agents/admin/race") for c in clients]

        def publish(client, cube, stream):
            if stream:  # one member's publishes arrive over PublishStream, committed in batches
                for _ in client.publish_stream(("teams/race", cube.id, "") for _ in range(per_member)):
                    pass
            else:
                for _ in range(per_member):
                    client.publish("teams/race", cube.id)

        threads = [threading.Thread(target=publish, args=(c, cube, i == 1)) for i, (c, cube) in
                   enumerate(zip(clients, cubes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        total = per_member * len(clients)
        for reader in readers:
            events = reader.events(total, "a subscriber missed events published at the other member")
            reader.close()
            assert [e.seq for e in events[:total]] == list(range(1, total + 1))
            check_history(events)


def test_with_the_bus_killed_events_arrive_by_polling_and_notices_resume_when_it_is_back(
        tmp_path, postgres_url, nats_server):
    with members(tmp_path, postgres_url, 2, bus_url=nats_server.url, cluster_poll_interval=0.2) as (a, b), \
            MemosClient(a.address, key=a.admin_key) as at_a, MemosClient(b.address, key=b.admin_key) as at_b:
        bus_connected(a, b)
        reader = Reader(at_b.subscribe("teams/ops"))
        subscribers_open(b)
        cube = at_a.put("x", "agents/admin/ops")
        at_a.publish("teams/ops", cube.id)
        reader.events(1, "the first event never reached B")

        nats_server.kill()
        for d in (a, b):
            wait_for(lambda d=d: "down since" in state(d), f"{d.address} never noticed the bus went down")
        assert "catching up from the vault every 0.2 s" in state(b)
        assert metric(b, "memosd_bus_up") == 0
        polls = metric(b, "memosd_cluster_vault_polls_total")
        at_a.publish("teams/ops", cube.id)
        at_a.publish("teams/ops", cube.id)
        reader.events(3, "with the bus down, B never caught up from the vault")
        assert metric(b, "memosd_cluster_vault_polls_total") > polls

        nats_server.start()
        bus_connected(a, b)
        assert metric(b, "memosd_bus_up") == 1
        received = metric(b, "memosd_bus_notices_received_total")
        at_a.publish("teams/ops", cube.id)
        events = reader.events(4, "after the bus came back, B never got the next event")
        reader.close()
        assert [e.seq for e in events] == [1, 2, 3, 4]
        check_history(events)
        wait_for(lambda: metric(b, "memosd_bus_notices_received_total") > received,
                 "B heard no notice once the bus was back")


def test_members_without_a_bus_find_each_others_commits_in_the_vault(tmp_path, postgres_url):
    with members(tmp_path, postgres_url, 2, cluster_poll_interval=0.2) as (a, b), \
            MemosClient(a.address, key=a.admin_key) as at_a, MemosClient(b.address, key=b.admin_key) as at_b:
        assert state(b) == "no bus: catching up from the vault every 0.2 s"
        assert b.server.core.bus is None
        reader = Reader(at_b.subscribe("teams/slow"))
        subscribers_open(b)
        cube = at_a.put("x", "agents/admin/slow")
        for _ in range(3):
            at_a.publish("teams/slow", cube.id)
        events = reader.events(3, "B never found A's events in the vault")
        reader.close()
        assert [e.seq for e in events] == [1, 2, 3]


def test_a_durable_cursor_acknowledged_at_a_resumes_after_those_acks_at_b(tmp_path, postgres_url, nats_server):
    with members(tmp_path, postgres_url, 2, bus_url=nats_server.url) as (a, b), \
            MemosClient(a.address, key=a.admin_key) as at_a, MemosClient(b.address, key=b.admin_key) as at_b:
        cube = at_a.put("x", "agents/admin/jobs")
        for _ in range(5):
            at_a.publish("teams/jobs", cube.id)

        def take(client, n):
            reader = Reader(client.subscribe("teams/jobs", durable_name="worker"))
            events = reader.events(n, "the durable subscription delivered too little")
            reader.close()
            return [e.seq for e in events]

        assert take(at_b, 2)[:2] == [1, 2]
        assert at_b.ack("worker", "teams/jobs", 2) == 2
        assert take(at_a, 3)[:3] == [3, 4, 5]  # A reads B's acknowledgements from the vault
        assert at_a.ack("worker", "teams/jobs", 5) == 5
        at_a.publish("teams/jobs", cube.id)
        # B opened this cursor before: it must not go back past what A acknowledged since.
        assert take(at_b, 1)[0] == 6


def test_three_members_each_subscriber_sees_every_members_events(tmp_path, postgres_url, nats_server):
    with members(tmp_path, postgres_url, 3, bus_url=nats_server.url) as daemons, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(MemosClient(d.address, key=d.admin_key)) for d in daemons]
        bus_connected(*daemons)
        readers = [Reader(c.subscribe("teams/**")) for c in clients]
        for d in daemons:
            subscribers_open(d)
        cube = clients[0].put("x", "agents/admin/three")
        for i, c in enumerate(clients):
            c.publish(f"teams/t{i}", cube.id)
            c.publish("teams/all", cube.id)
        for reader in readers:
            events = reader.events(6, "a member's subscriber missed another member's event")
            reader.close()
            check_history(events)
            assert sorted((e.topic, e.seq) for e in events) == sorted(
                [("teams/all", 1), ("teams/all", 2), ("teams/all", 3), ("teams/t0", 1), ("teams/t1", 1),
                 ("teams/t2", 1)])


def test_a_bus_down_at_start_does_not_keep_the_daemon_from_serving(tmp_path, postgres_url, nats_server):
    url = nats_server.url
    nats_server.kill()
    [config] = member_configs(tmp_path, postgres_url, 1, bus_url=url)
    with running(replace(config)) as d, MemosClient(d.address, key=d.admin_key) as client:
        assert "not reached yet since" in state(d)
        client.put("served without its bus", "agents/admin/n")
        nats_server.start()
        bus_connected(d)


def test_a_replay_at_b_waits_for_b_to_know_the_share_a_publish_at_a_made(tmp_path, postgres_url):
    # No bus and a slow poll: B's replay reads A's events from the vault before B has applied their shares.
    with members(tmp_path, postgres_url, 2, team(tmp_path), cluster_poll_interval=1.0) as (a, b), \
            MemosClient(a.address, key=str(tmp_path / "alice.key")) as alice, \
            MemosClient(b.address, key=str(tmp_path / "bob.key")) as bob:
        cube = alice.put("alice's note", "agents/alice/s")
        alice.publish("teams/news", cube.id)
        reader = Reader(bob.subscribe("teams/news"))
        [event] = reader.events(1, "A's event never reached B")
        reader.close()
        assert event.cube is not None and event.cube.text == "alice's note"  # not REDACTED


def test_memosd_serve_says_how_it_hears_of_the_other_members(tmp_path, postgres_url, nats_server):
    from tests.daemon import spawn_daemon

    [config] = member_configs(tmp_path, postgres_url, 1, bus_url=nats_server.url)
    proc = spawn_daemon(config)
    try:
        assert proc.stderr is not None
        lines = iter(proc.stderr.readline, b"")
        said = next(line.decode() for line in lines if b"memosd: cluster:" in line)
        assert said.strip() == f"memosd: cluster: bus connected to {nats_server.url}"
    finally:
        proc.terminate()
        proc.wait(30)


def _refusal(client, topic: str, durable: str):
    """What a member answers a durable Subscribe with, read straight off the stub (no resuming client)."""
    stream = client._store.Subscribe(spb.SubscribeRequest(topic=topic, durable_name=durable), timeout=30)
    try:
        next(stream)
    except grpc.RpcError as exc:
        return exc
    finally:
        stream.cancel()
    return None


def test_a_durable_subscription_is_open_on_one_stream_in_the_whole_cluster(tmp_path, postgres_url, nats_server):
    with members(tmp_path, postgres_url, 2, bus_url=nats_server.url) as (a, b), \
            MemosClient(a.address, key=a.admin_key) as at_a, MemosClient(b.address, key=b.admin_key) as at_b:
        cube = at_a.put("x", "agents/admin/jobs")
        for _ in range(3):
            at_a.publish("teams/solo", cube.id)
        earlier = Reader(at_b.subscribe("teams/solo", durable_name="solo"))
        assert [e.seq for e in earlier.events(3, "B's durable stream delivered too little")] == [1, 2, 3]
        earlier.close()
        reader = Reader(at_a.subscribe("teams/solo", durable_name="solo"))  # resumes once B's claim is given up
        assert [e.seq for e in reader.events(3, "A's durable stream delivered too little")] == [1, 2, 3]
        refused = _refusal(at_b, "teams/solo", "solo")
        assert refused is not None and refused.code() is grpc.StatusCode.UNAVAILABLE
        assert "open on a stream at another daemon" in refused.details()
        # B, which had the cursor open before, may not write it back over the stream A holds.
        with pytest.raises(Unavailable, match="acknowledge its events on that stream's daemon"):
            MemosClient(b.address, key=b.admin_key, timeout=10).ack("solo", "teams/solo", 3)
        assert at_a.ack("solo", "teams/solo", 2) == 2
        reader.close()
        at_a.publish("teams/solo", cube.id)
        after = Reader(at_b.subscribe("teams/solo", durable_name="solo"))  # A's stream ended: B opens it
        assert [e.seq for e in after.events(2, "B never got the cursor back")][:2] == [3, 4]
        after.close()


def test_a_claim_left_by_a_daemon_that_went_away_runs_out(tmp_path, postgres_url):
    with members(tmp_path, postgres_url, 1) as (a,), MemosClient(a.address, key=a.admin_key) as client:
        cube = client.put("x", "agents/admin/jobs")
        client.publish("teams/orphan", cube.id)
        with psycopg.connect(postgres_url, autocommit=True) as conn:  # a member killed while its stream was open
            conn.execute("INSERT INTO leases (name, holder, until) VALUES (%s, %s, %s)",
                         (lease_name("admin", "orphan"), "gone-1234:99:ab", time.time() + 3))
        refused = _refusal(client, "teams/orphan", "orphan")
        assert refused is not None and refused.code() is grpc.StatusCode.UNAVAILABLE
        reader = Reader(client.subscribe("teams/orphan", durable_name="orphan"))  # retried until it runs out
        assert [e.seq for e in reader.events(1, "the claim of a daemon that went away never ran out")] == [1]
        reader.close()
