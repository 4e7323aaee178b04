"""Governance across the members of a cluster: a version in the vault, reloads when it moves, news of local changes."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from memos_mip.auth import read_token
from memosd.errors import MemosError, Unauthenticated
from memosd.storage import Conn, Lane

if TYPE_CHECKING:
    from memosd.governance.core import AgentRecord, PolicyRecord, Principal

log = logging.getLogger("memosd.governance")
# A token the daemon cannot place (an agent it does not know, an epoch it has not reached) makes it look at the
# vault before refusing, at most this often: junk tokens cost a version read each tenth of a second, no more.
NEWS_REFRESH_GAP = 0.1


class ClusterSync:
    """Mixed into MemGovernance. Every change of agents, policies or the epoch raises the vault's governance
    version in the change's own transaction. Each member keeps the version its memory reflects; refresh()
    reloads everything when the vault's has moved (polled every `governance_poll_interval` seconds, and called by
    the bus on another member's notice), so a change made at any member takes effect at all of them. Local
    changes and reloads take one lock, so a reload never puts back an older picture over a change just made."""

    if TYPE_CHECKING:  # what the mixin uses of MemGovernance, declared for the type checker
        db: object
        sql: object
        clock: Callable[[], float]
        epoch: int
        _agents: dict[str, AgentRecord]
        _policies: dict[str, PolicyRecord]
        _tokens: dict[str, dict]

        def authenticate(self, token: str | None, *, any_epoch: bool = False) -> Principal: ...
        def _load_records(self, agents, policies) -> tuple[dict, dict]: ...
        def _fresh_caches(self) -> None: ...

    def _init_sync(self) -> None:
        self.version = 0
        self._sync_lock = asyncio.Lock()
        self._listeners: list[Callable[[int], object]] = []
        self._pending: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._news: asyncio.Task | None = None
        self._news_at = 0.0
        self.refreshes = 0  # reloads that found the vault changed (for status and tests)

    # -- local changes ------------------------------------------------------------------------

    def on_change(self, callback: Callable[[int], object]) -> None:
        """Call callback(version) after each change this daemon commits (a coroutine function is scheduled):
        the bus tells the other members, which then refresh() at once instead of at their next poll."""
        self._listeners.append(callback)

    def _bump_version(self, conn: Conn) -> int:
        """In the change's transaction: the vault's new governance version."""
        return self.sql.governance.bump_version(conn)  # type: ignore[attr-defined]

    def _committed(self, version: int) -> None:
        """After a local change committed as `version`: memory reflects it, and everything before it only if no
        other member committed in between (then the next refresh loads theirs)."""
        if version == self.version + 1:
            self.version = version
        for callback in self._listeners:
            try:
                result = callback(version)
            except Exception:  # a listener's failure is its own: the change is committed
                log.exception("governance change listener failed")
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    # -- other members' changes ---------------------------------------------------------------

    async def refresh(self) -> bool:
        """Reload agents, policies and the epoch if the vault's governance version moved; True if it did. Then,
        as after a local revocation: fresh caches, and open streams woken to re-check their callers."""
        records = self.sql.governance  # type: ignore[attr-defined]
        # On the point lane: a token's caller may be waiting for this (authenticate_call), and the poll that
        # spreads another member's revocation must not queue behind searches.
        current = await self.db.read(records.governance_version, lane=Lane.POINT)  # type: ignore[attr-defined]
        if current == self.version:
            return False
        async with self._sync_lock:
            def load(conn: Conn):
                return (records.governance_version(conn), records.load_settings(conn), records.load_agents(conn),
                        records.load_policies(conn))

            found = await self.db.read(load, lane=Lane.POINT)  # type: ignore[attr-defined]
            version, settings, agents, policies = found
            if version == self.version:
                return False
            self._agents, self._policies = self._load_records(agents, policies)
            epoch = int(settings["policy_epoch"])
            if epoch != self.epoch:
                self._tokens.clear()
            self.epoch, self.version = epoch, version
            self.refreshes += 1
            self._fresh_caches()
        return True

    def start_polling(self, interval: float) -> None:
        """refresh() every `interval` seconds (0: never) until stop_polling(): the path that needs no bus."""
        if interval > 0:
            self._poller = asyncio.create_task(self._poll(interval), name="memosd-governance-poll")

    async def stop_polling(self) -> None:
        for task in [self._poller, self._news, *self._pending]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, MemosError):
                    pass
        self._poller = self._news = None

    async def _poll(self, interval: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except (MemosError, OSError) as exc:  # the vault is away: decisions stand until it is back
                if not failing:  # said once per outage, not twice a second
                    log.warning("cannot look for governance changes in the vault (other members' grants and"
                                " revocations wait until it is back): %s", exc)
                failing = True
                continue
            if failing:
                log.info("looking for governance changes in the vault again")
            failing = False

    # -- tokens from the future ---------------------------------------------------------------

    async def authenticate_call(self, token: str | None, *, any_epoch: bool = False) -> Principal:
        """authenticate(), but a token this daemon cannot place yet (its agent unknown here, its epoch ahead of
        this daemon's) first makes it look at the vault once: the agent may have been added, or the policy
        changed, at another member a moment ago."""
        try:
            return self.authenticate(token, any_epoch=any_epoch)
        except Unauthenticated:
            if not token or not self._may_be_news(token):
                raise
            await self._refresh_for_news()
        return self.authenticate(token, any_epoch=any_epoch)

    def _may_be_news(self, token: str) -> bool:
        try:
            claims = read_token(token)[0]
        except (ValueError, UnicodeDecodeError):
            return False
        sub, epoch = claims.get("sub"), claims.get("epoch")
        return (isinstance(sub, str) and sub not in self._agents) or (isinstance(epoch, int) and epoch > self.epoch)

    async def _refresh_for_news(self) -> None:
        # A refresh that began after this call arrived: one begun before may have read the vault before the
        # change this token comes from. Callers at once share one; past that, one per NEWS_REFRESH_GAP (tokens
        # naming unknown agents cost anyone nothing to make, so they may not make the vault read at will).
        arrived = time.monotonic()
        while True:
            task = self._news
            if task is not None and not task.done():
                if self._news_at >= arrived:
                    break
                await asyncio.wait([task])  # begun too early: wait it out, then begin one
                continue
            wait = self._news_at + NEWS_REFRESH_GAP - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the rate limit's next slot, not a condition
                continue
            self._news_at = time.monotonic()
            self._news = task = asyncio.ensure_future(self.refresh())
            break
        try:
            await asyncio.shield(task)
        except (MemosError, OSError) as exc:
            log.warning("could not look for a new agent in the vault: %s", exc)
