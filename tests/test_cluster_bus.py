"""The bus on its own, against a real nats-server: notices reach the other members of one cluster only."""

from __future__ import annotations

import asyncio
import logging

from memosd.cluster.bus import Bus
from tests.timing import until


def test_a_notice_reaches_the_other_members_of_its_cluster_only(nats_server):
    async def main():
        a = Bus(nats_server.url, "memosd-c1", poll_interval=0.5)
        b = Bus(nats_server.url, "memosd-c1", poll_interval=0.5)
        other = Bus(nats_server.url, "memosd-c2", poll_interval=0.5)
        heard: dict[str, list] = {"a": [], "b": [], "other": []}
        for name, bus in (("a", a), ("b", b), ("other", other)):
            bus.on("topic", heard[name].append)
            await bus.start()
        try:
            assert all(bus.connected for bus in (a, b, other))
            assert a.describe() == f"bus connected to {nats_server.url}"
            a.notify("topic", {"topic": "teams/x", "seq": 1})
            a.notify("governance", {"epoch": 2})  # a kind nobody listens to: dropped at b
            a.notify("topic", {"topic": "teams/x", "seq": 2})
            await until(lambda: _at_least(heard["b"], 2), "b never heard a's notices")
            assert heard["b"] == [{"topic": "teams/x", "seq": 1}, {"topic": "teams/x", "seq": 2}]
            # A probe through the other cluster's subject space: by the time it arrives, a's notices would have.
            other2 = Bus(nats_server.url, "memosd-c2", poll_interval=0.5)
            await other2.start()
            other2.notify("topic", {"probe": True})
            await until(lambda: _at_least(heard["other"], 1), "the other cluster's own notice never arrived")
            assert heard["other"] == [{"probe": True}]
            assert heard["a"] == []  # no echo: a member knows its own commits
            assert (a.sent, b.received) == (3, 2)
            await other2.close()
        finally:
            for bus in (a, b, other):
                await bus.close()

    asyncio.run(main())


def test_the_bus_says_when_it_went_down_and_comes_back_by_itself(nats_server):
    async def main():
        bus = Bus(nats_server.url, "memosd-c1", poll_interval=0.25)
        changes: list[bool] = []
        bus.watch(changes.append)
        await bus.start()
        try:
            await asyncio.to_thread(nats_server.kill)
            await until(lambda: _true(not bus.connected), "the bus never noticed its server died")
            assert bus.describe().startswith(f"bus {nats_server.url} down since ")
            assert bus.describe().endswith(": catching up from the vault every 0.25 s")
            await asyncio.to_thread(nats_server.start)
            await until(lambda: _true(bus.connected), "the bus never reconnected")
            assert changes == [True, False, True]
        finally:
            await bus.close()

    asyncio.run(main())


async def _at_least(items: list, n: int) -> bool:
    return len(items) >= n


async def _true(value: bool) -> bool:
    return value


def test_hostile_notices_on_the_bus_are_dropped_and_the_next_good_one_still_arrives(nats_server, caplog):
    # Anyone who can reach the NATS server can publish on a cluster's subjects: what they send is bounded
    # (size), parsed safely (nesting, not JSON, not an object) and never stops the bus from hearing more.
    import nats

    async def main():
        b = Bus(nats_server.url, "memosd-c1", poll_interval=0.5)
        heard: list = []
        b.on("topic", heard.append)
        await b.start()
        raw = await nats.connect(nats_server.url)
        try:
            subject = b.prefix + "topic"
            for data in (b"[" * 15000 + b"]" * 15000, b"{" * 8000, b"not json", b"[1, 2]", b"x" * 20000):
                await raw.publish(subject, data)
            await raw.publish(subject, b'{"topic": "teams/x", "seq": 3}')
            await raw.flush()
            await until(lambda: _at_least(heard, 1), "the good notice after the hostile ones never arrived")
            assert heard == [{"topic": "teams/x", "seq": 3}]
        finally:
            await raw.close()
            await b.close()

    asyncio.run(main())
    # Dropped quietly: a hostile notice is not the bus going down (that warning would send members polling).
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "bus" in r.getMessage()]
