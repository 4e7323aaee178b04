"""Same-host payloads: OpenLocal hands a client the blob's descriptor through the descriptor socket, the
client maps it copy-on-write and checks its XXH3-128. Exact like the gRPC stream, governed like it, never able
to change the stored blob, and falling back to the stream where descriptors cannot pass. On each object store:
with `s3://` the descriptor is of the daemon's verified read-through cache (tests/test_s3_blobs.py tests it)."""

import asyncio
import hashlib
import os
import socket

import pytest
import torch

from memos_client import (
    AsyncMemosClient, DataLoss, FailedPrecondition, MemosClient, NotFound, ResourceExhausted,
)
from memos_client.fdpass import take, unix_path
from memos_mip.fdpass import TAKE, exchange_path
from memos_mip.v1 import blob_pb2
from tests.daemon import make_config, running
from tests.existence import assert_hidden
from tests.kv_helpers import put_kv, tiny_model
from tests.s3_server import BLOB_STORES, blob_settings, stored_bytes

NS = "agents/admin/kv"


def _prefill(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=True).past_key_values


@pytest.fixture(params=BLOB_STORES)
def config(request, tmp_path):
    return make_config(tmp_path, **blob_settings(request.param, request))


def _stored_sha256(daemon, sha256: str) -> str:
    return hashlib.sha256(stored_bytes(daemon, sha256)).hexdigest()


def test_a_local_pull_is_the_same_cache_as_a_streamed_one_and_maps_the_daemons_file(client, daemon):
    model = tiny_model("qwen2")
    ids = torch.randint(4, 128, (1, 40))
    cube_id = client.push_kv(_prefill(model, ids), ids, model)
    local = client.pull_kv(cube_id, model)
    assert client.local_transfers  # the mapped path was taken, not the fallback
    with MemosClient(daemon.address, key=daemon.admin_key, local_transfers=False) as streaming:
        streamed = streaming.pull_kv(cube_id, model)
    for a, b in zip(local.layers, streamed.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    cube = client.get(cube_id)
    mapped = client.open_local(cube_id)
    assert len(mapped) == cube.activation.blob.size
    assert hashlib.sha256(mapped).hexdigest() == cube.activation.blob.sha256


def test_writing_to_a_locally_pulled_cache_never_reaches_the_stored_blob(client, daemon):
    model = tiny_model("llama")
    ids = torch.randint(4, 128, (1, 24))
    cube_id = client.push_kv(_prefill(model, ids), ids, model)
    sha256 = client.get(cube_id).activation.blob.sha256
    pulled = client.pull_kv(cube_id, model)
    original = pulled.layers[0].keys.clone()
    pulled.layers[0].keys.fill_(7.0)  # in place, on the mapped pages: copy-on-write keeps them private
    assert _stored_sha256(daemon, sha256) == sha256
    again = client.pull_kv(cube_id, model)
    assert torch.equal(again.layers[0].keys, original)


def test_open_local_is_governed_like_download(client, daemon, tmp_path):
    cube = put_kv(client, [1, 2, 3])
    text = client.put("plain words", "agents/admin/notes")
    with pytest.raises(FailedPrecondition, match="plaintext"):
        client.open_local(text.id)
    with pytest.raises(NotFound):
        client.open_local("01J9Z3K5Q8W2E4R6T8Y0V2X4N6")
    client.add_agent("eve", out=str(tmp_path / "eve.key"))
    with MemosClient(daemon.address, key=str(tmp_path / "eve.key")) as eve:
        assert_hidden(eve.open_local, cube.id)
        assert_hidden(lambda i: eve.fetch_payload(i, cube.activation.blob), cube.id)  # nor a quiet fallback
        client.grant("agent:eve", ["read"], [NS, NS + "/**"], kinds=["activation"])
        assert len(eve.open_local(cube.id)) == cube.activation.blob.size


def test_a_ticket_is_good_once_and_nothing_else_is_taken(client, daemon):
    cube = put_kv(client, [4, 5, 6])
    response = client._call(client._blobs.OpenLocal, blob_pb2.OpenLocalRequest(cube_id=cube.id))
    assert len(response.ticket) == 16 and response.ticket_ttl_ms > 0
    path = unix_path(daemon.address).with_name(response.exchange_socket)
    assert path == exchange_path(unix_path(daemon.address)) and oct(path.stat().st_mode & 0o777) == "0o660"
    fd = take(path, response.ticket)
    os.close(fd)
    with pytest.raises(FailedPrecondition, match="unknown, used or expired"):
        take(path, response.ticket)
    with pytest.raises(FailedPrecondition, match="unknown, used or expired"):
        take(path, os.urandom(16))
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:  # not a ticket at all
        conn.connect(str(path))
        conn.sendall(TAKE + b"short")
        assert conn.recv(4096).startswith(b"E")


def test_an_uncollected_ticket_expires_and_its_descriptor_is_closed(client, daemon):
    exchange = daemon.server.exchange
    exchange.ttl = 0.0
    try:
        cube = put_kv(client, [7, 7, 7])
        response = client._call(client._blobs.OpenLocal, blob_pb2.OpenLocalRequest(cube_id=cube.id))
        assert list(exchange._pending) == [response.ticket]
        client._call(client._blobs.OpenLocal, blob_pb2.OpenLocalRequest(cube_id=cube.id))  # expires the first
        assert response.ticket not in exchange._pending and len(exchange._pending) == 1  # its descriptor closed
        with pytest.raises(FailedPrecondition, match="expired"):
            take(unix_path(daemon.address).with_name(response.exchange_socket), response.ticket)
    finally:
        exchange.ttl = 10.0


@pytest.mark.parametrize("config", ["file"], indirect=True)  # an S3 object changed: tests/test_s3_blobs.py
def test_a_corrupt_blob_is_data_loss_on_the_local_path_too(client, daemon):
    cube = put_kv(client, [9, 8, 7])
    path = daemon.server.tensors.blobs.objects.path(cube.activation.blob.sha256)
    os.chmod(path, 0o600)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataLoss, match="XXH3-128"):
        client.open_local(cube.id)
    with pytest.raises(DataLoss):  # not hidden by falling back to the stream
        client.fetch_payload(cube.id, cube.activation.blob)
    path.write_bytes(bytes(raw[:-10]))  # shorter than recorded: refused before anything is mapped
    with pytest.raises(DataLoss, match="bytes on disk"):
        client.open_local(cube.id)


def test_one_agent_cannot_hold_every_uncollected_descriptor(client, daemon, tmp_path):
    cube = put_kv(client, [6, 6, 6])
    exchange = daemon.server.exchange
    exchange.max_per_agent = 3
    try:
        for _ in range(3):
            client._call(client._blobs.OpenLocal, blob_pb2.OpenLocalRequest(cube_id=cube.id))
        with pytest.raises(ResourceExhausted, match="agent admin has 3"):
            client._call(client._blobs.OpenLocal, blob_pb2.OpenLocalRequest(cube_id=cube.id))
        client.add_agent("bob", out=str(tmp_path / "bob.key"))
        client.grant("agent:bob", ["read"], [NS, NS + "/**"], kinds=["activation"])
        with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
            assert len(bob.open_local(cube.id)) == cube.activation.blob.size  # others are unaffected
    finally:
        exchange.max_per_agent = 32


def test_blobs_stored_before_checksums_get_one_on_first_use(client, daemon):
    cube = put_kv(client, [3, 1, 4, 1, 5])
    sha256 = cube.activation.blob.sha256
    db = daemon.vault.db
    daemon.call(db.write(lambda c: c.execute("UPDATE blobs SET xxh3_128 = NULL WHERE sha256 = ?", (sha256,))))
    assert len(client.open_local(cube.id)) == cube.activation.blob.size
    stored = daemon.call(db.read(lambda c: c.execute("SELECT xxh3_128 FROM blobs WHERE sha256 = ?",
                                                     (sha256,)).fetchone()[0]))
    assert stored is not None and len(stored) == 32


def test_without_a_reachable_descriptor_socket_payloads_stream(client, daemon):
    cube = put_kv(client, [2, 7, 1, 8])
    path = exchange_path(unix_path(daemon.address))
    moved = path.with_name("elsewhere")
    path.rename(moved)  # as a client in another mount namespace would see it: absent
    try:
        buffer = client.fetch_payload(cube.id, cube.activation.blob)
        assert hashlib.sha256(buffer.numpy()).hexdigest() == cube.activation.blob.sha256
        assert client.local_transfers is False
    finally:
        moved.rename(path)


def test_tcp_daemons_do_not_offer_descriptors(tmp_path):
    with running(make_config(tmp_path, listen="127.0.0.1:0")) as d:
        with MemosClient(d.address, key=d.admin_key) as c:
            assert c.local_transfers is False
            cube = put_kv(c, [1, 1, 2, 3])
            with pytest.raises(FailedPrecondition, match="Unix socket"):
                c.open_local(cube.id)
            response = c._blobs.OpenLocal  # the daemon refuses too, should a client ask anyway
            with pytest.raises(FailedPrecondition, match="TCP"):
                c._call(response, blob_pb2.OpenLocalRequest(cube_id=cube.id))
            assert len(c.fetch_payload(cube.id, cube.activation.blob)) == cube.activation.blob.size


def test_async_client_pulls_locally(daemon):
    model = tiny_model("llama")
    ids = torch.randint(4, 128, (1, 16))
    cache = _prefill(model, ids)

    async def scenario():
        async with AsyncMemosClient(daemon.address, key=daemon.admin_key) as c:
            cube_id = await c.push_kv(cache, ids, model)
            pulled = await c.pull_kv(cube_id, model)
            return pulled, c.local_transfers

    pulled, local = asyncio.run(scenario())
    assert local
    for a, b in zip(cache.layers, pulled.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
