"""The signed audit chain: checkpoints under the audit key show a truncated, rewritten or pruned log."""

import json
import os
import sqlite3
import stat
import subprocess
import sys
from dataclasses import replace

from memos_client import MemosClient
from memos_client.auth import AgentKey, b64url
from memosd.cli import main as memosd_main
from memosd.governance.audit import entry_hash
from tests.daemon import make_config, running
from tests.timing import wait_for


def _writes(daemon, n, tag="w"):
    with MemosClient(daemon.address, key=daemon.admin_key) as client:
        for i in range(n):
            client.put(f"{tag} {i}", "agents/admin/audited")


def _report(daemon):
    with MemosClient(daemon.address, key=daemon.admin_key) as client:
        return client.audit_report()


def _broken(daemon):
    """The short verdict first (what `audit verify` said before checkpoints), then the whole report."""
    with MemosClient(daemon.address, key=daemon.admin_key) as client:
        ok, _, bad, reason = client.verify_audit()
        assert not ok and bad > 0 and reason
        return client.audit_report()


def _db(config):
    return sqlite3.connect(config.data_dir / "memos.db")


def _signed_log(config, restarts=1, writes=6):
    """A daemon that wrote and shut down `restarts` times (each shutdown signs the head); returns the last head."""
    for r in range(restarts):
        with running(config) as daemon:
            _writes(daemon, writes, tag=f"round {r}")
    with _db(config) as conn:
        return conn.execute("SELECT max(seq) FROM audit").fetchone()[0]


def _rechain(conn, from_seq):
    """What an attacker with the database does: recompute every hash from from_seq on, and the head."""
    rows = conn.execute("SELECT seq, ts, agent, action, target, decision, detail FROM audit WHERE seq >= ?"
                        " ORDER BY seq", (from_seq,)).fetchall()
    (prev,) = conn.execute("SELECT coalesce((SELECT hash FROM audit WHERE seq = ?), '')", (from_seq - 1,)).fetchone()
    for seq, *fields in rows:
        h = entry_hash(prev, *fields)
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, seq))
        prev = h
    (head,) = conn.execute("SELECT max(seq) FROM audit").fetchone()
    conn.execute("UPDATE settings SET value = ? WHERE key = 'audit_head'", (f"{head}:{prev}",))
    conn.commit()


def test_untouched_log_verifies_intact_across_restarts(tmp_path):
    config = make_config(tmp_path)
    with running(config) as daemon:
        _writes(daemon, 3)
        report = _report(daemon)
        assert report.ok and report.checkpoints == 0 and report.unsigned_tail == report.entries > 3
        assert len(report.audit_key_fingerprint) == 16
    key = config.data_dir / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with running(config) as daemon:  # the shutdown signed the head
        report = _report(daemon)
        assert report.ok and report.checkpoints == 1, report
        assert report.last_checkpoint_seq == report.entries and report.unsigned_tail == 0
        _writes(daemon, 2)
        report = _report(daemon)
        assert report.ok and report.unsigned_tail == 2 and report.last_checkpoint_seq == report.entries - 2
        fingerprint = report.audit_key_fingerprint
    with running(config) as daemon:
        report = _report(daemon)
        assert report.ok and report.checkpoints == 2 and report.unsigned_tail == 0
        assert report.audit_key_fingerprint == fingerprint
        out = subprocess.run([sys.executable, "-m", "memos_client.cli", "--addr", daemon.address,
                              "--key", str(daemon.admin_key), "audit", "verify"], capture_output=True, text=True)
        assert out.returncode == 0 and "intact" in out.stdout and "2 signed checkpoints" in out.stdout, out
    lines = (config.data_dir / "audit-checkpoints.jsonl").read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [1, 2]


def test_truncating_the_log_and_moving_the_head_is_detected(tmp_path):
    config = make_config(tmp_path)
    head = _signed_log(config)
    with _db(config) as conn:
        keep = head - 4
        (h,) = conn.execute("SELECT hash FROM audit WHERE seq = ?", (keep,)).fetchone()
        conn.execute("DELETE FROM audit WHERE seq > ?", (keep,))
        conn.execute("UPDATE settings SET value = ? WHERE key = 'audit_head'", (f"{keep}:{h}",))
    with running(config) as daemon:
        report = _broken(daemon)
        assert not report.ok and report.first_bad_seq == head and "removed" in report.reason, report
        _writes(daemon, 6)  # the log grows past the checkpoint again, along another chain
        report = _broken(daemon)
        assert not report.ok and report.first_bad_seq == head and "rewritten" in report.reason, report


def test_rewriting_the_chain_with_recomputed_hashes_is_detected(tmp_path):
    config = make_config(tmp_path)
    head = _signed_log(config)
    with _db(config) as conn:
        (seq,) = conn.execute("SELECT min(seq) FROM audit WHERE action = 'vault.put'").fetchone()
        conn.execute("UPDATE audit SET agent = 'mallory' WHERE seq = ?", (seq,))
        _rechain(conn, seq)
    with running(config) as daemon:
        report = _broken(daemon)
        assert not report.ok and report.first_bad_seq == head and "rewritten" in report.reason, report


def test_deleting_checkpoints_from_the_database_or_the_file_is_detected(tmp_path):
    config = make_config(tmp_path)
    _signed_log(config, restarts=2)
    with _db(config) as conn:
        conn.execute("DELETE FROM audit_checkpoints WHERE n = 1")
    with running(config) as daemon:
        report = _broken(daemon)
        assert not report.ok and "checkpoint 1" in report.reason and "database" in report.reason, report
    with _db(config) as conn:  # all of them, and the log cut to before the first: the file still shows it
        conn.execute("DELETE FROM audit_checkpoints")
        conn.execute("DELETE FROM audit WHERE seq > 2")
        _rechain(conn, 3)
    with running(config) as daemon:
        report = _broken(daemon)
        assert not report.ok and "checkpoint" in report.reason, report
    # The file pruned instead, with the database as it was: the database's copy shows it.
    config2 = make_config(tmp_path / "second")
    _signed_log(config2, restarts=3)
    path2 = config2.data_dir / "audit-checkpoints.jsonl"
    lines = path2.read_text().splitlines(keepends=True)
    path2.write_text(lines[0])
    with running(config2) as daemon:
        report = _broken(daemon)
        assert not report.ok and "checkpoint 2" in report.reason and "file" in report.reason, report


def test_a_checkpoint_a_crash_left_out_of_the_file_is_appended_at_start(tmp_path):
    """The database commits a checkpoint before the file gets it: a crash between leaves the newest one out."""
    config = make_config(tmp_path)
    _signed_log(config, restarts=2)
    path = config.data_dir / "audit-checkpoints.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    with running(config) as daemon:
        report = _report(daemon)
        assert report.ok and report.checkpoints == 2 and report.unsigned_tail == 0, report
    assert path.read_text().splitlines(keepends=True)[:2] == lines


def test_a_checkpoint_forged_without_the_audit_key_is_detected(tmp_path):
    config = make_config(tmp_path)
    head = _signed_log(config)
    forger = AgentKey.generate("mallory", "")
    with _db(config) as conn:
        conn.execute("UPDATE audit SET target = 'elsewhere' WHERE seq = 2")
        _rechain(conn, 2)
        (h,) = conn.execute("SELECT hash FROM audit WHERE seq = ?", (head,)).fetchone()
        conn.execute("UPDATE audit_checkpoints SET hash = ?, signature = ? WHERE n = 1",
                     (h, forger.sign(b"anything")))
    path = config.data_dir / "audit-checkpoints.jsonl"
    line = json.loads(path.read_text())
    path.write_text(json.dumps({**line, "hash": h, "signature": b64url(forger.sign(b"anything"))}) + "\n")
    with running(config) as daemon:
        report = _broken(daemon)
        assert not report.ok and "signature" in report.reason, report


def test_every_n_entries_and_every_interval_sign_the_head(tmp_path):
    config = replace(make_config(tmp_path), audit_checkpoint_entries=4, audit_checkpoint_interval=3600)
    with running(config) as daemon:
        _writes(daemon, 10)
        report = wait_for(lambda: (r := _report(daemon)).checkpoints >= 2 and r, "fewer than two checkpoints")
        assert report.ok and report.checkpoints >= 2 and report.unsigned_tail < report.entries - 4, report
    config = replace(make_config(tmp_path / "timed"), audit_checkpoint_interval=0.2)
    with running(config) as daemon:
        _writes(daemon, 1)
        report = wait_for(lambda: not (r := _report(daemon)).unsigned_tail and r, "the timer never signed the tail")
        assert report.ok and report.checkpoints >= 1 and report.unsigned_tail == 0, report


def test_memosd_init_creates_the_audit_key_where_audit_key_says(tmp_path):
    apart = tmp_path / "apart" / "audit.key"
    config = replace(make_config(tmp_path), audit_key=str(apart))
    env = {**os.environ, "MEMOSD_AUDIT_KEY": str(apart)}
    out = subprocess.run([sys.executable, "-m", "memosd.cli", "init", "--data-dir", str(config.data_dir)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and str(apart) in out.stdout, out
    assert stat.S_IMODE(apart.stat().st_mode) == 0o600 and not (config.data_dir / "audit.key").exists()
    with running(config) as daemon:
        _writes(daemon, 2)
    with running(config) as daemon:
        report = _report(daemon)
        assert report.ok and report.checkpoints == 1 and report.unsigned_tail == 0, report
    assert len((apart.parent / "audit-checkpoints.jsonl").read_text().splitlines()) == 1
    assert not (config.data_dir / "audit-checkpoints.jsonl").exists()


def test_garbage_written_into_the_checkpoints_is_reported_not_an_internal_error(tmp_path):
    config = make_config(tmp_path)
    _signed_log(config)
    with _db(config) as conn:
        conn.execute("UPDATE audit_checkpoints SET seq = 'x', signature = 'y' WHERE n = 1")
    path = config.data_dir / "audit-checkpoints.jsonl"
    with running(config) as daemon:
        report = _broken(daemon)
        assert "wrong types" in report.reason, report
    path.write_text(path.read_text() + '{"n": "two"}\n')
    with running(config) as daemon:
        report = _broken(daemon)
        assert "line 3 of" in report.reason, report  # the shutdown before appended checkpoint 2


def test_a_restored_backup_verifies_with_its_checkpoints(tmp_path):
    config = make_config(tmp_path)
    _signed_log(config, restarts=2)
    with running(config) as daemon:
        _writes(daemon, 2)
        with MemosClient(daemon.address, key=daemon.admin_key) as client:
            manifest = client.backup(tmp_path / "bk")
    assert {"audit.key", "audit-checkpoints.jsonl"} <= {f["path"] for f in manifest["files"]}
    restored = replace(make_config(tmp_path / "r"), data_dir=tmp_path / "restored")
    assert memosd_main(["restore", str(tmp_path / "bk"), "--data-dir", str(restored.data_dir)]) == 0
    with running(restored) as daemon:
        report = _report(daemon)
        # The checkpoint the original daemon signed at its last shutdown came after the snapshot: not in it.
        assert report.ok and report.checkpoints == 2 and report.unsigned_tail >= 2, report
        assert report.audit_key_fingerprint == _fingerprint(config)


def _fingerprint(config):
    from memos_client.auth import fingerprint

    return fingerprint(AgentKey.load(config.data_dir / "audit.key").public_bytes)
