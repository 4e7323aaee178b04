"""MemStore's view memo (memosd/store/views.py): one decision per reader and event for all the reader's streams,
never reused once a grant, a share or the time it rests on has moved."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from memos_client import MemosClient
from memosd.governance import Principal
from memosd.store import views
from memosd.store.memstore import EventKind, SubscribeSpec
from tests.kv_helpers import put_kv
from tests.store_checks import cancel_all
from tests.timing import ManualClock, wait_for

FEED = "teams/feed"
QUIET = 300  # seconds between heartbeats: none comes while a test runs
ADMIN = Principal("admin", admin=True)
CAROL = Principal("carol")


@pytest.fixture
def people(daemon, client, tmp_path):
    """alice (owns the cubes) and bob (may read and share them), carol (subscribes to FEED), with governance's
    clock held still: a view then stays remembered until a key part moves, never merely because time passed."""
    # A few seconds ahead: the grants made while a test runs (issued now, in whole seconds) are in force.
    daemon.server.governance.clock = clock = ManualClock(time.time() + 5)
    opened = {}
    for name in ("alice", "bob", "carol"):
        client.add_agent(name, out=str(tmp_path / f"{name}.key"))
        opened[name] = MemosClient(daemon.address, key=str(tmp_path / f"{name}.key"), timeout=30)
    opened["alice"].grant("agent:bob", ["read", "share"], ["agents/alice/**"])
    client.grant("agent:bob", ["publish"], [FEED])
    client.grant("agent:alice", ["publish"], [FEED, "teams/sources"])
    yield opened["alice"], opened["bob"], clock
    for c in opened.values():
        c.close()


def _records(daemon, topic: str = FEED):
    """The topic's events as the Hub hands them over: with their cubes and sources, before any view."""
    return daemon.call(daemon.server.store.read_events(ADMIN, topic, 0, 100))


def _view(daemon, p: Principal, record):
    async def view():
        return daemon.server.store.view(p, record)
    return daemon.call(view())


@pytest.fixture
def decisions(monkeypatch):
    """Counts views.decide calls, per (reader, seq)."""
    counted: Counter = Counter()
    decide = views.decide

    def counting(gov, shares, p, record):
        counted[p.name, record.seq] += 1
        return decide(gov, shares, p, record)

    monkeypatch.setattr(views, "decide", counting)
    return counted


def test_streams_of_one_reader_share_one_decision_per_event(daemon, client, people, decisions):
    alice, _, _ = people
    client.grant("agent:carol", ["subscribe"], [FEED])
    secret = alice.put("alice's private source", "agents/alice/private")
    plain = alice.put("for every subscriber", "agents/alice/n")
    derived = put_kv(alice, [1, 2, 3], "agents/alice/kv", derived_from=[secret.id])
    store = daemon.server.store
    readers = {"admin 1": ADMIN, "admin 2": ADMIN, "carol 1": CAROL, "carol 2": CAROL}
    sent: dict[str, list] = {name: [] for name in readers}

    def sender(name: str):
        async def send(item):
            sent[name].extend(item)
        return send

    async def start():
        spec = SubscribeSpec(topic=FEED, live_only=True, heartbeat_seconds=QUIET)
        return [asyncio.ensure_future(store.run_subscription(p, spec, sender(name))) for name, p in readers.items()]

    tasks = daemon.call(start())
    try:
        wait_for(lambda: len(store.hub) >= 4, "the streams did not open")
        # A stream in the Hub first reads the topic from the database, and an event committed meanwhile comes to
        # it as a record of its own (decided apart): the streams are live once each has an event to show for it.
        alice.publish(FEED, alice.put("warm-up", "agents/alice/n").id)
        wait_for(lambda: all(len(s) == 1 for s in sent.values()), "the first event did not reach every stream")
        decisions.clear()
        for s in sent.values():
            s.clear()
        for cube in (plain, derived):
            alice.publish(FEED, cube.id)
        wait_for(lambda: all(len(s) == 2 for s in sent.values()), "the events did not reach every stream")
    finally:
        daemon.call(cancel_all(tasks))
    assert decisions == {(name, seq): 1 for name in ("admin", "carol") for seq in (2, 3)}
    # Each reader's streams were handed the very same views; the readers their own (carol's narrowed).
    assert all(a is b for a, b in zip(sent["admin 1"], sent["admin 2"]))
    assert all(a is b for a, b in zip(sent["carol 1"], sent["carol 2"]))
    assert sent["admin 1"][1].cube.derived_from == (secret.id,) and sent["carol 1"][1].cube.derived_from == ()


def test_a_grant_or_a_revocation_changes_the_next_view(daemon, client, people, decisions):
    alice, _, _ = people
    alice.publish(FEED, alice.put("the harbour plan", "agents/alice/n").id)
    (record,) = _records(daemon)
    assert _view(daemon, CAROL, record).kind is EventKind.REDACTED
    assert _view(daemon, CAROL, record).kind is EventKind.REDACTED
    assert decisions["carol", 1] == 1  # remembered
    policy = client.grant("agent:carol", ["subscribe"], [FEED])  # moves the generation, not the epoch
    assert _view(daemon, CAROL, record).kind is EventKind.PUBLISHED
    client.revoke_policy(policy)
    assert _view(daemon, CAROL, record).kind is EventKind.REDACTED


def test_a_share_ended_changes_the_next_view(daemon, client, people, decisions):
    alice, bob, _ = people
    client.grant("agent:carol", ["subscribe"], [FEED])  # and no read grant: carol reads through the shares
    cube = alice.put("the harbour plan", "agents/alice/n")
    alice.publish(FEED, cube.id)
    bob.publish(FEED, cube.id)
    first = _records(daemon)[0]
    assert _view(daemon, CAROL, first).cube.text == "the harbour plan"
    bob.retract(FEED, cube.id)  # alice's share stays
    assert _view(daemon, CAROL, first).cube.text == "the harbour plan"
    assert decisions["carol", 1] == 2  # decided again: a share of the cube ended
    alice.retract(FEED, cube.id)  # the last one
    assert _view(daemon, CAROL, first).kind is EventKind.REDACTED


def test_a_share_of_a_source_ended_changes_the_next_view(daemon, client, people):
    alice, _, _ = people
    client.grant("agent:carol", ["subscribe"], [FEED, "teams/sources"])
    source = alice.put("the source", "agents/alice/private")
    derived = put_kv(alice, [1, 2, 3], "agents/alice/kv", derived_from=[source.id])
    alice.publish("teams/sources", source.id)  # carol reads the source through this share alone
    alice.publish(FEED, derived.id)
    (record,) = _records(daemon)
    assert _view(daemon, CAROL, record).cube.derived_from == (source.id,)
    alice.retract("teams/sources", source.id)
    assert _view(daemon, CAROL, record).cube.derived_from == ()


def test_a_view_is_not_reused_past_the_end_of_a_grant(daemon, client, people):
    alice, _, clock = people
    ends = int(clock()) + 10  # policies carry whole seconds
    client.grant("agent:carol", ["subscribe", "read"], [FEED, "agents/alice/**"], expires_at=ends)
    alice.publish(FEED, alice.put("the harbour plan", "agents/alice/n").id)
    (record,) = _records(daemon)
    clock.now = ends - 0.5
    assert _view(daemon, CAROL, record).kind is EventKind.PUBLISHED
    clock.advance(0.6)  # past the end, within the second a view may otherwise be kept
    assert _view(daemon, CAROL, record).kind is EventKind.REDACTED


def test_a_view_is_not_reused_past_the_start_of_a_grant(daemon, client, people):
    alice, _, clock = people
    starts = int(clock()) + 10
    client.grant("agent:carol", ["subscribe", "read"], [FEED, "agents/alice/**"], not_before=starts)
    alice.publish(FEED, alice.put("the harbour plan", "agents/alice/n").id)
    (record,) = _records(daemon)
    clock.now = starts - 0.5
    assert _view(daemon, CAROL, record).kind is EventKind.REDACTED
    clock.advance(0.6)
    assert _view(daemon, CAROL, record).kind is EventKind.PUBLISHED


def test_a_view_is_kept_a_second_at_most(daemon, client, people, decisions):
    alice, _, clock = people
    client.grant("agent:carol", ["subscribe"], [FEED])
    alice.publish(FEED, alice.put("the harbour plan", "agents/alice/n").id)
    (record,) = _records(daemon)
    clock.advance(max(0.0, 30 - clock() % 30) if clock() % 30 > 28 else 0.0)  # governance's half-minute is not crossed
    shown = _view(daemon, CAROL, record)
    clock.advance(0.9)
    assert _view(daemon, CAROL, record) is shown and decisions["carol", 1] == 1
    clock.advance(0.2)
    assert _view(daemon, CAROL, record) is shown and decisions["carol", 1] == 2
