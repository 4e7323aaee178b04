"""A digest is an address, not a credential: bob, knowing only the sha256 of alice's payload, learns nothing
about it and cannot make a cube of it; uploading the bytes or a read grant on a cube holding them can."""

import hashlib
import json
import shutil

import grpc
import pytest

from memos_client import DataLoss, MemosClient, NotFound
from memos_mip.v1 import blob_pb2, cube_pb2
from tests.kv_helpers import kv_payload, manifest_for

ALICE_NS, BOB_NS = "agents/alice/kv", "agents/bob/kv"
ACT = cube_pb2.MEMORY_KIND_ACTIVATION


@pytest.fixture
def agents(daemon, client, tmp_path):
    """alice and bob with key files; returns a factory of clients by name."""
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    opened = []

    def connect(name):
        c = MemosClient(daemon.address, key=str(tmp_path / f"{name}.key"), timeout=30)
        opened.append(c)
        return c

    yield connect
    for c in opened:
        c.close()


def _alice_kv(alice, namespace=ALICE_NS, seed=3):
    payload, specs = kv_payload(tokens=8, seed=seed)
    alice.upload_blob(payload, namespace)
    manifest = manifest_for(payload, specs, range(8))
    return alice.put_activation(manifest, namespace), payload, manifest


def _unknown(manifest):
    """The same manifest naming a digest nothing on the daemon has."""
    from dataclasses import replace

    return replace(manifest, blob_sha256=hashlib.sha256(b"nothing stored has these bytes").hexdigest())


def _error(call) -> tuple[type, str]:
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


def test_upload_status_does_not_say_another_agents_blob_is_stored(agents):
    alice, bob = agents("alice"), agents("bob")
    _, payload, manifest = _alice_kv(alice)
    assert alice.upload_status(manifest.blob_sha256, len(payload), ALICE_NS) == (True, 0)
    assert bob.upload_status(manifest.blob_sha256, len(payload), BOB_NS) == (False, 0)
    assert bob.upload_status(manifest.blob_sha256, 1, BOB_NS) == (False, 0)


def test_put_activation_errors_say_nothing_about_a_blob_bob_cannot_read(agents):
    alice, bob = agents("alice"), agents("bob")
    _, payload, manifest = _alice_kv(alice)
    from dataclasses import replace

    unknown_type, unknown_text = _error(lambda: bob.put_activation(_unknown(manifest), BOB_NS))
    assert unknown_type is NotFound
    for probe in (manifest, replace(manifest, blob_size=len(payload) + 1), replace(manifest, layers=manifest.layers[:1])):
        kind, text = _error(lambda probe=probe: bob.put_activation(probe, BOB_NS))
        assert kind is unknown_type
        assert text.replace(manifest.blob_sha256, "X") == unknown_text.replace(_unknown(manifest).blob_sha256, "X")
    assert bob.list_page(BOB_NS).total_size == 0


def test_bob_cannot_make_a_cube_of_alices_blob_and_download_it(agents):
    alice, bob = agents("alice"), agents("bob")
    _, payload, manifest = _alice_kv(alice)
    try:
        cube = bob.put_activation(manifest, BOB_NS)
    except NotFound as exc:
        assert "not stored; upload it" in str(exc)
    else:
        stolen = bytes(bob.download_blob(cube.id))
        pytest.fail(f"bob made a cube of alice's blob and downloaded {len(stolen)} bytes"
                    + (", hers" if stolen == payload else ""))
    with pytest.raises(NotFound):  # the admin may read alice's cube, but bob is not the admin
        bob.put_activation(manifest, "agents/bob/other")


def test_an_upload_must_send_the_bytes_even_when_they_are_stored(agents):
    alice, bob = agents("alice"), agents("bob")
    _, payload, manifest = _alice_kv(alice)
    start = blob_pb2.UploadRequest(start=blob_pb2.UploadStart(sha256=manifest.blob_sha256, size=len(payload),
                                                               namespace=BOB_NS, kind=ACT))
    with pytest.raises(grpc.RpcError) as info:
        bob._blobs.Upload(iter([start]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"ended after 0 of {len(payload)} declared bytes" in info.value.details()
    with pytest.raises(NotFound):
        bob.put_activation(manifest, BOB_NS)
    # With the bytes, bob proves he has them: no second copy is stored, and the cube is his.
    ref = bob.upload_blob(payload, BOB_NS)
    assert not ref.deduplicated and ref.sha256 == manifest.blob_sha256
    cube = bob.put_activation(manifest, BOB_NS)
    assert bytes(bob.download_blob(cube.id)) == payload
    assert bob.upload_status(manifest.blob_sha256, len(payload), BOB_NS) == (True, 0)
    assert bob.upload_blob(payload, BOB_NS).deduplicated


def test_a_wrong_upload_of_a_stored_digest_fails_as_for_an_unknown_one(agents):
    alice, bob = agents("alice"), agents("bob")
    _, payload, manifest = _alice_kv(alice)
    lie = bytes(len(payload))
    requests = [blob_pb2.UploadRequest(start=blob_pb2.UploadStart(sha256=manifest.blob_sha256, size=len(lie),
                                                                   namespace=BOB_NS, kind=ACT)),
                blob_pb2.UploadRequest(chunk=blob_pb2.Chunk(offset=0, data=lie))]
    with pytest.raises(grpc.RpcError) as info:
        bob._blobs.Upload(iter(requests), timeout=10)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    assert "do not match the declared sha256" in info.value.details()
    with pytest.raises(NotFound):
        bob.put_activation(manifest, BOB_NS)


def test_a_read_grant_on_a_cube_holding_the_blob_lets_bob_reference_it(agents):
    alice, bob = agents("alice"), agents("bob")
    shared = "agents/alice/shared"
    _, payload, manifest = _alice_kv(alice, shared)
    assert bob.upload_status(manifest.blob_sha256, len(payload), BOB_NS) == (False, 0)
    policy = alice.grant("agent:bob", ["read"], [f"{shared}/**", shared])
    assert bob.upload_status(manifest.blob_sha256, len(payload), BOB_NS) == (True, 0)
    cube = bob.put_activation(manifest, BOB_NS)
    assert bytes(bob.download_blob(cube.id)) == payload
    alice.revoke_policy(policy)
    assert bytes(bob.download_blob(cube.id)) == payload  # his own cube stays his, and names the blob
    bob.delete(cube.id)
    with pytest.raises(NotFound):  # nothing bob may read names it now
        bob.put_activation(manifest, "agents/bob/again")
    assert bob.upload_status(manifest.blob_sha256, len(payload), BOB_NS) == (False, 0)


def test_the_admin_references_what_it_may_read_and_nothing_else(agents, client):
    alice = agents("alice")
    _, payload, manifest = _alice_kv(alice)
    assert client.put_activation(manifest, "agents/admin/kv").activation.blob.sha256 == manifest.blob_sha256
    orphan, specs = kv_payload(tokens=8, seed=9)  # uploaded by alice, in no cube yet
    alice.upload_blob(orphan, ALICE_NS)
    with pytest.raises(NotFound):
        client.put_activation(manifest_for(orphan, specs, range(8)), "agents/admin/kv")
    assert alice.put_activation(manifest_for(orphan, specs, range(8)), ALICE_NS).owner == "alice"


def _adapter(seed=7):
    from memos_client import adapters
    from tests.adapter_helpers import tiny_peft
    from tests.kv_helpers import tiny_model

    return adapters.prepare_push(tiny_peft("llama", adapter_seed=seed), tiny_model("llama"))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_adapters_too(agents):
    from dataclasses import replace

    from memos_client import Kind

    alice, bob = agents("alice"), agents("bob")
    payload, manifest = _adapter()
    alice.upload_blob(payload, "agents/alice/adapters", kind=Kind.PARAMETRIC)
    alice.put_adapter(manifest, "agents/alice/adapters")
    assert bob.upload_status(manifest.blob_sha256, payload.size, "agents/bob/adapters",
                             kind=Kind.PARAMETRIC) == (False, 0)
    unknown = replace(manifest, blob_sha256=hashlib.sha256(b"no such adapter").hexdigest())
    _, unknown_text = _error(lambda: bob.put_adapter(unknown, "agents/bob/adapters"))
    for probe in (manifest, replace(manifest, blob_size=1), replace(manifest, rank=8)):
        kind, text = _error(lambda probe=probe: bob.put_adapter(probe, "agents/bob/adapters"))
        assert kind is NotFound
        assert text.replace(manifest.blob_sha256, "X") == unknown_text.replace(unknown.blob_sha256, "X")
    bob.upload_blob(payload, "agents/bob/adapters", kind=Kind.PARAMETRIC)
    assert bob.put_adapter(manifest, "agents/bob/adapters").adapter.blob.sha256 == manifest.blob_sha256


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_an_imported_bundle_must_carry_the_bytes_it_names(agents, client, tmp_path):
    """bob may write the drop box but not read it: a bundle naming alice's adapter there, without its bytes,
    must neither store a cube nor tell him (by skipping it) that the drop box holds that adapter."""
    from memos_client import Kind

    alice, bob = agents("alice"), agents("bob")
    client.grant("agent:alice", ["read", "write"], ["teams/drop/**", "teams/drop"])
    client.grant("agent:bob", ["write"], ["teams/drop/**", "teams/drop"])
    payload, manifest = _adapter()
    alice.upload_blob(payload, "teams/drop", kind=Kind.PARAMETRIC)
    alice.put_adapter(manifest, "teams/drop")
    # bob's own adapter, exported, then edited to name alice's digest (his files keep their own bytes)
    mine, my_manifest = _adapter(seed=11)
    bob.upload_blob(mine, "agents/bob/adapters", kind=Kind.PARAMETRIC)
    bob.put_adapter(my_manifest, "agents/bob/adapters")
    bundle = tmp_path / "b"
    bob.export(bundle, "agents/bob/adapters")
    _rename_payload(bundle, my_manifest.blob_sha256, manifest.blob_sha256)
    try:
        report = bob.import_bundle(bundle, "teams/drop")
    except DataLoss as exc:
        assert "does not match the manifest" in str(exc)
    else:
        pytest.fail(f"the import went through: {report}")
    assert len([c for c in alice.list("teams/drop")]) == 1


def _rename_payload(bundle, old: str, new: str) -> None:
    """Point a bundle's adapter cube and files at another digest, with the digests of its files kept true."""
    shutil.move(bundle / "adapters" / old, bundle / "adapters" / new)
    cubes = (bundle / "cubes.jsonl").read_text().replace(old, new)
    (bundle / "cubes.jsonl").write_text(cubes)
    listing = json.loads((bundle / "manifest.json").read_text())
    for entry in listing["files"]:
        entry["path"] = entry["path"].replace(old, new)
        path = bundle / entry["path"]
        entry["size"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(listing))
