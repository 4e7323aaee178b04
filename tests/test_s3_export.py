"""Exports and backups of a daemon whose blobs are on S3 (moto standing in): every payload is fetched from the
object store, verified, whatever the local read cache holds; an object changed there fails the export."""

import hashlib
import json
from dataclasses import replace

import pytest

from memos_client import DataLoss, FailedPrecondition, MemosClient
from memosd.cli import main as memosd_main
from memosd.limits import Limits
from tests.daemon import make_config, running
from tests.kv_helpers import kv_payload, put_kv
from tests.s3_server import blob_settings

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)
NS = "agents/admin/kv"


@pytest.fixture
def s3_config(config, request):
    # A read cache of one byte holds nothing: what the export carries can only come from the object store.
    return replace(config, **blob_settings("s3", request), limits=Limits(blob_cache_bytes=1))


def _payloads(client, n=3):
    cubes = [put_kv(client, [1, 2, 3 + i], NS, seed=i) for i in range(n)]
    for c in cubes:  # the descriptor path goes through the read cache, which keeps nothing
        assert bytes(client.open_local(c.id)) == kv_payload(tokens=3, seed=cubes.index(c))[0]
    return {c.id: kv_payload(tokens=3, seed=i)[0] for i, c in enumerate(cubes)}


def test_an_export_carries_every_payload_from_the_object_store(s3_config, tmp_path):
    with running(s3_config) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=60) as client:
        want = _payloads(client)
        assert not list((s3_config.data_dir / "blobs" / "cache").iterdir())
        client.export(tmp_path / "bundle", NS)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    tensors = {f["path"] for f in manifest["files"] if f["path"].startswith("tensors/")}
    assert tensors == {f"tensors/{hashlib.sha256(p).hexdigest()}.safetensors" for p in want.values()}
    for data in want.values():
        assert (tmp_path / "bundle" / "tensors" / f"{hashlib.sha256(data).hexdigest()}.safetensors").read_bytes() == data
    with running(make_config(tmp_path / "other")) as other, MemosClient(other.address, key=other.admin_key) as c:
        assert c.import_bundle(tmp_path / "bundle", "agents/admin/copy").tensors == len(want)
        got = sorted(bytes(c.download_blob(cube.id)) for cube in c.list("agents/admin/copy"))
    assert got == sorted(want.values())


def test_an_export_refuses_an_object_changed_in_the_store(s3_config, s3_server, tmp_path):
    with running(s3_config) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=60) as client:
        cube = put_kv(client, [9, 9, 9], NS)
        sha = cube.activation.blob.sha256
        bucket, _, prefix = s3_config.blob_url[len("s3://"):].partition("/")
        changed = bytearray(kv_payload(tokens=3)[0])
        changed[-1] ^= 0xFF
        s3_server.client().put_object(Bucket=bucket, Key=f"{prefix}/sha256/{sha[:2]}/{sha}", Body=bytes(changed),
                                      Metadata={"sha256": sha})
        with pytest.raises(DataLoss):
            client.export(tmp_path / "bundle", NS)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.vaults("sqlite")  # backups copy the SQLite vault (pg_dump's job else)
def test_a_backup_carries_every_blob_and_restores_into_a_file_store(s3_config, tmp_path):
    with running(s3_config) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=60) as client:
        want = _payloads(client)
        manifest = client.backup(tmp_path / "bk")
    blobs = {f["path"] for f in manifest["files"] if f["path"].startswith("blobs/")}
    assert blobs == {f"blobs/sha256/{d[:2]}/{d}" for d in (hashlib.sha256(p).hexdigest() for p in want.values())}
    restored = make_config(tmp_path / "r")
    assert memosd_main(["restore", str(tmp_path / "bk"), "--data-dir", str(restored.data_dir)]) == 0
    with running(restored) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        for cube_id, data in want.items():
            assert bytes(client.download_blob(cube_id)) == data


@pytest.mark.vaults("postgresql")
def test_a_backup_of_a_postgresql_vault_is_refused_with_what_to_use(client, tmp_path):
    with pytest.raises(FailedPrecondition, match="pg_dump"):
        client.backup(tmp_path / "bk")
    assert not (tmp_path / "bk" / "manifest.json").exists()  # a backup directory is complete once it has one
