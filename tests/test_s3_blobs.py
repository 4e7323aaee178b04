"""Blobs on S3-compatible storage (moto's server standing in): objects under the URL's prefix, multipart uploads,
the bounded read-through cache behind OpenLocal, and the faults: the store unreachable or answering 500 during
an upload, and an object changed behind the daemon's back."""

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
import torch

from memos_client import DataLoss, MemosClient, NotFound, Unavailable
from memos_mip.payload import Payload
from memosd.limits import Limits
from memosd.storage.objects.s3 import S3ObjectStore
from tests.daemon import make_config, running
from tests.kv_helpers import kv_payload, manifest_for, put_kv, tiny_model
from tests.s3_server import stored_bytes

NS = "agents/admin/kv"


def _s3_config(tmp_path, s3_server, endpoint=None, **overrides):
    bucket = s3_server.new_bucket()
    return make_config(tmp_path, blob_url=f"s3://{bucket}/memosd", s3_endpoint_url=endpoint or s3_server.endpoint,
                       **overrides), bucket


def _prefill(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=True).past_key_values


def test_a_kv_cache_round_trips_through_the_daemon_on_each_store(blob_config):
    model = tiny_model("llama")
    ids = torch.randint(4, 128, (1, 24))
    cache = _prefill(model, ids)
    with running(blob_config) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as client:
        cube_id = client.push_kv(cache, ids, model)
        for local in (True, False):  # the descriptor path (from the cache, on S3) and the stream
            with MemosClient(daemon.address, key=daemon.admin_key, local_transfers=local) as c:
                pulled = c.pull_kv(cube_id, model)
                assert c.local_transfers == local
            for layer, want in zip(pulled.layers, cache.layers):
                assert torch.equal(layer.keys, want.keys) and torch.equal(layer.values, want.values)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft's, as in test_adapters
def test_an_adapter_round_trips_through_the_daemon_on_each_store(blob_config, tmp_path):
    from tests.adapter_helpers import logits, tiny_peft

    original = tiny_peft("llama", rank=4, alpha=8, targets=("q_proj", "v_proj"))
    ids = torch.randint(4, 128, (2, 16))
    with running(blob_config) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as client:
        cube_id = client.push_adapter(original)
        loaded = client.load_adapter(cube_id, tiny_model("llama"))
        torch.testing.assert_close(logits(loaded, ids), logits(original, ids), atol=1e-6, rtol=0)
        again = client.push_adapter(client.pull_adapter(cube_id, tmp_path / "pulled"), tiny_model("llama"))
        assert client.get(again).adapter.blob.sha256 == client.get(cube_id).adapter.blob.sha256


def test_blobs_are_objects_under_the_prefix_and_go_when_collected(tmp_path, s3_server):
    config, bucket = _s3_config(tmp_path, s3_server)
    raw = s3_server.client()
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        ref = client.upload_blob(b"loose bytes " * 1000, NS)
        key = f"memosd/sha256/{ref.sha256[:2]}/{ref.sha256}"
        head = raw.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == ref.size and head["Metadata"] == {"sha256": ref.sha256}
        assert [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
        assert daemon.call(daemon.server.tensors.blobs.sweep(grace=0)) == 1
        assert raw.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_large_blobs_go_up_in_parts_and_appear_only_whole(tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    store = S3ObjectStore(bucket, "p", tmp_path / "blobs", endpoint_url=s3_server.endpoint,
                          multipart_threshold=5 << 20, part_bytes=5 << 20)
    data = os.urandom((12 << 20) + 5)  # three parts, the last short
    sha = hashlib.sha256(data).hexdigest()
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    raw = s3_server.client()
    sent_parts = []
    original = store._s3.upload_part

    def watching(**kwargs):
        # While parts are going up nothing is visible under the key.
        assert raw.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        sent_parts.append(kwargs["PartNumber"])
        return original(**kwargs)

    store._s3.upload_part = watching

    async def scenario():
        await store.start()
        await store.push(staged, sha, len(data))
        got = await store.read_all(sha, len(data), len(data))
        await store.close()
        return got

    assert asyncio.run(scenario()) == data
    assert sent_parts == [1, 2, 3]
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert raw.head_object(Bucket=bucket, Key=f"p/sha256/{sha[:2]}/{sha}")["ContentLength"] == len(data)


class FaultProxy:
    """A loopback TCP relay to the S3 server that can stop relaying: `down` closes every connection as it
    comes (the store unreachable), `500` answers each request with a server error. A fault injector, not an S3."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.mode = "forward"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    def set(self, mode: str) -> None:
        self.mode = mode
        with self._lock:  # kept-alive connections from before must not carry on relaying
            for conn in list(self._open):
                with_suppressed(conn.close)
            self._open.clear()

    def close(self) -> None:
        with_suppressed(self._listener.close)
        self.set("down")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.mode == "down":
            conn.close()
            return
        if self.mode == "500":
            with_suppressed(lambda: conn.recv(65536))
            with_suppressed(lambda: conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                                                 b"Connection: close\r\n\r\n"))
            conn.close()
            return
        upstream = socket.create_connection(self.upstream)
        with self._lock:
            self._open.update((conn, upstream))
        threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
        _pipe(conn, upstream)


def with_suppressed(fn) -> None:
    try:
        fn()
    except OSError:
        pass


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with_suppressed(src.close)
        with_suppressed(dst.close)


@pytest.fixture
def proxy(s3_server):
    relay = FaultProxy(s3_server.endpoint)
    yield relay
    relay.close()


@pytest.mark.parametrize("fault, said", [("down", "cannot be reached"), ("500", "answered 500")])
def test_the_store_failing_during_an_upload_is_unavailable_and_the_upload_resumes(tmp_path, s3_server, proxy, fault,
                                                                                   said):
    config, bucket = _s3_config(tmp_path, s3_server, endpoint=proxy.endpoint)
    payload, specs = kv_payload(tokens=300, head_dim=64, seed=3)
    sha = hashlib.sha256(payload).hexdigest()
    manifest = manifest_for(payload, specs, range(300))
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=60) as client:
        proxy.set(fault)
        with pytest.raises(Unavailable, match=f"the object store {said}") as info:
            client.upload_blob(payload, NS)
        assert len(str(info.value)) < 200
        # Every byte is staged and verified; nothing is recorded, so no cube can point at a missing blob.
        assert client.upload_status(sha, len(payload), NS) == (False, len(payload))
        with pytest.raises(NotFound):
            client.put_activation(manifest, NS)
        assert daemon.call(daemon.vault.db.read(daemon.vault.db.sql.blobs.known)) == set()
        proxy.set("forward")
        sent = []
        original = Payload.chunks

        def recording(self, offset=0):
            sent.append(offset)
            return original(self, offset)

        Payload.chunks = recording
        try:
            ref = client.upload_blob(payload, NS)
        finally:
            Payload.chunks = original
        assert sent == [len(payload)] and not ref.deduplicated  # resumed at the end: no byte sent again
        cube = client.put_activation(manifest, NS)
        assert bytes(client.download_blob(cube.id)) == payload
    assert s3_server.client().head_object(Bucket=bucket, Key=f"memosd/sha256/{sha[:2]}/{sha}")["ContentLength"] == \
        len(payload)


@pytest.mark.parametrize("metadata", ["dropped", "copied"])
def test_an_object_changed_behind_the_daemons_back_is_data_loss(tmp_path, s3_server, metadata):
    config, bucket = _s3_config(tmp_path, s3_server)
    raw = s3_server.client()
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        cube = put_kv(client, [5, 6, 7])
        sha = cube.activation.blob.sha256
        key = f"memosd/sha256/{sha[:2]}/{sha}"
        changed = bytearray(stored_bytes(daemon, sha))
        changed[-1] ^= 0xFF
        # Same size; with the daemon's own metadata copied, only the bytes themselves give it away.
        raw.put_object(Bucket=bucket, Key=key, Body=bytes(changed),
                       Metadata={"sha256": sha} if metadata == "copied" else {})
        with pytest.raises(DataLoss):
            client.download_blob(cube.id)
        with pytest.raises(DataLoss):  # the cache takes in nothing it has not verified
            client.open_local(cube.id)
        with pytest.raises(DataLoss):
            client.fetch_payload(cube.id, cube.activation.blob)
        assert list((config.data_dir / "blobs" / "cache").iterdir()) == []


def test_the_read_cache_is_bounded_least_recently_used_first_and_verified_before_use(tmp_path, s3_server):
    payload_size = len(kv_payload(tokens=64, seed=0)[0])
    config, _ = _s3_config(tmp_path, s3_server,
                           limits=replace(Limits(), blob_cache_bytes=2 * payload_size + payload_size // 2))
    cache = config.data_dir / "blobs" / "cache"
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        cubes = [put_kv(client, list(range(64)), seed=seed) for seed in (1, 2, 3)]
        shas = [c.activation.blob.sha256 for c in cubes]
        assert cubes[0].activation.blob.size == payload_size
        for cube in cubes[:2]:
            assert hashlib.sha256(client.open_local(cube.id)).hexdigest() == cube.activation.blob.sha256
        client.open_local(cubes[0].id)  # now the most recently used
        client.open_local(cubes[2].id)  # one too many: the least recently used (cubes[1]) goes
        assert sorted(p.name for p in cache.iterdir()) == sorted([shas[0], shas[2]])
    # A cached file changed while the daemon was down is checked before its first use, and fetched again.
    path = cache / shas[0]
    os.chmod(path, 0o600)
    path.write_bytes(b"\0" * payload_size)
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        assert hashlib.sha256(client.open_local(cubes[0].id)).hexdigest() == shas[0]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shas[0]


def test_a_sweep_between_pushing_and_publishing_never_loses_the_new_upload(blob_config, tmp_path):
    # Alice's blob is past its grace when Bob uploads the same bytes: the sweep that collects it runs after
    # Bob's bytes went to the store and before his row is written. His blob must still be whole once recorded.
    payload, specs = kv_payload(tokens=40, seed=9)
    with running(blob_config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as alice:
        alice.upload_blob(payload, NS)
        alice.add_agent("bob", out=str(tmp_path / "bob.key"))
        blobs = daemon.server.tensors.blobs
        original, swept = blobs.objects.push, []

        async def push_then_sweep(staged, sha256, size):
            await original(staged, sha256, size)
            swept.append(await blobs.sweep(grace=0))

        blobs.objects.push = push_then_sweep
        with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
            ref = bob.upload_blob(payload)
            assert swept == [1] and not ref.deduplicated
            cube = bob.put_activation(manifest_for(payload, specs, range(40)))
            assert bytes(bob.download_blob(cube.id)) == payload
        assert stored_bytes(daemon, ref.sha256) == payload


@pytest.mark.parametrize("url", ["ftp://bucket/x", "s3://", "file:/elsewhere", "s3:bucket"])
def test_a_blob_url_that_names_no_store_is_refused(tmp_path, url):
    from memosd.errors import InvalidArgument
    from memosd.storage.objects import open_object_store

    with pytest.raises(InvalidArgument, match="blob_url must be"):
        open_object_store(url, tmp_path)


def test_a_daemon_whose_bucket_is_unreachable_does_not_start(tmp_path, s3_server, proxy):
    config, bucket = _s3_config(tmp_path, s3_server, endpoint=proxy.endpoint)
    proxy.set("down")
    env = {**os.environ, "MEMOSD_BLOB_URL": config.blob_url, "MEMOSD_S3_ENDPOINT_URL": config.s3_endpoint_url}
    done = subprocess.run([sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(config.data_dir),
                           "--listen", config.listen], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode != 0
    assert "object store cannot be reached" in done.stderr and "Traceback" not in done.stderr


def test_start_up_removes_only_orphan_objects_older_than_the_grace(tmp_path, s3_server):
    # An object without a row may be another daemon's upload whose row is about to be written: a young one stays.
    config, bucket = _s3_config(tmp_path, s3_server)
    raw = s3_server.client()
    orphan = f"memosd/sha256/00/{'00' * 32}"
    raw.put_object(Bucket=bucket, Key=orphan, Body=b"never recorded", Metadata={"sha256": "00" * 32})
    with running(config) as daemon:
        assert raw.head_object(Bucket=bucket, Key=orphan)["ContentLength"] == 14
        blobs = daemon.server.tensors.blobs
        blobs.objects.orphan_grace = 0.0  # as if the grace had passed since it was stored
        known = daemon.call(daemon.vault.db.read(daemon.vault.db.sql.blobs.known))
        assert daemon.call(blobs._reconcile(known)) == (1, [])
        assert raw.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
