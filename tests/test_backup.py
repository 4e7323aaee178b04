"""Online backup while writes continue, and restore: consistent, complete, verified."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import replace

import pytest

from memos_client import MemosClient
from memos_client import errors as client_errors
from memosd.cli import main as memosd_main
from memosd.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument
from memosd.storage.sqlite import backup
from memosd.storage.sqlite.db import register_functions
from tests.daemon import make_config, running
from tests.timing import wait_for


def _ids(data_dir) -> set[str]:
    conn = sqlite3.connect(data_dir / "memos.db")
    try:
        return {r[0] for r in conn.execute("SELECT id FROM cubes")}
    finally:
        conn.close()


def _add_blob_cube(data_dir, payload: bytes) -> str:
    """A tensor cube as the blob store keeps one: a manifest naming a content-addressed file."""
    digest = hashlib.sha256(payload).hexdigest()
    path = data_dir / "blobs" / digest[:2] / f"{digest}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    conn = sqlite3.connect(data_dir / "memos.db", isolation_level=None)
    register_functions(conn)  # the full-text triggers call it
    try:
        conn.execute(
            "INSERT INTO cubes (id, namespace, kind, state, version, parent_version, owner, visibility, created_at,"
            " updated_at, manifest) VALUES (?, 'agents/admin/kv', 2, 1, 1, 0, 'admin', 1, 0, 0, ?)",
            ("01JAAAAAAAAAAAAAAAAAAAAAAA", json.dumps({"blob": {"sha256": digest, "size": len(payload)}})))
    finally:
        conn.close()
    return digest


def test_backup_during_writes_restores_a_consistent_copy(tmp_path, config):
    before: list[str] = []
    written: list[str] = []
    latencies: list[float] = []
    with running(config) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key) as client:
            before = client.put_many({"text": f"before the backup {i} " + "x" * 400, "namespace": "agents/admin/b"}
                                      for i in range(3000))
            stop = threading.Event()

            def writer():
                with MemosClient(daemon.address, key=daemon.admin_key) as w:
                    i = 0
                    while not stop.is_set():
                        started = time.perf_counter()
                        written.append(w.put(f"during the backup {i}", "agents/admin/d").id)
                        latencies.append(time.perf_counter() - started)
                        i += 1

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                wait_for(lambda: len(written) >= 5, "the writer never got going")
                manifest = client.backup(tmp_path / "bk")
            finally:
                stop.set()
                thread.join(30)
        audit = [e.action for e in client_audit(daemon)]
        assert "daemon.backup" in audit

    assert (tmp_path / "bk" / "manifest.json").exists()
    assert {f["path"] for f in manifest["files"]} == {"memos.db", "admin.key", "audit.key"}
    restored = replace(make_config(tmp_path / "r"), data_dir=tmp_path / "restored")
    assert memosd_main(["restore", str(tmp_path / "bk"), "--data-dir", str(restored.data_dir)]) == 0
    ids = _ids(restored.data_dir)
    assert set(before) <= ids
    # One instant: the writes it holds are exactly the first k the writer made, for some k.
    k = len(ids & set(written))
    assert ids & set(written) == set(written[:k])
    assert max(latencies) < 2.0, f"a write waited {max(latencies):.3f} s during the backup"
    with running(restored) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key) as client:  # the same admin key still works
            assert client.verify_audit()[0]
            assert client.search("before the backup 2999", mode="bm25", limit=1)[0].cube.id == before[2999]


def client_audit(daemon):
    with MemosClient(daemon.address, key=daemon.admin_key) as client:
        return list(client.audit())


def test_snapshot_is_one_instant_while_writes_commit_between_its_steps(tmp_path, config):
    with running(config) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key) as client:
            client.put_many({"text": "padding " + "y" * 2000, "namespace": "agents/admin/p"} for _ in range(500))
            during = []

            def on_step(done, total):
                if done < total and len(during) < 3:  # a write between two steps commits, unblocked
                    during.append(client.put("written mid-backup", "agents/admin/m").id)

            snap = backup.take_snapshot(config.data_dir, pages_per_step=16, on_step=on_step)
            try:
                assert len(during) == 3 and snap.pages > 16 * 3
                copy = sqlite3.connect(snap.staging / "memos.db")
                assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                found = {r[0] for r in copy.execute("SELECT id FROM cubes")}
                copy.close()
                assert not found & set(during) and len(found) == 500
            finally:
                snap.close()
            assert not snap.staging.exists()


def test_backup_carries_the_blobs_the_snapshot_references(tmp_path, config):
    with running(config) as daemon:
        digest = _add_blob_cube(config.data_dir, b"tensor bytes " * 1000)
        orphan = config.data_dir / "blobs" / "ff" / ("f" * 64 + ".safetensors")
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"unreferenced")
        with MemosClient(daemon.address, key=daemon.admin_key) as client:
            manifest = client.backup(tmp_path / "bk")
    paths = {f["path"] for f in manifest["files"]}
    assert f"blobs/{digest[:2]}/{digest}.safetensors" in paths
    assert not any("ffff" in p for p in paths)
    target = tmp_path / "restored"
    backup.restore(tmp_path / "bk", target)
    assert (target / "blobs" / digest[:2] / f"{digest}.safetensors").read_bytes() == b"tensor bytes " * 1000


def test_only_the_admin_may_back_up(tmp_path, client, daemon):
    client.add_agent("mallory", out=str(tmp_path / "m.key"))
    with MemosClient(daemon.address, key=tmp_path / "m.key") as mallory:
        with pytest.raises(client_errors.PermissionDenied):
            mallory.backup(tmp_path / "bk")
    assert not (tmp_path / "bk" / "manifest.json").exists()


def test_backup_refuses_a_destination_that_holds_files(tmp_path, client):
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "x").write_text("mine")
    with pytest.raises(client_errors.AlreadyExists):
        client.backup(tmp_path / "bk")


@pytest.fixture
def made_backup(tmp_path, client):
    client.put("remember this", "agents/admin/n")
    client.backup(tmp_path / "bk")
    return tmp_path / "bk"


def test_restore_checks_every_digest(tmp_path, made_backup):
    with open(made_backup / "admin.key", "ab") as f:
        f.write(b" ")
    with pytest.raises(DataLoss, match="admin.key"):
        backup.restore(made_backup, tmp_path / "target")
    assert not (tmp_path / "target" / "memos.db").exists()


def test_restore_refuses_a_missing_file_a_newer_format_and_traversal(tmp_path, made_backup):
    manifest = json.loads((made_backup / "manifest.json").read_text())
    (made_backup / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(FailedPrecondition, match="newer memosd"):
        backup.restore(made_backup, tmp_path / "t1")
    evil = {**manifest, "files": manifest["files"] + [{"path": "../../etc/passwd", "size": 1, "sha256": "0" * 64}]}
    (made_backup / "manifest.json").write_text(json.dumps(evil))
    with pytest.raises(InvalidArgument, match="not allowed"):
        backup.restore(made_backup, tmp_path / "t2")
    (made_backup / "manifest.json").write_text(json.dumps(manifest))
    (made_backup / "admin.key").unlink()
    with pytest.raises(DataLoss, match="missing"):
        backup.restore(made_backup, tmp_path / "t3")


def test_restore_does_not_replace_a_database_without_force(tmp_path, made_backup, config):
    with pytest.raises(AlreadyExists, match="--force"):
        backup.restore(made_backup, config.data_dir)
    assert memosd_main(["restore", str(made_backup), "--data-dir", str(tmp_path / "fresh")]) == 0
    assert memosd_main(["restore", str(made_backup), "--data-dir", str(tmp_path / "fresh")]) == 2
    assert memosd_main(["restore", str(made_backup), "--data-dir", str(tmp_path / "fresh"), "--force"]) == 0
