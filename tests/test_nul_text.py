"""Text holding a NUL character ("\\x00") is refused with INVALID_ARGUMENT naming the field, on every way text enters
and on both vault engines (PostgreSQL's text and jsonb cannot hold it; SQLite could, so the rule is the core's)."""

import hashlib
import json

import pytest

from memos_client import InvalidArgument
from tests.test_memos_import import CONFIG

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)
NS = "agents/admin/nul"


@pytest.mark.parametrize("fields, named", [
    ({"text": "before\x00after"}, "text"),
    ({"metadata": {"speaker": "al\x00ice"}}, "metadata"),
    ({"metadata": {"k\x00ey": "v"}}, "metadata"),
    ({"metadata": {"deep": [{"x": ["\x00"]}]}}, "metadata"),
    ({"source": "chat\x00:1"}, "source"),
    ({"tags": ["a\x00b"]}, "tag"),
])
def test_put_and_put_many_refuse_nul(client, fields, named):
    draft = {"text": "plain text", "namespace": NS, **fields}
    with pytest.raises(InvalidArgument, match=named) as info:
        client.put(draft.pop("text"), draft.pop("namespace"), **draft)
    assert "NUL" in str(info.value) or named == "tag"
    with pytest.raises(InvalidArgument, match=named):
        client.put_many([{"text": "fine", "namespace": NS}, {"text": "plain text", "namespace": NS, **fields}])
    assert list(client.list(NS)) == []  # the batch is all or nothing


@pytest.mark.parametrize("change, named", [
    ({"text": "new\x00text"}, "text"),
    ({"metadata": {"a": "b\x00"}}, "metadata"),
    ({"source": "\x00"}, "source"),
    ({"tags": ["x\x00"]}, "tag"),
])
def test_update_refuses_nul_and_keeps_the_cube(client, change, named):
    cube = client.put("the original", NS, metadata={"a": "b"})
    with pytest.raises(InvalidArgument, match=named):
        client.update(cube.id, **change)
    now = client.get(cube.id)
    assert (now.version, now.text, now.metadata) == (1, "the original", {"a": "b"})


def _bundle(client, tmp_path, **changes):
    """An export of one good cube, its record then changed as given and the manifest made to agree."""
    client.put("exported and changed", NS + "/src", metadata={"m": "v"}, source="s")
    root = tmp_path / "bundle"
    client.export(root, NS + "/src")
    rec = json.loads((root / "cubes.jsonl").read_text())
    rec.update(changes)
    (root / "cubes.jsonl").write_text(json.dumps(rec) + "\n")
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (root / entry["path"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize("changes, named", [
    ({"text": "\x00 leading"}, "text"),
    ({"metadata": {"m": "v\x00"}}, "metadata"),
    ({"source": "s\x00"}, "source"),
])
def test_bundle_import_refuses_nul(client, tmp_path, changes, named):
    bundle = _bundle(client, tmp_path, **changes)
    with pytest.raises(InvalidArgument, match=f"cubes.jsonl line 1: .*{named}"):
        client.import_bundle(bundle, NS + "/dst")
    assert list(client.list(NS + "/dst")) == []


@pytest.mark.parametrize("item, named", [
    ({"id": "m1", "memory": "memo\x00ry", "metadata": {"status": "activated"}}, "memory"),
    ({"id": "m2", "memory": "fine", "metadata": {"status": "activated", "entities": ["a\x00"]}}, "metadata"),
    ({"id": "m3", "memory": "fine", "metadata": {"status": "activated", "source": "conv\x00"}}, "source"),
    ({"id": "m4", "memory": "fine", "metadata": {"status": "activated", "tags": ["t\x00"]}}, "metadata"),
])
def test_memos_import_refuses_nul(client, tmp_path, item, named):
    dump = tmp_path / "cube"
    dump.mkdir()
    (dump / "config.json").write_text(json.dumps(CONFIG))
    (dump / "textual_memory.json").write_text(json.dumps({"nodes": [item], "edges": []}))
    with pytest.raises(InvalidArgument, match=f"item 1: .*{named}"):
        client.import_bundle(dump, NS + "/memos", format="memos")
    assert list(client.list(NS + "/memos")) == []
