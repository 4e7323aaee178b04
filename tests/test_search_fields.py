"""What full-text search indexes beside a cube's text, on each engine: its search context (indexed, never returned)
and its metadata's string values, both weighted below the text, kept in step by every write and migrated in."""

import asyncio
import os
import sqlite3

import pytest
from memos_client import InvalidArgument as ClientInvalidArgument
from memos_client import MemosClient
from sqlite_utils import Database as SqliteUtilsDatabase

from memosd.cube import CubeDraft, CubeFilter, CubePatch
from memosd.errors import InvalidArgument
from memosd.storage import open_database
from memosd.storage.sqlite.db import all_migrations
from memosd.vault.vault import MemVault
from tests.pg_server import empty_database

NOW = 1000.0


@pytest.fixture
def vault(engine, tmp_path):
    return MemVault(tmp_path / "data", db=engine.db, clock=lambda: NOW)


def put(vault, *drafts):
    return asyncio.run(vault.put_many(list(drafts), "alice"))


def search(vault, query, limit=10):
    hits, _ = asyncio.run(vault.search(query, CubeFilter(namespace_prefix="a"), limit))
    return hits


def found(vault, query):
    return [h.cube.text for h in search(vault, query)]


def test_a_cube_is_found_by_a_speaker_name_only_in_its_metadata(vault):
    put(vault, CubeDraft("a/chat", "I went hiking at the lake", metadata={"speaker": "Caroline", "turn": 3}),
        CubeDraft("a/chat", "the lake was cold", metadata={"speaker": "Melanie"}))
    assert found(vault, "caroline") == ["I went hiking at the lake"]
    # Only string values are words: the number is not indexed, nor are the keys.
    assert found(vault, "speaker") == [] and found(vault, "3") == []
    assert found(vault, "Caroline lake")[0] == "I went hiking at the lake"


def test_the_context_is_indexed_but_never_returned_and_counts_less_than_the_text(vault):
    [with_context, in_text] = put(
        vault, CubeDraft("a/chat", "Yes, it was amazing", context="Did you enjoy the pottery class?"),
        CubeDraft("a/chat", "The pottery class starts at nine, I think"))
    hits = search(vault, "pottery class")
    assert [h.cube.id for h in hits] == [in_text.id, with_context.id]  # the same words in the text weigh more
    assert hits[1].cube.text == "Yes, it was amazing" and hits[1].bm25_score < hits[0].bm25_score
    assert found(vault, "enjoy") == ["Yes, it was amazing"]
    got = asyncio.run(vault.get(with_context.id))
    assert "pottery" not in repr(got)  # the cube as read holds nothing of its context


def test_updates_and_deletes_keep_the_index_in_step(vault, engine):
    [cube] = put(vault, CubeDraft("a/chat", "we met at noon", context="lunch plans", metadata={"place": "Paris"}))
    asyncio.run(vault.update(cube.id, CubePatch(frozenset({"metadata"}), CubeDraft("a/chat", "",
                                                                                   metadata={"place": "Rome"}))))
    assert found(vault, "paris") == [] and found(vault, "rome") == ["we met at noon"]
    asyncio.run(vault.update(cube.id, CubePatch(frozenset({"text"}), CubeDraft("a/chat", "we met at one"))))
    assert found(vault, "lunch") == ["we met at one"] and found(vault, "noon") == []  # an Update keeps the context
    asyncio.run(vault.delete(cube.id, "alice"))
    assert found(vault, "lunch") == [] and found(vault, "rome") == []
    left = engine.read(lambda conn: conn.execute("SELECT search_context FROM cubes").fetchall())
    assert [tuple(r) for r in left] == [(None,)]  # a tombstone keeps no context
    put(vault, CubeDraft("a/chat", "lunch again"))
    assert found(vault, "lunch") == ["lunch again"]  # the deleted cube's entries are gone, not just filtered


@pytest.mark.parametrize("context, problem", [("x" * 16385, "16385 bytes; the limit is 16384"),
                                              ("a\x00b", "NUL character")])
def test_a_context_too_large_or_with_a_nul_is_refused(vault, context, problem):
    with pytest.raises(InvalidArgument, match=problem):
        put(vault, CubeDraft("a/chat", "fine", context=context))
    assert found(vault, "fine") == []


def test_the_sqlite_migration_indexes_the_cubes_written_before_it(tmp_path):
    path = tmp_path / "data" / "memos.db"
    path.parent.mkdir()
    vault_migrations, *others = all_migrations()
    setup = sqlite3.connect(path)
    vault_migrations.apply(SqliteUtilsDatabase(setup), stop_before="m0009_search_fields")
    for migration_set in others:
        migration_set.apply(SqliteUtilsDatabase(setup))
    setup.execute("INSERT INTO cubes (id, namespace, kind, state, version, parent_version, text, metadata, owner,"
                  " visibility, created_at, updated_at) VALUES ('old', 'a/chat', 1, 1, 1, 0, 'an older turn',"
                  " '{\"speaker\": \"Caroline\"}', 'alice', 1, 1.0, 1.0)")
    setup.commit()
    setup.close()
    vault = MemVault(tmp_path / "data", clock=lambda: NOW)
    try:
        assert found(vault, "older") == ["an older turn"] and found(vault, "caroline") == ["an older turn"]
    finally:
        asyncio.run(vault.close())


def test_the_postgresql_migration_indexes_the_cubes_written_before_it(postgres_server, tmp_path, monkeypatch):
    with empty_database(postgres_server, f"memosd_search_fields_{os.getpid()}") as url:
        _migrate_in(url, tmp_path, monkeypatch)


def _migrate_in(url, tmp_path, monkeypatch):
    import psycopg

    from memosd.storage.postgres import schema

    with psycopg.connect(url, autocommit=True) as conn:
        monkeypatch.setattr(schema, "MIGRATIONS", tuple(m for m in schema.MIGRATIONS if m[0] < "m0010_search_fields"))
        schema.migrate(conn, create=True)
        conn.execute("INSERT INTO cubes (id, namespace, kind, state, version, parent_version, text, metadata, owner,"
                     " visibility, created_at, updated_at) VALUES ('old', 'a/chat', 1, 1, 1, 0, 'an older turn',"
                     " '{\"speaker\": \"Caroline\"}', 'alice', 1, 1.0, 1.0)")
        monkeypatch.undo()
        assert schema.migrate(conn, create=True)[0] == "m0010_search_fields"
        assert conn.execute("SELECT sum(docs), sum(tokens) FROM search_stats").fetchone() == (1, 3)
    db = open_database(tmp_path, url=url)
    vault = MemVault(tmp_path, db=db, clock=lambda: NOW)
    try:
        assert found(vault, "older") == ["an older turn"] and found(vault, "caroline") == ["an older turn"]
    finally:
        asyncio.run(vault.close())


# -- through the daemon ---------------------------------------------------------------------------


@pytest.mark.vaults
def test_over_grpc_the_context_ranks_but_never_comes_back(client):
    ids = client.put_many([{"text": "Yes, it was amazing", "namespace": "agents/admin/chat",
                            "context": "Melanie: did you enjoy the pottery class?", "metadata": {"speaker": "Caroline"}},
                           {"text": "unrelated", "namespace": "agents/admin/chat"}])
    hits = client.search("pottery", "agents/admin/chat", mode="bm25")
    assert [h.cube.id for h in hits] == [ids[0]] and hits[0].cube.text == "Yes, it was amazing"
    assert "pottery" not in repr(hits[0]) and "pottery" not in repr(client.get(ids[0]))
    assert [h.cube.id for h in client.search("caroline", "agents/admin/chat", mode="bm25")] == [ids[0]]
    one = client.put("It was lovely", "agents/admin/chat", context="the beach trip")
    assert [h.cube.id for h in client.search("beach", "agents/admin/chat", mode="bm25")] == [one.id]


@pytest.mark.vaults
def test_a_bad_context_is_invalid_argument_without_echoing_it(client):
    for context, problem in (("word " * 4000, "context is 20000 bytes; the limit is 16384"),
                             ("a\x00b", "context holds a NUL character")):
        with pytest.raises(ClientInvalidArgument, match=problem) as err:
            client.put("fine", "agents/admin/chat", context=context)
        assert "word word" not in str(err.value)
        with pytest.raises(ClientInvalidArgument, match=problem):
            client.put_many([{"text": "fine", "namespace": "agents/admin/chat", "context": context}])
    assert client.search("fine", "agents/admin/chat", mode="bm25") == []


@pytest.mark.vaults
def test_context_and_metadata_of_cubes_one_may_not_read_never_reach_ones_results(daemon, client, tmp_path):
    client.put("the plan for the offsite", "teams/secret", context="launch code zebra", metadata={"author": "Quentin"})
    client.put("lab notes on zebra finches", "teams/lab")
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    client.grant("agent:bob", ["read"], ["teams/lab", "teams/lab/**"])
    with MemosClient(daemon.address, key=str(tmp_path / "bob.key"), timeout=30) as bob:
        for query in ("zebra", "launch code", "quentin", "offsite"):
            found = bob.search(query, mode="bm25")
            assert all(h.cube.namespace == "teams/lab" for h in found), query
            assert all("launch" not in repr(h) and "Quentin" not in repr(h) for h in found)
        assert [h.cube.text for h in bob.search("zebra", mode="bm25")] == ["lab notes on zebra finches"]
        assert bob.search("quentin", mode="bm25") == [] and bob.search("launch code", mode="bm25") == []
    # The admin, who may read it, finds the secret cube by the same words.
    assert [h.cube.text for h in client.search("quentin launch", "teams", mode="bm25")] == ["the plan for the offsite"]
