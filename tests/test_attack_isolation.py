"""An outside attack on isolation, second round: what an agent with its own key, or a narrow grant, could learn."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from memos_client import InvalidArgument, NotFound, PermissionDenied
from memos_mip.v1 import cube_pb2, vault_pb2
from tests.kv_helpers import put_kv
from tests.timing import wait_for

UNKNOWN_ID = "01JAAAAAAAAAAAAAAAAAAAAAAA"  # well-formed, and no cube of these tests has it


def test_a_writer_who_may_not_read_gets_no_text_tags_or_metadata_back_from_update(agents, client):
    alice, bob = agents
    client.grant("agent:alice", ["read", "write"], ["teams/inbox/**"])
    client.grant("agent:bob", ["write"], ["teams/inbox/**"])  # bob may drop notes there, not read them
    note = alice.put("alice's inbox secret", "teams/inbox", tags=["alice-tag"], metadata={"k": "alice-meta"},
                     source="alice-source")
    updated = bob.update(note.id, priority=3)
    assert updated.id == note.id and updated.version == 2
    seen = repr(updated)
    for secret in ("alice's inbox secret", "alice-tag", "alice-meta", "alice-source", "alice"):
        assert secret not in seen, (secret, seen)
    # The write itself happened, and alice still reads her text.
    got = alice.get(note.id)
    assert got.priority == 3 and got.text == "alice's inbox secret" and got.tags == ["alice-tag"]
    # A reader who writes gets the whole cube back, as before.
    client.grant("agent:bob", ["read"], ["teams/inbox/**"])
    assert bob.update(note.id, priority=4).text == "alice's inbox secret"


def _bundle_with_id(bob, tmp_path, cube_id: str):
    """A bundle of one of bob's own notes, its id replaced by cube_id (a bundle is bob's to write as he likes)."""
    out = tmp_path / f"bundle-{cube_id}-{len(list(tmp_path.iterdir()))}"
    bob.export(out, "agents/bob/notes")
    record = json.loads((out / "cubes.jsonl").read_text().splitlines()[0])
    data = (json.dumps({**record, "id": cube_id}) + "\n").encode()
    (out / "cubes.jsonl").write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "cubes.jsonl":
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest["counts"]["cubes"] = manifest["counts"]["plaintext"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_an_import_does_not_tell_whether_another_agents_cube_has_an_id(agents, tmp_path):
    alice, bob = agents
    hers = alice.put("alice's private note", "agents/alice/private").id
    bob.put("bob's note", "agents/bob/notes")
    said = {}
    for what, cube_id in (("hers", hers), ("unknown", UNKNOWN_ID)):
        namespace = f"agents/bob/imported-{what}"
        report = bob.import_bundle(_bundle_with_id(bob, tmp_path, cube_id), namespace)
        (stored,) = bob.list(namespace)
        said[what] = ((report.cubes, report.skipped, report.renamed), stored.id == cube_id,
                      [i == cube_id for i in stored.derived_from])
        again = bob.import_bundle(_bundle_with_id(bob, tmp_path, cube_id), namespace)
        assert (again.cubes, again.skipped) == (0, 1)  # a re-run still stores nothing twice
    assert said["hers"] == said["unknown"], said
    assert alice.get(hers).text == "alice's private note"


def test_an_import_does_not_tell_whether_a_cube_one_may_not_read_holds_the_same_kv_cache(agents, client, tmp_path):
    alice, bob = agents
    client.grant("agent:alice", ["read", "write"], ["teams/drop/**"])
    client.grant("agent:bob", ["write"], ["teams/drop/**"])  # bob may add caches there, not read them
    put_kv(bob, [1, 2, 3], "agents/bob/kv", seed=5)
    bob.export(tmp_path / "kv", "agents/bob/kv")
    put_kv(alice, [1, 2, 3], "teams/drop/hers", seed=5)  # the very bytes of bob's cache, in a cube bob may not read
    said = {}
    for where in ("hers", "empty"):
        report = bob.import_bundle(tmp_path / "kv", f"teams/drop/{where}")
        said[where] = (report.cubes, report.tensors, report.skipped)
    assert said["hers"] == said["empty"] == (1, 1, 0), said
    again = bob.import_bundle(tmp_path / "kv", "teams/drop/hers")
    assert (again.tensors, again.skipped) == (0, 1)  # what bob stored himself still counts as imported before


def test_an_open_subscription_ends_when_its_grant_expires(agents, client):
    _, bob = agents
    expires = time.time() + 3
    client.grant("agent:bob", ["subscribe"], ["teams/feed/**"], expires_at=expires)
    client.publish("teams/feed/old", client.put("before", "agents/admin/feed").id)
    with bob.subscribe("teams/feed/**") as events:
        seen = iter(events)
        assert next(seen).topic == "teams/feed/old"
        wait_for(lambda: time.time() >= expires + 0.5, "the clock never passed the grant's expiry", 10)
        client.publish("teams/feed/after-expiry", client.put("after", "agents/admin/feed").id)
        with pytest.raises(PermissionDenied, match="may no longer subscribe"):
            event = next(seen)
            pytest.fail(f"bob's stream outlived his grant and named {event.topic} ({event.kind.name})")


def _owner_only(c, namespace: str, text: str) -> str:
    draft = cube_pb2.CubeDraft(namespace=namespace, text=text, visibility=cube_pb2.VISIBILITY_OWNER)
    return c._call(c._vault.Put, vault_pb2.PutRequest(cube=draft)).cube.header.descriptive.id


def _make_public(c, cube_id: str, text: str) -> None:
    c._call(c._vault.Update, vault_pb2.UpdateRequest(id=cube_id, cube=cube_pb2.CubeDraft(
        text=text, visibility=cube_pb2.VISIBILITY_NAMESPACE), update_mask={"paths": ["text", "visibility"]}))


def test_a_subscriber_reads_no_owner_only_version_of_a_shared_cube(agents, client):
    alice, bob = agents
    client.grant("agent:bob", ["subscribe"], ["agents/alice/news"])
    draft = _owner_only(alice, "agents/alice/notes", "alice's private draft")  # v1: hers alone
    _make_public(alice, draft, "alice's announcement")  # v2: fit to share
    alice.publish("agents/alice/news", draft)
    with bob.subscribe("agents/alice/news") as events:
        assert next(iter(events)).cube.text == "alice's announcement"
    assert bob.get(draft).text == "alice's announcement"  # the published version, through the share
    assert [v.text for v in bob.history(draft)] == ["alice's announcement"]
    with pytest.raises(PermissionDenied):
        bob.get(draft, version=1)
    # A version alice makes owner-only after sharing is hers alone too.
    alice._call(alice._vault.Update, vault_pb2.UpdateRequest(id=draft, cube=cube_pb2.CubeDraft(
        text="alice's second thoughts", visibility=cube_pb2.VISIBILITY_OWNER), update_mask={"paths": ["text", "visibility"]}))
    assert "alice's second thoughts" not in [v.text for v in bob.history(draft)]
    with pytest.raises(PermissionDenied):
        bob.get(draft)


LONG = "pol_" + "q" * 900  # well under the 1 KiB a message is cut to, so only quoting keeps it from coming back whole


def test_a_malformed_policy_id_is_invalid_and_not_echoed_whole(agents):
    _, bob = agents
    for call in (bob.get_policy, bob.revoke_policy):
        with pytest.raises(InvalidArgument, match="is not a policy id") as info:
            call(LONG)
        assert LONG not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(NotFound, match="no policy pol_0000000000000000"):
        bob.get_policy("pol_" + "0" * 16)  # well formed, unknown: as before


def test_an_ack_on_a_malformed_topic_is_invalid_and_not_echoed_whole(agents):
    _, bob = agents
    bob.publish("agents/bob/t", bob.put("x", "agents/bob/n").id)
    with bob.subscribe("agents/bob/t", durable_name="d") as events:
        next(iter(events))
        topic = "agents/bob/" + "q" * 900
        with pytest.raises(InvalidArgument) as info:
            bob.ack("d", topic, 1)
        assert topic not in str(info.value) and len(str(info.value)) < 400
