"""MemStore: publishing cubes to topics and delivering events to subscribers (no gRPC here)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field

from memos_mip.bounds import quote
from memosd.errors import (
    Compacted, FailedPrecondition, InvalidArgument, MemosError, NotFound, PermissionDenied,
    ResourceExhausted, Unavailable,
)
from memosd.governance import MemGovernance, Principal
from memosd.governance.policy import Pattern, check_name
from memosd.limits import check_namespace
from memosd.storage import Conn
from memosd.storage.records import Topic
from memosd.store import grouping, publishing, shares, views
from memosd.store.durables import DurableClaims
from memosd.store.events import EventKind, EventRecord
from memosd.store.hub import Hub, Subscriber, first_of
from memosd.vault import lineage

log = logging.getLogger("memosd.store")
REPLAY_BATCH = 256
MAX_BATCH = 256  # live events sent in one message when a subscriber is behind


@dataclass
class Heartbeat:
    delivered: dict[str, int]


@dataclass(frozen=True)
class SubscribeSpec:
    topic: str
    after_seq: int = 0
    after: dict = field(default_factory=dict)
    live_only: bool = False
    heartbeat_seconds: float = 10.0
    durable_name: str = ""
    ack_timeout: float = 30.0


@dataclass
class _Durable:
    """A named cursor kept across restarts; `delivered` and the timer belong to its open stream."""

    pattern: str
    acked: dict[str, int]
    delivered: dict[str, int] = field(default_factory=dict)
    unacked_since: float | None = None
    active: bool = False
    wakeup: asyncio.Event | None = None  # the open stream's, set by an acknowledgement
    lost: asyncio.Event | None = None  # the open stream's, set if its claim in the vault lapsed (durables.py)


class MemStore:
    """Topics, events and subscriptions over the shared database, fanned out by an in-process Hub."""

    def __init__(self, db, governance: MemGovernance, *, hub: Hub, default_max_events: int = 100_000,
                 default_max_age: float = 0.0, clock=time.time, holder: str = "", member: str = ""):
        self.db = db
        self.gov = governance
        self.hub = hub
        self.clock = clock
        self.default_max_events = default_max_events
        self.default_max_age = default_max_age
        self.sql = db.sql
        self._shares = shares.ShareIndex()
        self._views = views.ViewMemo(governance, self._shares)
        self._durables: dict[tuple[str, str], _Durable] = {}
        # A durable subscription is open on one stream in the whole cluster: claimed in the vault by this run.
        self.claims = DurableClaims(db, holder or f"memstore:{secrets.token_hex(4)}", member)
        # Where committed events go: straight to the Hub, or through a cluster's sequencer (follow()).
        self._on_commit: Callable[[list[EventRecord]], None] = self._to_hub
        # The last seq of a topic whose shares this daemon knows (None: all it holds); a replay stops there.
        self._horizon: Callable[[str], int] | None = None
        self.groups = grouping.PublishGroups(self)

    async def start(self) -> None:
        self._shares.load(await self.db.read(self.sql.shares.all_shares))
        # Publishing is how a cube is shared: a subscriber of the topic may read it while it stays published
        # and the authority it was published under holds.
        self.gov.add_read_source(self._shares.of)
        await self.claims.start()

    async def stop(self) -> None:
        await self.claims.stop()

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, p: Principal, topic: str, cube_id: str, publish_id: str = "",
                      retract: bool = False) -> tuple[int, bool]:
        """Append an event for the cube's current version; returns (seq, duplicate). The cube's owner and the
        admin may retract it from any topic; on one they may not see, the seq returned is 0. Publishes arriving
        while another commits are committed together (memosd/store/grouping.py)."""
        job = publishing.prepare(self, p, topic, cube_id, publish_id, retract)
        seq, duplicate, _, _ = await self.groups.publish(p, job)
        return (seq if job.sees else 0), duplicate

    async def publish_many(self, p: Principal, items: list[tuple[str, str, str]]
                           ) -> tuple[list[tuple[int, bool]], MemosError | None]:
        """Publish (topic, cube_id, publish_id) items in order in one transaction: the (seq, duplicate) of
        each committed, and the error of the first refused (none after it is published)."""
        return await publishing.publish_many(self, p, items)

    def publish_stream(self, p: Principal, batches: AsyncIterable[list[tuple[str, str, str]]]
                       ) -> AsyncIterator[list[tuple[int, bool]]]:
        """Acknowledgements, in order, for the publishes arriving on `batches`, those arriving together
        committed together; the first refusal is raised after the acknowledgements before it."""
        return publishing.publish_stream(self, p, batches)

    def published(self, committed: list) -> None:
        """After a commit: the shares it made or ended, then its events to the live subscribers."""
        records = []
        for record, share in committed:
            if record is None:
                continue  # a duplicate: nothing new
            self._shares.apply(record.cube_id, record.topic, share)
            records.append(record)
        if records:
            self._on_commit(records)

    def _to_hub(self, records: list[EventRecord]) -> None:
        for record in records:
            self.hub.deliver(record)

    def follow(self, on_commit: Callable[[list[EventRecord]], None], horizon: Callable[[str], int]) -> None:
        """Hand this daemon's committed events to on_commit (a cluster's sequencer, memosd/cluster/follower.py)
        instead of the Hub: with other daemons on the vault, seqs commit here and elsewhere, interleaved.
        horizon(topic): the last seq the sequencer has handed the Hub, its shares applied to this daemon's index;
        replays stop there and the Hub brings the rest, so no event is shown before the share it made."""
        self._on_commit, self._horizon = on_commit, horizon

    def sync_shares(self, topic: str, cube_ids: set[str], records) -> None:
        """Make the index's shares of these cubes on the topic what the vault holds ((topic, cube_id, publisher,
        authority) records): another daemon published or retracted them."""
        for cube_id in cube_ids:
            self._shares.drop(cube_id, topic)
        self._shares.load(records)

    # -- subscribing --------------------------------------------------------------------------

    async def run_subscription(self, p: Principal, spec: SubscribeSpec, send, opened=None) -> None:
        """Deliver events (and heartbeats) to `send` until the caller goes away or an error ends it.

        send(item) is a coroutine writing a list of EventRecords (in order) or a Heartbeat to the
        subscriber; a guard ends it when the subscriber's queue overflows or a revocation lands, so a
        stalled subscriber cannot hold the stream open. opened(), a coroutine, runs once the subscription is
        checked, registered and positioned, before the first send."""
        pattern = _parse_pattern(spec.topic)
        self.gov.check_covers(p, "subscribe", pattern)
        sub = self.hub.register(p.name, pattern)
        durable = None
        try:
            durable = await self._open_durable(p, spec) if spec.durable_name else None
            if durable is not None:
                durable.wakeup = sub.wakeup
            delivered = await self._start_positions(pattern, spec, durable)
            if opened is not None:
                await opened()
            stream = _Stream(self, p, pattern, sub, send, delivered, durable, spec)
            await stream.run()
        finally:
            self.hub.unregister(sub)
            if durable is not None:
                durable.active, durable.wakeup, durable.lost = False, None, None
                await self.claims.release(p.name, spec.durable_name)

    async def _start_positions(self, pattern: Pattern, spec: SubscribeSpec, durable) -> dict[str, int]:
        topics = await self.db.read(lambda conn: self.sql.events.topics(conn, pattern))
        if not pattern.subtree and pattern.namespace not in topics:
            if spec.after_seq > 0:
                raise InvalidArgument(f"topic {pattern.namespace} has no events yet; after_seq {spec.after_seq}"
                                      " is in the future")
            return {pattern.namespace: 0}
        positions = {}
        for name, t in topics.items():
            if spec.live_only:
                start = t.last_seq
            elif durable is not None:
                start = durable.acked.get(name, 0)
            else:
                start = spec.after.get(name, spec.after_seq)
            if start > t.last_seq:
                raise InvalidArgument(f"after_seq {start} is in the future: {name} is at {t.last_seq}")
            if start < t.first_seq - 1:
                raise Compacted(f"events after {start} on {name} were compacted away; the oldest retained"
                                         f" is {t.first_seq}: resume from after_seq {t.first_seq - 1} or later")
            positions[name] = start
        return positions

    async def read_events(self, p: Principal, topic: str, after: int, limit: int) -> list[EventRecord]:
        """Up to `limit` events after a position, with their cubes, as `p` may see them."""
        now = self.clock()
        horizon = self._horizon(topic) if self._horizon is not None else None

        def job(conn: Conn):
            found = self.sql.events.events_after(conn, topic, after, limit)
            if horizon is not None:
                found = [f for f in found if f[0] <= horizon]
            return lineage.with_sources(self.sql, conn, [
                EventRecord(topic, seq, EventKind(kind), cube_id, version, publisher, ts,
                            None if kind == EventKind.RETRACTED else self.sql.cubes.cube_at_version(conn, cube_id, version, now))
                for seq, kind, cube_id, version, publisher, ts in found])

        return await self.db.read(job)

    def view(self, p: Principal, record: EventRecord) -> EventRecord:
        """The event as p may see it (memosd/store/views.py), decided once for all of p's streams."""
        return self._views.view(p, record)

    # -- durable subscriptions ----------------------------------------------------------------

    async def _open_durable(self, p: Principal, spec: SubscribeSpec) -> _Durable:
        """Load (or create) the named cursor and claim it for this stream."""
        check_name(spec.durable_name, "durable subscription name")
        key = (p.name, spec.durable_name)
        known = self._durables.get(key)
        if known is None or not known.active:
            now = self.clock()

            def job(conn: Conn) -> tuple[str, dict[str, int]]:
                self.claims.claim(conn, p.name, spec.durable_name)
                # Read every time it is opened: another daemon on the vault may have acknowledged since.
                return self.sql.events.open_cursor(conn, p.name, spec.durable_name, spec.topic, now)

            pattern, acked = await self.db.write(job)
            known = self._durables.setdefault(key, _Durable(pattern, acked))
            if not known.active:
                known.pattern, known.acked = pattern, acked
        durable = known
        if durable.pattern != spec.topic:
            raise InvalidArgument(f"durable subscription {spec.durable_name} follows {durable.pattern}, not {spec.topic}")
        if durable.active:
            raise FailedPrecondition(f"durable subscription {spec.durable_name} is already open on another stream")
        durable.active, durable.delivered, durable.unacked_since = True, {}, None
        durable.lost = self.claims.opened(p.name, spec.durable_name)
        return durable

    async def ack(self, p: Principal, name: str, topic: str, seq: int) -> int:
        check_namespace(topic, what="topic")  # the errors below name it: never a string of any size
        durable = self._durables.get((p.name, name))
        if durable is None:
            raise NotFound(f"agent {p.name} has no durable subscription named {quote(name)} (open one with Subscribe)")
        if seq <= 0:
            raise InvalidArgument("seq must be positive")
        delivered = durable.delivered.get(topic, 0)
        if seq > delivered:
            raise InvalidArgument(f"event {seq} on {topic} was never delivered on subscription {name}"
                                  f" (last delivered: {delivered})")
        if seq <= durable.acked.get(topic, 0):
            return durable.acked[topic]
        acked = dict(durable.acked, **{topic: seq})

        def job(conn: Conn) -> None:
            self.claims.check_held(conn, p.name, name)
            self.sql.events.save_cursor(conn, p.name, name, acked)

        await self.db.write(job)
        durable.acked = acked
        durable.unacked_since = self.clock() if any(durable.delivered.get(t, 0) > a for t, a in acked.items()) else None
        if durable.wakeup is not None:
            durable.wakeup.set()
        return seq

    # -- topics and retention -----------------------------------------------------------------

    async def list_topics(self, p: Principal, prefix: str = "") -> list[Topic]:
        if prefix:
            check_namespace(prefix.rstrip("/"), what="topic prefix")
        pattern = Pattern(prefix.rstrip("/"), True) if prefix else None
        found = await self.db.read(lambda conn: self.sql.events.topics(conn, pattern))
        return [t for t in found.values()
                if self.gov.can(p, "subscribe", t.name) or self.gov.can(p, "publish", t.name)]

    async def set_retention(self, p: Principal, topic: str, max_age: float, max_events: int) -> Topic:
        check_namespace(topic, what="topic")
        if max_age < 0 or max_events < 0:
            raise InvalidArgument("retention limits must be positive, or 0 for none")

        if not (self.gov.can(p, "publish", topic) or self.gov.can(p, "subscribe", topic)):
            # Before looking: whether a topic out of p's reach exists, and whose it is, is not p's to learn.
            raise PermissionDenied(f"agent {p.name} may not set the retention of {topic}: only its owner or the admin may")

        def job(conn: Conn) -> Topic:
            t = self.sql.events.topics(conn, Pattern(topic, False)).get(topic)
            if t is None:
                raise NotFound(f"no topic {topic}")
            if not (p.admin or p.name == t.owner):
                raise PermissionDenied(f"only {t.owner} (the topic's owner) or the admin may set its retention")
            self.sql.events.set_retention(conn, topic, max_age, max_events)
            self.gov.audit_write(conn, p.name, "store.retention", topic, max_age=max_age, max_events=max_events)
            t.max_age, t.max_events = max_age, max_events
            return t

        return await self.db.write(job)

    async def compact(self) -> int:
        """Delete events beyond each topic's retention; returns how many."""
        now = self.clock()
        return await self.db.write(lambda conn: self.sql.events.compact(conn, now))


class _Stream:
    """One subscription's delivery loop: replay from the database, then live events from the Hub."""

    def __init__(self, store: MemStore, p: Principal, pattern: Pattern, sub: Subscriber, send,
                 delivered: dict[str, int], durable: _Durable | None, spec: SubscribeSpec):
        self.store, self.p, self.pattern, self.sub, self.send = store, p, pattern, sub, send
        self.delivered, self.durable, self.spec = delivered, durable, spec

    async def run(self) -> None:
        # A write to a stalled subscriber blocks; a guard cuts the stream off when its queue overflows or
        # a revocation lands, whatever the loop is waiting on.
        self._cut: MemosError | None = None
        self._ends = self.store.gov.grants_end(self.p, "subscribe")
        this = asyncio.current_task()
        assert this is not None  # run() is always awaited in a task
        guard = asyncio.ensure_future(self._guard(this))
        try:
            await self._deliver_all()
        except asyncio.CancelledError:
            if self._cut is None:
                raise
            asyncio.current_task().uncancel()
            raise self._cut from None
        finally:
            guard.cancel()

    async def _guard(self, stream: asyncio.Task) -> None:
        closing = self.store.hub.closing
        # A revocation may have landed while the stream opened (between the caller's check and now), setting an
        # event this guard never saw: check once before the first wait, with the next change's event in hand.
        opening = True
        while True:
            changed = self.store.gov.changed()
            lost = self.durable.lost if self.durable is not None else None
            if not opening:
                waits: list[Coroutine] = [self.sub.overflow.wait(), changed.wait(), closing.wait()]
                if lost is not None:
                    waits.append(lost.wait())
                self._ends = ends = self.store.gov.grants_end(self.p, "subscribe")
                if ends is not None:
                    # A grant running out is no revocation, and sets no event: wake then to judge the caller again.
                    waits.append(asyncio.sleep(max(0.0, ends - self.store.clock()) + 0.05))
                await first_of(waits)
            try:
                if closing.is_set():
                    raise Unavailable(f"the daemon is shutting down; resume after {self._positions()} once it is back")
                if lost is not None and lost.is_set():
                    raise Unavailable(f"this daemon lost its claim on durable subscription {self.spec.durable_name}"
                                      " (the vault was out of reach); resume it, here or at another daemon")
                self._recheck()
                if self.sub.overflowed:
                    raise self._too_slow()
            except MemosError as exc:
                self._cut = exc
                stream.cancel()
                return
            opening = False

    def _too_slow(self) -> ResourceExhausted:
        return ResourceExhausted(f"subscriber too slow: more than {self.sub.capacity} events waited; last delivered"
                                 f" {self._positions()}. Resume from there")

    async def _deliver_all(self) -> None:
        for topic in sorted(self.delivered):
            await self._replay(topic)
        while True:
            if self.sub.overflowed:
                raise self._too_slow()
            records = self.sub.take_all(MAX_BATCH)
            if not records:
                await self._idle()
                continue
            batch: list = []
            for record in records:
                last = self.delivered.get(record.topic, 0)
                if batch and batch[-1].topic == record.topic:
                    last = batch[-1].seq
                if record.seq <= last:
                    continue  # already delivered by the replay
                if record.seq > last + 1:
                    # Events this stream has not seen: send what is in order, then read the rest from the database.
                    await self._deliver(batch)
                    batch = []
                    await self._replay(record.topic)
                    continue
                batch.append(record)
            await self._deliver(batch)

    async def _replay(self, topic: str) -> None:
        while True:
            after = self.delivered.get(topic, 0)
            batch = await self.store.read_events(self.p, topic, after, REPLAY_BATCH)
            if batch and batch[0].seq != after + 1:
                raise Compacted(f"events after {after} on {topic} were compacted away while this subscriber"
                                f" was behind; the oldest retained is {batch[0].seq}")
            await self._deliver(batch)
            if len(batch) < REPLAY_BATCH:
                return

    async def _deliver(self, records: list[EventRecord]) -> None:
        """Send events (in order) as one message, then count them as delivered."""
        if not records:
            return
        self._check_grants_end()
        await self.send([self.store.view(self.p, r) for r in records])
        for record in records:
            self.delivered[record.topic] = record.seq
            if self.durable is not None:
                self.durable.delivered[record.topic] = record.seq
        if self.durable is not None and self.durable.unacked_since is None:
            self.durable.unacked_since = self.store.clock()

    async def _idle(self) -> None:
        timeout = self.spec.heartbeat_seconds
        if self.durable is not None and self.durable.unacked_since is not None:
            timeout = min(timeout, max(0.0, self.durable.unacked_since + self.spec.ack_timeout - self.store.clock()))
        # One event wakes the stream: a new event in its queue, or (durable) an acknowledgement. This is
        # the hot path of every subscriber, so no helper tasks.
        try:
            async with asyncio.timeout(timeout):
                await self.sub.wakeup.wait()
            return
        except TimeoutError:
            pass
        if self._redelivery_due():
            self._rewind()
            for topic in sorted(self.delivered):
                await self._replay(topic)
        else:
            self._check_grants_end()
            await self.send(Heartbeat(self._positions()))

    def _redelivery_due(self) -> bool:
        d = self.durable
        return d is not None and d.unacked_since is not None and self.store.clock() - d.unacked_since >= self.spec.ack_timeout

    def _rewind(self) -> None:
        # Unacknowledged events go out again, from the acknowledged position on.
        assert self.durable is not None  # only durable subscriptions are redelivered
        for topic in self.delivered:
            self.delivered[topic] = self.durable.acked.get(topic, 0)
        self.durable.unacked_since = None

    def _check_grants_end(self) -> None:
        # The guard wakes a little after a grant ends, by the event loop's clock (which a step of the wall clock
        # does not move): until then nothing may go out that was committed after the end.
        if self._ends is not None and self.store.clock() >= self._ends:
            self._recheck()
            self._ends = self.store.gov.grants_end(self.p, "subscribe")  # another grant still covers it

    def _recheck(self) -> None:
        self.store.gov.still_valid(self.p)
        if not self.store.gov.covers(self.p, "subscribe", self.pattern):
            raise PermissionDenied(f"agent {self.p.name} may no longer subscribe to {self.pattern}; the grant was revoked"
                                   " or has expired")

    def _positions(self) -> dict[str, int]:
        return dict(self.delivered)


def _parse_pattern(text: str) -> Pattern:
    if not text:
        raise InvalidArgument("topic is required")
    if "*" in text.removesuffix("/**"):
        raise InvalidArgument(f"topic pattern {quote(text)}: use a topic name, or NAME/** for every topic under NAME")
    return Pattern.parse(text, what="topic")
