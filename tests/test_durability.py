"""kill -9 during a stream of writes: every acknowledged cube survives and the database is intact."""

import os
import signal
import sqlite3
import threading

import grpc
import pytest

from memos_client import MemosClient
from memos_mip.v1 import cube_pb2, vault_pb2, vault_pb2_grpc
from tests.daemon import admin_channel, spawn_daemon

pytestmark = [pytest.mark.slow, pytest.mark.vaults]  # once per vault engine (SQLite, PostgreSQL)


def test_kill_9_during_writes_loses_nothing_acknowledged(config):
    proc = spawn_daemon(config)
    acked: list[str] = []
    enough = threading.Event()

    def writer():
        def batches():
            for b in range(100000):
                yield vault_pb2.PutBatchRequest(cubes=[
                    cube_pb2.CubeDraft(namespace="agents/a/n", text=f"batch {b} cube {i} " + "x" * 200)
                    for i in range(100)])

        with admin_channel(config.listen, config.data_dir) as channel:
            try:
                for ack in vault_pb2_grpc.VaultServiceStub(channel).PutStream(batches(), timeout=60):
                    acked.extend(ack.ids)
                    if len(acked) >= 3000:
                        enough.set()
            except grpc.RpcError:
                pass  # the daemon died under us: expected
        enough.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert enough.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    thread.join(30)
    assert len(acked) >= 3000

    if config.vault_url == "sqlite:":  # the embedded file, which the killed process had open
        conn = sqlite3.connect(config.data_dir / "memos.db")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()

    proc = spawn_daemon(config)
    try:
        with MemosClient(config.listen, key=config.data_dir / "admin.key") as client:
            stored = {c.id for c in client.list(page_size=1000)}
            assert set(acked) <= stored
            assert len(stored) % 100 == 0  # whole batches only
            assert client.get(acked[-1]).text.startswith("batch ")
            assert client.search("batch cube", mode="bm25", limit=3)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_sigterm_drains_and_exits_cleanly(config):
    proc = spawn_daemon(config)
    with MemosClient(config.listen, key=config.data_dir / "admin.key") as client:
        client.put("before shutdown", "agents/a/n")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not os.path.exists(config.listen[len("unix:"):])
