"""BM25 on a large vault: corpus-common words only add to the score of cubes matching rarer words."""

import asyncio

import pytest

from memosd.cube import CubeDraft, CubeFilter
from memosd.vault import MemVault
from memosd.vault import fulltext
from memosd.vault.fulltext import FullText


@pytest.fixture
def vault(tmp_path):
    v = MemVault(tmp_path)
    # Treat 30 cubes as "large", and a word in over a fifth of them as common.
    v.fulltext = FullText(large_vault=30, common_share=0.2)
    texts = [f"filler cube number {i} about the weather" for i in range(40)]
    texts += ["the weather on the glacier was cold", "a glacier hike", "weather report", "zebra weather glacier"]
    asyncio.run(v.put_many([CubeDraft("agents/a/n", t) for t in texts], "a"))
    yield v
    asyncio.run(v.close())


def search(vault, query, limit=5):
    hits, _ = asyncio.run(vault.search(query, CubeFilter(), limit))
    return [h.cube.text for h in hits]


def test_rare_words_decide_and_common_words_still_score(vault):
    found = search(vault, "weather glacier")
    # Every cube with the rare word comes first; the common word matched alone only after them.
    assert set(found[:3]) == {"the weather on the glacier was cold", "a glacier hike", "zebra weather glacier"}
    assert all("glacier" not in t for t in found[3:])


def test_too_few_rare_matches_are_topped_up_from_the_common_words(vault):
    found = search(vault, "zebra weather", limit=5)
    assert found[0] == "zebra weather glacier" and len(found) == 5


def test_a_query_of_common_words_is_decided_by_the_rarest(vault):
    found = search(vault, "weather cube", limit=3)
    assert len(found) == 3 and all("cube" in t for t in found)


def test_small_vaults_rank_exactly(tmp_path):
    v = MemVault(tmp_path)
    try:
        asyncio.run(v.put_many([CubeDraft("agents/a/n", t) for t in ("alpha beta", "beta", "gamma", "delta")], "a"))
        assert sorted(search(v, "alpha beta gamma", limit=5)) == ["alpha beta", "beta", "gamma"]
    finally:
        asyncio.run(v.close())


def test_which_words_decide_is_counted_within_the_callers_scope(tmp_path):
    from memosd.governance.core import ScopeRule

    v = MemVault(tmp_path)
    v.fulltext = FullText(large_vault=30, common_share=0.2)
    try:
        # Enough cubes for the cut-off to act (more matches than MIN_BUDGET).
        mine = [f"filler cube number {i} about the weather" for i in range(600)]
        mine += ["the weather on the glacier was cold", "a glacier hike"]
        asyncio.run(v.put_many([CubeDraft("agents/a/n", t) for t in mine], "a"))
        # Outside a's scope "glacier" is everywhere: counted over the whole vault it would be the common word,
        # "weather" would decide, and "a glacier hike" (no weather) would not come back.
        asyncio.run(v.put_many([CubeDraft("agents/b/n", f"glacier {i}") for i in range(1000)], "b"))
        scope = CubeFilter(scope=(ScopeRule("agents/a", True, frozenset()),), viewer="a")
        hits, _ = asyncio.run(v.search("weather glacier", scope, 5))
        found = [h.cube.text for h in hits]
        assert set(found[:2]) == {"the weather on the glacier was cold", "a glacier hike"}, found
        assert all(h.cube.namespace == "agents/a/n" for h in hits)
    finally:
        asyncio.run(v.close())


def test_the_scope_sizes_follow_every_write(tmp_path):
    """search_sizes (kept by triggers) always equals what the cubes themselves add up to, per namespace, kind,
    visibility and owner: after puts, text, metadata, priority and visibility changes, and deletes."""
    import sqlite3

    from memosd.cube import CubePatch, Visibility

    v = MemVault(tmp_path)
    try:
        made = asyncio.run(v.put_many([CubeDraft("agents/a/n", f"text {i}", metadata={"k": "v" * i}, context="ctx")
                                       for i in range(6)], "a"))
        changes = [("text", CubeDraft("", "a much longer text than before")),
                   ("metadata", CubeDraft("", "", metadata={"other": "value"})),
                   ("priority", CubeDraft("", "", priority=3)),
                   ("visibility", CubeDraft("", "", visibility=Visibility.OWNER))]
        for cube, (field, values) in zip(made, changes, strict=False):
            asyncio.run(v.update(cube.id, CubePatch(frozenset({field}), values), "a"))
        asyncio.run(v.delete(made[4].id, "a"))
        conn = sqlite3.connect(tmp_path / "memos.db")
        kept = conn.execute("SELECT namespace, kind, visibility, owner, docs, length FROM search_sizes"
                            " ORDER BY 1, 2, 3, 4").fetchall()
        counted = conn.execute(
            "SELECT namespace, kind, visibility, owner, count(*), sum(length(text) + coalesce(length(search_context), 0)"
            " + coalesce(length(metadata), 0)) FROM cubes WHERE text IS NOT NULL GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        ).fetchall()
        conn.close()
        assert kept == counted and sum(r[4] for r in kept) == 5, (kept, counted)
    finally:
        asyncio.run(v.close())


def test_for_a_top_the_rare_words_matches_are_not_topped_up(vault, monkeypatch):
    # Hybrid search's lexical side (top below limit): only the fused top must be BM25's, so the common words'
    # second search runs only when the rare words match fewer cubes than that top.
    monkeypatch.setattr(fulltext, "MIN_BUDGET", 0)  # "zebra" alone decides (its cube), "weather" is common
    def lexical(query, limit, top):
        found = asyncio.run(vault.fulltext.search(vault.db, query, False, CubeFilter(), vault.clock(), limit, top=top))
        return [row["text"] for row, _ in found]

    assert lexical("zebra weather", 5, 1) == ["zebra weather glacier"]
    assert lexical("zebra weather", 5, 2)[0] == "zebra weather glacier" and len(lexical("zebra weather", 5, 2)) == 5
    assert lexical("zebra weather", 5, 5) == search(vault, "zebra weather", limit=5)
