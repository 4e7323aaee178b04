"""An attack on full-text search in scripts written without spaces (memosd.storage.segment): FTS5 queries that
put runs where the syntax gives words a role (phrases, prefixes, column-like names, operators), runs in every
field a cube is indexed by, and another agent's pairs that might show in a caller's scores."""

from __future__ import annotations

import asyncio

import pytest

import memos_client
from memosd.cube import CubeDraft, CubeFilter, CubePatch
from memosd.vault.vault import MemVault

NOW = 1000.0
# Each FTS5 query either runs or is refused with INVALID_ARGUMENT, never INTERNAL: with runs in phrases, prefixes,
# column-like tokens and groups; with lone combining marks (a run of no letters, so no pairs: the terms around it
# are left with an operator and no operand); near the 4 KiB limit.
QUERIES = [
    '"苹果 香蕉"', '苹果*', '"苹果"*', '苹*果', '(苹果 OR 香蕉) NOT 吃', 'NOT 苹果', 'a:苹果', '苹果:a', 'text:苹果',
    '-苹果', '苹果-香蕉', '\u0e31', '"\u0e31"', 'a OR \u0e31', 'a OR \u0e31 OR b', '\u0e31 AND 苹果', '(\u0e31)',
    '苹果 NOT \u0e31', 'NEAR(苹果 香蕉, 2)', '{text}: 苹果', '"苹果" + "香蕉"', '苹果.香蕉', '*苹果', '苹果**', '\u3099',
    '"' + '苹' * 1300 + '"', '苹果' * 600 + '*', 'x' + '\u0e31' * 1300, '(' * 300 + '苹果' + ')' * 300,
]


@pytest.mark.vaults
def test_fts_queries_with_runs_run_or_are_refused_in_a_few_words(client, agents):
    alice, _ = agents
    alice.put("我喜欢吃苹果和香蕉", "agents/alice/n")
    for who in (client, alice):  # the whole vault's ranking, and the caller's scope's
        for query in QUERIES:
            try:
                who.search(query, fts=True, mode="bm25")
            except memos_client.InvalidArgument as exc:
                assert len(str(exc)) < 300, query  # never the query read back whole


@pytest.fixture
def vault(engine, tmp_path):
    return MemVault(tmp_path / "data", db=engine.db, clock=lambda: NOW)


def _found(vault, query: str, fts: bool = False) -> list[str]:
    hits, _ = asyncio.run(vault.search(query, CubeFilter(namespace_prefix="a"), 10, fts_syntax=fts))
    return [h.cube.text for h in hits]


def test_runs_in_metadata_and_context_leave_no_pairs_after_an_update_and_a_delete(vault, engine):
    [cube] = asyncio.run(vault.put_many([CubeDraft("a/chat", "我们在北京见面", metadata={"who": "王小明"},
                                                   context="上一句说的是广州")], "alice"))
    asyncio.run(vault.update(cube.id, CubePatch(frozenset({"metadata"}), CubeDraft("a/chat", "", metadata={"who": "李大伟"}))))
    assert _found(vault, "小明") == [] and _found(vault, "大伟") == _found(vault, "广州") == ["我们在北京见面"]
    asyncio.run(vault.delete(cube.id, "alice"))
    for query in ("大伟", "广州", "北京", "伟", "州"):
        assert _found(vault, query) == [] and _found(vault, f'"{query}"', fts=True) == [], query
    if engine.name == "sqlite":  # the contentless index removed every term it held, of every field
        left = engine.read(lambda conn: conn.execute("SELECT count(*) FROM cubes_fts_instances").fetchone())
        assert tuple(left) == (0,)
    else:
        left = engine.read(lambda conn: conn.execute("SELECT count(*) FROM cube_repeats").fetchone())
        assert tuple(left) == (0,)


def _ranking(c, query: str, **options) -> list[tuple[str, float]]:
    return [(h.cube.text, h.bm25_score) for h in c.search(query, mode="bm25", **options)]


@pytest.mark.vaults
def test_a_callers_scores_of_pairs_and_single_characters_say_nothing_of_another_agents_cubes(agents):
    alice, bob = agents
    bob.put("我喜欢吃苹果和香蕉", "agents/bob/notes")
    bob.put("苹果很好吃 在公园", "agents/bob/notes")
    bob.put("香蕉在公园里", "agents/bob/notes")
    queries = [("苹果", {}), ("苹果 公园", {}), ("苹", {}), ("吃苹果", {}), ('"吃苹果" OR 公园', {"fts": True}),
               ("苹果*", {"fts": True}), ("苹 OR 园", {"fts": True})]
    before = [_ranking(bob, q, **o) for q, o in queries]
    alice.put_many({"text": f"苹果苹果吃苹果 {i}", "namespace": "agents/alice/zoo", "metadata": {"m": "苹果和"},
                    "context": "吃苹果"} for i in range(30))
    after = [_ranking(bob, q, **o) for q, o in queries]
    assert all(before), before
    assert after == before
