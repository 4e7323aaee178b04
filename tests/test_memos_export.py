"""Export to MemOS (memosctl export DEST --format memos): a MemOS MemCube directory, read back with nothing lost."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from memos_client import MemosClient, State
from memos_client.cli import main
from memos_client.memos_export import ulid_uuid
from tests.daemon import make_config, running

DATA = Path(__file__).parent / "data" / "memos"
ALL_STATES = [State.ACTIVE, State.ARCHIVED, State.EXPIRED]
FIELDS = ("id", "text", "tags", "metadata", "source", "state", "priority", "created_at", "updated_at",
          "expires_at")


def tree_dump(tmp_path: Path) -> Path:
    """MemOS's tree example with two edges and one private memory."""
    doc = json.loads((DATA / "mem_cube_tree" / "textual_memory.json").read_text())
    a, b, c = (n["id"] for n in doc["nodes"][:3])
    doc["edges"] = [{"source": a, "target": b, "type": "PARENT"}, {"source": c, "target": a, "type": "FOLLOWS"}]
    doc["nodes"][3]["metadata"]["visibility"] = "private"
    dump = tmp_path / "tree"
    dump.mkdir()
    (dump / "textual_memory.json").write_text(json.dumps(doc))
    return dump


def fill(client, tmp_path: Path) -> None:
    client.import_bundle(tree_dump(tmp_path), "teams/mix")
    client.import_bundle(DATA / "mem_cube_2", "teams/mix")  # tags, visibility "session", source conversation
    client.put("Alice prefers window seats", "teams/mix", tags=["travel", "pref"], metadata={"speaker": "alice",
               "n": 3, "nested": {"a": [1, 2]}, "empty": [], "version": 1}, source="chat:1", priority=7)
    old = client.put("an old note", "teams/mix/sub", tags=["old"])
    client.update(old.id, state=State.ARCHIVED)
    client.put("soon gone", "teams/mix", ttl=3600)


def same(a, b) -> list[str]:
    """The fields in which two cubes differ; times as float seconds, to the microsecond give or take one."""
    differ = []
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if hasattr(x, "timestamp") and hasattr(y, "timestamp"):
            if abs(x.timestamp() - y.timestamp()) > 2e-6:
                differ.append(f"{name}: {x} != {y}")
        elif x != y:
            differ.append(f"{name}: {x!r} != {y!r}")
    return differ


def test_export_to_memos_and_back_loses_nothing(client, tmp_path):
    fill(client, tmp_path)
    before = {c.id: c for c in client.list("teams/mix", states=ALL_STATES)}
    summary = client.export(tmp_path / "memos", "teams/mix", format="memos")
    assert summary["counts"]["memories"] == len(before) == 9

    config = json.loads((tmp_path / "memos" / "config.json").read_text())
    assert config["model_schema"] == "memos.configs.mem_cube.GeneralMemCubeConfig"
    assert config["text_mem"]["backend"] == "naive_text"
    items = {i["id"]: i for i in json.loads((tmp_path / "memos" / "textual_memory.json").read_text())}
    assert all(uuid.UUID(i) for i in items)
    memos_ids = {c.metadata["memos_id"] for c in before.values() if c.metadata and "memos_id" in c.metadata}
    assert memos_ids < set(items)  # what came from MemOS goes back under its MemOS id
    alice = next(c for c in before.values() if c.text == "Alice prefers window seats")
    item = items[ulid_uuid(alice.id)]
    assert item["metadata"]["tags"] == ["travel", "pref"] and item["metadata"]["status"] == "activated"
    assert item["metadata"]["speaker"] == "alice" and "source" not in item["metadata"]  # chat:1 is not MemOS's

    with running(make_config(tmp_path / "fresh")) as fresh_daemon, \
            MemosClient(fresh_daemon.address, key=fresh_daemon.admin_key) as fresh:
        result = fresh.import_bundle(tmp_path / "memos", "teams/mix")
        assert result.cubes == 9
        after = {c.id: c for c in fresh.list("teams/mix", states=ALL_STATES)}
        assert set(after) == set(before)
        assert {i: same(after[i], before[i]) for i in before} == {i: [] for i in before}
        links = [link for c in after.values() for link in (c.metadata or {}).get("memos_links", [])]
        assert len(links) == 2 and all(link["to"] in after for link in links)
        assert fresh.import_bundle(tmp_path / "memos", "teams/mix").skipped == 9  # a second import adds nothing


def test_the_export_holds_only_what_the_caller_may_read(client, daemon, tmp_path):
    fill(client, tmp_path)
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    client.grant("agent:bob", ["read"], ["teams/mix/**"])
    client.put("not granted", "teams/secret")
    with MemosClient(daemon.address, key=tmp_path / "bob.key") as bob:
        summary = bob.export(tmp_path / "bob", "teams", format="memos")
        texts = [i["memory"] for i in json.loads((tmp_path / "bob" / "textual_memory.json").read_text())]
        assert "not granted" not in texts
        # MemOS's private memories (one in each dump) are admin's alone (owner-only): bob may not read them,
        # so they are not exported.
        assert "The user is a professor." not in texts
        assert summary["counts"]["memories"] == 7 and len(texts) == 7
        nothing = bob.export(tmp_path / "bob2", "agents/admin", format="memos")  # none of it is bob's to read
        assert nothing["counts"]["memories"] == 0
        assert json.loads((tmp_path / "bob2" / "textual_memory.json").read_text()) == []


def test_memosctl_export_format_memos(ctl_args, client, tmp_path, capsys):
    client.put("Bob is allergic to peanuts", "teams/cli", tags=["health"])
    code = main([*ctl_args, "export", str(tmp_path / "out"), "--format", "memos", "-n", "teams/cli"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "exported 1 textual memories" in out and "GeneralMemCube.init_from_dir" in out
    code = main([*ctl_args, "export", str(tmp_path / "out"), "--format", "memos", "-n", "teams/cli"])
    assert code != 0 and "exists already" in capsys.readouterr().err


@pytest.fixture
def ctl_args(daemon):
    return ["--addr", daemon.address, "--key", str(daemon.admin_key)]


# Cube metadata under names MemOS's metadata models declare, with values MemOS would refuse (its loader
# raises, and the whole cube fails to load) or rewrite (sources become SourceMessage objects), and names
# the export writes itself (status, created_at): MemOS never sees what it cannot hold, and all of it comes back.
CLASHING = {"confidence": "high", "version": "v2", "memory_type": "notes", "usage": None, "history": [{"x": 1}],
            "id": "mine", "memory": "shadow", "metadata": {"a": 1}, "status": "draft", "created_at": "yesterday",
            "key": None, "sources": ["a note", '{"role": "user", "content": "hi"}', {"type": "web", "url": "u"}],
            "memosd_id": "not mine", "tags": ["meta"]}


def test_metadata_memos_would_refuse_or_rewrite_comes_back_as_it_was(client, tmp_path):
    cube = client.put("clashing metadata", "teams/clash", metadata=CLASHING)
    client.export(tmp_path / "memos", "teams/clash", format="memos")
    (item,) = json.loads((tmp_path / "memos" / "textual_memory.json").read_text())
    meta = item["metadata"]
    assert not {"confidence", "version", "memory_type", "usage", "history", "id", "memory", "metadata"} & set(meta)
    assert meta["status"] == "activated" and meta["memosd_id"] == cube.id and meta["key"] is None
    assert meta["sources"] == [  # as MemOS's own loader coerces them
        {"type": "doc", "role": None, "chat_time": None, "message_id": None, "content": "a note", "doc_path": None,
         "file_info": None, "image_info": None},
        {"type": "chat", "role": "user", "chat_time": None, "message_id": None, "content": "hi", "doc_path": None,
         "file_info": None, "image_info": None},
        {"type": "web", "role": None, "chat_time": None, "message_id": None, "content": None, "doc_path": None,
         "file_info": None, "image_info": None, "url": "u"}]
    with running(make_config(tmp_path / "fresh")) as fresh_daemon, \
            MemosClient(fresh_daemon.address, key=fresh_daemon.admin_key) as fresh:
        assert fresh.import_bundle(tmp_path / "memos", "teams/clash").cubes == 1
        assert same(fresh.get(cube.id), cube) == []
