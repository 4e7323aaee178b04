"""Two imports of the same bundle (or MemOS dump) at once: both succeed, and its cubes are stored once."""

import json
import threading

import pytest

from memos_client import MemosClient
from tests.bundle_helpers import write_bundle
from tests.test_memos_import import CONFIG

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)
ROUNDS = 3  # a race each round; before the fix PostgreSQL lost it (INTERNAL) on the first


def _at_once(daemon, src, namespace, **kwargs):
    """Import src twice, from two clients released together; the two results (or the exceptions raised)."""
    start = threading.Barrier(2)
    results: list = [None, None]

    def one(i):
        with MemosClient(daemon.address, key=daemon.admin_key, timeout=60) as c:
            start.wait(10)
            try:
                results[i] = c.import_bundle(src, namespace, **kwargs)
            except Exception as exc:  # noqa: BLE001 (reported by the assertion below)
                results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not [r for r in results if isinstance(r, Exception)], results
    return results


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_imports_of_one_bundle_store_its_cubes_once(daemon, client, tmp_path, round_):
    n = 400
    write_bundle(tmp_path / "b", cubes=n, namespace="agents/admin/src")
    a, b = _at_once(daemon, tmp_path / "b", "agents/admin/dst")
    assert (a.cubes + b.cubes, a.skipped + b.skipped, a.renamed + b.renamed) == (n, n, 0)
    stored = list(client.list("agents/admin/dst", page_size=1000))
    assert len(stored) == n and len({c.id for c in stored}) == n


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_imports_of_one_memos_dump_store_its_memories_once(daemon, client, tmp_path, round_):
    n = 300
    dump = tmp_path / "cube"
    dump.mkdir()
    (dump / "config.json").write_text(json.dumps(CONFIG))
    (dump / "textual_memory.json").write_text(json.dumps(
        [{"id": f"m{i}", "memory": f"memory {round_} {i}",
          "metadata": {"status": "activated", "updated_at": "2025-06-03T00:00:00"}} for i in range(n)]))
    a, b = _at_once(daemon, dump, "agents/admin/memos", format="memos")
    assert (a.cubes + b.cubes, a.skipped + b.skipped) == (n, n)
    assert len(list(client.list("agents/admin/memos", page_size=1000))) == n


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_imports_of_one_bundle_store_its_kv_caches_once(daemon, client, tmp_path, round_):
    n = 6
    write_bundle(tmp_path / "b", kv=n, namespace="agents/admin/src")
    a, b = _at_once(daemon, tmp_path / "b", "agents/admin/kv")
    assert a.tensors + b.tensors == n, (a, b)
    stored = list(client.list("agents/admin/kv", page_size=1000))
    assert len(stored) == n and len({c.id for c in stored}) == n
