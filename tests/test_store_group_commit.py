"""Group commit of unary publishes: concurrent ones commit together, each keeping its own outcome, nothing acknowledged lost."""

import asyncio
import os
import signal
import threading
from dataclasses import replace

import pytest

from memos_client import MemosClient, Unavailable
from memosd.errors import Hidden, NotFound
from memosd.governance import Principal
from tests.daemon import running, spawn_daemon
from tests.store_checks import check_history, collect
from tests.test_metrics import scrape, value
from tests.timing import wait_for

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)
THREADS, EACH = 8, 25


@pytest.fixture
def metered(config):
    with running(replace(config, metrics_listen="127.0.0.1:0")) as daemon:
        yield daemon


def _transactions(daemon) -> tuple[float, float]:
    """(transactions, publishes) of unary publishes so far, as Prometheus sees them."""
    _, _, text = scrape(daemon.server.metrics_endpoint.address)
    return value(text, "memosd_publish_transactions_total"), value(text, "memosd_publish_transaction_publishes_total")


def test_concurrent_unary_publishes_are_acknowledged_gap_free_readable_in_order_and_committed_together(metered):
    with MemosClient(metered.address, key=metered.admin_key, timeout=30) as client:
        cubes = client.put_many([{"text": f"event {i}", "namespace": "agents/admin/n"} for i in range(THREADS * EACH)])
    acked: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def publisher(t: int) -> None:
        try:
            with MemosClient(metered.address, key=metered.admin_key, timeout=30) as c:
                start.wait(30)
                for cube in cubes[t * EACH:(t + 1) * EACH]:
                    seq, duplicate = c.publish("teams/group", cube)
                    assert not duplicate
                    acked[seq] = cube
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(acked) == list(range(1, THREADS * EACH + 1))  # every publish acknowledged, seqs gap-free
    with MemosClient(metered.address, key=metered.admin_key, timeout=30) as client:
        events = collect(client.subscribe("teams/group"), THREADS * EACH)
        assert check_history(events) == {"teams/group": THREADS * EACH}
        assert {e.seq: e.cube_id for e in events} == acked
        [topic] = client.topics("teams/group")
        assert topic.last_seq == THREADS * EACH
    transactions, publishes = _transactions(metered)
    assert publishes == THREADS * EACH
    # Eight callers each waiting for its last acknowledgement: while one transaction commits, others arrive.
    assert 1 <= transactions < publishes


def test_each_publish_in_a_group_keeps_its_own_outcome(metered, tmp_path):
    with MemosClient(metered.address, key=metered.admin_key, timeout=30) as client:
        client.add_agent("alice", out=str(tmp_path / "alice.key"))
        client.grant("agent:alice", ["publish"], ["teams/g"])
        a, b, c, d, e, lone = client.put_many([{"text": f"cube {i}", "namespace": "agents/admin/n"} for i in range(6)])
    store = metered.server.store
    admin, alice = Principal("admin", admin=True), Principal("alice")
    missing = "0" * 26  # a well-formed id no cube has

    async def publish(p, cube, publish_id="", retract=False):
        try:
            return await store.publish(p, "teams/g", cube, publish_id, retract)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return exc

    async def group():
        # Started together, before the commit they join has begun: one transaction, refusals in its middle.
        return await asyncio.gather(
            publish(admin, a), publish(admin, missing), publish(admin, b, "once"), publish(alice, c),
            publish(admin, d, "once"), publish(admin, e, retract=True), publish(admin, c, "once"), publish(admin, e))

    assert metered.call(publish(admin, lone)) == (1, False)
    assert _transactions(metered) == (1, 1)  # a lone publish commits alone
    outcomes = metered.call(group())
    assert outcomes[0] == (2, False)
    assert isinstance(outcomes[1], NotFound)
    assert outcomes[2] == (3, False)
    assert isinstance(outcomes[3], Hidden)  # alice may publish to the topic, not share the admin's cube
    assert outcomes[4] == outcomes[6] == (3, True)  # the publish id repeated in its group: the same event
    assert isinstance(outcomes[5], NotFound)  # e is not on the topic yet
    assert outcomes[7] == (4, False)
    transactions, publishes = _transactions(metered)
    assert (transactions, publishes) == (2, 9)  # the lone one, then the eight together
    with MemosClient(metered.address, key=metered.admin_key, timeout=30) as client:
        events = collect(client.subscribe("teams/g"), 4)
        assert check_history(events) == {"teams/g": 4}
        assert [ev.cube_id for ev in events] == [lone, a, b, e]
        assert client.publish("teams/g", d, publish_id="once") == (3, True)  # and across groups
        entries = [x for x in client.audit() if x.action == "store.publish" and x.target == "teams/g"]
        assert len(entries) == 4  # one audit entry per event, none for refusals or duplicates


@pytest.mark.slow
def test_kill_9_after_concurrent_acknowledgements_loses_nothing(config):
    key = config.data_dir / "admin.key"
    proc = spawn_daemon(config)
    try:
        with MemosClient(config.listen, key=key, timeout=10) as c:
            cubes = c.put_many([{"text": f"event {i}", "namespace": "agents/admin/n"} for i in range(THREADS * 100)])
        acked: dict[str, int] = {}  # publish id -> seq

        def publisher(t: int) -> None:
            with MemosClient(config.listen, key=key, timeout=10) as c:
                try:
                    for i in range(100):
                        seq, _ = c.publish("teams/cut", cubes[t * 100 + i], publish_id=f"p-{t}-{i}")
                        acked[f"p-{t}-{i}"] = seq
                except Unavailable:
                    pass  # the daemon died under us: expected

        threads = [threading.Thread(target=publisher, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(acked) >= 150, "too few acknowledgements came back")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for thread in threads:
            thread.join(60)
        assert 150 <= len(acked) < THREADS * 100
        proc = spawn_daemon(config)
        with MemosClient(config.listen, key=key, timeout=30) as c:
            [topic] = c.topics("teams/cut")
            events = collect(c.subscribe("teams/cut"), topic.last_seq)
            assert check_history(events) == {"teams/cut": topic.last_seq}  # gap-free from 1
            by_seq = {e.seq: e.cube_id for e in events}
            for publish_id, seq in acked.items():
                t, i = map(int, publish_id.split("-")[1:])
                assert by_seq[seq] == cubes[t * 100 + i], f"acknowledged {publish_id} was not kept as seq {seq}"
                assert c.publish("teams/cut", cubes[t * 100 + i], publish_id=publish_id) == (seq, True)
    finally:
        proc.terminate()
        proc.wait(20)
