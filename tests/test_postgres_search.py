"""Search on the PostgreSQL engine itself: FTS5's BM25 over the tsvector, the collection counts a trigger keeps,
the backfill's claims between two daemons, and pgvector's HNSW nearest with the filter in the query (the engine-
neutral contract is test_storage_contract_search.py)."""

import asyncio
import math
import threading

import numpy as np
import pytest

from memosd.cube import CubeFilter, LifecycleState, MemoryKind, Visibility
from memosd.storage.postgres import vectors
from memosd.storage.postgres.db import Database
from tests.timing import wait_for

NOW = 10.0


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture
def db(postgres_url):
    database = Database(postgres_url, create=False)
    yield database
    database.close()


def _insert(conn, cube_id, text, namespace="n", kind=MemoryKind.PLAINTEXT):
    return conn.execute(
        "INSERT INTO cubes (id, namespace, kind, state, version, parent_version, text, owner, visibility,"
        " created_at, updated_at) VALUES (%s, %s, %s, %s, 1, 0, %s, 'alice', %s, 1.0, 1.0) RETURNING seq",
        (cube_id, namespace, int(kind), int(LifecycleState.ACTIVE), text, int(Visibility.NAMESPACE))).fetchone()[0]


def _insert_all(db, texts, namespace="n"):
    return _run(db.write(lambda conn: [_insert(conn, f"{namespace}-{i}", t, namespace) for i, t in enumerate(texts)]))


def _stats(conn):
    return conn.execute("SELECT sum(docs), sum(tokens) FROM search_stats").fetchone()


def test_the_collection_counts_follow_every_insert_update_and_delete(db):
    seqs = _insert_all(db, ["the dogs ran", "cats", "birds sing loudly"])
    assert _run(db.read(_stats)) == (3, 2 + 1 + 3)  # "the" is an english stopword: not a token
    _run(db.write(lambda conn: conn.execute("UPDATE cubes SET text = 'cats chase more cats' WHERE seq = %s",
                                            (seqs[1],))))
    _run(db.write(lambda conn: conn.execute("UPDATE cubes SET text = NULL WHERE seq = %s", (seqs[2],))))
    _run(db.write(lambda conn: conn.execute("DELETE FROM cubes WHERE seq = %s", (seqs[0],))))
    assert _run(db.read(_stats)) == (1, 3)


def test_the_scope_sizes_follow_every_insert_copy_update_move_and_delete(db):
    """search_sizes (per namespace, kind, visibility and owner, for BM25 within a caller's scope) always adds up to
    what the cubes hold."""
    from memosd.storage.postgres import cubes as records

    seqs = _insert_all(db, ["the dogs ran", "cats", "birds sing loudly", "fish"])
    rows_ = [(f"c{i}", "m", int(MemoryKind.PLAINTEXT), int(LifecycleState.ACTIVE), f"copied text {i}", "[]", None,
              "", "bob", int(Visibility.OWNER), 0, 1.0, 1.0, None, "[]", None) for i in range(5)]
    _run(db.write(lambda conn: records.copy_cubes(conn, rows_, [()] * len(rows_))))
    for change in ("text = 'cats chase more cats'", "text = NULL", "namespace = 'elsewhere'",
                   f"visibility = {int(Visibility.OWNER)}, owner = 'carol'"):
        seq = seqs.pop()
        _run(db.write(lambda conn, change=change, seq=seq: conn.execute(f"UPDATE cubes SET {change} WHERE seq = %s",
                                                                        (seq,))))
    _run(db.write(lambda conn: conn.execute("DELETE FROM cubes WHERE id = 'c0'")))

    def both(conn):
        kept = conn.execute("SELECT namespace, kind, visibility, owner, sum(docs), sum(length) FROM search_sizes"
                            " GROUP BY 1, 2, 3, 4 HAVING sum(docs) <> 0 ORDER BY 1, 2, 3, 4").fetchall()
        counted = conn.execute("SELECT namespace, kind, visibility, owner, count(*), sum(text_len) FROM cubes"
                               " WHERE text IS NOT NULL GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4").fetchall()
        return kept, counted

    kept, counted = _run(db.read(both))
    assert kept == counted and sum(r[4] for r in kept) == 7, (kept, counted)


def test_a_many_row_copy_is_counted_once_and_each_text_parsed_into_its_tsvector_and_length(db):
    from memosd.storage.postgres import cubes as records

    texts = [f"walkers walked {i} miles" if i % 3 else None for i in range(50)]
    rows_ = [(f"c{i}", "n", int(MemoryKind.PLAINTEXT), int(LifecycleState.ACTIVE), t, "[]", None, "", "alice",
              int(Visibility.NAMESPACE), 0, 1.0, 1.0, None, "[]", None) for i, t in enumerate(texts)]
    _run(db.write(lambda conn: records.copy_cubes(conn, rows_, [()] * len(rows_))))
    # A write naming the derived columns does not set them: they are the text's.
    _run(db.write(lambda conn: conn.execute("UPDATE cubes SET text_tsv = 'bogus', text_len = 99 WHERE id = 'c1'")))

    def check(conn):
        wrong = conn.execute("SELECT count(*) FROM cubes WHERE text_tsv IS DISTINCT FROM to_tsvector('english',"
                             " coalesce(text, '')) OR text_len IS DISTINCT FROM memosd_tsv_length(text_tsv)")
        return wrong.fetchone()[0], _stats(conn), conn.execute(
            "SELECT count(text), sum(text_len) FROM cubes").fetchone()

    wrong, stats, actual = _run(db.read(check))
    assert wrong == 0
    assert stats == actual == (33, 33 * 4)  # "walker", "walk", the number, "mile"


def _reference_bm25(docs: dict[int, dict[str, int]], terms: list[str]) -> dict[int, float]:
    # FTS5's bm25() (k1 1.2, b 0.75, idf floored at 1e-6), over the documents' lexeme counts.
    n, avgdl = len(docs), sum(sum(d.values()) for d in docs.values()) / len(docs)
    scores: dict[int, float] = {}
    for term in terms:
        df = sum(term in d for d in docs.values())
        idf = max(math.log((n - df + 0.5) / (df + 0.5)), 1e-6)
        for seq, d in docs.items():
            if term in d:
                dl = sum(d.values())
                scores[seq] = scores.get(seq, 0.0) + idf * d[term] * 2.2 / (d[term] + 1.2 * (0.25 + 0.75 * dl / avgdl))
    return scores


def test_scores_are_fts5s_bm25_over_the_lexemes(db):
    texts = ["the glacier melted", "glaciers and weather", "weather weather today", "a hike in the hills",
             "glacier hike, glacier views", "nothing of note", "weather report for the glacier hike"]
    _insert_all(db, texts)

    def lexemes(conn):
        rows = conn.execute("SELECT seq, u.lexeme, cardinality(u.positions) FROM cubes, unnest(text_tsv) u").fetchall()
        docs: dict[int, dict[str, int]] = {s: {} for (s,) in conn.execute("SELECT seq FROM cubes")}
        for seq, lexeme, tf in rows:
            docs[seq][lexeme] = tf
        return docs

    docs = _run(db.read(lexemes))
    found = _run(db.read(lambda conn: db.sql.fulltext.ranked(conn, ["glaciers", "weather", "hike"], CubeFilter(),
                                                              NOW, 10)))
    expected = _reference_bm25(docs, ["glacier", "weather", "hike"])
    assert {row["seq"]: pytest.approx(score) for row, score in found} == expected
    assert [score for _, score in found] == pytest.approx(sorted(expected.values(), reverse=True))


def _claims(db, model="m", after=0, limit=100):
    return _run(db.read(lambda conn: db.sql.vectors.missing(conn, model, 3, after, limit)))


def test_two_daemons_backfilling_at_once_are_never_handed_the_same_cube(postgres_url, db):
    _insert_all(db, [f"text {i}" for i in range(60)])
    daemons = [Database(postgres_url, create=False, pool_size=2) for _ in range(2)]
    handed: list[list] = [[], []]
    start, both_claimed = threading.Barrier(2), threading.Barrier(2)

    def backfill(d):
        start.wait()
        cursor, first = 0, True
        while batch := _claims(daemons[d], after=cursor, limit=5):  # as the backfill walks on
            handed[d].extend(batch)
            cursor = batch[-1][0]
            if first:  # each holds claims before either walks on: they run at once, whatever the scheduler does
                both_claimed.wait(30)
                first = False

    threads = [threading.Thread(target=backfill, args=(d,)) for d in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first, second = ({s for s, _ in h} for h in handed)
        assert first and second and not first & second and len(first | second) == 60
        # A daemon asking again gets its own claims back (its cursor went back); the other still does not.
        assert {s for s, _ in _claims(daemons[0])} == first and {s for s, _ in _claims(daemons[1])} == second
        # Stored vectors end the claims; a claim past its lease (a daemon that died) is handed to another.
        todo = sorted(handed[0])
        assert _run(daemons[0].write(lambda conn: vectors.store(conn, "m", todo[:10], np.ones((10, 3))))) == list(range(10))
        _run(daemons[0].write(lambda conn: conn.execute("UPDATE embedding_claims SET until = 0")))
        assert {s for s, _ in _claims(daemons[1])} == first - {s for s, _ in todo[:10]} | second
        assert _run(db.read(lambda conn: vectors.backlog(conn, "m", 3))) == 50
    finally:
        for d in daemons:
            d.close()


def test_nearest_finds_the_closest_cubes_the_filter_admits_through_the_hnsw_index(db):
    rng = np.random.default_rng(3)
    near = _insert_all(db, [f"mine {i}" for i in range(5)], namespace="mine")
    far = _insert_all(db, [f"theirs {i}" for i in range(300)], namespace="theirs")
    query = np.array([1.0, 0, 0, 0], dtype=np.float32)
    # Theirs are all nearer the query than mine: the filter must scan on past them to find mine.
    theirs = np.hstack([np.ones((300, 1)), rng.normal(0, 0.05, (300, 3))])
    mine = np.hstack([np.ones((5, 1)), rng.normal(0, 1.0, (5, 3))])
    _run(db.write(lambda conn: vectors.store(conn, "m", [(s, f"theirs {i}") for i, s in enumerate(far)], theirs)))
    _run(db.write(lambda conn: vectors.store(conn, "m", [(s, f"mine {i}") for i, s in enumerate(near)], mine)))

    def nearest(f, limit=3):
        return _run(db.read(lambda conn: vectors.nearest(conn, "m", query, f, NOW, limit)))

    hits = nearest(CubeFilter(namespace_prefix="mine"))
    cosine = {s: float(v @ query / np.linalg.norm(v)) for s, v in zip(near, mine)}
    best = sorted(cosine, key=lambda s: -cosine[s])[:3]
    assert [row["seq"] for row, _ in hits] == best
    assert [score for _, score in hits] == pytest.approx([cosine[s] for s in best], abs=1e-5)
    assert {row["namespace"] for row, _ in nearest(CubeFilter(), limit=10)} == {"theirs"}
    assert nearest(CubeFilter(namespace_prefix="nowhere")) == []
    assert _run(db.read(lambda conn: vectors.nearest(conn, "other", query, CubeFilter(), NOW, 3))) == []

    def plan(conn):
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):  # a tiny table's plan: say which
            conn.execute(f"SET LOCAL {setting} = off")
        q = "[1,0,0,0]"
        return " ".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT c.seq FROM embeddings e JOIN cubes c ON c.seq = e.seq WHERE e.model = 'm'"
            " AND e.dims = 4 AND c.namespace = 'mine' ORDER BY e.vector::vector(4) <=> %s::vector(4) LIMIT 3", (q,)))

    assert "embeddings_hnsw_" in _run(db.read(plan))  # store() built the model's index


def test_remembered_word_counts_are_recounted_once_the_vault_changed_by_a_tenth(db, monkeypatch):
    monkeypatch.setattr(db.sql.fulltext, "LARGE_VAULT", 0)  # remember counts at any size
    _insert_all(db, ["glacier ice"] + [f"filler {i}" for i in range(9)], namespace="a")

    def scores():
        return sorted(score for _, score in _run(db.read(
            lambda conn: db.sql.fulltext.ranked(conn, ["glacier"], CubeFilter(), NOW, 50))))

    first = scores()
    _insert_all(db, [f"glacier {i}" for i in range(10)], namespace="b")  # twice the cubes, 11 with the word
    n, df = 20, 11
    idf = max(math.log((n - df + 0.5) / (df + 0.5)), 1e-6)
    assert len(scores()) == 11 and scores()[-1] < first[-1]
    assert all(s <= idf * 2.2 / (1 + 1.2 * 0.25) + 1e-9 for s in scores())  # the new count, not the remembered one


def test_common_words_counts_come_from_the_tables_sample_while_it_holds_about_the_rows_it_was_taken_from(db):
    # ANALYZE's sample stands in for counting common words row by row; read once per sample, and not trusted
    # once the table grew by over a quarter since it was taken (until the next ANALYZE).
    _run(db.write(lambda conn: conn.execute("ALTER TABLE cubes SET (autovacuum_enabled = false)")))
    _insert_all(db, [("glacier " if i % 4 == 0 else "") + ("river " if i % 2 else "") + f"filler{i}"
                     for i in range(400)], namespace="a")
    fulltext = db.sql.fulltext

    def sampled(conn, words=("glacier", "river", "nowhere")):
        return fulltext._sampled_counts(conn, fulltext._database(conn), list(words))

    _run(db.write(lambda conn: conn.execute("ANALYZE cubes")))
    counts = _run(db.read(sampled))
    assert set(counts) == {"glacier", "river"}  # a word the sample lacks is counted, not guessed
    assert counts["glacier"] == pytest.approx(100, rel=0.1) and counts["river"] == pytest.approx(200, rel=0.1)
    assert _run(db.read(lambda conn: sampled(conn, ["river"]))) == {"river": counts["river"]}  # remembered
    _insert_all(db, [f"glacier river {i}" for i in range(200)], namespace="b")  # 600 rows: the sample's 400 too few
    assert _run(db.read(sampled)) == {}
    _run(db.write(lambda conn: conn.execute("ANALYZE cubes")))
    again = _run(db.read(sampled))
    assert again["glacier"] == pytest.approx(300, rel=0.1) and again["river"] == pytest.approx(400, rel=0.1)


def _repeats(conn):
    return sorted(conn.execute("SELECT term, seq, tf, dl FROM cube_repeats").fetchall())


def _repeats_of_texts(conn):
    return sorted(conn.execute("SELECT u.lexeme, c.seq, cardinality(u.positions), c.text_len FROM cubes c,"
                               " unnest(c.text_tsv) u WHERE cardinality(u.positions) > 1").fetchall())


def test_the_repeated_words_table_follows_every_insert_update_tombstone_and_delete(db):
    from memosd.storage.postgres import cubes as records

    texts = ["cats chase cats", "dogs dogs dogs bark", "a bird sings", None, "owls hoot, owls owls stare stare"]
    rows_ = [(f"c{i}", "n", int(MemoryKind.PLAINTEXT), int(LifecycleState.ACTIVE), t, "[]", None, "", "alice",
              int(Visibility.NAMESPACE), 0, 1.0, 1.0, None, "[]", None) for i, t in enumerate(texts)]
    seqs = _run(db.write(lambda conn: records.copy_cubes(conn, rows_, [()] * len(rows_))))
    first = _run(db.read(_repeats))
    assert {(t, tf) for t, _, tf, _ in first} == {("cat", 2), ("dog", 3), ("owl", 3), ("stare", 2)}
    assert first == _run(db.read(_repeats_of_texts))
    _run(db.write(lambda conn: conn.execute("UPDATE cubes SET text = 'birds birds' WHERE seq = %s", (seqs[2],))))
    _run(db.write(lambda conn: conn.execute("UPDATE cubes SET text = 'one cat' WHERE seq = %s", (seqs[0],))))
    _run(db.write(lambda conn: conn.execute("UPDATE cubes SET text = NULL, state = %s WHERE seq = %s",
                                            (int(LifecycleState.DELETED), seqs[1]))))  # a tombstone
    _run(db.write(lambda conn: conn.execute("DELETE FROM cubes WHERE seq = %s", (seqs[4],))))
    _run(db.write(lambda conn: conn.execute("UPDATE cubes SET priority = 3")))  # not the text: nothing moves
    assert _run(db.read(_repeats)) == _run(db.read(_repeats_of_texts)) == [("bird", seqs[2], 2, 2)]


@pytest.mark.parametrize("whole", [0, 160], ids=["all-walked", "rarest-whole"])
@pytest.mark.parametrize("fetch", [False, True], ids=["walking-shortest-first", "fetching-every-match"])
def test_several_common_words_walked_score_their_hits_exactly_and_pass_the_filter(db, monkeypatch, fetch, whole):
    import random

    rng = random.Random(5)
    words = ["glacier", "river", "mountain", "valley", "forest", "meadow"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(300)]
    seqs = _insert_all(db, texts[:150], namespace="a") + _insert_all(db, texts[150:], namespace="b")
    _run(db.write(lambda conn: conn.execute("UPDATE cubes SET state = %s WHERE seq = ANY(%s)",
                                            (int(LifecycleState.ARCHIVED), seqs[::7]))))
    fulltext = db.sql.fulltext
    monkeypatch.setattr(fulltext, "LARGE_VAULT", 0)  # the walk is for large vaults: at any size here
    monkeypatch.setattr(fulltext, "_fetches", lambda *estimate: fetch)  # either way to the shortest
    monkeypatch.setattr(fulltext, "WHOLE_UP_TO", whole)  # with and without the rarest word's every match

    def ranked(query, f, limit, **kw):
        return _run(db.read(lambda conn: fulltext.ranked(conn, query, f, NOW, limit, **kw)))

    for f in (CubeFilter(), CubeFilter(namespace_prefix="a"),
              CubeFilter(states=frozenset({LifecycleState.ARCHIVED}))):
        for query, one_of in ((["glacier", "river"], ()), (["meadow", "forest", "valley"], ["meadow"])):
            monkeypatch.setattr(fulltext, "WALK_FROM", 10**9)
            every = {row["seq"]: score for row, score in ranked(query, f, 300, one_of=one_of)}
            monkeypatch.setattr(fulltext, "WALK_FROM", 0)
            walked = ranked(query, f, 5, one_of=one_of)
            assert len(walked) == 5
            assert all(every[row["seq"]] == pytest.approx(score) for row, score in walked)  # in `every`: passed
            scores = [score for _, score in walked]
            assert scores == sorted(scores, reverse=True)


def _analyzed_and_pending(conn):
    analyzed = conn.execute("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'cubes'"
                            ).fetchone()[0]
    return analyzed, conn.execute("SELECT pending_pages FROM pgstatginindex('cubes_fts')").fetchone()[0]


def test_the_upkeep_analyzes_the_grown_tables_and_empties_the_pending_list_once(db, postgres_url):
    """A bulk ingest leaves the planner with an empty table's statistics and the GIN index with a pending list
    every search reads: the upkeep (run every few seconds by the lifecycle) fixes both once enough was written,
    and one member at a time: a second upkeep while the first holds its lock does nothing."""
    _run(db.write(lambda conn: conn.execute("ALTER TABLE cubes SET (autovacuum_enabled = false);"
                                            " CREATE EXTENSION IF NOT EXISTS pgstattuple")))
    _insert_all(db, [f"glacier river number {i} of the valley" for i in range(1500)])
    analyzed, pending = _run(db.read(_analyzed_and_pending))
    assert not analyzed and pending > 0
    fulltext = db.sql.fulltext
    other = Database(postgres_url, create=False)
    try:
        held = threading.Event()
        release = threading.Event()

        def holding(conn):  # another member in the middle of its upkeep
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (fulltext.UPKEEP_LOCK,))
            held.set()
            release.wait(30)

        holder = threading.Thread(target=lambda: _run(other.write(holding)))
        holder.start()
        held.wait(30)
        assert _run(db.write(fulltext.upkeep)) == []
        release.set()
        holder.join()
    finally:
        other.close()
    done: list[str] = []
    # The server publishes its table counters at most once a second: the upkeep sees the writes within that.
    wait_for(lambda: done.extend(_run(db.write(fulltext.upkeep))) or any("analyzed" in d for d in done),
             "the upkeep to analyze the grown cubes table")
    assert any(d.startswith("analyzed") and "cubes" in d for d in done)
    assert _run(db.read(_analyzed_and_pending)) == (True, 0)
    assert _run(db.write(fulltext.upkeep)) == []  # nothing written since: nothing to do
