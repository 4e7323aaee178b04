"""One transaction's publishes: each checked on its own, in order; their events, shares and audit entries written together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from memosd.cube import MemCube
from memosd.errors import AlreadyExists, Hidden, MemosError, NotFound, PermissionDenied
from memosd.governance import Principal
from memosd.governance.policy import Share
from memosd.storage import Conn
from memosd.store import shares
from memosd.vault import lineage

if TYPE_CHECKING:
    from memosd.store.memstore import MemStore
    from memosd.store.publishing import PublishJob

# What commit() answers for each publish: (seq, duplicate, EventRecord or None for a duplicate, Share or None),
# or the MemosError that refused it.
Outcome = tuple | MemosError


@dataclass
class _Event:
    """A publish that passed its checks: its event, given a seq once the topic's events are appended."""

    p: Principal
    job: PublishJob
    kind: int
    cube: MemCube
    share: Share | shares.Ended | None  # what it did to the shares: made one, ended one, or (None) ended all
    publish_id: str | None
    seq: int = 0


@dataclass
class _Again:
    """A publish repeating an earlier one of the same transaction under its publish id."""

    first: _Event


class _Seen:
    """What the transaction's earlier publishes changed, as the later ones must see it: publish ids, publishers."""

    def __init__(self, store: MemStore, conn: Conn, jobs: list[PublishJob]):
        by_topic: dict[str, tuple[set[str], set[str]]] = {}
        for job in jobs:
            ids, cubes = by_topic.setdefault(job.topic, (set(), set()))
            if job.publish_id:
                ids.add(job.publish_id)
            cubes.add(job.cube_id)
        self.published: dict[tuple[str, str], tuple[int, str] | _Event] = {}
        self.publishers: dict[tuple[str, str], set[str]] = {}
        # Shares recorded since the last drop, by (topic, cube, publisher): written in one batch (flush()).
        self.recorded: dict[tuple[str, str, str], tuple[str, Share, str | None]] = {}
        events, topic_shares = store.sql.events, store.sql.shares
        # Topics locked in name order, so two daemons' transactions over the same topics never wait in a circle.
        for topic in sorted(by_topic):
            ids, cubes = by_topic[topic]
            events.lock_topic(conn, topic)
            for publish_id, found in events.find_published_many(conn, topic, sorted(ids)).items():
                self.published[(topic, publish_id)] = found
            for cube_id in cubes:
                self.publishers[(topic, cube_id)] = set()
            for _, cube_id, publisher, _ in topic_shares.on_topic(conn, topic, sorted(cubes)):
                self.publishers[(topic, cube_id)].add(publisher)
        # Looked at as of the commit (a publish waiting for a transaction sees the cube as it is when it commits).
        self.cubes = store.sql.cubes.current_cubes(conn, sorted({job.cube_id for job in jobs}), store.clock())

    def flush(self, store: MemStore, conn: Conn) -> None:
        """Write the shares recorded so far."""
        if self.recorded:
            store.sql.shares.record_many(conn, list(self.recorded.values()))
            self.recorded.clear()


def commit(store: MemStore, conn: Conn, entries: list[tuple[Principal, PublishJob]], *,
           stop_at_refusal: bool = False) -> list[Outcome]:
    """Write the publishes' events, shares and audit entries in the caller's transaction: one Outcome each, in order
    (with stop_at_refusal, none after the first refusal). Every refusal is raised before its publish writes anything,
    so a refused publish leaves the others' writes whole; a publish id repeated in the transaction is a duplicate
    of its first publish there, as it would be of one committed before."""
    from memosd.store.memstore import EventKind, EventRecord

    seen = _Seen(store, conn, [job for _, job in entries])
    checked: list[_Event | _Again | MemosError | tuple] = []
    for p, job in entries:
        try:
            checked.append(_check(store, conn, p, job, seen))
        except MemosError as exc:
            checked.append(exc)
            if stop_at_refusal:
                break
    seen.flush(store, conn)
    events = [c for c in checked if isinstance(c, _Event)]
    by_topic: dict[str, list[_Event]] = {}
    for e in events:
        by_topic.setdefault(e.job.topic, []).append(e)
    for topic, mine in by_topic.items():
        first = store.sql.events.append_events(
            conn, topic, [(int(e.kind), e.cube.id, e.cube.version, e.p.name, e.job.now, e.publish_id) for e in mine],
            max_age=store.default_max_age, max_events=store.default_max_events)
        for i, e in enumerate(mine):
            e.seq = first + i
    store.gov.audit_write_many(conn, [
        (e.p.name, "store.retract" if e.job.retract else "store.publish", e.job.topic,
         {"seq": e.seq, "cube": e.cube.id, "version": e.cube.version}) for e in events])
    outcomes: list[Outcome] = []
    for c in checked:
        if isinstance(c, _Event):
            outcomes.append((c.seq, False, EventRecord(c.job.topic, c.seq, EventKind(c.kind), c.cube.id, c.cube.version,
                                                       c.p.name, c.job.now, None if c.kind == EventKind.RETRACTED else c.cube),
                             c.share))
        elif isinstance(c, _Again):
            outcomes.append((c.first.seq, True, None, None))
        else:
            outcomes.append(c)
    lineage.with_sources(store.sql, conn, [o[2] for o in outcomes if isinstance(o, tuple) and o[2] is not None])
    return outcomes


def _check(store: MemStore, conn: Conn, p: Principal, job: PublishJob, seen: _Seen) -> _Event | _Again | tuple:
    """One publish's checks and share change, against what the publishes before it in the transaction left."""
    from memosd.store.memstore import EventKind

    sql, gov, topic, cube_id = store.sql, store.gov, job.topic, job.cube_id
    found = seen.published.get((topic, job.publish_id)) if job.publish_id else None
    if found is not None:
        first_publisher = found.p.name if isinstance(found, _Event) else found[1]
        if first_publisher == p.name:
            return _Again(found) if isinstance(found, _Event) else (found[0], True, None, None)
        if job.may_publish:
            # Another publisher's id is not p's: answered as p's duplicate, p's publish would be dropped unseen
            # (an agent that publishes first under a guessed id would silence another's publishes).
            raise AlreadyExists(f"the publish_id is another publisher's on {topic}; publish under an id of your own")
    cube = seen.cubes.get(cube_id)
    if cube is None:
        raise NotFound(f"no cube with id {cube_id} to publish")
    on_topic = seen.publishers[(topic, cube_id)]
    share: Share | shares.Ended | None = None
    if job.retract:
        owner = gov.owns_cube(p, cube)
        if not (owner or p.name in on_topic):  # a publisher may end its own share, whatever grants it has left
            # Asked first: to a non-reader, any other answer would tell the cube from an unknown id.
            if not gov.may_read_cube(p, cube):
                raise Hidden(f"no cube with id {cube_id} to publish")
            gov.check(p, "publish", topic)
            if not gov.grants_cube(p, "share", cube):
                raise PermissionDenied(f"agent {p.name} may not retract cube {cube_id}: it needs share on it")
        if not on_topic:
            raise NotFound(f"cube {cube_id} is not published on {topic}")
        seen.flush(store, conn)  # shares recorded before the drop go first, as one by one they would
        if owner:
            # The cube's owner (or its namespace's, or the admin) takes it off the topic: every share ends.
            sql.shares.drop(conn, topic, cube_id)
            on_topic.clear()
        elif p.name in on_topic:
            # Anyone else ends its own share only; the others' shares (and their subscribers' reads) stay.
            sql.shares.drop(conn, topic, cube_id, p.name)
            on_topic.discard(p.name)
            share = shares.Ended(p.name)
        else:
            raise NotFound(f"cube {cube_id} is not published on {topic} by {p.name}")
        # The cube leaves the topic when its last share ends; until then subscribers see it UPDATED (as the
        # remaining shares show it), which also tells the cluster's other members to reload its shares.
        kind = EventKind.UPDATED if on_topic else EventKind.RETRACTED
    else:
        share = gov.share_authority(p, cube, topic)
        kind = EventKind.UPDATED if on_topic else EventKind.PUBLISHED
        seen.recorded[(topic, cube_id, share.publisher)] = (cube_id, share, shares.authority(share))
        on_topic.add(share.publisher)
    # Another publisher's publish_id on a topic p cannot publish to is not p's to reuse.
    event = _Event(p, job, int(kind), cube, share, None if found else job.publish_id or None)
    if event.publish_id:
        seen.published[(topic, event.publish_id)] = event
    return event
