"""An attack on isolation through lineage and shares: what derived_from tells a reader, what a writer may claim in
it, and whose shares a retraction ends."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest

from memos_client import AlreadyExists, Kind, MemosClient, NotFound
from memos_client.cli import main
from memos_client.models import Event, EventKind
from tests.existence import answer, assert_hidden
from tests.kv_helpers import FINGERPRINT, put_kv
from tests.store_checks import collect

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)

UNKNOWN_ID = "01JAAAAAAAAAAAAAAAAAAAAAAA"
SHARED = "teams/shared"


@pytest.fixture
def agents(daemon, client, tmp_path):
    """alice, bob, carol and dave, each with its own key; the tests grant what each needs."""
    opened = {}
    for name in ("alice", "bob", "carol", "dave"):
        client.add_agent(name, out=str(tmp_path / f"{name}.key"))
        opened[name] = MemosClient(daemon.address, key=str(tmp_path / f"{name}.key"), timeout=30)
    yield opened["alice"], opened["bob"], opened["carol"], opened["dave"]
    for c in opened.values():
        c.close()


def _exported_lineage(reader, tmp_path, namespace: str) -> dict[str, list[str]]:
    out = tmp_path / f"export-{len(list(tmp_path.iterdir()))}"
    reader.export(out, namespace)
    if out.is_dir():
        lines = (out / "cubes.jsonl").read_text().splitlines()
    else:
        with tarfile.open(out) as tar:
            lines = tar.extractfile("cubes.jsonl").read().decode().splitlines()
    return {r["id"]: r["derived_from"] for r in map(json.loads, lines)}


def test_derived_from_names_only_the_sources_the_reader_may_read(agents, client, tmp_path):
    alice, bob, _, _ = agents
    client.grant("agent:alice", ["read", "write"], [f"{SHARED}/**"])
    client.grant("agent:bob", ["read", "publish", "subscribe"], [f"{SHARED}/**"])
    secret = alice.put("alice's private source", "agents/alice/private")
    public = alice.put("a source bob reads too", f"{SHARED}/notes")
    kv = put_kv(alice, [1, 2, 3], f"{SHARED}/kv", derived_from=[secret.id, public.id])
    assert kv.derived_from == [secret.id, public.id]  # the writer sees its whole lineage
    assert alice.get(kv.id).derived_from == [secret.id, public.id]

    seen = {
        "get": bob.get(kv.id).derived_from,
        "get-version": bob.get(kv.id, version=1).derived_from,
        "history": [v.derived_from for v in bob.history(kv.id)][0],
        "list": [c.derived_from for c in bob.list(SHARED, kinds=[Kind.ACTIVATION])][0],
        "find-by-prefix": bob.find_kv(FINGERPRINT, [1, 2, 3])[0].derived_from,
        "plan": bob.plan("a source bob reads", model_fingerprint=FINGERPRINT).activation.cube.derived_from,
        "export": _exported_lineage(bob, tmp_path, SHARED)[kv.id],
    }
    assert seen == {path: [public.id] for path in seen}, seen
    assert client.get(kv.id).derived_from == [secret.id, public.id]  # the admin reads everything
    # A deleted source a reader may read stays in the lineage (History still shows it); an unreadable one never shows.
    client.delete(public.id)
    alice.delete(secret.id)
    assert bob.get(kv.id).derived_from == [public.id]
    assert alice.get(kv.id).derived_from == [secret.id, public.id]


def test_a_subscriber_sees_only_the_sources_it_may_read(agents, client):
    alice, bob, _, _ = agents
    client.grant("agent:alice", ["read", "write", "share", "publish", "subscribe"], [f"{SHARED}/**"])
    client.grant("agent:bob", ["read", "subscribe"], [f"{SHARED}/**"])
    secret = alice.put("alice's private source", "agents/alice/private")
    kv = put_kv(alice, [1, 2, 3], f"{SHARED}/kv", derived_from=[secret.id])
    alice.publish(f"{SHARED}/feed", kv.id)
    (event,) = [i for i in collect(bob.subscribe(f"{SHARED}/feed", resume_for=0), 1) if isinstance(i, Event)]
    assert event.cube.id == kv.id and event.cube.derived_from == []
    (event,) = [i for i in collect(alice.subscribe(f"{SHARED}/feed", resume_for=0), 1) if isinstance(i, Event)]
    assert event.cube.derived_from == [secret.id]


def test_a_writer_may_not_claim_sources_it_may_not_read(agents, client):
    alice, bob, carol, _ = agents
    client.grant("agent:bob", ["read", "write"], [f"{SHARED}/**"])
    client.grant("agent:carol", ["read"], [f"{SHARED}/**"])
    hers = carol.put("carol's notes about the paris train", "agents/carol/notes")
    # bob never read carol's note (he may not): naming it would make his cache carol's plan's choice for her hits.
    said = {what: answer(lambda i: put_kv(bob, [1, 2, 3], f"{SHARED}/kv", derived_from=[i]), cube_id)
            for what, cube_id in (("hers", hers.id), ("unknown", UNKNOWN_ID))}
    assert said["hers"][0] is NotFound and said["hers"] == said["unknown"], said
    assert list(bob.list(SHARED, kinds=[Kind.ACTIVATION])) == []
    assert carol.plan("paris train", model_fingerprint=FINGERPRINT).activation is None
    # A source he may read is his to name.
    mine = bob.put("bob's own note", f"{SHARED}/notes")
    assert put_kv(bob, [1, 2, 3], f"{SHARED}/kv", derived_from=[mine.id]).derived_from == [mine.id]


def _publishers(alice, client, topic, *names):
    """A cube of alice's that each of names may read and share, and publish on topic; dave subscribes to topic."""
    cube = alice.put("the harbour plan", "agents/alice/plans")
    policies = {name: alice.grant(f"agent:{name}", ["read", "share"], ["agents/alice/plans/**"]) for name in names}
    for name in names:
        client.grant(f"agent:{name}", ["publish"], [topic])
    client.grant("agent:dave", ["subscribe"], [topic])
    return cube, policies


def _kinds(reader, topic, n):
    return [e.kind for e in collect(reader.subscribe(topic, resume_for=0), n) if isinstance(e, Event)]


def test_a_former_publisher_ends_only_its_own_share(agents, client):
    alice, bob, carol, dave = agents
    topic = "teams/feed"
    cube, policies = _publishers(alice, client, topic, "bob", "carol")
    bob.publish(topic, cube.id)
    carol.publish(topic, cube.id)
    alice.revoke_policy(policies["bob"])  # bob has lost his grant on the cube
    assert bob.retract(topic, cube.id) == (3, False)  # ending his own share is still his to do
    assert dave.get(cube.id).text == "the harbour plan"  # carol's share stands, and dave reads through it
    # While a share remains the cube stays on the topic: the event says UPDATED, with the cube.
    assert _kinds(dave, topic, 3) == [EventKind.PUBLISHED, EventKind.UPDATED, EventKind.UPDATED]
    assert_hidden(lambda i: bob.retract(topic, i), cube.id)  # his share is gone, and he reads the cube no more
    assert carol.retract(topic, cube.id) == (4, False)  # the last share: the cube leaves the topic
    assert _kinds(dave, topic, 4)[-1] is EventKind.RETRACTED
    assert_hidden(dave.get, cube.id)


def test_a_sharer_ends_no_other_publishers_share(agents, client):
    alice, bob, carol, dave = agents
    topic = "teams/feed"
    cube, _ = _publishers(alice, client, topic, "bob", "carol")
    bob.publish(topic, cube.id)
    with pytest.raises(NotFound, match="not published on teams/feed by carol"):
        carol.retract(topic, cube.id)  # she holds share on the cube, and no share on the topic
    assert dave.get(cube.id).text == "the harbour plan"
    # The owner may end every share: the cube is hers.
    carol.publish(topic, cube.id)
    assert alice.retract(topic, cube.id) == (0, False)
    assert_hidden(dave.get, cube.id)
    with pytest.raises(NotFound, match="not published"):
        bob.retract(topic, cube.id)


def test_a_publish_id_is_its_publishers_alone(agents, client):
    alice, bob, carol, dave = agents
    topic = "teams/feed"
    for name in ("bob", "carol"):
        client.grant(f"agent:{name}", ["publish"], [topic])
    client.grant("agent:dave", ["subscribe"], [topic])
    mine = bob.put("bob's daily digest", "agents/bob/digests")
    hers = carol.put("carol's daily digest", "agents/carol/digests")
    # carol publishes first under the id bob's client uses: his publish is not hers to swallow.
    assert carol.publish(topic, hers.id, publish_id="daily-digest") == (1, False)
    with pytest.raises(AlreadyExists, match="another publisher's"):
        bob.publish(topic, mine.id, publish_id="daily-digest")
    assert bob.publish(topic, mine.id, publish_id="bob-daily-digest") == (2, False)
    assert bob.publish(topic, mine.id, publish_id="bob-daily-digest") == (2, True)  # his own id is still his
    assert carol.publish(topic, hers.id, publish_id="daily-digest") == (1, True)
    assert dave.get(mine.id).text == "bob's daily digest"
    assert [e.cube_id for e in collect(dave.subscribe(topic, resume_for=0), 2) if isinstance(e, Event)] == [hers.id, mine.id]


def test_an_import_claims_no_lineage_its_importer_may_not_read(agents, client, tmp_path):
    _, bob, carol, _ = agents
    client.grant("agent:bob", ["read", "write"], [f"{SHARED}/**"])
    client.grant("agent:carol", ["read"], [f"{SHARED}/**"])
    hers = carol.put("carol's notes about the paris train", "agents/carol/notes")
    put_kv(bob, [1, 2, 3], "agents/bob/kv")
    out = tmp_path / "bundle"
    bob.export(out, "agents/bob/kv")
    (record,) = [json.loads(line) for line in (out / "cubes.jsonl").read_text().splitlines()]
    data = (json.dumps({**record, "derived_from": [hers.id]}) + "\n").encode()  # the bundle is bob's to write
    (out / "cubes.jsonl").write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "cubes.jsonl":
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert bob.import_bundle(out, f"{SHARED}/kv").tensors == 1
    (imported,) = client.list(SHARED, kinds=[Kind.ACTIVATION])
    assert imported.derived_from == []  # not kept: bob may not read carol's note
    assert carol.plan("paris train", model_fingerprint=FINGERPRINT).activation is None


def test_memosctl_get_shows_only_the_sources_its_caller_may_read(agents, client, daemon, tmp_path, capsys):
    alice, _, _, _ = agents
    client.grant("agent:alice", ["read", "write"], [f"{SHARED}/**"])
    client.grant("agent:bob", ["read"], [f"{SHARED}/**"])
    secret = alice.put("alice's private source", "agents/alice/private")
    public = alice.put("a source bob reads too", f"{SHARED}/notes")
    kv = put_kv(alice, [1, 2, 3], f"{SHARED}/kv", derived_from=[secret.id, public.id])
    for args in (("get", kv.id), ("get", kv.id, "--json")):
        assert main(["--addr", daemon.address, "--key", str(tmp_path / "bob.key"), *args]) == 0
        out = capsys.readouterr().out
        assert public.id in out and secret.id not in out, out
