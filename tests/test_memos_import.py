"""Importing MemTensor/MemOS MemCube dumps, and the tensors-only unpickler for their KV caches."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types

import pytest

from memos_client import errors as client_errors
from memos_client.models import State
from memos_mip.memos_kv import kv_caches
from memosd.bundle.memos_dump import default_namespace, memos_item_cube, stable_id
from memosd.cube import LifecycleState, Visibility
from memosd.limits import Limits

CONFIG = {
    "model_schema": "memos.configs.mem_cube.GeneralMemCubeConfig", "user_id": "ki", "cube_id": "Ki-Seki/mem_cube_2",
    "config_filename": "config.json",
    "text_mem": {"backend": "general_text", "config": {"memory_filename": "textual_memory.json"}},
    "act_mem": {"backend": "kv_cache", "config": {"memory_filename": "activation_memory.pickle", "extractor_llm": {
        "backend": "huggingface", "config": {"model_name_or_path": "Qwen/Qwen3-1.7B"}}}},
}
GENERAL = [  # general_text: vector-db items whose payload is the memory item
    {"id": "a18c2ce3-7824-41de-9f67-e6ef9d7c66e7", "vector": [0.1, 0.2],
     "payload": {"id": "a18c2ce3-7824-41de-9f67-e6ef9d7c66e7", "memory": "The user loves the Eiffel Tower.",
                 "metadata": {"user_id": "user_123", "session_id": "s1", "status": "activated", "type": "opinion",
                              "memory_time": "2025-06-03", "source": "conversation", "confidence": 100.0,
                              "entities": ["Eiffel Tower"], "tags": ["opinions", "famous landmarks"],
                              "visibility": "private", "updated_at": "2025-06-03T00:00:00"}}},
    {"id": "b2", "vector": [0.3], "payload": {"id": "b2", "memory": "The user moved to Lyon.",
                                              "metadata": {"status": "archived", "updated_at": "2025-06-04T10:00:00"}}},
    {"id": "c3", "payload": {"id": "c3", "memory": "gone", "metadata": {"status": "deleted"}}},
]
TREE = {"nodes": [{"id": "c1e2bfb3", "memory": "On January 13, 2026 the user added a memory.",
                   "metadata": {"created_at": "2026-01-13T20:51:42.394870000+00:00", "memory_type": "UserMemory",
                                "key": "Persistence Demonstration", "tags": ["persistence"], "status": "activated",
                                "embedding": [0.5] * 8, "background": "demo"}}],
        "edges": [], "total_nodes": 1, "total_edges": 0}


def write_dump(path, textual=GENERAL, pickle_bytes: bytes | None = None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(CONFIG))
    (path / "textual_memory.json").write_text(json.dumps(textual))
    if pickle_bytes is not None:
        (path / "activation_memory.pickle").write_bytes(pickle_bytes)
    return path


def test_memos_dump_imports_its_textual_memories(client, tmp_path):
    dump = write_dump(tmp_path / "cube")
    result = client.import_bundle(dump)  # decided from its files: config.json, no manifest.json
    assert result.format == "memos-dump" and result.cubes == 2
    assert any("deleted" in note for note in result.notes)
    cubes = {c.text: c for c in client.list("agents/admin/memos/ki-seki-mem_cube_2", states=[State.ACTIVE, State.ARCHIVED])}
    eiffel = cubes["The user loves the Eiffel Tower."]
    assert eiffel.tags == ["opinions", "famous-landmarks"] and eiffel.source == "memos:conversation"
    assert eiffel.metadata["memos_id"] == "a18c2ce3-7824-41de-9f67-e6ef9d7c66e7"
    assert eiffel.metadata["entities"] == ["Eiffel Tower"] and eiffel.metadata["confidence"] == 100.0
    assert "vector" not in eiffel.metadata and "status" not in eiffel.metadata
    assert eiffel.created_at.isoformat().startswith("2025-06-03T00:00:00")
    assert cubes["The user moved to Lyon."].state is State.ARCHIVED
    assert client.import_bundle(dump).skipped == 2  # stable ids: a second import stores nothing twice


def test_memories_without_timestamps_import_once(client, tmp_path):
    """MemOS writes items with no created_at or updated_at (a naive cube's, a hand-written dump's): their ids
    may not depend on the time of the import, or a second import stores them all again."""
    undated = [{"id": "u1", "memory": "No date on this one."}, {"id": "u2", "memory": "Nor on this one."}]
    dump = write_dump(tmp_path / "undated", textual=undated)
    assert client.import_bundle(dump, "teams/undated").cubes == 2
    again = client.import_bundle(dump, "teams/undated")
    assert again.skipped == 2 and again.cubes == 0
    assert sorted(c.text for c in client.list("teams/undated")) == ["No date on this one.", "Nor on this one."]


def test_memos_tree_dump_under_a_chosen_namespace(client, tmp_path):
    dump = write_dump(tmp_path / "tree", textual=TREE)
    result = client.import_bundle(dump, "teams/memos", format="memos")
    assert result.cubes == 1
    (cube,) = client.list("teams/memos")
    assert cube.metadata["key"] == "Persistence Demonstration" and "embedding" not in cube.metadata
    assert cube.created_at.isoformat().startswith("2026-01-13T20:51:42.394870")


def test_memos_item_mapping_without_a_daemon():
    cube = memos_item_cube(GENERAL[0], "teams/t", Limits(), now=0.0)
    assert cube.visibility is Visibility.OWNER and cube.state is LifecycleState.ACTIVE
    assert memos_item_cube(GENERAL[2], "teams/t", Limits(), now=0.0) is None
    assert stable_id(1.0, "x") == stable_id(1.0, "x") != stable_id(1.0, "y")
    assert default_namespace("alice", "Ki-Seki/mem_cube_2") == "agents/alice/memos/ki-seki-mem_cube_2"
    with pytest.raises(Exception, match="status 'weird'"):
        memos_item_cube({"memory": "x", "metadata": {"status": "weird"}}, "teams/t", Limits(), now=0.0)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/memosd-pwned",))


def test_the_pickle_is_not_read_without_the_flag_and_refused_if_it_imports_anything(client, tmp_path):
    evil = pickle.dumps({"kv_cache_memories": {"x": _Evil()}})
    dump = write_dump(tmp_path / "evil", pickle_bytes=evil)
    result = client.import_bundle(dump, "teams/evil")
    assert result.cubes == 2 and any("--allow-pickle" in note for note in result.notes)
    with pytest.raises(client_errors.InvalidArgument, match="wants posix.system"):
        client.import_bundle(dump, "teams/evil2", allow_pickle=True)
    assert not os.path.exists("/tmp/memosd-pwned")
    assert list(client.list("teams/evil2")) == []


@pytest.fixture
def memos_classes(monkeypatch):
    """Classes named as MemOS pickles its caches (memos' KVCacheItem, transformers' old DynamicCache),
    so the test can write the pickle MemOS writes without either package."""
    made = {}
    for module_name, class_name in (("memos.memories.activation.item", "KVCacheItem"),
                                    ("transformers.cache_utils", "DynamicCache")):
        module = types.ModuleType(module_name)
        cls = type(class_name, (), {"__module__": module_name})
        setattr(module, class_name, cls)
        parts = module_name.split(".")
        for i in range(1, len(parts)):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        monkeypatch.setitem(sys.modules, module_name, module)
        made[class_name] = cls
    return made


@pytest.mark.slow
def test_a_real_kv_pickle_loads_as_tensors_only(memos_classes, tmp_path, client):
    torch = pytest.importorskip("torch")
    from memos_mip.pickle_guard import PickleRefused, Record, load_tensors_pickle

    cache = memos_classes["DynamicCache"]()
    cache.__dict__.update(_seen_tokens=3, key_cache=[torch.randn(1, 2, 3, 4, dtype=torch.bfloat16) for _ in range(2)],
                          value_cache=[torch.randn(1, 2, 3, 4, dtype=torch.bfloat16) for _ in range(2)])
    item = memos_classes["KVCacheItem"]()
    item.__dict__.update(kv_cache_id="7b9a", kv_cache=cache, metadata={"source_text": "The user is a Chinese man."})
    data = pickle.dumps({"kv_cache_memories": {"7b9a": item}})

    obj = load_tensors_pickle(data)
    assert isinstance(obj["kv_cache_memories"]["7b9a"], Record)
    (kv,) = kv_caches(obj)
    assert kv.memos_id == "7b9a" and kv.metadata == {"source_text": "The user is a Chinese man."}
    assert torch.equal(kv.keys[1], cache.key_cache[1]) and kv.values[0].dtype is torch.bfloat16

    # A storage whose bytes hide a full pickle is refused by torch's weights-only loader.
    class Sneaky:
        def __reduce__(self):
            import torch.storage

            return (torch.storage._load_from_bytes, (pickle.dumps(_Evil()),))
    with pytest.raises(PickleRefused, match="does not load as plain weights"):
        load_tensors_pickle(pickle.dumps(Sneaky()))
    with pytest.raises(PickleRefused, match="malformed"):
        load_tensors_pickle(data[:-40])

    dump = write_dump(tmp_path / "kv", pickle_bytes=data)
    result = client.import_bundle(dump, "teams/kv", allow_pickle=True)
    assert result.cubes == 2 and any("1 KV caches (for Qwen/Qwen3-1.7B)" in n for n in result.notes)


@pytest.mark.parametrize("payload", [
    b"cos\nsystem\n(S'echo hi'\ntR.",               # protocol 0 GLOBAL + REDUCE
    pickle.dumps(print), pickle.dumps(getattr),     # any callable by name
    b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04eval\x93.",
    b"ctorch\nload\n.", b"ctorch\nsave\n.", b"ctorch\n_C\n.",  # torch names other than its dtypes and device
    b"ctorch\ndevice\n(ctorch\nload\ntR.",   # a device made of something that is not its name
])
def test_the_unpickler_refuses_every_other_global(payload):
    from memos_mip.pickle_guard import PickleRefused, load_tensors_pickle

    with pytest.raises(PickleRefused):
        load_tensors_pickle(payload)
