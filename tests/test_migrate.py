"""`memosd migrate`: an embedded vault made by the real daemon, copied into a real PostgreSQL, resumed, refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psycopg
import pytest

from memos_client import MemosClient
from memosd.cli import main as memosd_main
from memosd.config import load_config
from memosd.cube import LifecycleState
from memosd.errors import FailedPrecondition
from memosd.storage.migrate import migrate
from memosd.storage.sqlite.copy import TABLES
from tests.adapter_helpers import put_raw_adapter
from tests.daemon import make_config, running

VECTOR = np.array([0.1, -2.5, 3.0e-7, 1.0 / 3.0], dtype=np.float32)


@pytest.fixture(scope="module")
def vault(tmp_path_factory) -> Path:
    """An embedded vault with every kind of record, written through the daemon, which is then stopped."""
    import torch

    tmp = tmp_path_factory.mktemp("source")
    config = make_config(tmp, audit_checkpoint_entries=5)
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as client:
        client.add_agent("bob", groups=["readers"], out=str(tmp / "bob.key"))
        client.grant("agent:bob", ["read", "write"], ["teams/shared/**"])
        revoked = client.grant("group:readers", ["read"], ["agents/admin/**"])
        client.revoke_policy(revoked)
        first = client.put("the first note about migrations", "teams/shared/notes", tags=["a", "b"],
                           metadata={"k": "v"}, ttl=3600)
        client.update(first.id, text="the first note, edited")
        client.update(first.id, tags=["c"])
        gone = client.put("a note to delete", "teams/shared/notes")
        client.publish("teams/shared/news", gone.id, publish_id="once")
        client.delete(gone.id)
        for i in range(5):
            client.put(f"note number {i}", "agents/admin/notes", priority=i)
        client.get(first.id)  # an access to count
        adapter = json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                              "task_type": "CAUSAL_LM"})
        weights = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 64),
                   "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4)}
        put_raw_adapter(client, adapter, weights, "ab" * 32)
        for _ in range(3):
            client.publish("teams/shared/news", first.id)
        events = client.subscribe("teams/shared/news", durable_name="worker", ack_timeout_seconds=5)
        stream = iter(events)
        seen = [next(stream).seq, next(stream).seq]
        events.close()
        client.ack("worker", "teams/shared/news", seen[-1])
    # A copy, which no connection of this process (the stopped daemon's readers, closed whenever they are
    # collected, checkpointing the WAL as they go) will ever touch.
    data_dir = Path(shutil.copytree(config.data_dir, tmp / "vault"))
    # What the daemon would have written with an embedding model and a KV cache, written here directly.
    with sqlite3.connect(data_dir / "memos.db") as conn:
        conn.execute("INSERT INTO embeddings (seq, model, vector) VALUES (1, 'tiny-encoder', ?)", (VECTOR.tobytes(),))
        conn.execute("INSERT INTO activation_prefixes (key, seq, tokens) VALUES (?, 1, 16)", (b"\x00\xffprefix",))
    conn.close()
    return data_dir


def _files(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _source_rows(data_dir: Path, table: str) -> tuple[list[str], list[tuple]]:
    # Read from a copy (with the WAL the daemon left): opening the source itself would write its -shm index.
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("memos.db", "memos.db-wal"):
            if (data_dir / name).exists():
                shutil.copyfile(data_dir / name, Path(tmp) / name)
        conn = sqlite3.connect(Path(tmp) / "memos.db")
        try:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            return cols, sorted(conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall(), key=repr)
        finally:
            conn.close()


def _target_rows(url: str, table: str, cols: list[str]) -> list[tuple]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT {', '.join(c + '::text' if c == 'vector' else c for c in cols)}"
                            f" FROM {table}").fetchall()
    out = []
    for row in rows:
        values = []
        for col, v in zip(cols, row):
            if col == "vector":
                v = np.array([float(x) for x in v.strip("[]").split(",")], dtype=np.float32).tobytes()
            elif isinstance(v, bool):
                v = int(v)
            elif isinstance(v, memoryview):
                v = bytes(v)
            values.append(v)
        out.append(tuple(values))
    return sorted(out, key=repr)


def _assert_same_tables(data_dir: Path, url: str) -> None:
    for table, _ in TABLES:
        cols, want = _source_rows(data_dir, table)
        assert _target_rows(url, table, cols) == want, table


def _run(*args: str) -> int:
    return memosd_main(["migrate", *args])


def test_every_table_blob_and_key_moves_and_the_audit_chain_verifies_there(vault, postgres_url, tmp_path, capsys):
    before = _files(vault)
    target = tmp_path / "served"
    assert _run("--data-dir", str(vault), "--vault-url", postgres_url, "--to-data-dir", str(target)) == 0
    out, err = capsys.readouterr()
    assert "audit chain of" in out and "verified" in out and f"--data-dir {target}" in out
    assert "memosd: migrate cubes:" in err and "memosd: migrate blobs:" in err  # plain lines: not a terminal
    assert _files(vault) == before  # the source, byte for byte
    _assert_same_tables(vault, postgres_url)
    with psycopg.connect(postgres_url) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in
                  ("cube_versions", "policies", "events", "durable_subscriptions", "blobs", "audit_checkpoints")}
        (tombstones,) = conn.execute(f"SELECT count(*) FROM cubes WHERE state = {LifecycleState.DELETED:d}").fetchone()
        # The identity sequence continues after the copied cubes: the next cube gets a new seq.
        (next_seq,) = conn.execute("SELECT nextval(pg_get_serial_sequence('cubes', 'seq'))").fetchone()
        (max_seq,) = conn.execute("SELECT max(seq) FROM cubes").fetchone()
        (finished,) = conn.execute("SELECT finished_at FROM memosd_migration").fetchone()
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'embeddings'"
                               " AND indexdef LIKE '%hnsw%'").fetchall()
    assert min(counts.values()) >= 1 and counts["cube_versions"] >= 3, counts
    assert tombstones == 1 and next_seq == max_seq + 1 and finished is not None
    assert len(indexes) == 1 and "vector(4)" in indexes[0][0] and "tiny-encoder" in indexes[0][0]
    for name in ("admin.key", "audit.key", "audit-checkpoints.jsonl"):
        assert (target / name).read_bytes() == (vault / name).read_bytes()
    blob_dir = vault / "blobs" / "sha256"
    for blob in blob_dir.rglob("*"):
        if blob.is_file():
            assert (target / "blobs" / "sha256" / blob.relative_to(blob_dir)).read_bytes() == blob.read_bytes()
    # A second run finds the migration done and copies nothing, even after the target changed (a daemon served it).
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("DELETE FROM events WHERE seq = 1").rowcount == 1
    assert _run("--data-dir", str(vault), "--vault-url", postgres_url, "--to-data-dir", str(target)) == 0
    assert "already; nothing to do" in capsys.readouterr().out


class Stop(Exception):
    pass


def test_an_interrupted_migration_resumes_where_it_stopped_without_duplicating_a_row(vault, postgres_url, tmp_path):
    source, target = load_config({"data_dir": str(vault)}, env={}), tmp_path / "served"
    calls = []

    def stop_midway(what, done, total):
        calls.append(what)
        if len(calls) == 12:
            raise Stop

    with pytest.raises(Stop):
        migrate(source, target, postgres_url, batch=1, progress=stop_midway)
    with psycopg.connect(postgres_url) as conn:
        (copied,) = conn.execute("SELECT count(*) FROM audit").fetchone()
        assert conn.execute("SELECT finished_at FROM memosd_migration").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM settings").fetchone() == (0,)  # no daemon id before the end
    assert 0 < copied < _source_rows(vault, "audit")[1].__len__()
    report = migrate(source, target, postgres_url, batch=2)
    assert report.resumed and report.rows["audit"] == len(_source_rows(vault, "audit")[1]) - copied
    _assert_same_tables(vault, postgres_url)


def test_a_daemon_refuses_a_vault_whose_migration_has_not_finished(vault, postgres_url, tmp_path):
    source = load_config({"data_dir": str(vault)}, env={})

    def stop_at_once(what, done, total):
        raise Stop

    with pytest.raises(Stop):
        migrate(source, tmp_path / "served", postgres_url, batch=1, progress=stop_at_once)
    config = make_config(tmp_path, data_dir=tmp_path / "served", vault_url=postgres_url)
    with pytest.raises(FailedPrecondition, match="has not finished: run `memosd migrate"):
        with running(config):
            pass


def test_a_target_holding_another_vault_is_refused(vault, postgres_url, tmp_path, capsys):
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO settings (key, value) VALUES ('daemon_id', 'memosd-someone-else')")
    assert _run("--data-dir", str(vault), "--vault-url", postgres_url, "--to-data-dir", str(tmp_path / "t")) == 2
    err = capsys.readouterr().err
    assert "already holds a vault (daemon id memosd-someone-else)" in err and err.count("\n") == 1


def test_a_target_data_directory_of_another_vault_is_refused(vault, postgres_url, tmp_path, capsys):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "admin.key").write_text("someone else's key")
    assert _run("--data-dir", str(vault), "--vault-url", postgres_url, "--to-data-dir", str(tmp_path / "t")) == 2
    assert "admin.key exists and differs" in capsys.readouterr().err


def test_a_source_changed_since_an_interrupted_migration_is_refused(vault, postgres_url, tmp_path, capsys):
    copy = tmp_path / "source"
    shutil.copytree(vault, copy)
    source = load_config({"data_dir": str(copy)}, env={})
    with pytest.raises(Stop):
        migrate(source, tmp_path / "t", postgres_url, batch=1, progress=lambda *_: (_ for _ in ()).throw(Stop()))
    with sqlite3.connect(copy / "memos.db") as conn:
        conn.execute("UPDATE cubes SET priority = 9 WHERE seq = 1")
    conn.close()
    assert _run("--data-dir", str(copy), "--vault-url", postgres_url, "--to-data-dir", str(tmp_path / "t")) == 2
    assert "the source vault changed since the interrupted migration started" in capsys.readouterr().err


def test_a_running_daemon_on_the_source_is_refused(vault, postgres_url, tmp_path, capsys):
    copy = tmp_path / "source"
    shutil.copytree(vault, copy)
    config = make_config(tmp_path, data_dir=copy)
    (copy / "memosd.toml").write_text(f'listen = "{config.listen}"\n')
    with running(config):
        assert _run("--data-dir", str(copy), "--vault-url", postgres_url, "--to-data-dir", str(tmp_path / "t")) == 2
    assert "a daemon is serving" in capsys.readouterr().err


def test_a_process_holding_the_source_database_open_is_refused(vault, postgres_url, tmp_path, capsys):
    copy = tmp_path / "source"
    shutil.copytree(vault, copy)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA"
         " journal_mode=WAL'); c.execute('SELECT count(*) FROM cubes').fetchall(); print('open', flush=True);"
         " sys.stdin.read()", str(copy / "memos.db")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        assert _run("--data-dir", str(copy), "--vault-url", postgres_url, "--to-data-dir", str(tmp_path / "t")) == 2
    finally:
        holder.communicate("")
    assert "another process has" in capsys.readouterr().err


def test_a_url_that_is_not_postgresql_and_a_missing_source_are_refused(tmp_path, capsys):
    assert _run("--data-dir", str(tmp_path), "--vault-url", "sqlite:", "--to-data-dir", str(tmp_path / "t")) == 2
    assert "into PostgreSQL" in capsys.readouterr().err
    assert _run("--data-dir", str(tmp_path / "none"), "--vault-url", "postgresql://u@/db?host=/nowhere",
                "--to-data-dir", str(tmp_path / "t")) == 2
    assert "holds no embedded vault" in capsys.readouterr().err


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from memosd.cli import _Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        show = _Progress(stream)
        for done in range(0, 101):
            show("cubes", done, 100)
    assert tty.getvalue().count("\r") == 101 and tty.getvalue().endswith("] 100/100\n") and "#" * 30 in tty.getvalue()
    assert pipe.getvalue().splitlines() == [f"memosd: migrate cubes: {n}/100" for n in range(0, 101, 10)]


def test_blobs_move_into_an_s3_bucket(vault, postgres_url, tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    assert _run("--data-dir", str(vault), "--vault-url", postgres_url, "--to-data-dir", str(tmp_path / "t"),
                "--blob-url", f"s3://{bucket}/team", "--s3-endpoint-url", s3_server.endpoint) == 0
    s3 = s3_server.client()
    blobs = [p for p in (vault / "blobs" / "sha256").rglob("*") if p.is_file()]
    assert blobs
    for blob in blobs:
        stored = s3.get_object(Bucket=bucket, Key=f"team/sha256/{blob.name[:2]}/{blob.name}")["Body"].read()
        assert stored == blob.read_bytes()
    assert not (tmp_path / "t" / "blobs" / "sha256").exists() or not any((tmp_path / "t" / "blobs" / "sha256").iterdir())


def test_a_damaged_blob_in_the_source_stops_the_migration(vault, postgres_url, tmp_path, capsys):
    copy = tmp_path / "source"
    shutil.copytree(vault, copy)
    blob = next(p for p in (copy / "blobs" / "sha256").rglob("*") if p.is_file())
    blob.chmod(0o600)
    blob.write_bytes(b"x" + blob.read_bytes()[1:])
    assert _run("--data-dir", str(copy), "--vault-url", postgres_url, "--to-data-dir", str(tmp_path / "t")) == 2
    assert "does not match its digest" in capsys.readouterr().err
    assert not (tmp_path / "t" / "blobs" / "sha256" / blob.parent.name / blob.name).exists()


def test_a_migration_killed_mid_table_resumes_on_the_next_run(vault, postgres_url, tmp_path):
    # A copy: this process still has the fixture daemon's reader connections on the vault itself open.
    target, vault = tmp_path / "t", Path(shutil.copytree(vault, tmp_path / "source"))
    proc = subprocess.Popen([sys.executable, "-m", "memosd.cli", "migrate", "--data-dir", str(vault), "--vault-url",
                             postgres_url, "--to-data-dir", str(target), "--batch-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("memosd: migrate audit:"):
                proc.kill()  # kill -9 between (or inside) committed batches
                break
    finally:
        proc.kill()
        proc.wait(30)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT finished_at FROM memosd_migration").fetchone() == (None,)
    assert _run("--data-dir", str(vault), "--vault-url", postgres_url, "--to-data-dir", str(target)) == 0
    _assert_same_tables(vault, postgres_url)
    assert not (target / ".migrate").exists()


def test_the_postgresql_engine_reads_every_migrated_cube_and_version_as_the_embedded_one_does(vault, postgres_url,
                                                                                                tmp_path):
    from memosd.storage.postgres import cubes as pg_cubes
    from memosd.storage.sqlite import cubes as sqlite_cubes

    assert _run("--data-dir", str(vault), "--vault-url", postgres_url, "--to-data-dir", str(tmp_path / "t")) == 0
    source = tmp_path / "copy"
    source.mkdir()
    for name in ("memos.db", "memos.db-wal"):
        if (vault / name).exists():
            shutil.copyfile(vault / name, source / name)
    lite = sqlite3.connect(source / "memos.db")
    try:
        ids = [i for (i,) in lite.execute("SELECT id FROM cubes ORDER BY seq")]
        with psycopg.connect(postgres_url) as pg:
            found = []
            for cube_id in ids:
                cube = pg_cubes.current_cube(pg, cube_id, 0.0)
                assert cube == sqlite_cubes.current_cube(lite, cube_id, 0.0)
                found.append(cube)
                assert pg_cubes.earlier_versions(pg, cube_id) == sqlite_cubes.earlier_versions(lite, cube_id)
    finally:
        lite.close()
    assert len([c for c in found if c is not None]) == len(ids) - 1  # all but the deleted one


def test_a_daemon_serves_the_migrated_vault_with_its_old_keys_tokens_and_history(vault, postgres_url, tmp_path):
    target = tmp_path / "served"
    assert _run("--data-dir", str(vault), "--vault-url", postgres_url, "--to-data-dir", str(target)) == 0
    cols, rows = _source_rows(vault, "cubes")
    edited = next(dict(zip(cols, r)) for r in rows if r[cols.index("text")] == "the first note, edited")
    config = make_config(tmp_path, data_dir=target, vault_url=postgres_url)
    with running(config) as daemon, MemosClient(daemon.address, key=target / "admin.key", timeout=30) as client:
        cube = client.get(edited["id"])
        assert (cube.text, cube.version) == ("the first note, edited", edited["version"])
        assert [c.version for c in client.history(edited["id"])][-1] == edited["version"]
        assert [h.cube.id for h in client.search("edited", "teams/shared/notes", mode="bm25")] == [edited["id"]]
        fresh = client.put("written after the move", "teams/shared/notes")
        assert client.get(fresh.id).text == "written after the move"
        report = client.audit_report()
        assert report.ok, report
        assert client.whoami()[1] == daemon.server.governance.daemon_id
