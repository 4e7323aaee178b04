"""Clients given two members of a cluster (one PostgreSQL vault) go on at the second when the first goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from pathlib import Path

import psycopg
import pytest

from memos_client import AsyncMemosClient, MemosClient, OutcomeUnknown, Unavailable
from memos_client.cli.app import main
from memos_client.models import Event, Heartbeat
from tests.cluster import member_configs, share_admin_key
from tests.daemon import RunningDaemon, running, spawn_daemon
from tests.relay import CuttingRelay
from tests.store_checks import check_history
from tests.timing import wait_for

TOPIC = "agents/admin/feed"


@contextlib.contextmanager
def two_members(tmp_path, postgres_url):
    """(first, second): two members in this process; the test may stop the first."""
    configs = member_configs(tmp_path, postgres_url, 2)
    first = RunningDaemon(configs[0])
    try:
        share_admin_key(configs[0], configs[1])
        with running(configs[1]) as second:
            yield first, second
    finally:
        if not first.loop.is_closed():
            first.stop()


@contextlib.contextmanager
def killable_first(tmp_path, postgres_url):
    """(the first member as a child process, its config, the second member in this process)."""
    configs = member_configs(tmp_path, postgres_url, 2)
    proc = spawn_daemon(configs[0])
    try:
        share_admin_key(configs[0], configs[1])
        with running(configs[1]) as second:
            yield proc, configs[0], second
    finally:
        proc.kill()
        proc.communicate()


@contextlib.contextmanager
def behind_relay(tmp_path, postgres_url, *, then_first: bool = False):
    """(relay in front of the first member, the member a retry goes to, a client given [relay, that member]):
    the second member, or with then_first the first itself, reached directly."""
    with two_members(tmp_path, postgres_url) as (first, second):
        relay = CuttingRelay(first.address, Path(first.config.listen.removeprefix("unix:") + ".relay"))
        following = first if then_first else second
        try:
            with MemosClient([relay.address, following.address], key=second.admin_key) as client:
                client.whoami()  # the epoch look-up is done before a test arms the relay
                yield relay, following, client
        finally:
            relay.close()


def kill(proc) -> None:
    proc.kill()
    proc.wait(10)


def noticed_gone(client) -> None:
    """Wait until the client's channel to its daemon has seen the connection drop: until then a call may go out
    on the dead connection, and the client cannot tell it from one the daemon received (OutcomeUnknown)."""
    import grpc

    states: list = []
    channel = client._members.current.connect()
    channel.subscribe(states.append, try_to_connect=False)
    try:
        wait_for(lambda: states and states[-1] is not grpc.ChannelConnectivity.READY,
                 "the client never saw its daemon go", 30)
    finally:
        channel.unsubscribe(states.append)


# ---- reads, and one token for the whole cluster ------------------------------------------------------------


def test_reads_go_on_at_the_second_daemon_when_the_first_is_killed(tmp_path, postgres_url):
    with killable_first(tmp_path, postgres_url) as (proc, config, second), \
            MemosClient([config.listen, second.address], key=second.admin_key) as client:
        cube = client.put("the first daemon stored this note", "agents/admin/notes", tags=["cluster"])
        _, cluster_id, _ = client.whoami()
        token = client.tokens.token()
        assert client.target == config.listen
        kill(proc)
        noticed_gone(client)
        # A write no daemon received (the first's socket refuses connections) goes to the second as well.
        later = client.put("stored at the second", "agents/admin/notes")
        assert client.target == second.address  # and it stays there
        assert client.get(cube.id).text == "the first daemon stored this note"
        assert [c.id for c in client.list("agents/admin/notes")] == [cube.id, later.id]
        assert [h.cube.id for h in client.search("first daemon note")] == [cube.id]
        assert [v.version for v in client.history(cube.id)] == [1]
        assert client.status().version
        assert client.whoami()[1] == cluster_id
        assert client.tokens.token() == token  # the token minted at the first is the one the second accepted


def test_the_async_client_fails_over_the_same_way(tmp_path, postgres_url):
    with two_members(tmp_path, postgres_url) as (first, second):
        async def scenario():
            async with AsyncMemosClient(f"{first.address},{second.address}", key=second.admin_key) as client:
                cube = await client.put("stored before the first member stopped", "agents/admin/notes")
                first.stop()
                assert (await client.get(cube.id)).id == cube.id
                assert client.target == second.address
                assert [c.id async for c in client.list("agents/admin/notes")] == [cube.id]
                assert await client.publish(TOPIC, cube.id, publish_id="async-1") == (1, False)

        asyncio.run(scenario())


def test_a_stale_token_at_the_next_daemon_is_renewed_there(tmp_path, postgres_url):
    with two_members(tmp_path, postgres_url) as (first, second), \
            MemosClient([first.address, second.address], key=second.admin_key) as client, \
            MemosClient(second.address, key=second.admin_key) as at_second:
        cube = client.put("note", "agents/admin/notes")
        epoch = client.whoami()[2]
        # A revocation at the second moves its policy epoch on; this client's tokens carry the older one.
        at_second.revoke_policy(at_second.grant("agent:admin", ["read"], ["teams/x"]))
        first.stop()
        assert client.get(cube.id).id == cube.id
        assert client.tokens.epoch > epoch


def test_when_every_daemon_is_down_the_error_names_each(daemon, tmp_path):
    dead = [f"unix:{tmp_path}/first.sock", f"unix:{tmp_path}/second.sock"]
    with MemosClient(dead, key=daemon.admin_key, timeout=5) as client:
        with pytest.raises(Unavailable, match="none of the 2 daemons answered") as caught:
            client.status()
    assert all(f"{address.removeprefix('unix:')} does not exist" in caught.value.message for address in dead)


# ---- writes cut mid-call ---------------------------------------------------------------------------------


def test_a_publish_with_an_id_whose_answer_was_lost_is_retried_at_the_next_daemon_once(tmp_path, postgres_url):
    with behind_relay(tmp_path, postgres_url) as (relay, second, client):
        cube = client.put("published once", "agents/admin/notes")
        assert client.publish(TOPIC, cube.id, publish_id="first") == (1, False)
        relay.cut_on_answer()
        # The first member records the event, then its answer is lost; the second finds the publish_id.
        assert client.publish(TOPIC, cube.id, publish_id="second") == (2, True)
        assert relay.cut.is_set() and client.target == second.address
        events = collect_events(client.subscribe(TOPIC), 2)
        assert [(e.seq, e.cube_id) for e in events] == [(1, cube.id), (2, cube.id)]
        assert [t.last_seq for t in client.topics(TOPIC)] == [2]


def test_a_put_whose_answer_was_lost_is_reported_and_not_replayed(tmp_path, postgres_url):
    with behind_relay(tmp_path, postgres_url) as (relay, second, client):
        relay.cut_on_answer()
        with pytest.raises(OutcomeUnknown, match="Put was under way and may or may not have been carried out"):
            client.put("stored by the first member, its answer lost", "agents/admin/notes")
        assert relay.cut.is_set()
        # The first member stored it; the client did not store it a second time at the second.
        assert [c.text for c in client.list("agents/admin/notes")] == ["stored by the first member, its answer lost"]
        assert client.target == second.address


def test_a_put_in_flight_when_its_daemon_is_killed_is_reported_and_not_replayed(tmp_path, postgres_url):
    with killable_first(tmp_path, postgres_url) as (proc, config, second), \
            MemosClient([config.listen, second.address], key=second.admin_key) as client:
        client.whoami()
        outcome: list[BaseException] = []
        with psycopg.connect(postgres_url) as lock:
            lock.execute("LOCK TABLE cubes IN ACCESS EXCLUSIVE MODE")  # the Put waits on it, in flight
            writer = threading.Thread(target=lambda: _keep_error(outcome, client.put, "in flight", "agents/admin/notes"))
            writer.start()
            _wait_for_a_waiting_statement(lock)
            kill(proc)
            writer.join(30)
        assert not writer.is_alive()
        [error] = outcome
        assert isinstance(error, OutcomeUnknown) and "may or may not" in error.message
        assert list(client.list("agents/admin/notes")) == []  # not replayed at the second (the first's rolled back)


def test_a_delete_whose_answer_was_lost_is_retried_and_returns_the_tombstone(tmp_path, postgres_url):
    with behind_relay(tmp_path, postgres_url) as (relay, second, client):
        cube = client.put("to delete", "agents/admin/notes")
        relay.cut_on_answer()
        assert client.delete(cube.id) == 2  # the first member's tombstone, found by the retry at the second
        assert relay.cut.is_set() and client.target == second.address
        assert [v.version for v in client.history(cube.id)] == [1, 2]


def test_a_grant_whose_answer_was_lost_is_retried_and_returns_its_policy(tmp_path, postgres_url):
    # The retry reaches the member that stored it (by its own socket): the second does not learn of policies
    # stored at the first until governance is shared across members.
    with behind_relay(tmp_path, postgres_url, then_first=True) as (relay, first, client):
        relay.cut_on_answer()
        policy_id = client.grant("group:research", ["read"], ["teams/research/**"])
        assert relay.cut.is_set() and client.target == first.address
        assert [p.id for p in client.list_policies("group:research")] == [policy_id]


def _keep_error(out: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        out.append(exc)


def _wait_for_a_waiting_statement(conn, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND wait_event_type = 'Lock'").fetchone()[0]:
        assert time.monotonic() < deadline, "the Put never reached the database"
        conn.execute("SELECT pg_sleep(0.05)")


# ---- subscriptions ------------------------------------------------------------------------------------------


class Reader:
    """Iterates a subscription on a thread, keeping what arrives."""

    def __init__(self, sub):
        self.sub, self.items = sub, []
        self._more = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for item in self.sub:
                with self._more:
                    self.items.append(item)
                    self._more.notify_all()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            with self._more:
                self.items.append(exc)
                self._more.notify_all()

    def events(self) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event)]

    def wait_events(self, n: int, timeout: float = 30) -> list[Event]:
        with self._more:
            arrived = self._more.wait_for(lambda: len(self.events()) >= n or any(
                isinstance(i, Exception) for i in self.items), timeout)
        errors = [i for i in self.items if isinstance(i, Exception)]
        assert not errors, errors
        assert arrived, f"only {len(self.events())} of {n} events arrived"
        return self.events()


def collect_events(sub, n: int) -> list[Event]:
    try:
        return Reader(sub).wait_events(n)
    finally:
        sub.close()


@pytest.mark.parametrize("pattern", [False, True], ids=["topic", "pattern"])
def test_a_subscriber_moved_to_the_second_daemon_sees_every_event_once_in_order(tmp_path, postgres_url, pattern):
    topics = ["teams/cluster/a", "teams/cluster/b"] if pattern else ["teams/cluster/a"]
    with two_members(tmp_path, postgres_url) as (first, second), \
            MemosClient([first.address, second.address], key=second.admin_key) as client, \
            MemosClient(second.address, key=second.admin_key) as at_second:
        cube = client.put("news", "agents/admin/notes")
        for i in range(6):
            client.publish(topics[i % len(topics)], cube.id)
        sub = client.subscribe("teams/cluster/**" if pattern else topics[0], heartbeat_seconds=1, heartbeats=True)
        reader = Reader(sub)
        try:
            reader.wait_events(6)
            first.stop()  # the stream breaks; the subscription resumes at the second from what it saw
            for i in range(6):
                at_second.publish(topics[i % len(topics)], cube.id)
            events = reader.wait_events(12)
        finally:
            sub.close()
        last = check_history(reader.items)  # ordered, unique and gap-free per topic, across the move
        assert len(events) == 12 and last == {t: 12 // len(topics) for t in topics}
        assert client.target == second.address


def test_a_subscriber_whose_daemon_is_killed_goes_on_at_the_second(tmp_path, postgres_url):
    with killable_first(tmp_path, postgres_url) as (proc, config, second), \
            MemosClient([config.listen, second.address], key=second.admin_key) as client, \
            MemosClient(second.address, key=second.admin_key) as at_second:
        cube = client.put("news", "agents/admin/notes")
        for _ in range(4):
            client.publish(TOPIC, cube.id)
        sub = client.subscribe(TOPIC)
        reader = Reader(sub)
        try:
            reader.wait_events(4)
            kill(proc)
            for _ in range(4):
                at_second.publish(TOPIC, cube.id)
            reader.wait_events(8)
        finally:
            sub.close()
        assert check_history(reader.items) == {TOPIC: 8}


def test_a_durable_subscription_resumes_at_the_second_daemon_from_its_cursor(tmp_path, postgres_url):
    with two_members(tmp_path, postgres_url) as (first, second), \
            MemosClient([first.address, second.address], key=second.admin_key) as client:
        cube = client.put("news", "agents/admin/notes")
        for _ in range(5):
            client.publish(TOPIC, cube.id)
        sub = client.subscribe(TOPIC, durable_name="mover", ack_timeout_seconds=600)
        reader = Reader(sub)
        try:
            events = reader.wait_events(5)
            assert sub.ack(events[2]) == 3  # acknowledged up to 3 at the first member
            first.stop()
            client.publish(TOPIC, cube.id)  # at the second, where the subscription resumes
            events = reader.wait_events(8)
        finally:
            sub.close()
        # At least once, never back past the acknowledged 3: 1-5 at the first, then 4, 5 and 6 at the second.
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 4, 5, 6]
        assert sub.ack(events[-1]) == 6


def test_a_live_only_subscription_moved_after_a_heartbeat_misses_nothing_published_meanwhile(tmp_path, postgres_url):
    with two_members(tmp_path, postgres_url) as (first, second), \
            MemosClient([first.address, second.address], key=second.admin_key) as client, \
            MemosClient(second.address, key=second.admin_key) as at_second:
        cube = client.put("news", "agents/admin/notes")
        client.publish(TOPIC, cube.id)  # before the subscription: not for it
        items = iter(client.subscribe(TOPIC, live_only=True, heartbeat_seconds=1, heartbeats=True))
        assert next(items) == Heartbeat({TOPIC: 1})  # the live end it started at
        first.stop()
        at_second.publish(TOPIC, cube.id)  # while the subscription is down: it reads on only when asked
        at_second.publish(TOPIC, cube.id)
        following = [item for _, item in zip(range(8), items) if isinstance(item, Event)][:2]
        items.close()
        assert [e.seq for e in following] == [2, 3]


# ---- streams that no daemon received ---------------------------------------------------------------------


def test_streams_refused_at_a_dead_first_address_go_to_the_next(daemon, tmp_path):
    dead = f"unix:{tmp_path}/dead.sock"
    for make in (lambda c: c.put_many([{"text": "one", "namespace": "agents/admin/bulk"}]),
                 lambda c: list(c.publish_stream([(TOPIC, c.put("x", "agents/admin/bulk").id, "stream-1")])),
                 lambda c: c.backup(tmp_path / "backup")):
        with MemosClient([dead, daemon.address], key=daemon.admin_key) as client:
            assert make(client)
            assert client.target == daemon.address
    assert (tmp_path / "backup" / "manifest.json").is_file()


# ---- memosctl ------------------------------------------------------------------------------------------------


def test_memosctl_status_answers_from_the_second_address_when_the_first_is_dead(daemon, tmp_path, capsys,
                                                                               monkeypatch):
    dead = f"unix:{tmp_path}/dead.sock"
    assert main(["--addr", f"{dead},{daemon.address}", "--key", str(daemon.admin_key), "--json", "status"]) == 0
    assert json.loads(capsys.readouterr().out)["listen"] == daemon.address
    monkeypatch.setenv("MEMOS_ADDR", f"{dead}, {daemon.address}")
    assert main(["--key", str(daemon.admin_key), "status"]) == 0
    assert re.search(rf"^listen +{re.escape(daemon.address)}$", capsys.readouterr().out, re.M)
