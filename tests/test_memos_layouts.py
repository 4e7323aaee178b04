"""MemOS dumps as they ship (MemOS's own example cubes in tests/data/memos), every text layout, and bad dumps."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memos_client import MemosClient
from memos_client import errors as client_errors
from memos_client.cli import main
from memosd.limits import Limits
from tests.daemon import make_config, running

DATA = Path(__file__).parent / "data" / "memos"
MEM_CUBE_2, MEM_CUBE_TREE = DATA / "mem_cube_2", DATA / "mem_cube_tree"


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def tree_doc() -> dict:
    return json.loads((MEM_CUBE_TREE / "textual_memory.json").read_text())


def test_mem_cube_2_imports_as_it_ships_readme_and_all(client):
    result = client.import_bundle(MEM_CUBE_2)
    assert (result.format, result.cubes) == ("memos-dump", 2)
    notes = "\n".join(result.notes)
    assert "read MemOS general (textual_memory.json)" in notes
    assert "ignored 'README.md'" in notes and "parametric_memory.adapter was not imported" in notes
    assert "pass --allow-pickle (and --model DIR" in notes
    cubes = {c.text: c for c in list(client.list("agents/admin/memos/ki-seki-mem_cube_2"))}
    assert set(cubes) == {"The user loves the Eiffel Tower.", "The user is a professor."}
    eiffel = cubes["The user loves the Eiffel Tower."]
    assert eiffel.metadata["memos_id"] == "a18c2ce3-7824-41de-9f67-e6ef9d7c66e7"
    assert eiffel.tags == ["opinions", "landmarks"] and eiffel.metadata["memos_visibility"] == "session"
    assert client.import_bundle(MEM_CUBE_2).skipped == 2  # a second import adds nothing


def test_mem_cube_tree_imports_without_a_config(client):
    result = client.import_bundle(MEM_CUBE_TREE)  # no config.json: the layout is read from the content
    assert result.cubes == 4 and "read MemOS tree (textual_memory.json) (no config.json)" in result.notes[0]
    cubes = list(client.list("agents/admin/memos/mem_cube_tree"))
    assert len(cubes) == 4
    node = next(c for c in cubes if c.metadata["memos_id"] == "c1e2bfb3-4dd7-40f9-a347-a25a72223b2c")
    meta = node.metadata
    assert (meta["memory_type"], meta["key"], meta["confidence"], meta["type"]) == (
        "UserMemory", "Persistence Demonstration", 0.99, "fact")
    assert meta["background"].startswith("On January 13, 2026") and len(meta["sources"]) == 2
    assert "embedding" not in meta and "status" not in meta
    assert node.tags == ["persistence", "memory", "demonstration"]
    # Times are kept as float seconds: to the microsecond, give or take one.
    assert abs(node.created_at.timestamp() - datetime(2026, 1, 13, 20, 51, 42, 394870, UTC).timestamp()) < 2e-6
    assert abs(node.updated_at.timestamp() - datetime(2026, 1, 13, 20, 51, 42, 396309, UTC).timestamp()) < 2e-6
    assert client.import_bundle(MEM_CUBE_TREE).skipped == 4


def test_memosctl_imports_both_examples_with_nothing_else(daemon, client, capsys):
    for src in (MEM_CUBE_2, MEM_CUBE_TREE):
        code = main(["--addr", daemon.address, "--key", str(daemon.admin_key), "import", str(src)])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "imported" in out
        assert ("note: ignored 'README.md'" in err) is (src is MEM_CUBE_2)
    assert len(list(client.list("agents/admin/memos/ki-seki-mem_cube_2"))) == 2
    assert len(list(client.list("agents/admin/memos/mem_cube_tree"))) == 4


def test_tree_edges_become_links_that_get_shows(daemon, client, tmp_path, capsys):
    doc = tree_doc()
    a, b, c = (n["id"] for n in doc["nodes"][:3])
    doc["edges"] = [{"source": a, "target": b, "type": "PARENT"}, {"source": a, "target": c, "type": "RELATE_TO"}]
    dump = tmp_path / "edges"
    dump.mkdir()
    (dump / "textual_memory.json").write_text(json.dumps(doc))
    client.import_bundle(dump, "teams/tree")
    by_memos = {cube.metadata["memos_id"]: cube for cube in list(client.list("teams/tree"))}
    links = by_memos[a].metadata["memos_links"]
    assert links == [{"type": "PARENT", "to": by_memos[b].id, "memos_id": b},
                     {"type": "RELATE_TO", "to": by_memos[c].id, "memos_id": c}]
    assert "memos_links" not in by_memos[b].metadata
    main(["--addr", daemon.address, "--key", str(daemon.admin_key), "get", by_memos[a].id])
    assert by_memos[b].id in capsys.readouterr().out


def test_naive_and_preference_layouts_with_a_config(client, tmp_path):
    dump = tmp_path / "naive"
    dump.mkdir()
    (dump / "config.json").write_text(json.dumps({
        "model_schema": "memos.configs.mem_cube.GeneralMemCubeConfig", "cube_id": "naive_cube",
        "text_mem": {"backend": "naive_text", "config": {"memory_filename": "textual_memory.json"}},
        "pref_mem": {"backend": "pref_text", "config": {"memory_filename": "preference_textual_memories.json"}}}))
    (dump / "textual_memory.json").write_text(json.dumps([
        {"id": "9a7ffb9e-8e6d-4d4c-8a60-3d9c8e0a0c11", "memory": "User plans to visit Paris next week.",
         "metadata": {"type": "event", "status": "activated", "updated_at": "2025-07-01T10:00:00",
                      "tags": ["travel plans"]}}]))
    (dump / "preference_textual_memories.json").write_text(json.dumps({
        "explicit_preference": [{"id": "0d3c1f7a-2b55-4a8e-9d7e-54a1b1b1c0de", "vector": [0.1, 0.2],
                                 "memory": "The user prefers window seats.", "original_text": "user: window please",
                                 "payload": {"preference_type": "explicit_preference", "preference": "window seats",
                                             "created_at": "2025-07-02T08:00:00", "user_id": "u1"}}],
        "implicit_preference": []}))
    result = client.import_bundle(dump)
    assert result.cubes == 2
    assert "naive (textual_memory.json)" in result.notes[0] and "preference (preference_textual" in result.notes[0]
    cubes = {c.text: c for c in list(client.list("agents/admin/memos/naive_cube"))}
    naive = cubes["User plans to visit Paris next week."]
    assert naive.tags == ["travel-plans"] and naive.metadata["memos_tags"] == ["travel plans"]
    pref = cubes["The user prefers window seats."]
    assert pref.metadata["preference"] == "window seats" and pref.metadata["memos_collection"] == "explicit_preference"
    assert pref.metadata["original_text"] == "user: window please" and "vector" not in pref.metadata
    assert pref.created_at.isoformat().startswith("2025-07-02T08:00:00")


def test_format_only_overrides(client, tmp_path):
    with pytest.raises(client_errors.InvalidArgument, match="textual_memory.json' is not a name a bundle may hold"):
        client.import_bundle(MEM_CUBE_TREE, "teams/forced", format="memosd")
    assert client.import_bundle(MEM_CUBE_TREE, "teams/forced", format="memos").cubes == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(client_errors.InvalidArgument, match="holds no MemOS memory files"):
        client.import_bundle(empty, "teams/none")


# ---- bad dumps: a clear error, and nothing stored ------------------------------------------------------


def _bad_tree(tmp_path, mutate) -> Path:
    doc = tree_doc()
    mutate(doc)
    dump = tmp_path / "bad"
    dump.mkdir(parents=True)
    (dump / "textual_memory.json").write_text(json.dumps(doc))
    return dump


@pytest.mark.parametrize("write, message", [
    (lambda d: (d / "textual_memory.json").write_bytes((MEM_CUBE_TREE / "textual_memory.json").read_bytes()[:5000]),
     "textual_memory.json is not JSON"),
    (lambda d: (d / "textual_memory.json").write_bytes(b"\xff\xfe garbage \x00"), "textual_memory.json is not JSON"),
    (lambda d: (d / "config.json").write_text('{"nothing": "here"}'), "config.json is not a MemOS MemCube config"),
    (lambda d: (d / "config.json").write_text('{"text_mem": '), "config.json is not JSON"),
])
def test_truncated_or_garbage_json_is_refused(client, tmp_path, write, message):
    dump = copy(MEM_CUBE_TREE, tmp_path / "dump")
    write(dump)
    with pytest.raises(client_errors.InvalidArgument, match=message):
        client.import_bundle(dump, "teams/bad")
    assert list(client.list("teams/bad")) == []


def test_a_node_without_text_or_an_edge_to_an_unknown_node_stores_nothing(client, tmp_path):
    def no_text(doc):
        doc["nodes"][2]["memory"] = ""
    with pytest.raises(client_errors.InvalidArgument, match="textual_memory.json item 3: memory: text is empty"):
        client.import_bundle(_bad_tree(tmp_path / "a", no_text), "teams/bad")

    def unknown_edge(doc):
        doc["edges"] = [{"source": doc["nodes"][0]["id"], "target": "no-such-node", "type": "PARENT"}]
    with pytest.raises(client_errors.InvalidArgument, match="edge 1: names the node 'no-such-node', which the dump"):
        client.import_bundle(_bad_tree(tmp_path / "b", unknown_edge), "teams/bad")

    def bad_edge(doc):
        doc["edges"] = [{"source": doc["nodes"][0]["id"]}]
    with pytest.raises(client_errors.InvalidArgument, match="needs a source, a target and a type"):
        client.import_bundle(_bad_tree(tmp_path / "c", bad_edge), "teams/bad")

    def twice(doc):
        doc["nodes"][1]["id"] = doc["nodes"][0]["id"]
    with pytest.raises(client_errors.InvalidArgument, match="appears twice"):
        client.import_bundle(_bad_tree(tmp_path / "d", twice), "teams/bad")
    assert list(client.list("teams/bad")) == []


def test_a_pickle_that_is_not_a_kv_cache_is_refused(client, tmp_path):
    for number, obj in enumerate(({"kv_cache_memories": {"x": {"kv_cache": [1, 2]}}}, 42, [{"a": 1}])):
        dump = copy(MEM_CUBE_TREE, tmp_path / f"dump{number}")
        (dump / "activation_memory.pickle").write_bytes(pickle.dumps(obj))
        with pytest.raises(client_errors.InvalidArgument, match="no DynamicCache|holds no KV caches"):
            client.import_bundle(dump, "teams/bad", allow_pickle=True)
    assert list(client.list("teams/bad")) == []


def test_an_oversized_dump_is_refused(tmp_path):
    config = replace(make_config(tmp_path), limits=replace(Limits(), max_bundle_bytes=64 << 10))
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        with pytest.raises(client_errors.ResourceExhausted, match="over 65536 bytes|unpacks to more than"):
            client.import_bundle(MEM_CUBE_TREE, "teams/big")  # 135 KiB of textual_memory.json
        assert list(client.list("teams/big")) == []


def test_subdirectories_hidden_files_and_links_in_a_dump(client, tmp_path):
    dump = copy(MEM_CUBE_TREE, tmp_path / "dump")
    (dump / ".DS_Store").write_bytes(b"\0\1")
    (dump / "nested").mkdir()
    (dump / "nested" / "textual_memory.json").write_text("[]")
    result = client.import_bundle(dump, "teams/odd")
    assert result.cubes == 4
    assert any(".DS_Store, nested/textual_memory.json" in n and "not sent" in n for n in result.notes)
    (dump / "link.json").symlink_to("/etc/passwd")
    with pytest.raises(client_errors.InvalidArgument, match="symbolic link"):
        client.import_bundle(dump, "teams/odd2")
    assert list(client.list("teams/odd2")) == []


def test_a_dump_tar_with_names_outside_it_is_refused(client, tmp_path):
    import io
    import tarfile

    tar_path = tmp_path / "dump.tar"
    with tarfile.open(tar_path, "w") as tar:
        data = (MEM_CUBE_TREE / "textual_memory.json").read_bytes()
        for name in ("textual_memory.json", "../escape.json"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(client_errors.InvalidArgument, match="points outside the bundle"):
        client.import_bundle(tar_path, "teams/tar", format="memos")
    assert not (tmp_path.parent / "escape.json").exists() and list(client.list("teams/tar")) == []
