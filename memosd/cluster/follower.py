"""MemStore across daemons: every topic's events reach this daemon's Hub in seq order, whichever member committed them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from memosd.metrics import Family
from memosd.storage import Conn
from memosd.vault import lineage

if TYPE_CHECKING:
    from memosd.cluster.bus import Bus
    from memosd.store.memstore import EventRecord, MemStore

log = logging.getLogger("memosd.cluster")
TOPIC_NOTICE = "topic"
READ_BATCH = 256
# With the bus up a notice brings each commit at once; the vault is still read this often, for a notice lost
# on the way (NATS core delivers at most once) or a member whose own connection to the bus is down.
SWEEP_WITH_BUS = 5.0


class Follower:
    """A per-topic sequencer in front of the Hub. A local commit of seq n, a bus notice "topic T at seq n" or a
    poll of the vault finding T at n: n goes to the Hub directly when it is the next one, otherwise what is
    missing up to n is read from the vault and delivered in order. On PostgreSQL a publish holds its topic's
    row lock to the commit, so a committed n means every seq below it is committed and readable.

    Remote events also update MemStore's share index, so that a subscriber here reads a cube published at
    another member through the topic it was published on."""

    def __init__(self, store: MemStore, bus: Bus | None, *, poll_interval: float):
        self.store = store
        self.bus = bus
        self.poll_interval = poll_interval
        self._delivered: dict[str, int] = {}  # the last seq handed to the Hub, per topic
        self._known: dict[str, int] = {}  # the highest seq known committed, per topic
        self._reading: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._poller: asyncio.Task | None = None
        self._stopped = False
        self.polls = 0
        self.read_from_vault = 0

    async def start(self) -> None:
        found = await self.store.db.read(lambda conn: self.store.sql.events.topics(conn, None))
        # Subscribers replay from the vault themselves; what this daemon hands the Hub starts from here.
        self._delivered = {name: t.last_seq for name, t in found.items()}
        self.store.follow(self.committed, self.delivered)
        if self.bus is not None:
            self.bus.on(TOPIC_NOTICE, self._notice)
            self.bus.watch(self._bus_changed)
        self._poller = asyncio.ensure_future(self._poll_loop())

    async def stop(self) -> None:
        self._stopped = True
        tasks = [t for t in (self._poller, *self._reading.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._poller = None

    def delivered(self, topic: str) -> int:
        """The last seq of the topic handed to the Hub (its shares applied here)."""
        return self._delivered.get(topic, 0)

    def describe(self) -> str:
        """The bus's state, or how this daemon hears of other members' commits without one."""
        if self.bus is not None:
            return self.bus.describe()
        return f"no bus: catching up from the vault every {self.poll_interval:g} s"

    # -- where positions come from ---------------------------------------------------------------

    def committed(self, records: list[EventRecord]) -> None:
        """This daemon's commits (MemStore calls it after each): to the Hub in order, then news to the others."""
        newest: dict[str, int] = {}
        for record in records:
            self._advance(record.topic, record.seq, record)
            newest[record.topic] = max(newest.get(record.topic, 0), record.seq)
        if self.bus is not None:
            for topic, seq in newest.items():
                self.bus.notify(TOPIC_NOTICE, {"topic": topic, "seq": seq})

    def _notice(self, payload: dict) -> None:
        topic, seq = payload.get("topic"), payload.get("seq")
        if isinstance(topic, str) and isinstance(seq, int) and not isinstance(seq, bool) and seq > 0:
            self._advance(topic, seq, None)

    def _bus_changed(self, connected: bool) -> None:
        # Notices sent while this daemon was not listening are gone: read the vault at once, then as often as
        # the bus's state asks.
        self._wake.set()

    async def _poll_loop(self) -> None:
        failing = False  # said once, not every poll, while the vault is unreachable
        while True:
            interval = SWEEP_WITH_BUS if self.bus is not None and self.bus.connected else self.poll_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(interval, self.poll_interval)):
                    await self._wake.wait()
            self._wake.clear()
            try:
                found = await self.store.db.read(lambda conn: self.store.sql.events.topics(conn, None))
            except Exception as exc:  # noqa: BLE001 - the vault may be down too; the next poll tries again
                (log.debug if failing else log.warning)("cluster: cannot read the topics' positions from the"
                                                        " vault: %s", exc)
                failing = True
                continue
            failing = False
            self.polls += 1
            for name, t in found.items():
                self._advance(name, t.last_seq, None)

    # -- the sequencer ---------------------------------------------------------------------------

    def _advance(self, topic: str, seq: int, record: EventRecord | None) -> None:
        delivered = self._delivered.get(topic, 0)  # a topic created since start: every event is news
        if seq <= delivered:
            return
        if record is not None and seq == delivered + 1 and topic not in self._reading:
            self._delivered[topic] = seq
            self.store.hub.deliver(record)
            return
        self._known[topic] = max(self._known.get(topic, 0), seq)
        if topic not in self._reading and not self._stopped:
            self._reading[topic] = asyncio.ensure_future(self._catch_up(topic))

    async def _catch_up(self, topic: str) -> None:
        """Read and deliver, in order, what is missing on the topic up to the highest seq known committed."""
        try:
            while self._delivered.get(topic, 0) < self._known.get(topic, 0):
                after = self._delivered.get(topic, 0)
                records, shares = await self.store.db.read(lambda conn, after=after: self._read(conn, topic, after))
                if not records:
                    # Nothing after `after` in the vault: the seq we heard of is not there (a bad notice).
                    # Only what the vault holds ever moves the position.
                    if topic in self._delivered:
                        self._known[topic] = after
                    else:
                        self._known.pop(topic, None)
                    return
                self.store.sync_shares(topic, {r.cube_id for r in records if r.cube_id}, shares)
                for record in records:
                    # A gap (events compacted away) is the subscribers' to see: their streams replay or
                    # end with Compacted, as on one daemon.
                    if record.seq > self._delivered.get(topic, 0):
                        self._delivered[topic] = record.seq
                        self.read_from_vault += 1
                        self.store.hub.deliver(record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next notice or poll tries again
            log.warning("cluster: cannot catch up on %s from the vault: %s", topic, exc)
        finally:
            self._reading.pop(topic, None)

    def _read(self, conn: Conn, topic: str, after: int):
        from memosd.store.memstore import EventKind, EventRecord

        sql, now = self.store.sql, self.store.clock()
        records = [EventRecord(topic, seq, EventKind(kind), cube_id, version, publisher, ts,
                               None if kind == EventKind.RETRACTED else sql.cubes.cube_at_version(conn, cube_id, version, now))
                   for seq, kind, cube_id, version, publisher, ts in sql.events.events_after(conn, topic, after, READ_BATCH)]
        lineage.with_sources(sql, conn, records)
        # The shares as they stand in this snapshot: no older than the events read, perhaps newer.
        shares = sql.shares.on_topic(conn, topic, sorted({r.cube_id for r in records if r.cube_id}))
        return records, shares

    # -- metrics ---------------------------------------------------------------------------------

    def families(self) -> list[Family]:
        bus = self.bus
        out = [
            Family("memosd_cluster_vault_polls_total", "counter",
                   "Reads of the topics' positions from the vault, for commits made at other members.",
                   [({}, self.polls)]),
            Family("memosd_cluster_events_read_total", "counter",
                   "Events read from the vault to fill a gap in a topic (another member's, or out of order).",
                   [({}, self.read_from_vault)]),
        ]
        if bus is not None:
            out += [
                Family("memosd_bus_up", "gauge", "1 while the bus (NATS) is connected; 0 while down, when commits"
                       " at other members are found by polling the vault.", [({}, int(bus.connected))]),
                Family("memosd_bus_notices_sent_total", "counter", "Notices sent to the other members.",
                       [({}, bus.sent)]),
                Family("memosd_bus_notices_received_total", "counter", "Notices received from the other members.",
                       [({}, bus.received)]),
            ]
        return out
