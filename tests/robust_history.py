"""Histories of the cluster robustness test (after Jepsen's): every call recorded as invoked and then ok, failed or
unknown, and the checks run over them afterwards, each failure printing the slice of history it is about."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from memos_client import MemosError, OutcomeUnknown
from memos_client.errors import DeadlineExceeded, Unavailable
from memos_client.models import Event
from tests.store_checks import check_history

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"


@dataclass
class Op:
    """One call: who made it, what it was, when, and how it ended (result, or the error's class and message)."""

    process: str
    kind: str
    args: dict
    invoked: float
    outcome: str = ""
    result: object = None
    error: str = ""
    completed: float = 0.0

    def __str__(self) -> str:
        said = repr(self.result) if self.outcome == OK else self.error
        return (f"{self.invoked:8.3f}..{self.completed:8.3f} {self.process:<10} {self.kind:<8} {self.args} "
                f"-> {self.outcome} {said}")


def classify(exc: MemosError) -> str:
    """UNKNOWN when the write may have been carried out all the same: the client said so (OutcomeUnknown), or the
    call ended unavailable or past its deadline (a commit whose answer was lost looks the same); else FAILED."""
    return UNKNOWN if isinstance(exc, (OutcomeUnknown, Unavailable, DeadlineExceeded)) else FAILED


@dataclass
class History:
    """Every call of every process, in the order invoked (one lock: the processes are threads)."""

    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, process: str, kind: str, fn, *args, **record) -> Op:
        """Run fn(*args), recording it; a MemosError is kept in the op (classified), never raised."""
        op = Op(process, kind, record, time.monotonic() - self.started)
        with self.lock:
            self.ops.append(op)
        try:
            op.result, op.outcome = fn(*args), OK
        except MemosError as exc:
            op.outcome, op.error = classify(exc), f"{type(exc).__name__}: {exc}"[:300]
        op.completed = time.monotonic() - self.started
        return op

    def of(self, kind: str, outcome: str | None = None, **match) -> list[Op]:
        return [op for op in self.ops if op.kind == kind and (outcome is None or op.outcome == outcome)
                and all(op.args.get(k) == v for k, v in match.items())]

    def spans(self) -> dict[str, tuple[float, float]]:
        """(first invoked, last completed) per process: whether the clients overlapped the nemesis's faults."""
        spans: dict[str, tuple[float, float]] = {}
        for op in self.ops:
            first, last = spans.get(op.process, (op.invoked, op.completed))
            spans[op.process] = (min(first, op.invoked), max(last, op.completed))
        return {p: (round(a, 1), round(b, 1)) for p, (a, b) in spans.items()}

    def counts(self) -> Counter:
        return Counter((op.kind, op.outcome) for op in self.ops)


def fail(what: str, ops) -> None:
    """Fail the test saying what is wrong, with the ops it is about."""
    lines = "\n  ".join(str(op) for op in ops) or "(no ops)"
    raise AssertionError(f"{what}\n  {lines}")


# ---- writes: Put, Update, Delete of cubes keyed by their text's first word ---------------------------------


def check_writes(history: History, final: dict[str, list]) -> None:
    """final: key -> the live cubes whose text starts with that key. An acknowledged put is there exactly once
    (none if an acknowledged delete removed it), an unknown one at most once, a failed one not at all; an
    acknowledged update shows, a failed one does not."""
    invoked = {op.args["key"] for op in history.of("put")}
    strays = {key: cubes for key, cubes in final.items() if key not in invoked}
    if strays:
        fail(f"cubes no put wrote: {sorted(strays)}", [])
    for put in history.of("put"):
        key, cubes = put.args["key"], final.get(put.args["key"], [])
        if len(cubes) > 1:
            fail(f"{key} is stored {len(cubes)} times: {[c.id for c in cubes]}", [put])
        if put.outcome == FAILED and cubes:
            fail(f"{key}: a failed put is stored", [put])
        if put.outcome != OK:
            continue
        cube_id = put.result.id
        later = [op for op in history.ops if op.args.get("cube_id") == cube_id]
        deletes = [op for op in later if op.kind == "delete"]
        if any(op.outcome == OK for op in deletes):
            if cubes:
                fail(f"{key}: deleted (acknowledged) but still stored", [put, *later])
            continue
        if not cubes and not any(op.outcome == UNKNOWN for op in deletes):
            fail(f"{key}: acknowledged put lost", [put, *later])
        if not cubes:
            continue
        [cube] = cubes
        if cube.id != cube_id:
            fail(f"{key}: stored as {cube.id}, acknowledged as {cube_id}", [put, *later])
        for update in (op for op in later if op.kind == "update"):
            if update.outcome == OK and cube.text != update.args["text"]:
                fail(f"{key}: acknowledged update missing (text {cube.text!r})", [put, *later])
            if update.outcome == FAILED and cube.text == update.args["text"]:
                fail(f"{key}: failed update applied", [put, *later])


# ---- publishes, subscriptions and the durable cursor --------------------------------------------------------


def check_publishes(history: History, replays: dict[str, tuple[int, bool]], last_seq: dict[str, int]) -> None:
    """replays: publish_id -> (seq, duplicate) of publishing it again after the run. An acknowledged publish is
    found there (a duplicate, at the seq it was acknowledged with); a failed one was not recorded; every event
    of a topic is one publish_id's, each at its own seq."""
    for op in history.of("publish"):
        seq, duplicate = replays[op.args["publish_id"]]
        if op.outcome == OK and (seq, duplicate) != (op.result[0], True):
            fail(f"acknowledged publish {op.args['publish_id']} replayed as seq {seq} duplicate={duplicate}", [op])
        if op.outcome == FAILED and duplicate:
            fail(f"failed publish {op.args['publish_id']} was recorded (seq {seq})", [op])
    for topic, last in last_seq.items():
        ops = history.of("publish", topic=topic)
        seqs = Counter(replays[op.args["publish_id"]][0] for op in ops)
        twice = sorted(s for s, n in seqs.items() if n > 1)
        if twice or sorted(seqs) != list(range(1, last + 1)):
            fail(f"{topic}: seqs {sorted(seqs)} of {len(ops)} publish ids, not each of 1..{last} once "
                 f"(shared: {twice})", [op for op in ops if replays[op.args['publish_id']][0] in twice])


def check_events_match(history: History, events, what: str) -> None:
    """Each event of an acknowledged publish carries that publish's cube."""
    by_seq = {(op.args["topic"], op.result[0]): op for op in history.of("publish", OK)}
    for event in events:
        op = by_seq.get((event.topic, event.seq))
        if op is not None and event.cube_id != op.args["cube_id"]:
            fail(f"{what}: {event.topic}@{event.seq} carries {event.cube_id}, published {op.args['cube_id']}", [op])


def window(items, index: int, around: int = 5) -> str:
    """The items of a subscription's history around one index, for a failure message."""
    start = max(0, index - around)
    return "\n  ".join(f"[{i}] {describe(item)}" for i, item in enumerate(items[start:index + around + 1], start))


def describe(item) -> str:
    if isinstance(item, Event):
        return f"{item.topic}@{item.seq} cube={item.cube_id}"
    return repr(item)


def check_ordered(items, what: str) -> dict[str, int]:
    """tests/store_checks.check_history, item by item, so that a failure shows the history around the item."""
    last: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            last = check_history([item], start=last)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}\n  {window(items, i)}") from None
    return last


def check_durable(items, acks: list[tuple[int, Op]], topic: str, published: set[int]) -> None:
    """A durable cursor's delivery (items, acks: (index into items when the ack returned, the ack's op)): every
    acknowledged event at least once, no seq past one not yet delivered (no gap), and never one at or below
    an acknowledged seq after that acknowledgement."""
    events = [(i, e) for i, e in enumerate(items) if isinstance(e, Event)]
    seen = {e.seq for _, e in events}
    missing = sorted(published - seen)
    if missing:
        raise AssertionError(f"durable cursor on {topic} never delivered acknowledged seqs {missing[:20]}; "
                             f"delivered {sorted(seen)[:5]}..{sorted(seen)[-5:]}")
    highest = 0
    for i, event in events:
        if event.seq > highest + 1:
            raise AssertionError(f"durable cursor skipped from {highest} to {event.seq}:\n  {window(items, i)}")
        highest = max(highest, event.seq)
    for at, op in acks:
        if op.outcome != OK:
            continue
        back = [(i, e) for i, e in events if i >= at and e.seq <= op.result]
        if back:
            i, e = back[0]
            raise AssertionError(f"durable cursor went back to {e.seq} after the ack up to {op.result} ({op}):"
                                 f"\n  {window(items, i)}")
