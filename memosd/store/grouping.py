"""Group commit of unary publishes: those arriving while a commit is under way go, together, into the next one."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from memosd.errors import MemosError
from memosd.governance import Principal
from memosd.store import commit

if TYPE_CHECKING:
    from memosd.store.memstore import MemStore
    from memosd.store.publishing import PublishJob

log = logging.getLogger("memosd.store")
# The most publishes in one transaction: a burst goes in a few commits, and none holds the topics' and the
# audit chain's locks (which every writer of the vault waits for) for long.
MAX_GROUP = 256


class PublishGroups:
    """One commit of unary publishes in flight at a time for this daemon's vault. A publish arriving when none
    is commits at once, alone (no waiting for company); those arriving during a commit wait for it and then
    commit together, each caller answered with its own outcome once their transaction is durable."""

    def __init__(self, store: MemStore):
        self._store = store
        self._waiting: list[tuple[Principal, PublishJob, asyncio.Future]] = []
        self._committing: asyncio.Task | None = None
        self.transactions = 0  # committed, or failed as a whole
        self.publishes = 0  # in those transactions

    async def publish(self, p: Principal, job: PublishJob) -> tuple:
        """Commit the publish with whatever else is waiting: (seq, duplicate, EventRecord or None, Share or None).
        A caller that stops waiting (a deadline) does not take its publish back, as with any write."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((p, job, done))
        if self._committing is None:
            self._committing = asyncio.ensure_future(self._run())
        return await done

    async def _run(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                try:
                    await self._commit(group)
                except Exception:  # its callers are answered; those waiting behind them still commit
                    log.exception("handing on committed publishes failed")
        finally:
            self._committing = None

    async def _commit(self, group: list[tuple[Principal, PublishJob, asyncio.Future]]) -> None:
        store, entries = self._store, [(p, job) for p, job, _ in group]
        outcomes: list = []
        try:
            try:
                outcomes = await store.db.write(lambda conn: commit.commit(store, conn, entries))
            except Exception as exc:  # noqa: BLE001 - the transaction failed: every publish in it hears why
                outcomes = [exc] * len(group)
            self.transactions += 1
            self.publishes += len(group)
            store.published([o[2:] for o in outcomes if isinstance(o, tuple)])
        finally:
            # Every caller is answered, whatever went wrong after the commit (or cancelled this task).
            for (_, _, done), outcome in zip(group, outcomes or [None] * len(group)):
                if done.done():
                    continue  # its caller stopped waiting
                if outcome is None:
                    done.cancel()
                elif isinstance(outcome, (MemosError, Exception)):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)
