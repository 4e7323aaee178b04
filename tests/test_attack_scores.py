"""An attack on isolation through search ranking: BM25's statistics (how many cubes, how long, how many hold each
word) are counted over what the caller may read, so that no score, order or cut-off tells how often a word
appears in cubes it may not read."""

from __future__ import annotations

import pytest

from memos_client import MemosClient
from memos_mip.v1 import cube_pb2, vault_pb2

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)


def _ranking(c: MemosClient, query: str, **options) -> list[tuple[str, float]]:
    return [(h.cube.text, h.bm25_score) for h in c.search(query, mode="bm25", **options)]


def test_search_scores_say_nothing_of_cubes_the_caller_may_not_read(agents):
    alice, bob = agents
    bob.put("a zebra crossing near the station", "agents/bob/notes")
    bob.put("another note, about lunch", "agents/bob/notes")
    before = _ranking(bob, "zebra")
    alice.put_many({"text": f"zebra zebra, alice's secret {i}", "namespace": "agents/alice/zoo"} for i in range(30))
    after = _ranking(bob, "zebra")
    assert len(before) == 1
    assert after == before  # were they not, how often alice writes "zebra" would show in bob's scores


def test_the_order_of_a_callers_hits_does_not_follow_another_agents_words(agents):
    alice, bob = agents
    bob.put("apple pie for the picnic", "agents/bob/notes")
    bob.put("kiwi tart for the picnic", "agents/bob/notes")
    bob.put("the picnic is on sunday", "agents/bob/notes")
    before = _ranking(bob, "apple kiwi")
    # With the whole vault's statistics, "apple" common in alice's cubes would make it worth less than "kiwi",
    # and the kiwi tart would move ahead of the apple pie.
    alice.put_many({"text": f"apple {i}", "namespace": "agents/alice/orchard"} for i in range(40))
    after = _ranking(bob, "apple kiwi")
    assert [t for t, _ in before][:2] == ["apple pie for the picnic", "kiwi tart for the picnic"]
    assert after == before


def test_fts_syntax_and_filtered_searches_are_scored_within_the_scope_too(agents):
    alice, bob = agents
    bob.put("zebra stripes in the notes", "agents/bob/notes", tags=["zoo"])
    bob.put("zebras and lions", "agents/bob/notes", tags=["zoo"])
    queries = [("zebra*", {"fts": True}), ('"zebra stripes" OR lions', {"fts": True}),
               ("zebra", {"tags": ["zoo"]}), ("zebra", {"namespace": "agents/bob/notes"})]
    before = [_ranking(bob, q, **o) for q, o in queries]
    alice.put_many({"text": f"zebra stripes zebra lions {i}", "namespace": "agents/alice/zoo", "tags": ["zoo"]}
                   for i in range(30))
    after = [_ranking(bob, q, **o) for q, o in queries]
    assert all(before), before
    assert after == before


def test_owner_only_cubes_in_a_shared_namespace_do_not_count_for_other_readers(agents, client):
    alice, bob = agents
    client.grant("agent:alice", ["read", "write"], ["teams/lab/**"])
    client.grant("agent:bob", ["read", "write"], ["teams/lab/**"])
    bob.put("the centrifuge needs a new rotor", "teams/lab")
    bob.put("order more pipette tips", "teams/lab")
    before = _ranking(bob, "centrifuge rotor")
    for i in range(20):  # alice's own drafts in the shared namespace: hers alone to read
        draft = cube_pb2.CubeDraft(namespace="teams/lab", text=f"centrifuge draft {i}",
                                   visibility=cube_pb2.VISIBILITY_OWNER)
        alice._call(alice._vault.Put, vault_pb2.PutRequest(cube=draft))
    assert len(_ranking(alice, "centrifuge")) == 10  # they are there, and hers
    assert _ranking(bob, "centrifuge rotor") == before


def test_what_a_caller_may_read_is_ranked_as_bm25_ranks_it(agents, client):
    alice, bob = agents
    client.grant("agent:bob", ["read"], ["agents/alice/**"])
    texts = ["rare word here", "common word here", "common common word", "another common thing", "common"]
    for t in texts:
        alice.put(t, "agents/alice/notes")
    bobs = _ranking(bob, "common rare")
    # The rare word decides: its one cube first; the shortest cube holding "common" ahead of longer ones.
    assert [t for t, _ in bobs][:2] == ["rare word here", "common"]
    assert all(score > 0 for _, score in bobs) and len(bobs) == 5
    assert [t for t, _ in bobs] == [t for t, _ in _ranking(alice, "common rare")]


def test_a_long_fts_query_costs_a_bounded_number_of_counts(agents):
    _, bob = agents
    bob.put("a zebra crossing", "agents/bob/notes")
    # Hundreds of distinct words (as many as the 4 KiB query bound holds): each would cost a count and a read of its occurrences; past the first 64 they
    # still match, they only add no score.
    query = " OR ".join(["zebra", *(f"w{i}" for i in range(450))])
    hits = bob.search(query, mode="bm25", fts=True)
    assert [h.cube.text for h in hits] == ["a zebra crossing"] and hits[0].bm25_score > 0
