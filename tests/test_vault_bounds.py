"""Numbers and times at the vault's boundary: checked before anything is stored, and no stored value
(however it got there) can fail the reads of everyone else."""

import json
import secrets
import sqlite3
import threading
import time

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from memos_client import InvalidArgument, MemosClient
from memos_client.models import Event
from memos_mip.v1 import cube_pb2, vault_pb2
from memosd.limits import Limits
from memosd.storage.sqlite.db import register_functions
from memosd.vault.tensor_cubes import TensorDraft, new_cube
from memosd.cube import MemoryKind
from memosd.errors import InvalidArgument as CoreInvalidArgument

MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z


def _first_event(sub, timeout=20.0):
    got, done = [], threading.Event()

    def read():
        try:
            for item in sub:
                if isinstance(item, Event):
                    got.append(item)
                    break
        except Exception as exc:  # noqa: BLE001 - handed to the test
            got.append(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), "no event arrived"
    sub.close()
    return got[0]


def _everything_still_reads(client, tmp_path, expect: int):
    """The admin's List, Search and Export of the whole vault all answer."""
    dest = tmp_path / f"export-{len(list(tmp_path.glob('export-*')))}.tar"
    assert len(list(client.list())) == expect
    assert client.list_page().total_size == expect
    assert len(client.search("note", mode="bm25")) == expect
    manifest = client.export(str(dest))
    assert manifest["counts"]["cubes"] == expect


def test_huge_ttl_is_refused_and_nothing_is_stored(client, tmp_path):
    client.put("a note that stays", "agents/a/n")
    with pytest.raises(InvalidArgument, match="ttl_seconds is too large"):
        client.put("a note with a ttl of ten thousand years", "agents/a/n", ttl=3e11)
    _everything_still_reads(client, tmp_path, 1)
    with pytest.raises(InvalidArgument, match="ttl_seconds"):
        client.put_many([{"text": "note", "namespace": "agents/a/n", "ttl": 2**62}])
    kept = client.list_page().cubes[0]
    with pytest.raises(InvalidArgument, match="ttl_seconds"):
        client.update(kept.id, ttl=3e11)
    assert client.get(kept.id).version == 1 and client.get(kept.id).expires_at is None
    _everything_still_reads(client, tmp_path, 1)


@pytest.mark.parametrize("seconds,nanos", [(2**62, 0), (MAX_TIME + 1, 0), (-5, 0), (100, -1), (100, 10**9)])
def test_out_of_range_times_are_invalid_argument(client, seconds, nanos):
    cube = client.put("a note", "agents/a/n")
    ts = Timestamp(seconds=int(seconds), nanos=nanos)
    put = vault_pb2.PutRequest(cube=cube_pb2.CubeDraft(namespace="agents/a/n", text="x", expires_at=ts))
    update = vault_pb2.UpdateRequest(id=cube.id, cube=cube_pb2.CubeDraft(expires_at=ts),
                                     update_mask={"paths": ["expires_at"]})
    listing = vault_pb2.ListRequest(filter=vault_pb2.CubeFilter(created_after=ts))
    search = vault_pb2.SearchRequest(query="note", filter=vault_pb2.CubeFilter(created_before=ts))
    for method, request in ((client._vault.Put, put), (client._vault.Update, update), (client._vault.List, listing),
                            (client._vault.Search, search)):
        with pytest.raises(InvalidArgument, match="expires_at|created_after|created_before"):
            client._call(method, request)
    assert [c.id for c in client.list()] == [cube.id] and client.get(cube.id).version == 1


def test_metadata_that_a_reply_cannot_carry_is_refused(client, tmp_path):
    for value in (float("nan"), float("inf")):
        draft = cube_pb2.CubeDraft(namespace="agents/a/n", text="x")
        draft.metadata.update({"score": value})
        with pytest.raises(InvalidArgument, match="finite"):
            client._call(client._vault.Put, vault_pb2.PutRequest(cube=draft))
    with pytest.raises(InvalidArgument, match="deeper"):
        client.put("x", "agents/a/n", metadata={"k": json.loads("[" * 40 + "]" * 40)})
    assert list(client.list()) == []


def test_tensor_cube_ttl_and_priority_are_checked_before_storing():
    limits = Limits()
    for draft in (TensorDraft("agents/a/n", None, ttl_seconds=int(3e11)), TensorDraft("agents/a/n", None, priority=2**40)):
        with pytest.raises(CoreInvalidArgument, match="ttl_seconds|priority"):
            new_cube(draft, MemoryKind.ACTIVATION, "a", limits, 1.7e9, 64)


def test_poisoned_rows_do_not_break_reads_for_everyone(daemon, client, tmp_path):
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    alice = MemosClient(daemon.address, key=str(tmp_path / "alice.key"))
    poisoned = alice.put("alice's poisoned note", "agents/alice/n")
    alice.update(poisoned.id, text="alice's poisoned note, v2")
    other = client.put("another note", "agents/admin/n")
    mangled = client.put("a mangled note", "agents/admin/n", tags=["t"])
    client.publish("teams/news", poisoned.id)
    # As an older daemon or a hand edit could have left them: times and numbers no reply can carry.
    with sqlite3.connect(daemon.config.data_dir / "memos.db") as db:
        register_functions(db)  # the full-text triggers call it
        db.execute("UPDATE cubes SET expires_at = ?, last_accessed_at = ?, created_at = 'soon', priority = ?,"
                   " access_count = ? WHERE id = ?", (1e300, -1e300, 2**40, -3, poisoned.id))
        (snapshot,) = db.execute("SELECT snapshot FROM cube_versions WHERE id = ?", (poisoned.id,)).fetchone()
        old = dict(json.loads(snapshot), expires_at=float("inf"), updated_at=9e18)
        db.execute("UPDATE cube_versions SET snapshot = ? WHERE id = ?", (json.dumps(old), poisoned.id))
        db.execute("UPDATE cubes SET tags = 'not json', metadata = '{\"a\": ', visibility = 7, derived_from = '5'"
                   " WHERE id = ?", (mangled.id,))
    _everything_still_reads(client, tmp_path, 3)
    assert client.get(mangled.id).tags == [] and not client.get(mangled.id).metadata
    mine = list(alice.list())
    assert [c.id for c in mine] == [poisoned.id]
    assert mine[0].expires_at.year == 9999 and mine[0].priority == 2**31 - 1
    assert [h.cube.id for h in alice.search("poisoned", mode="bm25")] == [poisoned.id]
    assert [v.version for v in alice.history(poisoned.id)] == [1, 2]
    assert client.get(other.id).text == "another note"
    event = _first_event(client.subscribe("teams/news"))
    assert event.cube.id == poisoned.id
    alice.close()


def test_filters_with_too_many_tags_are_invalid_argument(client):
    client.put("a tagged note", "agents/a/n", tags=["t0", "t1"])
    tags = [f"t{i}" for i in range(10_000)]
    with pytest.raises(InvalidArgument, match="10000 tags in the filter; at most 64"):
        client.list_page(tags=tags)
    with pytest.raises(InvalidArgument, match="10000 tags in the filter; at most 64"):
        client.search("note", tags=tags)
    assert [c.text for c in client.list(tags=["t0", "t1"])] == ["a tagged note"]
    assert len(client.search("note", tags=[f"t{i % 2}" for i in range(64)])) == 1


@pytest.mark.parametrize("field,value", [("expires_at", 10**400), ("expires_at", 1e300), ("not_before", -1),
                                         ("issued_at", True)], ids=["huge-int", "1e300", "negative", "bool"])
def test_policy_times_out_of_range_are_invalid_argument(client, field, value):
    from memos_client.auth import canonical

    now = int(time.time())
    doc = {"version": 1, "id": "pol_" + secrets.token_hex(8), "issuer": "admin", "subject": "agent:bob",
           "actions": ["read"], "namespaces": ["teams/x/**"], "kinds": [], "issued_at": now, "not_before": now,
           "expires_at": now + 60}
    doc[field] = value
    document = canonical(doc)
    with pytest.raises(InvalidArgument, match=f"policy {field}"):
        client.put_policy(document, client.tokens.key.sign(document))
    assert [p.id for p in client.list_policies(include_inactive=True)] == []


@pytest.mark.parametrize("grants", [1500, 9000])
def test_a_reader_with_thousands_of_grants_can_still_list_and_search(daemon, client, tmp_path, grants):
    # Each grant is one condition of the read scope: more than SQLite takes in one expression (1500),
    # more than it takes variables in one statement by default (9000).
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    # A policy document is at most 64 KiB, so thousands of grants come as several policies.
    for start in range(0, grants, 1500):
        client.grant("agent:bob", ["read"], [f"teams/t{i}/**" for i in range(start, min(start + 1500, grants))])
    client.grant("agent:bob", ["read"], ["teams/t1234/notes", "teams/t7/**"], kinds=["plaintext"])
    client.grant("agent:bob", ["read"], ["teams/k"], kinds=["activation"])
    inside = client.put("a shared note", "teams/t1234/notes")
    client.put("a note bob may not read", "teams/other")
    client.put("plaintext bob's kind-limited grant does not cover", "teams/k")
    with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
        assert [c.id for c in bob.list()] == [inside.id] and bob.list_page().total_size == 1
        assert [h.cube.id for h in bob.search("note", mode="bm25")] == [inside.id]
        assert [c.id for c in bob.list("teams/t1234")] == [inside.id]


def test_find_by_prefix_with_a_prompt_of_millions_of_tokens(client):
    # 4.2 million tokens are 262,500 block keys: more than one SQLite statement takes variables.
    from tests.kv_helpers import FINGERPRINT, put_kv

    base = list(range(10, 60))
    cube = put_kv(client, base[:45])
    found, matched = client.find_kv(FINGERPRINT, base + [7] * 4_200_000)
    assert (found.id, matched) == (cube.id, 45)
