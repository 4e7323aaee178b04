"""MemStore isolation through the real daemon: a topic share lasts only while the authority it was made under
does, the cube's owner can always retract it, and topic patterns reach only the topics a grant covers."""

import contextlib
import sqlite3
import threading
import time

import pytest

from memos_client import MemosClient, NotFound, PermissionDenied
from memos_client.models import Event, EventKind, Heartbeat
from memosd.storage.sqlite.schema.store import migrations as store_migrations
from tests.daemon import make_config, running
from tests.existence import assert_hidden
from tests.kv_helpers import put_kv
from tests.store_checks import collect
from tests.timing import ManualClock
from tests.store_checks import delivery_path, parametrize_paths as pytest_generate_tests, publish_path  # noqa: F401

FEED = "agents/bob/feed"


@pytest.fixture
def agents(daemon, client, tmp_path):
    """alice (owner of the cubes), bob (holds a grant on them, owns FEED), carol (subscribes to FEED)."""
    opened = {}
    for name in ("alice", "bob", "carol"):
        client.add_agent(name, out=str(tmp_path / f"{name}.key"))
        opened[name] = MemosClient(daemon.address, key=str(tmp_path / f"{name}.key"), timeout=30)
    opened["bob"].grant("agent:carol", ["subscribe"], [FEED])
    yield opened["alice"], opened["bob"], opened["carol"]
    for c in opened.values():
        c.close()


def _denied_everywhere(reader, cube):
    for call in (reader.get, lambda i: reader.get(i, version=1), reader.history):
        assert_hidden(call, cube.id)
    assert [c.id for c in reader.list("agents/alice")] == []
    assert reader.search("harbour plan") == []


def _replayed(reader, topic=FEED, n=1):
    events = [i for i in collect(reader.subscribe(topic, resume_for=0), n) if isinstance(i, Event)]
    return [(e.kind, e.cube_id, e.cube) for e in events]


def test_a_share_ends_when_the_grant_it_was_made_under_is_revoked(agents):
    alice, bob, carol = agents
    cube = alice.put("the harbour plan, draft", "agents/alice/shared/plans")
    cube = alice.update(cube.id, text="the harbour plan")
    policy = alice.grant("agent:bob", ["read", "share"], ["agents/alice/shared/**"])
    bob.publish(FEED, cube.id)
    assert carol.get(cube.id).text == "the harbour plan"
    [(kind, _, seen)] = _replayed(carol)
    assert kind is EventKind.PUBLISHED and seen.text == "the harbour plan"

    alice.revoke_policy(policy)
    for reader in (bob, carol):
        _denied_everywhere(reader, cube)
        # The events stay (sequences never change) but no longer carry the cube.
        assert _replayed(reader) == [(EventKind.REDACTED, "", None)]
    # A new grant is not the old share coming back: bob has to publish again.
    alice.grant("agent:bob", ["read", "share"], ["agents/alice/shared/**"])
    assert_hidden(carol.get, cube.id)
    bob.publish(FEED, cube.id)
    assert carol.get(cube.id).text == "the harbour plan"


def test_a_share_under_a_passed_on_grant_ends_with_the_grant_it_came_from(agents, client, daemon, tmp_path):
    alice, bob, carol = agents
    client.add_agent("dave", out=str(tmp_path / "dave.key"))
    cube = alice.put("the harbour plan", "agents/alice/shared/plans")
    policy = alice.grant("agent:bob", ["read", "share"], ["agents/alice/shared/**"])
    bob.grant("agent:dave", ["read", "share"], ["agents/alice/shared/plans"])
    with MemosClient(daemon.address, key=str(tmp_path / "dave.key")) as dave:
        dave.grant("agent:carol", ["subscribe"], ["agents/dave/feed"])
        dave.publish("agents/dave/feed", cube.id)
        assert carol.get(cube.id).text == "the harbour plan"
        alice.revoke_policy(policy)  # bob's grant goes, and with it the one he passed to dave
        _denied_everywhere(carol, cube)
        _denied_everywhere(dave, cube)


def test_tensor_payloads_shared_under_a_grant_stop_with_it(agents):
    alice, bob, carol = agents
    cube = put_kv(alice, [1, 2, 3], "agents/alice/kv")
    policy = alice.grant("agent:bob", ["read", "share"], ["agents/alice/kv/**", "agents/alice/kv"])
    bob.publish(FEED, cube.id)
    size = cube.activation.blob.size
    assert len(carol.download_blob(cube.id)) == size and len(carol.open_local(cube.id)) == size
    alice.revoke_policy(policy)
    for reader in (bob, carol):
        fetch = lambda i, reader=reader: reader.fetch_payload(i, cube.activation.blob)  # noqa: E731
        for call in (reader.download_blob, reader.open_local, fetch):
            assert_hidden(call, cube.id)


def test_a_share_ends_when_its_publisher_is_revoked(agents, client):
    alice, bob, carol = agents
    cube = alice.put("the harbour plan", "agents/alice/shared/plans")
    alice.grant("agent:bob", ["read", "share"], ["agents/alice/shared/**"])
    client.grant("agent:carol", ["subscribe"], [FEED])  # carol's grant on the topic outlives bob
    bob.publish(FEED, cube.id)
    assert carol.get(cube.id).text == "the harbour plan"
    client.revoke_agent("bob")
    _denied_everywhere(carol, cube)


def test_a_share_ends_when_its_grant_expires(agents, daemon):
    alice, bob, carol = agents
    cube = alice.put("the harbour plan", "agents/alice/shared/plans")
    expires = int(time.time()) + 3  # policies carry whole seconds
    alice.grant("agent:bob", ["read", "share"], ["agents/alice/shared/**"], expires_at=expires)
    # The condition is governance's clock itself, stopped once the grant has begun: it starts at the whole second
    # it was signed in, which a clock stopped before the grant may not have reached (a flake in CI).
    daemon.server.governance.clock = clock = ManualClock()
    bob.publish(FEED, cube.id)
    assert carol.get(cube.id).text == "the harbour plan"
    clock.advance(expires - clock() + 0.05)
    _denied_everywhere(carol, cube)


def test_sharing_needs_read_as_well_as_share(agents):
    alice, bob, carol = agents
    cube = alice.put("the harbour plan", "agents/alice/shared/plans")
    alice.grant("agent:bob", ["share"], ["agents/alice/shared/**"])
    # Publishing would let him read it through his own topic; share alone does not make it his to see.
    assert_hidden(lambda i: bob.publish(FEED, i), cube.id)
    assert_hidden(carol.get, cube.id)


def test_the_owner_and_the_admin_retract_from_any_topic(agents, client):
    alice, bob, carol = agents
    cube = alice.put("the harbour plan", "agents/alice/shared/plans")
    alice.grant("agent:bob", ["read", "share"], ["agents/alice/shared/**"])
    bob.publish(FEED, cube.id)
    bob.publish("agents/bob/other", cube.id)
    bob.grant("agent:carol", ["subscribe"], ["agents/bob/other"])
    assert carol.get(cube.id).text == "the harbour plan"
    with pytest.raises(PermissionDenied, match=f"may not publish in {FEED}"):
        carol.retract(FEED, cube.id)  # a subscriber (who reads it) is neither the owner nor a publisher
    # alice may not publish to bob's topics, nor learn their sequences, yet takes her cube off them.
    assert alice.retract(FEED, cube.id) == (0, False)
    with pytest.raises(NotFound, match="not published"):
        alice.retract(FEED, cube.id)
    assert client.retract("agents/bob/other", cube.id) == (2, False)
    assert_hidden(carol.get, cube.id)
    assert_hidden(lambda i: carol.retract(FEED, i), cube.id)  # now she may not read it: it is no cube to her
    kinds = [k for k, _, _ in _replayed(carol, n=2)]
    assert kinds == [EventKind.REDACTED, EventKind.RETRACTED]  # the old event no longer carries the cube
    assert bob.get(cube.id).text == "the harbour plan"  # bob's own grant is untouched


def test_shares_from_before_authorities_were_kept_follow_their_publishers_grants(tmp_path):
    config = make_config(tmp_path)
    keys = {name: str(tmp_path / f"{name}.key") for name in ("alice", "bob", "carol")}
    with running(config) as d, MemosClient(d.address, key=d.admin_key) as admin:
        for name, key in keys.items():
            admin.add_agent(name, out=key)
        with MemosClient(d.address, key=keys["alice"]) as alice, MemosClient(d.address, key=keys["bob"]) as bob:
            cube = alice.put("the harbour plan", "agents/alice/shared/plans")
            policy = alice.grant("agent:bob", ["read", "share"], ["agents/alice/shared/**"])
            bob.grant("agent:carol", ["subscribe"], [FEED])
            bob.publish(FEED, cube.id)
    # The database as it was before shares recorded their publisher and authority.
    with contextlib.closing(sqlite3.connect(config.data_dir / "memos.db")) as conn, conn:
        conn.executescript(
            "CREATE TABLE old (topic TEXT NOT NULL, cube_id TEXT NOT NULL, PRIMARY KEY (topic, cube_id)) WITHOUT ROWID;"
            " INSERT INTO old SELECT DISTINCT topic, cube_id FROM topic_cubes; DROP TABLE topic_cubes;"
            " ALTER TABLE old RENAME TO topic_cubes; CREATE INDEX topic_cubes_cube ON topic_cubes(cube_id);")
        conn.execute(f"DELETE FROM {store_migrations.migrations_table} WHERE migration_set = ? AND name = ?",
                     (store_migrations.name, "m0002_share_authority"))
    with running(config) as d:
        with MemosClient(d.address, key=keys["alice"]) as alice, MemosClient(d.address, key=keys["carol"]) as carol:
            assert carol.get(cube.id).text == "the harbour plan"
            alice.revoke_policy(policy)
            _denied_everywhere(carol, cube)


# -- topic patterns ---------------------------------------------------------------------------------


@pytest.fixture
def scoped(agents, client):
    """bob may subscribe to teams/x only; teams/x/secret-plans has events he must not learn of."""
    _, bob, _ = agents
    client.grant("agent:bob", ["subscribe"], ["teams/x"])
    cube = client.put("x", "agents/admin/n")
    client.publish("teams/x", cube.id)
    for _ in range(3):
        client.publish("teams/x/secret-plans", cube.id)
    return bob, client, cube


def test_a_pattern_wider_than_the_grant_is_refused_and_the_granted_topic_shows_nothing_else(scoped):
    bob, client, cube = scoped
    for pattern in ("teams/x/**", "teams/**"):
        [error] = collect(bob.subscribe(pattern, resume_for=0), 1)
        assert isinstance(error, PermissionDenied), error
        assert "secret" not in str(error) and "3" not in str(error)
    [error] = collect(bob.subscribe("teams/x/**", resume_for=0), 1)
    assert "may subscribe to teams/x" in str(error) and "teams/x/**" in str(error)
    # What he may have instead: the granted topic, and nothing of its neighbours.
    sub = bob.subscribe("teams/x", heartbeat_seconds=1, heartbeats=True)
    later = threading.Timer(0.3, lambda: client.publish("teams/x/secret-plans", cube.id))
    later.start()
    items = collect(sub, 3)
    later.join()  # its call answered before the client closes
    assert [(i.topic, i.seq) for i in items if isinstance(i, Event)] == [("teams/x", 1)]
    heartbeats = [i for i in items if isinstance(i, Heartbeat)]
    assert heartbeats and all(h.delivered == {"teams/x": 1} for h in heartbeats)
    assert [t.name for t in bob.topics()] == ["teams/x"]
    assert [t.name for t in bob.topics("teams/x")] == ["teams/x"]
    assert bob.topics("teams/x/secret-plans") == []


def test_a_pattern_stream_ends_when_the_grant_covering_it_goes(scoped):
    bob, client, _ = scoped
    wide = client.grant("agent:bob", ["subscribe"], ["teams/x/**"])
    items, first, done = [], threading.Event(), threading.Event()

    def read():
        try:
            for item in bob.subscribe("teams/x/**", heartbeat_seconds=1, heartbeats=True, resume_for=0):
                items.append(item)
                first.set()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            items.append(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert first.wait(20)
    client.revoke_policy(wide)  # what is left (teams/x) no longer covers the pattern
    assert done.wait(20), "the stream outlived the grant covering its pattern"
    assert isinstance(items[-1], PermissionDenied) and "revoked" in str(items[-1])


def test_errors_about_topics_out_of_reach_say_nothing_of_them(scoped):
    bob, _, _ = scoped
    # An existing topic he cannot see answers exactly as one that does not exist.
    answers = []
    for topic in ("teams/x/secret-plans", "teams/x/nothing-here"):
        with pytest.raises(Exception) as info:
            bob.set_retention(topic, max_events=1)
        [error] = collect(bob.subscribe(topic, after_seq=2, resume_for=0), 1)
        for exc in (info.value, error):
            answers.append((type(exc).__name__, str(exc).replace(topic, "TOPIC")))
    assert answers[:2] == answers[2:]
    assert all("secret" not in a and "3" not in a for _, a in answers)
