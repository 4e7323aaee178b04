"""The robustness test's checkers catch what they are for: each given a history that breaks its promise fails,
naming the ops; the same history kept fails nothing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from memos_client import NotFound, OutcomeUnknown
from memos_client.models import Event, EventKind
from tests.robust_history import History, check_durable, check_ordered, check_publishes, check_writes


def cube(cube_id: str, text: str):
    return SimpleNamespace(id=cube_id, text=text)


def raising(exc):
    def call():
        raise exc
    return call


def writes() -> History:
    h = History()
    h.call("w0", "put", lambda: cube("c1", "w0-1"), key="w0-1")
    h.call("w0", "put", raising(OutcomeUnknown("Put was under way")), key="w0-2")
    h.call("w0", "put", lambda: cube("c3", "w0-3"), key="w0-3")
    h.call("w0", "update", lambda: cube("c3", "w0-3 updated"), cube_id="c3", text="w0-3 updated")
    h.call("w0", "put", lambda: cube("c4", "w0-4"), key="w0-4")
    h.call("w0", "delete", lambda: 2, cube_id="c4")
    h.call("w0", "put", raising(NotFound("no such namespace")), key="w0-5")
    return h


KEPT = {"w0-1": [cube("c1", "w0-1")], "w0-2": [cube("c2", "w0-2")], "w0-3": [cube("c3", "w0-3 updated")]}


def test_writes_kept_pass_and_an_unknown_put_may_be_absent():
    check_writes(writes(), KEPT)
    check_writes(writes(), {k: v for k, v in KEPT.items() if k != "w0-2"})


@pytest.mark.parametrize("final, message", [
    ({**KEPT, "w0-1": []}, "w0-1: acknowledged put lost"),
    ({**KEPT, "w0-2": [cube("c2", "w0-2"), cube("c2b", "w0-2")]}, "w0-2 is stored 2 times"),
    ({**KEPT, "w0-3": [cube("c3", "w0-3")]}, "w0-3: acknowledged update missing"),
    ({**KEPT, "w0-4": [cube("c4", "w0-4")]}, r"w0-4: deleted \(acknowledged\) but still stored"),
    ({**KEPT, "w0-5": [cube("c5", "w0-5")]}, "w0-5: a failed put is stored"),
    ({**KEPT, "w9-1": [cube("c9", "w9-1")]}, "cubes no put wrote"),
])
def test_each_broken_write_promise_is_caught(final, message):
    with pytest.raises(AssertionError, match=message) as caught:
        check_writes(writes(), final)
    assert "w0 " in str(caught.value) or "cubes no put wrote" in message  # the offending ops are printed


def publishes() -> History:
    h = History()
    h.call("p0", "publish", lambda: (1, False), topic="t", cube_id="c", publish_id="p0-0")
    h.call("p0", "publish", raising(OutcomeUnknown("lost")), topic="t", cube_id="c", publish_id="p0-1")
    h.call("p0", "publish", lambda: (2, False), topic="t", cube_id="c", publish_id="p0-2")
    return h


def test_publishes_kept_pass():
    check_publishes(publishes(), {"p0-0": (1, True), "p0-1": (3, False), "p0-2": (2, True)}, {"t": 3})


@pytest.mark.parametrize("replays, last, message", [
    ({"p0-0": (1, False), "p0-1": (3, False), "p0-2": (2, True)}, 3, "acknowledged publish p0-0 replayed"),
    ({"p0-0": (1, True), "p0-1": (2, True), "p0-2": (2, True)}, 2, "seqs .* not each of 1..2 once"),
    ({"p0-0": (1, True), "p0-1": (3, False), "p0-2": (2, True)}, 4, "not each of 1..4 once"),
])
def test_each_broken_publish_promise_is_caught(replays, last, message):
    with pytest.raises(AssertionError, match=message):
        check_publishes(publishes(), replays, {"t": last})


def events(*seqs):
    return [Event("t", s, EventKind.PUBLISHED, "c", 1, "admin", None, None) for s in seqs]


def ack(seq):
    return History().call("durable", "ack", lambda: seq, topic="t", seq=seq)


def test_a_durable_cursor_resumed_from_its_acknowledgement_passes():
    check_durable(events(1, 2, 3, 4, 5, 4, 5, 6), [(3, ack(3))], "t", {1, 2, 3, 4, 5, 6})


@pytest.mark.parametrize("items, acks, published, message", [
    (events(1, 2, 4), [], {1, 2, 4}, "skipped from 2 to 4"),
    (events(1, 2, 3, 4, 3, 4), [(3, ack(3))], {1, 2, 3, 4}, "went back to 3 after the ack up to 3"),
    (events(1, 2, 3), [], {1, 2, 3, 4}, r"never delivered acknowledged seqs \[4\]"),
])
def test_each_broken_durable_promise_is_caught(items, acks, published, message):
    with pytest.raises(AssertionError, match=message) as caught:
        check_durable(items, acks, "t", published)
    if "[" not in message:
        assert "t@" in str(caught.value)  # the slice of the subscription's history around it


def test_a_subscriber_history_with_a_duplicate_fails_showing_the_items_around_it():
    with pytest.raises(AssertionError, match="got seq 2, expected 3") as caught:
        check_ordered(events(1, 2, 2, 3), "subscriber")
    assert "[2] t@2 cube=c" in str(caught.value) and "[3] t@3" in str(caught.value)
    assert check_ordered(events(1, 2, 3), "subscriber") == {"t": 3}
