"""MemStore under faults: kill -9 while publishing, resubscription by the client, restarts."""

import os
import signal
import threading
import time

import pytest

from memos_client import MemosClient, MemosError
from memos_client.models import Event
from tests.daemon import spawn_daemon
from tests.store_checks import check_history
from tests.timing import wait_for
from tests.store_checks import delivery_path, parametrize_paths as pytest_generate_tests, publish_path  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.vaults]  # once per vault engine (SQLite, PostgreSQL)
TOTAL = 300


def test_kill_9_while_publishing(config):
    key = config.data_dir / "admin.key"
    proc = spawn_daemon(config)
    with MemosClient(config.listen, key=key) as c:
        cube_id = c.put("payload", "agents/admin/n").id
    plain, durable, acked, redelivered_after_ack = [], [], [], []
    stop = threading.Event()

    def plain_reader():
        with MemosClient(config.listen, key=key) as c:
            sub = c.subscribe("teams/crash", heartbeat_seconds=1, heartbeats=True, resume_for=60)
            for item in sub:
                plain.append(item)
                if isinstance(item, Event) and item.seq == TOTAL or stop.is_set():
                    break

    def durable_reader():
        with MemosClient(config.listen, key=key) as c:
            sub = c.subscribe("teams/crash", durable_name="tally", ack_timeout_seconds=2, resume_for=60)
            confirmed = 0
            for event in sub:
                durable.append(event.seq)
                if event.seq <= confirmed:
                    redelivered_after_ack.append(event.seq)  # an acknowledged event came again: a violation
                try:
                    confirmed = sub.ack(event)
                    acked.append(confirmed)
                except MemosError:
                    pass  # the daemon died around the ack: if it was not recorded, the event comes again
                if event.seq == TOTAL or stop.is_set():
                    break

    readers = [threading.Thread(target=plain_reader), threading.Thread(target=durable_reader)]
    for r in readers:
        r.start()
    published, errors = [], []
    with MemosClient(config.listen, key=key, timeout=5) as c:

        def attempt(i):
            try:
                return c.publish("teams/crash", cube_id, publish_id=f"event-{i}")
            except MemosError as exc:
                errors.append((i, repr(exc)))
                return None  # retried with the same publish_id: published at most once

        for i in range(TOTAL):
            if i == TOTAL // 2:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                proc = None
                time.sleep(0.5)  # not a wait: an outage, during which the readers retry against a dead socket
                proc = spawn_daemon(config)
            seq, _ = wait_for(lambda i=i: attempt(i), f"publish {i} never succeeded", timeout=60)
            published.append(seq)
    try:
        for r in readers:
            r.join(90)
        stop.set()
        assert not any(r.is_alive() for r in readers)
        assert published == list(range(1, TOTAL + 1)), errors
        # Plain subscriber: ordered, no gaps, no duplicates, across the crash and its own resubscription.
        last = check_history(plain)
        assert last == {"teams/crash": TOTAL}
        # Durable cursor: each event delivered at least once, never again once its ack was confirmed, and
        # the acknowledged position only moves forward, to the end.
        assert set(durable) == set(range(1, TOTAL + 1))
        assert redelivered_after_ack == []
        assert acked == sorted(set(acked)) and acked[-1] == TOTAL
    finally:
        proc.terminate()
        proc.wait(20)


def test_subscriber_that_disconnects_resumes_where_it_left(config):
    proc = spawn_daemon(config)
    key = config.data_dir / "admin.key"
    try:
        with MemosClient(config.listen, key=key) as c:
            cube_id = c.put("x", "agents/admin/n").id
            for _ in range(10):
                c.publish("teams/r", cube_id)
            first = []
            sub = c.subscribe("teams/r")
            for event in sub:
                first.append(event)
                if len(first) == 4:
                    break
            sub.close()
            for _ in range(5):
                c.publish("teams/r", cube_id)
            rest = []
            sub = c.subscribe("teams/r", after_seq=first[-1].seq)
            for event in sub:
                rest.append(event)
                if event.seq == 15:
                    break
            sub.close()
            assert check_history(first + rest) == {"teams/r": 15}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_ends_subscriptions_at_once_and_the_client_resumes_after_restart(config):
    key = config.data_dir / "admin.key"
    proc = spawn_daemon(config)
    seen: list = []
    with MemosClient(config.listen, key=key) as c:
        cube_id = c.put("x", "agents/admin/n").id
        c.publish("teams/t", cube_id)

        def read():
            with MemosClient(config.listen, key=key) as r:
                for event in r.subscribe("teams/t", resume_for=60):
                    seen.append(event.seq)
                    if event.seq == 2:
                        return

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: seen, "the reader never got the first event")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - started < 5, "shutdown waited for the open subscription"
    proc = spawn_daemon(config)
    try:
        with MemosClient(config.listen, key=key) as c:
            c.publish("teams/t", cube_id)
        reader.join(30)
        assert seen == [1, 2]
    finally:
        proc.terminate()
        proc.wait(20)
