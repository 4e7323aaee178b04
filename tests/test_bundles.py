"""Export bundles out of one daemon and into another (MemDumper/MemLoader), and every kind of bad bundle."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from memos_client import MemosClient
from memos_client import errors as client_errors
from memos_client.cli import main as memosctl
from memos_client.models import State
from memos_mip.bundle_format import BundleError, check_name, safe_extract
from memosd.bundle.loader import remap
from memosd.bundle.records import cube_from_record, cube_record
from memosd.cube import LifecycleState, MemCube, MemoryKind, Visibility
from memosd.ids import new_id
from memosd.limits import Limits
from tests.bundle_helpers import write_bundle
from tests.daemon import make_config, running
from tests.timing import wait_for


@pytest.fixture
def other_daemon(tmp_path):
    """A second daemon, to import into."""
    with running(make_config(tmp_path / "other")) as daemon:
        yield daemon


@pytest.fixture
def other(other_daemon):
    with MemosClient(other_daemon.address, key=other_daemon.admin_key) as client:
        yield client


@pytest.fixture
def source(client, tmp_path):
    """A namespace with varied cubes, a policy on it, and cubes outside it."""
    a = client.put("Alice prefers window seats", "agents/admin/src", tags=["travel", "pref"],
                   metadata={"speaker": "alice", "n": 3}, source="chat:1")
    b = client.put("Budget review on Monday", "agents/admin/src/work", tags=["meeting"])
    c = client.put("an old note", "agents/admin/src")
    client.update(c.id, state=State.ARCHIVED)
    client.put("not exported", "agents/admin/elsewhere")
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    policy = client.grant("agent:bob", ["read"], ["agents/admin/src/**"])
    client.grant("agent:bob", ["read"], ["teams/other/**"])
    return {"ids": [a.id, b.id, c.id], "policy": policy, "a": a}




def test_export_then_import_into_another_daemon_under_a_new_namespace(client, other, source, tmp_path):
    manifest = client.export(tmp_path / "b", "agents/admin/src")
    assert manifest["format"] == "memosd-bundle" and manifest["version"] == 1
    assert manifest["root"] == "agents/admin/src"
    assert manifest["counts"]["cubes"] == 3 and manifest["counts"]["policies"] == 1
    names = sorted(os.listdir(tmp_path / "b"))
    assert names == ["agents.jsonl", "cubes.jsonl", "manifest.json", "policies.jsonl"]
    lines = (tmp_path / "b" / "cubes.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["text"] == "Alice prefers window seats" and first["tags"] == ["travel", "pref"]
    assert first["created_at"].endswith("Z") and first["kind"] == "plaintext"

    result = other.import_bundle(tmp_path / "b", "teams/imported")
    assert (result.cubes, result.skipped, result.renamed) == (3, 0, 0)
    # The policy verifies, but its issuer "admin" is another key on the other daemon: not applied.
    assert result.policies_skipped == 1 and "not registered here with the same key" in result.notes[0]
    moved = other.get(source["a"].id)  # ids are kept where they are free
    assert moved.namespace == "teams/imported" and moved.text == source["a"].text
    assert moved.tags == ["travel", "pref"] and moved.metadata == {"speaker": "alice", "n": 3}
    # Times travel as RFC 3339 with microseconds; the vault keeps float seconds (0.24 us apart in 2026).
    assert abs((moved.created_at - source["a"].created_at).total_seconds()) <= 2e-6 and moved.source == "chat:1"
    assert other.get(source["ids"][1]).namespace == "teams/imported/work"
    assert other.get(source["ids"][2]).state is State.ARCHIVED
    assert other.search("window seats", mode="bm25")[0].cube.id == source["a"].id

    again = other.import_bundle(tmp_path / "b", "teams/imported")
    assert (again.cubes, again.skipped) == (0, 3)  # a re-run stores nothing twice


def test_import_into_the_same_daemon_renames_taken_ids_and_applies_its_own_policies(client, source, tmp_path):
    client.export(tmp_path / "b", "agents/admin/src")
    client.revoke_policy(source["policy"])
    result = client.import_bundle(tmp_path / "b", "agents/admin/copy")
    assert (result.cubes, result.renamed) == (3, 3)
    copy = next(c for c in client.list("agents/admin/copy") if c.text == source["a"].text)
    assert copy.id != source["a"].id and source["a"].id in copy.derived_from
    # Same issuer, same key: the policy is recognised, but it is here already (revoked): not stored twice.
    assert result.policies_applied == 0 and "here already" in result.notes[0]


def test_export_as_tar_and_tar_gz_and_import_each(client, other, source, tmp_path):
    for name in ("b.tar", "b.tar.gz"):
        client.export(tmp_path / name, "agents/admin/src", omit_policies=True)
        with tarfile.open(tmp_path / name) as tar:
            assert tar.getnames()[0] == "manifest.json"
        result = other.import_bundle(tmp_path / name, f"teams/{name.replace('.', '-')}")
        assert result.cubes == 3 and result.policies_applied + result.policies_skipped == 0


def test_an_agent_exports_only_what_it_may_read(client, daemon, source, tmp_path):
    client.put("bob's own", "agents/bob/n")
    with MemosClient(daemon.address, key=tmp_path / "bob.key") as bob:
        manifest = bob.export(tmp_path / "bob-all")
    texts = [json.loads(line)["text"] for line in (tmp_path / "bob-all" / "cubes.jsonl").read_text().splitlines()]
    assert sorted(texts) == sorted(["Alice prefers window seats", "Budget review on Monday", "an old note",
                                    "bob's own"])
    assert manifest["root"] == ""


def test_importing_needs_write_on_every_target_namespace(client, daemon, source, tmp_path):
    client.export(tmp_path / "b", "agents/admin/src")
    with MemosClient(daemon.address, key=tmp_path / "bob.key") as bob:
        with pytest.raises(client_errors.PermissionDenied):
            bob.import_bundle(tmp_path / "b", "agents/admin/stolen")
        assert bob.import_bundle(tmp_path / "b", "agents/bob/mine", skip_policies=True).cubes == 3
    assert all(c.owner == "bob" for c in client.list("agents/bob/mine"))


def test_memosctl_export_and_import(daemon, other_daemon, source, tmp_path, capsys):
    args = ["--addr", daemon.address, "--key", str(daemon.admin_key)]
    assert memosctl([*args, "export", str(tmp_path / "x.tar"), "-n", "agents/admin/src"]) == 0
    assert "exported 3 cubes (3 plaintext) and 1 policies" in capsys.readouterr().out
    other_args = ["--addr", other_daemon.address, "--key", str(other_daemon.admin_key)]
    assert memosctl([*other_args, "import", str(tmp_path / "x.tar"), "-n", "teams/x", "--no-policies"]) == 0
    assert "3 cubes imported" in capsys.readouterr().out
    assert memosctl([*other_args, "--json", "import", str(tmp_path / "x.tar"), "-n", "teams/x"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 3


# ---- bad bundles -------------------------------------------------------------------------------------------


@pytest.fixture
def bundle(client, source, tmp_path) -> Path:
    client.export(tmp_path / "b", "agents/admin/src")
    return tmp_path / "b"


def _rewrite_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _relist(path: Path) -> None:
    """Make the manifest agree with the files again (as a careful forger would)."""
    manifest = json.loads((path / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (path / entry["path"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_changed_file_fails_its_digest(other, bundle):
    with open(bundle / "cubes.jsonl", "a") as f:
        f.write("\n")
    with pytest.raises(client_errors.DataLoss, match="cubes.jsonl does not match its sha256"):
        other.import_bundle(bundle, "teams/x")
    assert list(other.list("teams/x")) == []


def test_a_missing_blob_is_refused(other, bundle):
    cube = json.loads((bundle / "cubes.jsonl").read_text().splitlines()[0])
    sha = hashlib.sha256(b"kv").hexdigest()
    tensor = {**cube, "id": new_id(), "kind": "activation", "manifest": {"blob": {"sha256": sha, "size": 2}}}
    tensor.pop("text")
    with open(bundle / "cubes.jsonl", "a") as f:
        f.write(json.dumps(tensor) + "\n")
    _relist(bundle)
    with pytest.raises(client_errors.DataLoss, match=f"needs the payload tensors/{sha}.safetensors"):
        other.import_bundle(bundle, "teams/x")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"].append({"path": f"tensors/{sha}.safetensors", "size": 2, "sha256": sha})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(client_errors.DataLoss, match="lacks the payload"):
        other.import_bundle(bundle, "teams/x")


def test_a_manifest_from_a_newer_version_is_refused(other, bundle):
    _rewrite_manifest(bundle, version=2)
    with pytest.raises(client_errors.FailedPrecondition, match="newer memosd"):
        other.import_bundle(bundle, "teams/x")


def test_a_policy_with_a_bad_signature_is_refused(other, bundle):
    line = json.loads((bundle / "policies.jsonl").read_text())
    doc = json.loads(line["document"])
    doc["namespaces"] = ["agents/admin/src/**", "agents/bob/**"]  # widened after signing
    line["document"] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    (bundle / "policies.jsonl").write_text(json.dumps(line) + "\n")
    _relist(bundle)
    with pytest.raises(client_errors.DataLoss, match="does not match its signature"):
        other.import_bundle(bundle, "teams/x")
    line["document"], line["signature"] = json.dumps({**doc, "actions": ["admin"]}), base64.b64encode(b"x" * 64).decode()
    (bundle / "policies.jsonl").write_text(json.dumps(line) + "\n")
    _relist(bundle)
    with pytest.raises(client_errors.DataLoss, match="does not match its signature"):
        other.import_bundle(bundle, "teams/x")
    assert list(other.list("teams/x")) == []


def test_an_unlisted_file_is_refused(other, bundle):
    sha = hashlib.sha256(b"extra").hexdigest()
    (bundle / "tensors").mkdir()
    (bundle / "tensors" / f"{sha}.safetensors").write_bytes(b"extra")
    with pytest.raises(client_errors.InvalidArgument, match="does not list"):
        other.import_bundle(bundle, "teams/x")


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_path_traversal_is_refused(other, tmp_path):
    for name in ("../../etc/passwd", "/etc/passwd", "tensors/../../x"):
        path = _tar(tmp_path / "evil.tar", [_file("manifest.json", b"{}"), _file(name, b"root:x:0:0")])
        with pytest.raises(client_errors.InvalidArgument, match="outside the bundle|not a name"):
            other.import_bundle(path, "teams/x")


def test_links_are_refused(other, tmp_path, bundle):
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        link = tarfile.TarInfo("cubes.jsonl")
        link.type, link.linkname = kind, "/etc/passwd"
        path = _tar(tmp_path / "link.tar", [_file("manifest.json", b"{}"), (link, None)])
        with pytest.raises(client_errors.InvalidArgument, match="is a link"):
            other.import_bundle(path, "teams/x")
    (bundle / "cubes.jsonl").unlink()
    (bundle / "cubes.jsonl").symlink_to("/etc/passwd")
    with pytest.raises(client_errors.InvalidArgument, match="symbolic link"):  # refused before sending
        other.import_bundle(bundle, "teams/x")


def test_a_tar_bomb_stops_at_the_size_limit(tmp_path):
    config = replace(make_config(tmp_path), limits=replace(Limits(), max_bundle_bytes=1 << 20))
    with open(tmp_path / "zeros", "wb") as f:
        f.truncate(64 << 20)
    with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "zeros", arcname="cubes.jsonl")
    assert (tmp_path / "bomb.tar.gz").stat().st_size < 1 << 20  # small on the wire, 64 MiB unpacked
    with running(config) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key) as client:
            with pytest.raises(client_errors.ResourceExhausted, match="unpacks to more than"):
                client.import_bundle(tmp_path / "bomb.tar.gz", "teams/x")
        leftovers = [p.name for p in config.data_dir.iterdir() if p.name.startswith(".import-")]
        assert leftovers == []


def test_too_many_files_and_too_many_bytes_on_the_wire(tmp_path):
    with pytest.raises(BundleError, match="more than 3 files"):
        members = [_file(f"tensors/{hashlib.sha256(bytes([i])).hexdigest()}.safetensors", b"x") for i in range(5)]
        safe_extract(_tar(tmp_path / "many.tar", members), tmp_path / "out", max_bytes=1 << 20, max_files=3)
    config = replace(make_config(tmp_path), limits=replace(Limits(), max_bundle_bytes=4096))
    with open(tmp_path / "big.tar", "wb") as f:
        f.write(os.urandom(8192))
    with running(config) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key) as client:
            with pytest.raises(client_errors.ResourceExhausted, match="over 4096 bytes"):
                client.import_bundle(tmp_path / "big.tar", "teams/x")


def test_not_a_tar_and_malformed_records(other, bundle, tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(client_errors.InvalidArgument, match="not a tar archive"):
        other.import_bundle(tmp_path / "junk.tar", "teams/x")
    (bundle / "cubes.jsonl").write_text('{"id": "nope"}\n')
    _relist(bundle)
    with pytest.raises(client_errors.InvalidArgument, match="line 1: id 'nope' is not a cube id"):
        other.import_bundle(bundle, "teams/x")


def test_check_name_allows_only_bundle_names():
    for good in ("manifest.json", "cubes.jsonl", "tensors/" + "a" * 64 + ".safetensors",
                 "adapters/" + "b" * 64 + "/adapter_config.json"):
        assert check_name(good) == good
    for bad in ("../x", "/abs", "tensors/x.safetensors", "a\\b", "cubes.jsonl/..", "tensors/" + "a" * 64 + ".pt"):
        with pytest.raises(BundleError):
            check_name(bad)


def test_remap_moves_the_root_and_keeps_what_is_below_it():
    assert remap("agents/a/notes", "agents/a", "teams/t") == "teams/t/notes"
    assert remap("agents/a", "agents/a", "teams/t") == "teams/t"
    assert remap("x/y", "", "teams/t") == "teams/t/x/y"
    assert remap("x/y", "", "") == "x/y"
    with pytest.raises(BundleError, match="outside the bundle's root"):
        remap("agents/ab", "agents/a", "teams/t")
    with pytest.raises(BundleError, match="more than 8 segments"):
        remap("a/b/c/d/e/f/g", "a", "t/u/v")


_segment = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,10}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_:#-]{1,20}", fullmatch=True)
# Any text a cube may hold: every character but NUL, which the daemon refuses (test_nul_text.py, and below).
_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # as st.text() draws, less NUL
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(_chars, max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(_chars, max_size=8), inner,
                                                                                 max_size=3),
                     max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(namespace=st.lists(_segment, min_size=1, max_size=4).map("/".join),
       text=st.text(_chars, min_size=1, max_size=200).filter(str.strip),
       tags=st.lists(_tag, max_size=5, unique=True),
       metadata=st.dictionaries(st.text(_chars, max_size=8), _json, max_size=4),
       created=st.floats(0, 4e9), state=st.sampled_from([LifecycleState.ACTIVE, LifecycleState.ARCHIVED,
                                                           LifecycleState.EXPIRED]),
       visibility=st.sampled_from(list(Visibility)), priority=st.integers(-2**31, 2**31 - 1))
def test_cube_records_round_trip(namespace, text, tags, metadata, created, state, visibility, priority):
    created = round(created, 6)
    cube = MemCube(id=new_id(created), namespace=namespace, kind=MemoryKind.PLAINTEXT, created_at=created,
                   updated_at=created + 1, owner="alice", state=state, text=text, tags=tuple(tags),
                   metadata=metadata or None, source="s", visibility=visibility, priority=priority,
                   expires_at=None)
    line = json.dumps(cube_record(cube), ensure_ascii=False)
    back = cube_from_record(json.loads(line), Limits())
    for field in ("id", "namespace", "kind", "state", "text", "tags", "metadata", "source", "visibility", "priority"):
        assert getattr(back, field) == getattr(cube, field), field
    assert abs(back.created_at - cube.created_at) < 1e-5 and abs(back.updated_at - cube.updated_at) < 1e-5


@settings(max_examples=100, deadline=None)
@given(text=st.text(_chars, min_size=1, max_size=50).filter(str.strip), metadata=st.dictionaries(
       st.text(_chars, max_size=8), _json, min_size=1, max_size=4), field=st.sampled_from(["text", "metadata", "source"]),
       at=st.integers(0, 10**6))
def test_a_record_with_a_nul_anywhere_in_its_text_is_refused(text, metadata, field, at):
    cube = MemCube(id=new_id(0), namespace="a/b", kind=MemoryKind.PLAINTEXT, created_at=0, updated_at=0, owner="a",
                   text=text, metadata=metadata, source="src")
    rec = cube_record(cube)
    if field == "metadata":  # the NUL goes into one of its strings, a key or a value, at any depth
        count = _with_nul(rec["metadata"], -1)[1]
        rec["metadata"] = _with_nul(rec["metadata"], at % count)[0] if count else {"k": "\x00"}
    else:
        cut = at % (len(rec[field]) + 1)
        rec[field] = rec[field][:cut] + "\x00" + rec[field][cut:]
    with pytest.raises(BundleError, match=f"{field}.*NUL") as info:
        cube_from_record(rec, Limits())
    assert info.value.kind == "InvalidArgument"


def _with_nul(value, n: int):
    """The JSON value with a NUL added to its n-th string (keys and values, depth first), and how many it has."""
    count = 0

    def walk(v):
        nonlocal count
        if isinstance(v, str):
            count += 1
            return v + "\x00" if count - 1 == n else v
        if isinstance(v, list):
            return [walk(i) for i in v]
        if isinstance(v, dict):
            return {walk(k): walk(i) for k, i in v.items()}
        return v

    return walk(value), count


def test_export_is_one_instant_while_writes_go_on(client, tmp_path):
    client.put_many({"text": f"n {i}", "namespace": "agents/admin/busy"} for i in range(2000))
    started = time.perf_counter()
    manifest = client.export(tmp_path / "busy", "agents/admin/busy")
    assert manifest["counts"]["cubes"] == 2000 and time.perf_counter() - started < 30


def test_activation_cubes_travel_with_their_payloads(client, other, tmp_path):
    write_bundle(tmp_path / "kv", cubes=2, kv=3, namespace="agents/admin/kv")
    first = client.import_bundle(tmp_path / "kv")
    assert (first.cubes, first.tensors) == (5, 3)
    assert client.import_bundle(tmp_path / "kv").skipped == 5  # the same payloads in the same namespace
    manifest = client.export(tmp_path / "out", "agents/admin/kv", kinds=["activation"])
    assert manifest["counts"]["activation"] == 3 and manifest["counts"]["plaintext"] == 0
    payloads = sorted(p.name for p in (tmp_path / "out" / "tensors").iterdir())
    assert payloads == sorted(p.name for p in (tmp_path / "kv" / "tensors").iterdir())
    result = other.import_bundle(tmp_path / "out", "teams/kv")
    assert (result.cubes, result.tensors) == (3, 3)
    moved = [c for c in other.list("teams/kv") if c.kind.name == "ACTIVATION"]
    assert len(moved) == 3 and {c.tags[0] for c in moved} == {"kv"}


def test_a_payload_that_does_not_match_its_name_is_refused(other, tmp_path):
    write_bundle(tmp_path / "kv", kv=1, namespace="agents/admin/kv")
    (payload,) = (tmp_path / "kv" / "tensors").iterdir()
    payload.write_bytes(payload.read_bytes()[:-1] + b"!")
    _relist(tmp_path / "kv")
    with pytest.raises(client_errors.DataLoss, match="another digest than its name"):
        other.import_bundle(tmp_path / "kv", "teams/kv")


def test_the_async_client_exports_and_imports(daemon, other_daemon, source, tmp_path):
    import asyncio

    from memos_client import AsyncMemosClient

    async def go():
        async with AsyncMemosClient(daemon.address, key=daemon.admin_key) as a:
            manifest = await a.export(tmp_path / "async.tar.gz", "agents/admin/src")
        async with AsyncMemosClient(other_daemon.address, key=other_daemon.admin_key) as b:
            return manifest, await b.import_bundle(tmp_path / "async.tar.gz", "teams/async")

    manifest, result = asyncio.run(go())
    assert manifest["counts"]["cubes"] == 3 and result.cubes == 3


def test_cancelled_streams_leave_nothing_behind(client, daemon, tmp_path):
    import threading

    from memos_mip.v1 import bundle_pb2, bundle_pb2_grpc
    from tests.daemon import admin_channel

    client.put_many({"text": f"x {i} " + "y" * 1000, "namespace": "agents/admin/big"} for i in range(3000))
    hold = threading.Event()

    def requests():
        yield bundle_pb2.ImportRequest(start=bundle_pb2.ImportStart(namespace="teams/x"))
        yield bundle_pb2.ImportRequest(data=b"\0" * 4096)
        hold.wait(30)

    with admin_channel(daemon.address, daemon.config.data_dir) as channel:
        stub = bundle_pb2_grpc.BundleServiceStub(channel)
        call = stub.Import.future(requests())
        wait_for(lambda: any(p.name.startswith(".import-") for p in daemon.config.data_dir.iterdir()),
                 "the import never staged")
        call.cancel()
        hold.set()
        export = stub.Export(bundle_pb2.ExportRequest(namespace_prefix="agents/admin/big"))
        next(export)  # the first MiB, then walk away
        export.cancel()
    wait_for(lambda: not any(p.name.startswith(".import-") for p in daemon.config.data_dir.iterdir()),
             "the import's staging directory was left behind")
    assert client.export(tmp_path / "after", "agents/admin/big")["counts"]["cubes"] == 3000


def test_adapter_cubes_travel_in_peft_format_and_load_the_same(client, other, tmp_path):
    import torch
    from peft import PeftModel

    from memos_client.adapters import quiet_peft

    from tests.adapter_helpers import logits, save_adapter
    from tests.kv_helpers import tiny_model

    directory = save_adapter(tmp_path / "adapter", "llama")
    cube_id = client.push_adapter(directory, tiny_model("llama"), namespace="agents/admin/skills", tags=["legal"])
    manifest = client.export(tmp_path / "out", "agents/admin/skills", kinds=["parametric"])
    assert manifest["counts"]["parametric"] == 1
    sha = client.get(cube_id).adapter.blob.sha256
    exported = tmp_path / "out" / "adapters" / sha
    assert sorted(p.name for p in exported.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # The exported directory is a PEFT adapter as it stands.
    ids = torch.randint(4, 128, (2, 12))
    with quiet_peft():  # peft's own use of a deprecated transformers API, not ours
        plain_peft = PeftModel.from_pretrained(tiny_model("llama"), exported)
        local = PeftModel.from_pretrained(tiny_model("llama"), directory)
    torch.testing.assert_close(logits(plain_peft, ids), logits(local, ids), atol=1e-6, rtol=0)
    # And it comes back into another daemon as the same blob.
    result = other.import_bundle(tmp_path / "out", "teams/skills")
    assert (result.cubes, result.tensors) == (1, 1)
    [moved] = [c for c in other.list("teams/skills")]
    assert moved.adapter.blob.sha256 == sha and moved.tags == ["legal"]
    loaded = other.load_adapter(moved.id, tiny_model("llama"))
    torch.testing.assert_close(logits(loaded, ids), logits(local, ids), atol=1e-6, rtol=0)
    assert other.import_bundle(tmp_path / "out", "teams/skills").skipped == 1
