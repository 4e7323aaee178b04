"""The bus on its own, against a real nats-server: notices reach the other members of one cluster only."""

from __future__ import annotations

import asyncio

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
