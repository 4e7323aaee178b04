"""Full-text search in scripts written without spaces (Chinese, Japanese, Thai, ...), on each engine: a word
inside a sentence is found, by plain words and by FTS5 syntax, and updates, deletes and the migration that
reindexes older cubes keep the index exact (memosd.storage.segment)."""

import asyncio
import os
import sqlite3

import pytest
from sqlite_utils import Database as SqliteUtilsDatabase

from memosd.cube import CubeDraft, CubeFilter, CubePatch
from memosd.storage import open_database, segment
from memosd.storage.sqlite.db import all_migrations
from memosd.vault.vault import MemVault
from tests.pg_server import empty_database

NOW = 1000.0
TEXTS = {
    "zh": "我喜欢吃苹果和香蕉",
    "ja": "東京で寿司を食べました",
    "th": "ฉันชอบกินข้าวผัดกับไก่",
    "ko": "서울에서 김치를 먹었다",
    "en": "the quick brown fox",
}


@pytest.fixture
def vault(engine, tmp_path):
    v = MemVault(tmp_path / "data", db=engine.db, clock=lambda: NOW)
    asyncio.run(v.put_many([CubeDraft("a/chat", t, metadata={"lang": k}) for k, t in TEXTS.items()], "alice"))
    return v


def found(vault, query, fts=False):
    hits, _ = asyncio.run(vault.search(query, CubeFilter(namespace_prefix="a"), 10, fts_syntax=fts))
    return [h.cube.metadata["lang"] for h in hits]


@pytest.mark.parametrize("query, lang", [
    ("苹果", "zh"), ("香蕉", "zh"), ("吃苹果", "zh"),  # a word, and a longer run, inside the sentence
    ("寿司", "ja"), ("東京", "ja"), ("食べました", "ja"),
    ("ข้าวผัด", "th"), ("ไก่", "th"),  # with the vowel and tone marks above and below
    ("김치", "ko"), ("서울", "ko"),  # a noun without its particle
])
def test_a_word_inside_a_sentence_is_found(vault, query, lang):
    assert found(vault, query)[0] == lang
    assert found(vault, f'"{query}"', fts=True) == [lang]  # as an FTS5 phrase: the pairs in order


def test_one_character_finds_the_runs_holding_it_and_unrelated_runs_stay_apart(vault):
    assert found(vault, "蕉") == ["zh"] and found(vault, "寿") == ["ja"]
    assert found(vault, "葡萄") == [] and found(vault, "大阪") == []
    assert found(vault, "香蕉苹果", fts=True) == []  # a phrase is the characters in that order
    assert found(vault, "香蕉 AND 苹果", fts=True) == ["zh"] and found(vault, "苹果*", fts=True) == ["zh"]
    assert found(vault, "苹果 OR fox", fts=True) and set(found(vault, "苹果 OR fox", fts=True)) == {"zh", "en"}


def test_a_run_beside_latin_letters_and_in_metadata_and_context(vault):
    asyncio.run(vault.put_many([CubeDraft("a/chat", "bought a new iPhone手机 today", metadata={"lang": "mixed"}),
                                CubeDraft("a/chat", "a turn", metadata={"lang": "meta", "speaker": "王小明"},
                                          context="上一句说的是北京")], "alice"))
    assert found(vault, "手机") == ["mixed"] and found(vault, "iphone") == ["mixed"]
    assert found(vault, '"iPhone手机"', fts=True) == ["mixed"]
    assert found(vault, "小明") == ["meta"] and found(vault, "北京") == ["meta"]


def test_updates_and_deletes_leave_no_pairs_behind(vault, engine):
    [cube] = asyncio.run(vault.put_many([CubeDraft("a/chat", "我们在北京见面", metadata={"lang": "new"})], "alice"))
    asyncio.run(vault.update(cube.id, CubePatch(frozenset({"text"}), CubeDraft("a/chat", "我们在上海见面"))))
    assert found(vault, "北京") == [] and found(vault, "上海") == ["new"]
    asyncio.run(vault.delete(cube.id, "alice"))
    assert found(vault, "上海") == [] and found(vault, "见面") == []
    if engine.name == "sqlite":  # the contentless index removed exactly the terms it held
        terms = engine.read(lambda conn: conn.execute(
            "SELECT count(*) FROM cubes_fts_instances WHERE term IN ('上海', '见面', '海')").fetchone())
        assert tuple(terms) == (0,)
    asyncio.run(vault.put_many([CubeDraft("a/chat", "上海很大", metadata={"lang": "again"})], "alice"))
    assert found(vault, "上海") == ["again"]


def test_scoped_callers_find_them_too(vault):
    hits, _ = asyncio.run(vault.search("苹果", CubeFilter(namespace_prefix="a", viewer="alice"), 10))
    assert [h.cube.metadata["lang"] for h in hits] == ["zh"]


# -- the migrations: cubes written before are reindexed ------------------------------------------------------------

OLD_ROW = ("INSERT INTO cubes (id, namespace, kind, state, version, parent_version, text, metadata, owner,"
           " visibility, created_at, updated_at) VALUES ('01J9Z3K5Q8W2E4R6T8Y0V2X4N6', 'a/chat', 1, 1, 1, 0, '我喜欢吃苹果 and pears',"
           " '{\"lang\": \"zh\", \"speaker\": \"\\u738b\\u5c0f\\u660e\"}', 'alice', 1, 1.0, 1.0)")


def check_migrated(vault):
    assert found(vault, "苹果") == ["zh"] and found(vault, "pears") == ["zh"]
    assert found(vault, "小明") == ["zh"]  # a metadata value spelled with JSON escapes
    [hit], _ = asyncio.run(vault.search("苹果", CubeFilter(), 10))
    asyncio.run(vault.delete(hit.cube.id, "alice"))
    assert found(vault, "苹果") == [] and found(vault, "pears") == []


def test_the_sqlite_migration_reindexes_older_cubes(tmp_path):
    path = tmp_path / "data" / "memos.db"
    path.parent.mkdir()
    vault_migrations, *others = all_migrations()
    setup = sqlite3.connect(path)
    vault_migrations.apply(SqliteUtilsDatabase(setup), stop_before="m0012_unspaced_scripts")
    for migration_set in others:
        migration_set.apply(SqliteUtilsDatabase(setup))
    setup.execute(OLD_ROW)
    setup.commit()
    assert setup.execute("SELECT count(*) FROM cubes_fts_instances WHERE term = '苹果'").fetchone() == (0,)
    setup.close()
    vault = MemVault(tmp_path / "data", clock=lambda: NOW)
    try:
        check_migrated(vault)
        left = asyncio.run(vault.db.read(lambda c: c.execute("SELECT count(*) FROM cubes_fts_instances").fetchone()))
        assert tuple(left) == (0,)  # the old terms went with the reindexing, the new ones with the delete
    finally:
        asyncio.run(vault.close())


def test_the_postgresql_migration_reindexes_older_cubes(postgres_server, tmp_path, monkeypatch):
    import psycopg

    from memosd.storage.postgres import schema

    with empty_database(postgres_server, f"memosd_unspaced_{os.getpid()}") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            monkeypatch.setattr(schema, "MIGRATIONS", tuple(m for m in schema.MIGRATIONS
                                                            if m[0] < "m0013_unspaced_scripts"))
            schema.migrate(conn, create=True)
            conn.execute(OLD_ROW)
            conn.execute("INSERT INTO cubes (id, namespace, kind, state, version, parent_version, text, owner,"
                         " visibility, created_at, updated_at) VALUES ('en', 'b/chat', 1, 1, 1, 0, 'plain words',"
                         " 'alice', 1, 1.0, 1.0)")
            before = conn.execute("SELECT sum(docs), sum(tokens) FROM search_stats").fetchone()
            monkeypatch.undo()
            assert schema.migrate(conn, create=True) == ["m0013_unspaced_scripts"]
            docs, tokens = conn.execute("SELECT sum(docs), sum(tokens) FROM search_stats").fetchone()
            assert docs == before[0] == 2 and tokens > before[1]
            assert conn.execute("SELECT sum(docs), sum(length) FROM search_sizes").fetchone() == (docs, tokens)
            assert conn.execute("SELECT sum(text_len) FROM cubes").fetchone() == (tokens,)
        vault = MemVault(tmp_path, db=open_database(tmp_path, url=url), clock=lambda: NOW)
        try:
            check_migrated(vault)
        finally:
            asyncio.run(vault.close())


def test_the_engines_index_the_same_pairs(engine):
    """PostgreSQL's PL/pgSQL copy of segment.index_text gives the same text, for every script and edge."""
    if engine.name != "postgresql":
        assert engine.read(lambda c: c.execute(f"SELECT {segment.INDEX_FUNCTION}('猫')").fetchone())[0] == " 猫 "
        return
    samples = [*TEXTS.values(), "a猫b", "ั", "xั", "𠀀𠀁 b", "カタカナ・テスト", "ພາສາລາວ", "ភាសាខ្មែរ", "မြန်မာ", ""]
    for text in samples:
        got = engine.read(lambda c, t=text: c.execute(f"SELECT {segment.INDEX_FUNCTION}(%s)", (t,)).fetchone())[0]
        assert got == segment.index_text(text), text


# -- through the daemon ---------------------------------------------------------------------------

@pytest.mark.vaults
def test_over_grpc_chinese_japanese_and_thai_are_found_and_stay_governed(client, agents):
    alice, _ = agents
    ids = client.put_many([{"text": t, "namespace": "agents/admin/chat", "metadata": {"lang": k}}
                           for k, t in TEXTS.items()])
    by_lang = dict(zip(TEXTS, ids, strict=True))
    for query, lang in (("苹果", "zh"), ("寿司", "ja"), ("ข้าวผัด", "th")):
        assert [h.cube.id for h in client.search(query, "agents/admin", mode="bm25")] == [by_lang[lang]]
        assert [h.cube.id for h in client.search(f'"{query}"', "agents/admin", mode="bm25", fts=True)] == \
            [by_lang[lang]]
    # An agent with no grant finds nothing of them, by pairs or by single characters.
    assert alice.search("苹果 寿司 果", mode="bm25") == []
