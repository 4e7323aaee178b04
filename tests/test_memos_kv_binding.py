"""A MemOS dump's KV caches bound on import (--allow-pickle --model DIR): checked against the model, fingerprinted, stored."""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import sys
import types
from pathlib import Path
from unittest import mock

import pytest

from memos_client import MemosClient
from memos_client import errors as client_errors
from memos_client.cli import main
from memos_client.models import Kind
from tests.kv_helpers import save_tiny, tiny_tokenizer

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data" / "memos"
TEXT = "alice likes the window seat"


@contextlib.contextmanager
def memos_classes():
    """Classes named as MemOS pickles its caches (memos' KVCacheItem, transformers' DynamicCache), in place
    while the test writes the pickle MemOS writes, without MemOS (and without changing transformers after)."""
    import transformers.cache_utils

    item_cls = type("KVCacheItem", (), {"__module__": "memos.memories.activation.item"})
    cache_cls = type("DynamicCache", (), {"__module__": "transformers.cache_utils"})
    fake = {name: types.ModuleType(name) for name in ("memos", "memos.memories", "memos.memories.activation",
                                                      "memos.memories.activation.item")}
    fake["memos.memories.activation.item"].KVCacheItem = item_cls  # type: ignore[attr-defined]
    with mock.patch.dict(sys.modules, fake), mock.patch.object(transformers.cache_utils, "DynamicCache", cache_cls):
        yield {"KVCacheItem": item_cls, "DynamicCache": cache_cls}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny")


def memos_pickle(caches: dict[str, tuple[int, int, int, object, dict]]) -> bytes:
    """activation_memory.pickle as MemOS writes it: {id: (layers, heads, head_dim, dtype, metadata)}."""
    with memos_classes() as classes:
        return _memos_pickle(classes, caches)


def _memos_pickle(classes, caches) -> bytes:
    import torch

    items = {}
    for number, (key, (layers, heads, head_dim, dtype, meta)) in enumerate(caches.items()):
        tokens = meta.pop("_tokens")
        torch.manual_seed(number)
        cache = classes["DynamicCache"]()
        cache.__dict__.update(_seen_tokens=tokens,
                              key_cache=[torch.randn(1, heads, tokens, head_dim, dtype=dtype) for _ in range(layers)],
                              value_cache=[torch.randn(1, heads, tokens, head_dim, dtype=dtype) for _ in range(layers)])
        item = classes["KVCacheItem"]()
        item.__dict__.update(kv_cache_id=key, kv_cache=cache, metadata=meta)
        items[key] = item
    return pickle.dumps({"kv_cache_memories": items}, protocol=pickle.HIGHEST_PROTOCOL)


def dump_with(tmp_path: Path, data: bytes) -> Path:
    dump = tmp_path / "dump"
    shutil.copytree(DATA / "mem_cube_2", dump)
    (dump / "activation_memory.pickle").write_bytes(data)
    return dump


def test_caches_bind_to_the_model_and_a_second_import_adds_nothing(client, model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from memos_mip.fingerprint import model_fingerprint

    tokens = tiny_tokenizer()(TEXT)["input_ids"]
    data = memos_pickle({
        "7b9a": (2, 2, 16, torch.float32, {"source_text": TEXT, "_tokens": len(tokens)}),
        "c0de": (2, 2, 16, torch.float32, {"token_ids": [5, 6, 7], "_tokens": 3}),
    })
    dump = dump_with(tmp_path, data)
    result = client.import_bundle(dump, "teams/kv", allow_pickle=True, model=model_dir)
    assert (result.cubes, result.tensors) == (4, 2)  # 2 textual memories, 2 caches
    assert any("2 KV caches bound to the model" in n for n in result.notes)
    assert not any("not stored" in n or "was not read" in n for n in result.notes)
    caches = {c.metadata["memos_id"]: c for c in client.list("teams/kv", kinds=[Kind.ACTIVATION])}
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    assert caches["7b9a"].activation.model_fingerprint == model_fingerprint(model)
    assert list(caches["7b9a"].activation.token_ids) == tokens  # re-tokenized from its source_text
    assert list(caches["c0de"].activation.token_ids) == [5, 6, 7]  # taken from the item
    assert caches["7b9a"].metadata["source_text"] == TEXT and caches["7b9a"].source == "memos:kv_cache"
    pulled = client.pull_kv(caches["7b9a"].id, model)
    with memos_classes():
        original = pickle.loads(data)["kv_cache_memories"]["7b9a"].kv_cache.key_cache[1]
    assert torch.equal(pulled.layers[1].keys, original)

    again = client.import_bundle(dump, "teams/kv", allow_pickle=True, model=model_dir)
    assert (again.cubes, again.skipped) == (0, 4)
    assert len(list(client.list("teams/kv", kinds=[Kind.ACTIVATION]))) == 2


@pytest.mark.parametrize("shape, message", [
    ((3, 2, 16), "the cache has 3 layers; the model has 2"),
    ((2, 4, 16), "has 4 heads; the model has 2 key/value heads"),
    ((2, 2, 8), "head size is 8; the model's is 16"),
])
def test_a_cache_that_does_not_fit_the_model_is_refused_naming_the_mismatch(client, model_dir,
                                                                          tmp_path, shape, message):
    import torch

    data = memos_pickle({"7b9a": (*shape, torch.float32, {"source_text": TEXT, "_tokens": 5})})
    with pytest.raises(client_errors.InvalidArgument, match=f"KV cache 7b9a .* does not fit the model .*{message}"):
        client.import_bundle(dump_with(tmp_path, data), "teams/kv", allow_pickle=True, model=model_dir)
    assert list(client.list("teams/kv")) == []  # checked before anything was sent


def test_mem_cube_2s_qwen_cache_does_not_fit_a_tiny_model(client, model_dir):
    with pytest.raises(client_errors.InvalidArgument, match="KV cache 7b9a6488-.* the cache has 28 layers; the model"
                       " has 2"):
        client.import_bundle(DATA / "mem_cube_2", "teams/qwen", allow_pickle=True, model=model_dir)
    assert list(client.list("teams/qwen")) == []


def test_a_cache_without_token_ids_or_text_is_refused_with_the_reason(client, model_dir, tmp_path):
    import torch

    data = memos_pickle({"x1": (2, 2, 16, torch.float32, {"_tokens": 4})})
    with pytest.raises(client_errors.InvalidArgument, match="carries neither token ids nor its source_text"):
        client.import_bundle(dump_with(tmp_path / "a", data), "teams/kv", allow_pickle=True, model=model_dir)
    data = memos_pickle({"x2": (2, 2, 16, torch.float32, {"source_text": TEXT, "_tokens": 9})})
    with pytest.raises(client_errors.InvalidArgument, match="covers 9 tokens, but its source_text tokenizes to"):
        client.import_bundle(dump_with(tmp_path / "b", data), "teams/kv", allow_pickle=True, model=model_dir)
    assert list(client.list("teams/kv")) == []


def test_without_model_the_note_names_the_flag_and_model_needs_allow_pickle(client, model_dir):
    result = client.import_bundle(DATA / "mem_cube_2", "teams/noted", allow_pickle=True)
    (note,) = [n for n in result.notes if "KV caches" in n]
    assert "1 KV caches (for Qwen/Qwen3-1.7B)" in note and "pass --model DIR" in note
    with pytest.raises(client_errors.InvalidArgument, match="pass both"):
        client.import_bundle(DATA / "mem_cube_2", "teams/noted", model=model_dir)
    with pytest.raises(client_errors.InvalidArgument, match="holds no .pickle"):
        client.import_bundle(DATA / "mem_cube_tree", "teams/noted", allow_pickle=True, model=model_dir)


def test_memosctl_binds_with_allow_pickle_and_model(daemon, client, model_dir, tmp_path, capsys):
    import torch

    tokens = tiny_tokenizer()(TEXT)["input_ids"]
    data = memos_pickle({"7b9a": (2, 2, 16, torch.float32, {"source_text": TEXT,
                                                                           "_tokens": len(tokens)})})
    code = main(["--addr", daemon.address, "--key", str(daemon.admin_key), "import", str(dump_with(tmp_path, data)),
                 "-n", "teams/cli", "--allow-pickle", "--model", str(model_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["tensors"] == 1


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/memosd-pwned-bind",))


def test_the_client_reads_the_pickle_with_the_same_tensors_only_unpickler(client, model_dir, tmp_path):
    import os

    dump = dump_with(tmp_path, pickle.dumps({"kv_cache_memories": {"x": _Evil()}}))
    with pytest.raises(client_errors.InvalidArgument, match="refused: the pickle wants posix.system"):
        client.import_bundle(dump, "teams/evil", allow_pickle=True, model=model_dir)
    assert not os.path.exists("/tmp/memosd-pwned-bind")
    (dump / "activation_memory.pickle").write_bytes(b"\x80\x05garbage")
    with pytest.raises(client_errors.InvalidArgument, match="malformed"):
        client.import_bundle(dump, "teams/evil", allow_pickle=True, model=model_dir)
    assert list(client.list("teams/evil")) == []


def test_kv_caches_export_in_memos_pickle_and_bind_again(client, model_dir, tmp_path):
    import torch

    from memos_mip.memos_kv import read_kv_pickle
    from tests.daemon import make_config, running

    tokens = tiny_tokenizer()(TEXT)["input_ids"]
    data = memos_pickle({"7b9a": (2, 2, 16, torch.float32, {"source_text": TEXT, "_tokens": len(tokens)})})
    client.import_bundle(dump_with(tmp_path, data), "teams/kv", allow_pickle=True, model=model_dir)
    (before,) = client.list("teams/kv", kinds=[Kind.ACTIVATION])
    plain = client.export(tmp_path / "text-only", "teams/kv", format="memos")
    assert plain["counts"]["activation"] == 1 and any("--kv-model" in n for n in plain["notes"])
    assert not (tmp_path / "text-only" / "activation_memory.pickle").exists()

    summary = client.export(tmp_path / "out", "teams/kv", format="memos", kv_model=str(model_dir))
    assert summary["counts"]["kv_caches"] == 1 and summary["counts"]["activation"] == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["act_mem"]["backend"] == "kv_cache"
    assert config["act_mem"]["config"]["extractor_llm"]["config"]["model_name_or_path"] == str(model_dir)
    (kv,) = read_kv_pickle((tmp_path / "out" / "activation_memory.pickle").read_bytes())
    assert kv.memos_id == "7b9a" and kv.token_ids == tokens and kv.metadata["source_text"] == TEXT
    with memos_classes():
        original = pickle.loads(data)["kv_cache_memories"]["7b9a"].kv_cache
    assert all(torch.equal(a, b) for a, b in zip(kv.keys + kv.values, original.key_cache + original.value_cache))

    with running(make_config(tmp_path / "fresh")) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as fresh:
        result = fresh.import_bundle(tmp_path / "out", "teams/kv", allow_pickle=True, model=model_dir)
        assert (result.cubes, result.tensors) == (3, 1)
        (after,) = fresh.list("teams/kv", kinds=[Kind.ACTIVATION])
        assert after.activation.token_ids == before.activation.token_ids
        assert after.activation.model_fingerprint == before.activation.model_fingerprint
        assert after.metadata["memos_id"] == "7b9a" and after.metadata["source_text"] == TEXT
