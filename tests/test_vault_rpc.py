"""Put/Get/Update/Delete/List/History/Search through the real daemon and client."""

import pytest

from memos_client import Conflict, FailedPrecondition, InvalidArgument, NotFound, State
from tests.timing import ManualClock

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)


def test_put_get_roundtrip(client):
    cube = client.put("Alice likes hiking in the Alps", "agents/alice/notes", tags=["hobby"],
                      metadata={"speaker": "alice", "turn": 3}, source="chat")
    got = client.get(cube.id)
    assert (got.text, got.namespace, got.tags, got.metadata, got.source) == (
        "Alice likes hiking in the Alps", "agents/alice/notes", ["hobby"], {"speaker": "alice", "turn": 3}, "chat")
    assert got.version == 1 and got.parent_version == 0 and got.state is State.ACTIVE


def test_update_makes_linked_versions_and_history(client):
    cube = client.put("first", "agents/a/n")
    v2 = client.update(cube.id, text="second", tags=["t"])
    v3 = client.update(cube.id, metadata={"k": "v"}, expected_version=2)
    assert (v2.version, v2.parent_version, v3.version, v3.parent_version) == (2, 1, 3, 2)
    assert [v.text for v in client.history(cube.id)] == ["first", "second", "second"]
    assert client.get(cube.id, version=1).text == "first"
    with pytest.raises(Conflict):
        client.update(cube.id, text="stale", expected_version=2)


def test_delete_leaves_tombstone_hidden_from_list_and_search(client):
    keep = client.put("the red fox", "agents/a/n")
    gone = client.put("the red fox jumps", "agents/a/n")
    assert client.delete(gone.id) == 2
    with pytest.raises(NotFound):
        client.get(gone.id)
    assert [c.id for c in client.list("agents/a")] == [keep.id]
    assert [h.cube.id for h in client.search("red fox")] == [keep.id]
    history = client.history(gone.id)
    assert [v.state for v in history] == [State.ACTIVE, State.DELETED]
    with pytest.raises(FailedPrecondition, match="deleted"):
        client.update(gone.id, text="again")
    with pytest.raises(NotFound):
        client.delete(gone.id)


def test_list_filters_and_pages(client):
    ids = client.put_many([{"text": f"note {i}", "namespace": "agents/a/n" if i % 2 else "agents/ab/n",
                            "tags": ["even"] if i % 2 == 0 else []} for i in range(25)], batch_size=7)
    assert len(ids) == 25
    page = client.list_page("agents/a", page_size=5)
    assert page.total_size == 12 and len(page.cubes) == 5 and page.next_page_token
    assert [c.id for c in client.list("agents/a", page_size=5)] == [i for n, i in enumerate(ids) if n % 2]
    assert len(list(client.list(tags=["even"]))) == 13
    assert len(list(client.list())) == 25


def test_search_ranks_and_filters(client):
    client.put("the quarterly budget review is on Monday", "teams/finance/notes", tags=["meeting"])
    client.put("my cat sleeps on the keyboard", "agents/bob/notes")
    hits = client.search("budget review meeting")
    assert hits[0].cube.text.startswith("the quarterly budget")
    assert hits[0].bm25_score is not None and hits[0].score > 0
    assert client.search("budget", namespace="agents/bob") == []
    assert len(client.search("cat OR budget", fts=True)) == 2


def test_ttl_expiry_hides_cube(client, daemon):
    daemon.vault.clock = clock = ManualClock()  # MemVault's clock seam: expiry is its decision alone
    cube = client.put("short-lived", "agents/a/n", ttl=1)
    clock.advance(1.2)
    assert client.get(cube.id).state is State.EXPIRED
    assert list(client.list("agents/a")) == []
    assert [c.id for c in client.list("agents/a", states=[State.EXPIRED])] == [cube.id]
    daemon.call(daemon.vault.expire_due())
    revived = client.update(cube.id, ttl=3600)
    assert revived.state is State.ACTIVE


def test_access_count_is_kept_off_the_read_path(client, daemon):
    cube = client.put("counted", "agents/a/n")
    for _ in range(3):
        client.get(cube.id)
    assert daemon.call(daemon.vault.flush_access()) == 1
    got = client.get(cube.id)
    assert got.access_count == 4 and got.last_accessed_at is not None


def test_archive_and_restore(client):
    cube = client.put("archive me", "agents/a/n")
    client.update(cube.id, state=State.ARCHIVED)
    assert list(client.list("agents/a")) == []
    assert len(list(client.list("agents/a", states=[State.ARCHIVED]))) == 1
    assert client.update(cube.id, state=State.ACTIVE).state is State.ACTIVE


def test_status_reports_counts(client):
    client.put("x", "agents/a/n")
    status = client.status()
    assert status.counts["plaintext"]["active"] == 1 and status.data_bytes > 0 and status.version


def test_put_many_raises_the_callers_own_error(client):
    def drafts():
        yield {"text": "fine", "namespace": "agents/a/n"}
        raise ValueError("broken input source")

    with pytest.raises(ValueError, match="broken input source"):
        client.put_many(drafts())
    with pytest.raises(InvalidArgument, match="text"):
        client.put_many([{"namespace": "agents/a/n"}])


def test_async_client_put_many_and_search(aclient_factory):
    import asyncio

    async def go():
        async with aclient_factory() as c:
            ids = await c.put_many([{"text": f"async note {i}", "namespace": "agents/a/n"} for i in range(30)],
                                   batch_size=8)
            assert len(ids) == 30
            assert len(await c.search("async note", limit=5)) == 5
            assert [x.id async for x in c.list(page_size=7)] == ids

    asyncio.run(go())


def test_search_follows_updates_and_deletes(client):
    cube = client.put("Carol's cat is called Tom", "agents/a/n")
    client.update(cube.id, text="Carol's cat is called Miso")
    assert [h.cube.id for h in client.search("Miso cat", mode="bm25")] == [cube.id]
    assert [h.cube.id for h in client.search("carol", mode="bm25")] == [cube.id]
    assert client.search("Tom", mode="bm25") == []
    client.delete(cube.id)
    assert client.search("Miso cat", mode="bm25") == []
