"""kill -9 of the daemon during a mixed stream of writes (cubes put, updated and deleted; events published; KV
blobs pushed, retagged and deleted), on SQLite with files and on PostgreSQL with S3: after a restart every
acknowledged write is there, exact, and nothing unacknowledged is half-visible."""

import os
import signal
import sqlite3
import threading
from dataclasses import dataclass, field

import pytest

from memos_client import MemosClient, NotFound
from memos_client.models import State
from tests.daemon import make_config, spawn_daemon
from tests.kv_helpers import kv_payload, manifest_for
from tests.s3_server import blob_settings

pytestmark = pytest.mark.slow
TOPIC = "teams/crash/mixed"
ENOUGH = 15  # acknowledged operations each writer must have before the kill
KV_SHAPE = {"num_layers": 2, "heads": 4, "head_dim": 32}  # 16 tokens: a 64 KiB payload, 4 tokens: 16 KiB


@pytest.fixture(params=["sqlite-file", "postgresql-s3"])
def mixed_config(request, tmp_path):
    if request.param == "sqlite-file":
        return make_config(tmp_path)
    return make_config(tmp_path, vault_url=request.getfixturevalue("postgres_url"), **blob_settings("s3", request))


@dataclass
class Ledger:
    """What one writer was told: acknowledged outcomes, and the one operation whose answer never came."""

    cubes: dict = field(default_factory=dict)  # id -> text of the last acknowledged version, None once deleted
    kv: dict = field(default_factory=dict)  # id -> payload bytes, None once deleted
    events: dict = field(default_factory=dict)  # seq -> cube id
    in_flight: tuple | None = None
    count: int = 0


def _cube_writer(c, ledger, stop, ready, w):
    for i in range(10**6):
        if stop.is_set():
            return
        ids = [k for k, v in ledger.cubes.items() if v is not None]
        if i % 5 == 3 and ids:
            target = ids[i % len(ids)]
            ledger.in_flight = ("delete", target)
            c.delete(target)
            ledger.cubes[target] = None
        elif i % 5 in (1, 4) and ids:
            target, text = ids[-1], f"writer {w} update {i} " + "u" * 100
            ledger.in_flight = ("update", target, text)
            c.update(target, text=text)
            ledger.cubes[target] = text
        else:
            text = f"writer {w} cube {i} " + "x" * 200
            ledger.in_flight = ("put", text)
            ledger.cubes[c.put(text, "agents/admin/mixed", tags=[f"w{w}"]).id] = text
        ledger.in_flight = None
        ledger.count += 1
        if ledger.count == ENOUGH:
            ready.release()


def _publisher(c, ledger, stop, ready, w):
    cube_id = c.put(f"published by {w}", "agents/admin/pub").id
    for i in range(10**6):
        if stop.is_set():
            return
        ledger.in_flight = ("publish", f"{w}-{i}")
        seq, duplicate = c.publish(TOPIC, cube_id, publish_id=f"{w}-{i}")
        assert not duplicate
        ledger.events[seq] = cube_id
        ledger.in_flight = None
        ledger.count += 1
        if ledger.count == ENOUGH:
            ready.release()


def _kv_writer(c, ledger, stop, ready, w):
    for i in range(10**6):
        if stop.is_set():
            return
        ids = [k for k, v in ledger.kv.items() if v is not None]
        if i % 4 == 3 and ids:
            ledger.in_flight = ("delete", ids[0])
            c.delete(ids[0])
            ledger.kv[ids[0]] = None
        elif i % 4 == 2 and ids:
            ledger.in_flight = ("retag", ids[-1])
            c.update(ids[-1], tags=["retagged"])
        else:
            tokens = list(range(i, i + 4 + 12 * (i % 2)))
            payload, specs = kv_payload(tokens=len(tokens), seed=None, **KV_SHAPE)  # random bytes: each unique
            ledger.in_flight = ("push", payload)
            c.upload_blob(payload, "agents/admin/kv")
            cube = c.put_activation(manifest_for(payload, specs, tokens), "agents/admin/kv")
            ledger.kv[cube.id] = payload
        ledger.in_flight = None
        ledger.count += 1
        if ledger.count == ENOUGH:
            ready.release()


WRITERS = [_cube_writer, _cube_writer, _publisher, _publisher, _kv_writer, _kv_writer]


def test_kill_9_during_a_mixed_write_stream_loses_nothing_acknowledged(mixed_config):
    config = mixed_config
    proc = spawn_daemon(config)
    key = config.data_dir / "admin.key"
    ledgers = [Ledger() for _ in WRITERS]
    stop, ready, failures = threading.Event(), threading.Semaphore(0), []

    def run(i, writer):
        try:
            with MemosClient(config.listen, key=key, timeout=10) as c:
                writer(c, ledgers[i], stop, ready, i)
        except Exception as exc:  # noqa: BLE001 (the daemon died under it: expected once it is killed)
            if not stop.is_set():
                failures.append(repr(exc))
                ready.release()  # a writer that failed before the kill must not leave the test waiting

    threads = [threading.Thread(target=run, args=(i, w), daemon=True) for i, w in enumerate(WRITERS)]
    for t in threads:
        t.start()
    for _ in WRITERS:
        assert ready.acquire(timeout=120), "the writers did not get going"
    assert not failures, failures
    stop.set()
    os.kill(proc.pid, signal.SIGKILL)  # mid-operation: each writer is in a loop with no pause
    proc.wait(10)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)

    if config.vault_url == "sqlite:":
        conn = sqlite3.connect(config.data_dir / "memos.db")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()

    proc = spawn_daemon(config)
    try:
        with MemosClient(config.listen, key=key, timeout=60) as c:
            _check_cubes(c, ledgers)
            _check_events(c, ledgers)
            _check_blobs(c, ledgers)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def _check_cubes(c, ledgers):
    for ledger in ledgers[:2]:
        flying = ledger.in_flight or ()
        for cube_id, text in ledger.cubes.items():
            if text is None:
                with pytest.raises(NotFound):
                    c.get(cube_id)
                continue
            if flying[:2] == ("delete", cube_id):
                try:
                    got = c.get(cube_id).text
                except NotFound:
                    continue
            else:
                got = c.get(cube_id).text
            assert got == text or flying == ("update", cube_id, got), (cube_id, got, text, flying)
    # Nothing but what was acknowledged (and at most each writer's one unanswered put) is stored.
    stored = {x.id: x.text for x in c.list("agents/admin/mixed", page_size=1000)}
    acked = {k for ledger in ledgers[:2] for k, v in ledger.cubes.items() if v is not None}
    extra = set(stored) - acked
    unanswered = {ledger.in_flight[1] for ledger in ledgers[:2] if ledger.in_flight and ledger.in_flight[0] == "put"}
    assert {stored[i] for i in extra} <= unanswered


def _check_events(c, ledgers):
    acked = {seq: cube for ledger in ledgers[2:4] for seq, cube in ledger.events.items()}
    (topic,) = c.topics(TOPIC)
    assert topic.last_seq >= max(acked) and topic.last_seq - len(acked) <= 2  # each publisher's one unanswered
    seen = {}
    with c.subscribe(TOPIC) as events:
        for event in events:
            seen[event.seq] = event.cube_id
            if event.seq == topic.last_seq:
                break
    assert list(seen) == list(range(1, topic.last_seq + 1))  # in order, no gaps
    for seq, cube_id in acked.items():
        assert seen[seq] == cube_id


def _check_blobs(c, ledgers):
    for ledger in ledgers[4:]:
        flying = ledger.in_flight or ()
        for cube_id, payload in ledger.kv.items():
            if payload is None:
                with pytest.raises(NotFound):
                    c.get(cube_id)
            elif flying[:2] == ("delete", cube_id):
                continue
            else:
                assert bytes(c.download_blob(cube_id)) == payload
    # No cube points at a missing or wrong blob: every stored activation cube's payload reads back whole.
    pushed = {p for ledger in ledgers[4:] for p in ledger.kv.values() if p is not None}
    pushed |= {ledger.in_flight[1] for ledger in ledgers[4:] if ledger.in_flight and ledger.in_flight[0] == "push"}
    stored = list(c.list("agents/admin/kv", page_size=1000, states=[State.ACTIVE]))
    assert len(stored) >= sum(1 for ledger in ledgers[4:] for p in ledger.kv.values() if p is not None)
    for cube in stored:
        assert bytes(c.download_blob(cube.id)) in pushed
