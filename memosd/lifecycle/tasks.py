"""Periodic lifecycle work: flushing access counts, keeping the search indexes' statistics fresh, and marking
expired cubes and compacting topics (done by one member of a cluster at a time, under a lease in the vault)."""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("memosd.lifecycle")
SWEEP_LEASE = "lifecycle.sweep"
# How often the search indexes' upkeep looks whether it has work (engine's fulltext.upkeep; cheap when none).
UPKEEP_INTERVAL = 2.0


class MemLifecycle:
    """Runs the vault's periodic upkeep until stopped."""

    def __init__(self, vault, *, store=None, sweep_interval: float, flush_interval: float, member: str = "memosd"):
        self.vault = vault
        self.store = store
        self.sweep_interval = sweep_interval
        self.flush_interval = flush_interval
        self.member = member or "memosd"
        self.sweeps = 0
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [
            # Each daemon flushes the access counts it gathered itself.
            asyncio.create_task(self._every(self.flush_interval, self.vault.flush_access), name="memosd-access-flush"),
            asyncio.create_task(self._every(self.sweep_interval, self._sweep), name="memosd-expiry-sweep"),
            asyncio.create_task(self._every(UPKEEP_INTERVAL, self._upkeep), name="memosd-search-upkeep"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _sweep(self) -> None:
        if not await self._hold(SWEEP_LEASE):
            return
        self.sweeps += 1
        expired = await self.vault.expire_due(self.member)
        if expired:
            log.info("marked %d cubes expired", expired)
        if self.store is not None:
            compacted = await self.store.compact()
            if compacted:
                log.info("compacted %d events beyond their topics' retention", compacted)

    async def _upkeep(self) -> None:
        db = self.vault.db
        for done in await db.write(db.sql.fulltext.upkeep):
            log.debug("search upkeep: %s", done)

    async def _hold(self, name: str) -> bool:
        """Whether this member holds the lease on `name`: it keeps it by sweeping, and another member gets it two
        sweep intervals after its holder stopped."""
        db, now = self.vault.db, time.time()
        until = now + 2 * self.sweep_interval
        return await db.write(lambda conn: db.sql.leases.take(conn, name, self.member, now, until))

    @staticmethod
    async def _every(seconds: float, work) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle task failed; will retry")
