"""The storage contract of search: full-text ranking under each filter, word counts, and stored vectors, driven
directly through the engine's fulltext and vectors modules (no daemon, no gRPC)."""

import asyncio

import numpy as np
import pytest

from memosd.cube import CubeDraft, CubeFilter, CubePatch, LifecycleState, MemoryKind, Visibility
from memosd.errors import InvalidArgument
from memosd.governance.core import ScopeRule
from memosd.vault import rows
from memosd.vault.vault import MemVault

MODEL = "test-model"
NOW = 1000.0


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def vault(engine, tmp_path):
    # Cubes are written as the core writes them; only the search functions under test are called directly.
    return MemVault(tmp_path / "data", db=engine.db, clock=Clock(NOW))


def put(vault, *drafts, owner="alice"):
    return asyncio.run(vault.put_many([d if isinstance(d, CubeDraft) else CubeDraft("a/notes", d) for d in drafts],
                                      owner))


def retext(vault, cube, text):
    asyncio.run(vault.update(cube.id, CubePatch(frozenset({"text"}), CubeDraft(cube.namespace, text))))


def ranked(engine, words, f=CubeFilter(), limit=10, now=NOW, **kw):
    return engine.read(lambda conn: engine.sql.fulltext.ranked(conn, words, f, now, limit, **kw))


def texts(hits):
    return [row["text"] for row, _ in hits]


# -- full-text ranking --------------------------------------------------------------------------------


def test_ranked_hits_hold_any_word_best_first_as_cube_rows(engine, vault):
    put(vault, "the red fox", "a fox and a fox and a fox", "a hound", "nothing here", "fox hound")
    hits = ranked(engine, ["fox"])
    assert sorted(texts(hits)) == ["a fox and a fox and a fox", "fox hound", "the red fox"]
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]  # higher is better
    assert texts(hits)[0] == "a fox and a fox and a fox"
    assert sorted(texts(ranked(engine, ["fox", "hound"]))) == [
        "a fox and a fox and a fox", "a hound", "fox hound", "the red fox"]
    row = hits[0][0]
    assert set(row) == {c.strip() for c in rows.COLUMNS.split(",")}
    assert rows.to_cube(row, NOW).text == "a fox and a fox and a fox" and row["owner"] == "alice"
    assert ranked(engine, ["zebra"]) == []


def test_a_limit_of_zero_ranks_nothing_under_any_filter(engine, vault):
    put(vault, "fox one", "fox two")
    for f in (CubeFilter(), CubeFilter(namespace_prefix="a"), CubeFilter(tags=("t",))):
        assert ranked(engine, ["fox"], f, limit=0) == [] and ranked(engine, ["fox"], f, limit=0, top=0) == []


def test_ranked_hits_stop_at_the_limit_keeping_the_best(engine, vault):
    put(vault, *[f"fox {'filler ' * i}" for i in range(10)])
    best = ranked(engine, ["fox"], limit=3)
    assert texts(best) == texts(ranked(engine, ["fox"]))[:3] and len(best) == 3


def test_one_of_decides_what_matches_and_every_word_still_scores(engine, vault):
    put(vault, "glacier weather today", "glacier hike today", "weather report today", "zebra")
    hits = ranked(engine, ["weather", "glacier"], one_of=["glacier"])
    assert texts(hits) == ["glacier weather today", "glacier hike today"]
    assert ranked(engine, ["weather", "nowhere"], one_of=["nowhere"]) == []


def test_one_of_scores_each_cube_as_the_whole_query_does(engine, vault):
    # one_of narrows which cubes match, never what they score: each word counts once (FTS5's bm25() counted the
    # deciding words twice, so cubes repeating a rare word came first and the top 10 was not BM25's).
    put(vault, "glacier glacier glacier moraine", "glacier weather weather today", "glacier weather hike",
        "a glacier", "weather report today", "moraine weather", "today today")
    words = ["glacier", "weather", "today", "moraine"]
    full = {row["text"]: score for row, score in ranked(engine, words)}
    for one_of in (["glacier"], ["glacier", "moraine"], ["moraine"]):
        hits = ranked(engine, words, one_of=one_of)
        assert {t for t in full if any(w in t for w in one_of)} == set(texts(hits))
        assert [score for _, score in hits] == pytest.approx([full[t] for t in texts(hits)], rel=1e-9)
        assert texts(hits) == sorted(texts(hits), key=lambda t: -full[t])


def test_ranked_hits_pass_each_kind_of_filter(engine, vault):
    vault.clock.t = 100.0
    old = put(vault, CubeDraft("a", "fox old", tags=("x",)))
    vault.clock.t = NOW
    put(vault, CubeDraft("a/b", "fox below", tags=("x", "y")), CubeDraft("ab", "fox beside"),
        CubeDraft("c", "fox hidden", visibility=Visibility.OWNER), CubeDraft("c", "fox expiring", expires_at=NOW + 10))
    put(vault, CubeDraft("c", "fox of bob"), owner="bob")
    gone = put(vault, CubeDraft("c", "fox deleted"))
    asyncio.run(vault.delete(gone[0].id))

    def found(now=NOW, **kw):
        return sorted(texts(ranked(engine, ["fox"], CubeFilter(**kw), now=now)))

    assert found() == ["fox below", "fox beside", "fox expiring", "fox hidden", "fox of bob", "fox old"]
    assert found(namespace_prefix="a") == ["fox below", "fox old"]  # a and under a/, never ab
    assert found(tags=("x",)) == ["fox below", "fox old"] and found(tags=("x", "y")) == ["fox below"]
    assert found(kinds=frozenset({MemoryKind.PLAINTEXT})) == found()
    assert found(kinds=frozenset({MemoryKind.ACTIVATION})) == []  # only plaintext cubes are ranked
    assert found(created_after=NOW) == [t for t in found() if t != "fox old"]
    assert found(created_before=NOW) == ["fox old"]
    assert "fox expiring" not in found(now=NOW + 20)
    assert found(now=NOW + 20, states=frozenset({LifecycleState.EXPIRED})) == ["fox expiring"]
    assert found(states=frozenset({LifecycleState.DELETED})) == []  # a deleted cube's text is gone
    assert found(scope=(ScopeRule("a", True),)) == ["fox below", "fox old"]
    assert found(scope=(ScopeRule("a", False), ScopeRule("ab", False))) == ["fox beside", "fox old"]
    assert found(scope=(ScopeRule("a", True, frozenset({MemoryKind.ACTIVATION})),)) == []
    assert found(scope=()) == []
    assert "fox hidden" not in found(viewer="bob") and "fox hidden" in found(viewer="alice")
    assert found(namespace_prefix="c", viewer="bob") == ["fox expiring", "fox of bob"]
    assert old[0].id in {row["id"] for row, _ in ranked(engine, ["fox"], CubeFilter(tags=("x",)))}


def test_a_filter_passing_only_low_ranked_cubes_still_finds_them(engine, vault):
    # Many better matches the caller may not read come first in the ranking; the readable ones are still found.
    put(vault, *[CubeDraft("theirs", "fox fox fox") for _ in range(150)])
    put(vault, CubeDraft("mine", "a fox among many other words of a much longer text than theirs"),
        CubeDraft("mine", "another fox in a long text that holds many other words as well"))
    for f in (CubeFilter(scope=(ScopeRule("mine", True),)), CubeFilter(namespace_prefix="mine")):
        assert len(texts(ranked(engine, ["fox"], f, limit=5))) == 2
        assert len(texts(ranked(engine, ["fox"], f, limit=1))) == 1
    assert set(texts(ranked(engine, ["fox"], limit=5))) == {"fox fox fox"}


def test_one_of_with_only_low_ranked_cubes_readable_still_finds_them_scored_whole(engine, vault):
    # As above, with the deciding words' two match expressions (SQLite): the best of each list are theirs, so the
    # answer comes from cubes neither list reached, scored on every word.
    put(vault, *[CubeDraft("theirs", "hound fox fox") for _ in range(150)])
    put(vault, CubeDraft("mine", "a hound and a fox in a much longer text than theirs holds"),
        CubeDraft("mine", "a hound alone, in a long text with many other words as well"))
    words = ["fox", "hound"]
    full = {row["text"]: score for row, score in ranked(engine, words, CubeFilter(namespace_prefix="mine"))}
    for f in (CubeFilter(scope=(ScopeRule("mine", True),)), CubeFilter(namespace_prefix="mine")):
        hits = ranked(engine, words, f, limit=5, one_of=["hound"])
        assert [score for _, score in hits] == pytest.approx([full[t] for t in texts(hits)], rel=1e-9)
        assert sorted(texts(hits)) == sorted(full) and texts(hits) == sorted(full, key=lambda t: -full[t])


def test_a_namespace_filters_best_are_the_whole_rankings_best_of_that_namespace(engine, vault):
    # SQLite ranks a namespace holding a large share of the vault from the whole vault's best (lists deepened by
    # the share), and joins first when those lists cannot hold the answer: here "long" holds 300 of 401 matches but
    # none of the best 101, so for its best 10 its lists hold none of it, for its best 40 enough; "short" (a
    # quarter) is all in its lists.
    fillers = "owl elk yak emu gnu ram cod eel".split()
    put(vault, *[CubeDraft("long", " ".join(["fox"] + fillers[:3 + i % 6])) for i in range(300)])
    put(vault, *[CubeDraft("short", "fox" + " hound" * (i % 3 == 0) + " owl" * (i % 2)) for i in range(100)])
    put(vault, CubeDraft("shorter", "fox hound"))  # a namespace whose name "short" is a prefix of, not under it
    every = ranked(engine, ["fox", "hound"], limit=1000)
    for namespace, limit in (("long", 10), ("long", 40), ("short", 10), ("short", 150)):
        hits = ranked(engine, ["fox", "hound"], CubeFilter(namespace_prefix=namespace), limit=limit)
        expected = [(row["seq"], score) for row, score in every if row["namespace"] == namespace][:limit]
        assert [row["seq"] for row, _ in hits] == [seq for seq, _ in expected]
        assert [score for _, score in hits] == pytest.approx([score for _, score in expected], rel=1e-9)


@pytest.mark.parametrize("walk", ["every match scored", "bounded walk"])
def test_ranked_for_a_top_returns_that_top_exactly_and_further_candidates_scored_exactly(engine, vault,
                                                                                          monkeypatch, walk):
    # Hybrid search asks BM25 for 50 candidates of which only its fused top 10 must be BM25's own: the cut-off
    # (SQLite's candidate lists, PostgreSQL's walk) is sized for the top, and the rest are real matches with
    # their real scores, best first. 200 matches: more than SQLite's lists hold, so the sizing takes effect.
    if walk == "bounded walk":
        monkeypatch.setattr(engine.sql.fulltext, "WALK_FROM", 0, raising=False)
        monkeypatch.setattr(engine.sql.fulltext, "LARGE_VAULT", 0, raising=False)
    fillers = ["owl", "elk", "yak", "emu", "gnu", "ram"]
    put(vault, *[" ".join(["fox"] * (1 + i % 3) + ["hound"] * (i % 5 == 0) + fillers[:i % 7]) for i in range(200)])
    words = ["fox", "hound"]
    exact = {row["seq"]: score for row, score in ranked(engine, words, limit=500)}
    for one_of in ((), ["hound"]):
        alone = ranked(engine, words, limit=5, one_of=one_of)
        wider = ranked(engine, words, limit=40, one_of=one_of, top=5)
        assert [(row["seq"], score) for row, score in wider[:5]] == [(row["seq"], score) for row, score in alone]
        assert len(wider) == 40  # 200 cubes hold fox, 40 of them hound too
        assert [score for _, score in wider] == pytest.approx([exact[row["seq"]] for row, _ in wider], rel=1e-9)
        assert [score for _, score in wider] == sorted((score for _, score in wider), reverse=True)


def test_a_query_in_the_engines_syntax_is_ranked_and_a_malformed_one_explained(engine, vault):
    put(vault, "the red fox", "a red hound", "a fox")

    def query(q, f=CubeFilter()):
        return sorted(texts(engine.read(lambda conn: engine.sql.fulltext.ranked_query(conn, q, f, NOW, 10))))

    assert query('"red fox"') == ["the red fox"]
    assert query("red NOT fox") == ["a red hound"] and query("fox OR hound") == ["a fox", "a red hound", "the red fox"]
    assert query("fox", CubeFilter(scope=(ScopeRule("elsewhere", True),))) == []
    for malformed in ('"red fox', "(red", "red AND", "AND red"):
        with pytest.raises(InvalidArgument) as caught:
            query(malformed)
        assert "fts5" not in str(caught.value) and "syntax error" not in str(caught.value)


def test_size_and_word_counts(engine, vault):
    assert engine.read(engine.sql.fulltext.size) == 0
    cubes = put(vault, "fox one", "fox two", "hound", "Fox three")
    assert engine.read(engine.sql.fulltext.size) >= len(cubes)
    counts = lambda *words: engine.read(lambda conn: engine.sql.fulltext.doc_counts(conn, list(words)))  # noqa: E731
    assert counts("fox", "hound", "zebra") == {"fox": 3, "hound": 1, "zebra": 0}
    retext(vault, cubes[0], "hound again")
    asyncio.run(vault.delete(cubes[1].id))
    assert counts("hound", "fox") == {"fox": 1, "hound": 2}
    grown = engine.read(engine.sql.fulltext.size)
    put(vault, "more")
    assert engine.read(engine.sql.fulltext.size) > grown


# -- stored vectors -------------------------------------------------------------------------------------


def missing(engine, after=0, limit=100, model=MODEL, dim=4):
    return engine.read(lambda conn: engine.sql.vectors.missing(conn, model, dim, after, limit))


def store(engine, todo, vectors, model=MODEL):
    return engine.write(lambda conn: engine.sql.vectors.store(conn, model, todo, np.asarray(vectors)))


def load(engine, dim, model=MODEL):
    return engine.read(lambda conn: engine.sql.vectors.load(conn, model, dim))


def backlog(engine, model=MODEL, dim=4):
    return engine.read(lambda conn: engine.sql.vectors.backlog(conn, model, dim))


def test_cubes_without_a_vector_come_in_seq_order_after_a_cursor(engine, vault):
    put(vault, "one", "two", "three", "four")
    todo = missing(engine)
    assert [t for _, t in todo] == ["one", "two", "three", "four"]
    seqs = [s for s, _ in todo]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert missing(engine, after=seqs[1]) == todo[2:] and missing(engine, limit=2) == todo[:2]
    assert backlog(engine) == 4
    deleted = put(vault, "deleted")
    asyncio.run(vault.delete(deleted[0].id))
    assert backlog(engine) == 4 and len(missing(engine)) == 4  # a tombstone has no text to embed


def test_vectors_are_stored_and_loaded_back_exactly(engine, vault):
    put(vault, "one", "two", "three")
    todo = missing(engine)
    vectors = np.random.default_rng(7).standard_normal((3, 4))
    assert store(engine, todo, vectors) == [0, 1, 2]
    seqs, found = load(engine, 4)
    assert sorted(seqs) == [s for s, _ in todo]
    by_seq = dict(zip(seqs, found))
    for (seq, _), vector in zip(todo, vectors):
        assert by_seq[seq].dtype == np.float32 and np.array_equal(by_seq[seq], vector.astype(np.float32))
    assert backlog(engine) == 0 and missing(engine) == []
    assert backlog(engine, "other-model") == 3 and load(engine, 4, "other-model") == ([], [])
    assert load(engine, 5) == ([], [])  # vectors of another width are left out
    assert backlog(engine, dim=5) == 3 and len(missing(engine, dim=5)) == 3  # and their cubes embedded again


def test_a_vector_is_stored_only_for_the_text_it_was_made_from(engine, vault):
    cubes = put(vault, "one", "two", "three")
    todo = missing(engine)
    retext(vault, cubes[0], "one, changed")
    asyncio.run(vault.delete(cubes[1].id))
    assert store(engine, todo, np.ones((3, 4))) == [2]
    assert [t for _, t in missing(engine)] == ["one, changed"]
    # Storing again (re-embedded text) replaces the vector.
    assert store(engine, todo[2:], np.full((1, 4), 2.0)) == [0]
    seqs, found = load(engine, 4)
    assert seqs == [todo[2][0]] and found[0].tolist() == [2.0] * 4


def test_admitted_seqs_follow_the_filter(engine, vault):
    put(vault, CubeDraft("a", "one"), CubeDraft("a/b", "two", tags=("x",)), CubeDraft("b", "three"),
        CubeDraft("b", "hidden", visibility=Visibility.OWNER))
    seq = {t: s for s, t in missing(engine)}

    def admitted(**kw):
        return sorted(engine.read(lambda conn: engine.sql.vectors.admitted(conn, CubeFilter(**kw), NOW)))

    assert admitted() == sorted(seq.values())
    assert admitted(namespace_prefix="a") == sorted([seq["one"], seq["two"]])
    assert admitted(tags=("x",)) == [seq["two"]]
    assert admitted(scope=(ScopeRule("b", False),), viewer="bob") == [seq["three"]]
    assert admitted(kinds=frozenset({MemoryKind.ACTIVATION})) == []


def test_best_keeps_the_nearest_order_and_drops_cubes_filtered_out_or_without_a_current_vector(engine, vault):
    put(vault, CubeDraft("a", "one"), CubeDraft("a", "two"), CubeDraft("b", "three"), CubeDraft("a", "four"),
        CubeDraft("a", "five"))
    todo = missing(engine)
    seq = {t: s for s, t in todo}
    store(engine, [t for t in todo if t[1] != "five"], np.ones((4, 4)))
    nearest = [(seq["four"], 0.9), (seq["three"], 0.8), (seq["five"], 0.7), (seq["one"], 0.6), (seq["two"], 0.5)]

    def best(f=CubeFilter(), limit=10, model=MODEL, candidates=nearest, dim=4):
        found = engine.read(lambda conn: engine.sql.vectors.best(conn, model, dim, candidates, f, NOW, limit))
        return [(row["text"], score) for row, score in found]

    assert best() == [("four", 0.9), ("three", 0.8), ("one", 0.6), ("two", 0.5)]  # five has no vector yet
    assert best(CubeFilter(namespace_prefix="a")) == [("four", 0.9), ("one", 0.6), ("two", 0.5)]
    assert best(CubeFilter(namespace_prefix="a"), limit=2) == [("four", 0.9), ("one", 0.6)]
    assert best(model="other-model") == [] and best(candidates=[]) == [] and best(dim=5) == []
    one = asyncio.run(vault.list(CubeFilter(), 10)).cubes
    asyncio.run(vault.delete(next(c.id for c in one if c.text == "four")))  # its vector goes with it
    assert best(limit=1) == [("three", 0.8)]
    row = engine.read(lambda conn: engine.sql.vectors.best(conn, MODEL, 4, nearest, CubeFilter(), NOW, 1))[0][0]
    assert set(row) == {c.strip() for c in rows.COLUMNS.split(",")} and rows.to_cube(row, NOW).namespace == "b"


def _bm25_order(docs: dict[str, tuple[int, int]], n: int, df: int, avgdl: float) -> list[str]:
    # FTS5's bm25() of one word: (text -> (tf, length)), best first.
    idf = max(np.log((n - df + 0.5) / (df + 0.5)), 1e-6)
    score = {t: idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl)) for t, (tf, dl) in docs.items()}
    return sorted(score, key=lambda t: -score[t])


@pytest.mark.parametrize("walk", ["every match scored", "bounded walk"])
def test_one_words_best_cubes_come_in_bm25_order_under_filters_updates_and_deletes(engine, vault, monkeypatch, walk):
    # PostgreSQL ranks a common word over a bounded candidate set (its repeats, then the shortest matches);
    # WALK_FROM and LARGE_VAULT 0 take that path on this small vault, and the order must be BM25's, as on SQLite.
    if walk == "bounded walk":
        monkeypatch.setattr(engine.sql.fulltext, "WALK_FROM", 0, raising=False)
        monkeypatch.setattr(engine.sql.fulltext, "LARGE_VAULT", 0, raising=False)
    fillers = ["owl", "elk", "yak", "emu"]
    docs = {}
    drafts = []
    for tf in (1, 2, 3):
        for extra in range(6):
            text = " ".join(["fox"] * tf + [fillers[(tf + i) % 4] for i in range(extra)])
            docs[text] = (tf, tf + extra)
            drafts.append(CubeDraft("a" if (tf + extra) % 2 else "b", text, tags=("t",) if extra % 3 == 0 else ()))
    drafts += [CubeDraft("a", "owl elk"), CubeDraft("b", "yak emu owl")]
    cubes = {c.text: c for c in put(vault, *drafts)}

    def check(f=CubeFilter(), limit=5):
        n = len(cubes)
        avgdl = sum(len(t.split()) for t in cubes) / n
        allowed = {t: docs[t] for t, c in cubes.items() if t in docs and (not f.namespace_prefix or
                   c.namespace == f.namespace_prefix) and (not f.tags or "t" in c.tags)}
        expected = _bm25_order(allowed, n, sum(t in docs for t in cubes), avgdl)[:limit]
        assert texts(ranked(engine, ["fox"], f, limit=limit)) == expected

    check()
    check(limit=1)
    check(CubeFilter(namespace_prefix="a"))
    check(CubeFilter(tags=("t",)), limit=3)
    best = texts(ranked(engine, ["fox"], limit=1))[0]
    asyncio.run(vault.delete(cubes.pop(best).id))
    check()
    second = texts(ranked(engine, ["fox"], limit=1))[0]
    retext(vault, cubes[second], "owl owl owl")  # no fox any more
    cubes["owl owl owl"] = cubes.pop(second)
    check()
    retext(vault, cubes["fox"], "fox fox fox fox")  # now the best of all
    docs["fox fox fox fox"] = (4, 4)
    cubes["fox fox fox fox"] = cubes.pop("fox")
    check()
    assert texts(ranked(engine, ["fox"], limit=1)) == ["fox fox fox fox"]
    assert ranked(engine, ["fox"], CubeFilter(kinds=frozenset({MemoryKind.ACTIVATION}))) == []
