"""Round trips with the real MemOS: a dump MemoryOS wrote imports; an export memosd writes, MemoryOS loads.

The dump in tests/data/memos/memoryos_naive was written by MemoryOS 2.0.33 (scripts/memos_real.py
write); it is imported on every run. The tests that drive MemOS itself, in a subprocess, need a Python
with MemoryOS, kept out of memosd's own environment: `make memos-env` builds one in .venv-memos and
`make test` (CI) passes it as MEMOSD_MEMOS_PYTHON. Without one they skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memos_client import MemosClient, State
from scripts.memos_real import MEMORIES
from tests.daemon import make_config, running
from tests.test_memos_export import ALL_STATES, CLASHING, fill, same

ROOT = Path(__file__).resolve().parents[1]
DUMP = ROOT / "tests" / "data" / "memos" / "memoryos_naive"
MEMOS_VENV_PYTHON = ROOT / ".venv-memos" / "bin" / "python"
MEMOS_PYTHON = os.environ.get("MEMOSD_MEMOS_PYTHON") or (str(MEMOS_VENV_PYTHON) if MEMOS_VENV_PYTHON.exists() else "")
needs_memos = pytest.mark.skipif(not MEMOS_PYTHON and not os.environ.get("CI"),
                                 reason="no Python with MemoryOS: make memos-env, or set MEMOSD_MEMOS_PYTHON")
ALL = [State.ACTIVE, State.ARCHIVED]


@pytest.fixture
def memos_env():
    """The real MemOS; CI (make test) always has it, so there a missing one fails instead of skipping."""
    if not MEMOS_PYTHON:
        pytest.fail("CI runs the round trips through the real MemOS: build it with make memos-env (make test does)")
    return MEMOS_PYTHON


def memos(mode: str, directory: Path) -> dict:
    done = subprocess.run([MEMOS_PYTHON, str(ROOT / "scripts" / "memos_real.py"), mode, str(directory)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout) if mode == "read" else {}


def naive(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def check_imported(client, namespace: str) -> None:
    cubes = {c.metadata["memos_id"]: c for c in client.list(namespace, states=ALL)}
    assert set(cubes) == {m["id"] for m in MEMORIES}
    for m in MEMORIES:
        cube, meta = cubes[m["id"]], m["metadata"]
        assert cube.text == m["memory"] and cube.tags == meta["tags"]
        assert cube.updated_at.timestamp() == naive(meta["updated_at"])
        assert cube.created_at.timestamp() == naive(meta.get("created_at", meta["updated_at"]))
        assert cube.state is (State.ARCHIVED if meta.get("status") == "archived" else State.ACTIVE)
        assert cube.metadata["type"] == meta["type"]
    assert cubes[MEMORIES[0]["id"]].metadata["entities"] == ["Eiffel Tower"]
    assert cubes[MEMORIES[0]["id"]].source == "memos:conversation"


def test_a_dump_memoryos_wrote_imports_once(client):
    result = client.import_bundle(DUMP)
    assert result.cubes == 3 and "read MemOS naive (textual_memory.json)" in result.notes[0]
    check_imported(client, "agents/admin/memos/alice-naive_cube")
    assert client.import_bundle(DUMP).skipped == 3


@pytest.mark.slow
@pytest.mark.timeout(600)  # MemOS imports slowly: a few hundred modules
@needs_memos
def test_memos_writes_memosd_imports(client, tmp_path, memos_env):
    memos("write", tmp_path / "dump")
    assert client.import_bundle(tmp_path / "dump", "teams/from-memos").cubes == 3
    check_imported(client, "teams/from-memos")


@pytest.mark.slow
@pytest.mark.timeout(600)  # MemOS imports slowly: a few hundred modules
@needs_memos
def test_memosd_exports_memos_loads_and_it_comes_back(client, tmp_path, memos_env):
    # Every layout and field memosd takes from MemOS or its own users: a tree dump with edges and a private
    # node, mem_cube_2, MemOS's own naive dump, nested metadata, a priority, an archived and an expiring cube.
    fill(client, tmp_path)
    client.import_bundle(DUMP, "teams/mix")
    client.put("clashing metadata", "teams/mix", metadata=CLASHING)  # what MemOS's loader would refuse
    cubes = {c.id: c for c in client.list("teams/mix", states=ALL_STATES)}
    assert len(cubes) == 13
    client.export(tmp_path / "to-memos", "teams/mix", format="memos")
    loaded = memos("read", tmp_path / "to-memos")
    assert loaded["backend"] == "naive_text"
    seen = {m["metadata"]["memosd_id"]: m for m in loaded["memories"]}
    assert set(seen) == set(cubes)  # MemOS's own loader took every memory
    for cube_id, cube in cubes.items():
        meta = seen[cube_id]["metadata"]
        assert seen[cube_id]["memory"] == cube.text
        assert meta["tags"] == (cube.metadata or {}).get("memos_tags", list(cube.tags))
        assert abs(datetime.fromisoformat(meta["updated_at"]).timestamp() - cube.updated_at.timestamp()) < 2e-6
        assert abs(datetime.fromisoformat(meta["created_at"]).timestamp() - cube.created_at.timestamp()) < 2e-6
        assert meta["status"] == ("archived" if cube.state is State.ARCHIVED else "activated")
    alice = next(m for m in loaded["memories"] if m["memory"] == "Alice prefers window seats")
    assert alice["metadata"]["nested"] == {"a": [1, 2]} and alice["metadata"]["memosd_priority"] == 7

    # MemOS dumps what it loaded; that dump comes back into another daemon as it was, field by field.
    back = tmp_path / "back"
    subprocess.run([MEMOS_PYTHON, "-c", "import sys, logging; logging.disable(logging.WARNING);"
                    " from memos.mem_cube.general import GeneralMemCube;"
                    " GeneralMemCube.init_from_dir(sys.argv[1]).dump(sys.argv[2])",
                    str(tmp_path / "to-memos"), str(back)], check=True, capture_output=True, timeout=300, cwd=ROOT)
    with running(make_config(tmp_path / "fresh")) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as fresh:
        assert fresh.import_bundle(back, "teams/mix").cubes == len(cubes)
        after = {c.id: c for c in fresh.list("teams/mix", states=ALL_STATES)}
        assert set(after) == set(cubes)
        assert {i: same(after[i], cubes[i]) for i in cubes} == {i: [] for i in cubes}
        links = [link for c in after.values() for link in (c.metadata or {}).get("memos_links", [])]
        assert len(links) == 2 and all(link["to"] in after for link in links)  # the tree's edges resolve
        assert fresh.import_bundle(back, "teams/mix").skipped == len(cubes)


@pytest.mark.slow
@pytest.mark.timeout(600)  # MemOS imports slowly: a few hundred modules
@needs_memos
def test_memos_loads_the_kv_caches_memosd_exports(client, tmp_path, memos_env):
    import torch

    from tests.kv_helpers import save_tiny, tiny_tokenizer
    from tests.test_memos_kv_binding import TEXT, dump_with, memos_pickle

    model_dir = save_tiny(tmp_path / "tiny")
    tokens = tiny_tokenizer()(TEXT)["input_ids"]
    data = memos_pickle({"7b9a": (2, 2, 16, torch.float32, {"source_text": TEXT, "_tokens": len(tokens)})})
    client.import_bundle(dump_with(tmp_path, data), "teams/kv", allow_pickle=True, model=model_dir)
    # MemOS's transformers (4.x) names a fast tokenizer's class as it did before transformers 5.
    tokenizer_config = model_dir / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    tokenizer_config.write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    client.export(tmp_path / "to-memos", "teams/kv", format="memos", kv_model=str(model_dir))
    loaded = memos("read", tmp_path / "to-memos")
    assert loaded["kv_caches"]["7b9a"]["layers"] == 2 and loaded["kv_caches"]["7b9a"]["tokens"] == len(tokens)
    assert loaded["kv_caches"]["7b9a"]["shape"] == [1, 2, len(tokens), 16]
    assert loaded["kv_caches"]["7b9a"]["metadata"]["source_text"] == TEXT
    assert {m["memory"] for m in loaded["memories"]} == {"The user loves the Eiffel Tower.", "The user is a professor."}
