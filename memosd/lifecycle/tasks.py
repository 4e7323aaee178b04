"""Periodic lifecycle work: flushing access counts and marking expired cubes."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("memosd.lifecycle")


class MemLifecycle:
    """Runs the vault's periodic upkeep until stopped."""

    def __init__(self, vault, *, store=None, sweep_interval: float, flush_interval: float):
        self.vault = vault
        self.store = store
        self.sweep_interval = sweep_interval
        self.flush_interval = flush_interval
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self.flush_interval, self.vault.flush_access), name="memosd-access-flush"),
            asyncio.create_task(self._every(self.sweep_interval, self._sweep), name="memosd-expiry-sweep"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _sweep(self) -> None:
        expired = await self.vault.expire_due()
        if expired:
            log.info("marked %d cubes expired", expired)
        if self.store is not None:
            compacted = await self.store.compact()
            if compacted:
                log.info("compacted %d events beyond their topics' retention", compacted)

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
