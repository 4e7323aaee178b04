"""Durable subscriptions' claims: one open stream per named cursor in the whole cluster, under a lease in the vault."""

from __future__ import annotations

import asyncio
import logging
import time

from memosd.errors import MemosError, Unavailable
from memosd.storage import Conn

log = logging.getLogger("memosd.store")
PREFIX = "durable\n"
# A member renews its claims every third of this; one that stopped without releasing them (kill -9, cut off)
# holds them this long at most, after which a stream may open at another member.
CLAIM_SECONDS = 10.0


def lease_name(agent: str, name: str) -> str:
    return f"{PREFIX}{agent}\n{name}"


class DurableClaims:
    """The leases of the durable subscriptions open at this daemon (holder: this run, member: its member id)."""

    def __init__(self, db, holder: str, member: str, *, lease: float = CLAIM_SECONDS, clock=time.time):
        self.db, self.sql = db, db.sql
        self.holder, self.member, self.lease, self.clock = holder, member, lease, clock
        self._held: dict[str, asyncio.Event] = {}  # lease name -> set when the claim is lost
        self._renewer: asyncio.Task | None = None

    async def start(self) -> None:
        # Claims an earlier run of this member left (a kill -9 releases nothing) are this member's to give up.
        released = await self.db.write(
            lambda conn: self.sql.leases.release_earlier(conn, PREFIX, self.member, self.holder))
        if released:
            log.info("released %d durable subscription claims of this member's previous run", released)
        self._renewer = asyncio.create_task(self._renew_forever(), name="memosd-durable-claims")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None

    def claim(self, conn: Conn, agent: str, name: str) -> None:
        """In the transaction that opens the cursor: hold its lease, or Unavailable if another member's stream
        has it (retried by clients: the claim of a member that went away runs out within the lease)."""
        key = lease_name(agent, name)
        now = self.clock()
        if not self.sql.leases.take(conn, key, self.holder, now, now + self.lease):
            raise Unavailable(f"durable subscription {name} is open on a stream at another daemon of the cluster;"
                              f" it can open here once that stream ends (within {self.lease:g} s if that daemon"
                              " is gone)")

    def opened(self, agent: str, name: str) -> asyncio.Event:
        """After the claim committed: an event set if this daemon loses it (a stream must then end)."""
        lost = self._held[lease_name(agent, name)] = asyncio.Event()
        return lost

    def check_held(self, conn: Conn, agent: str, name: str) -> None:
        """In an acknowledgement's transaction: the cursor is written only by the daemon whose stream holds it (or
        any, while no stream does), so that a daemon cut off from the vault cannot write back over another's."""
        found = self.sql.leases.holder(conn, lease_name(agent, name), self.clock())
        if found not in (None, self.holder):
            raise Unavailable(f"durable subscription {name} is open on a stream at another daemon of the cluster;"
                              " acknowledge its events on that stream's daemon")

    async def release(self, agent: str, name: str) -> None:
        key = lease_name(agent, name)
        self._held.pop(key, None)
        try:
            await self.db.write(lambda conn: self.sql.leases.release(conn, key, self.holder))
        except MemosError as exc:  # it runs out by itself
            log.warning("could not release durable subscription %s (its claim runs out in %g s): %s",
                        name, self.lease, exc)

    async def _renew_forever(self) -> None:
        renewed_at = self.clock()
        while True:
            await asyncio.sleep(self.lease / 3)
            held = list(self._held)
            if not held:
                renewed_at = self.clock()
                continue
            now = self.clock()
            try:
                kept = await self.db.write(lambda conn, held=held, now=now: [
                    key for key in held if self.sql.leases.take(conn, key, self.holder, now, now + self.lease)])
            except MemosError as exc:
                if self.clock() - renewed_at > self.lease:  # another member may have taken them over by now
                    log.warning("durable subscription claims lapsed (the vault is unreachable): %s", exc)
                    self._lose(held)
                continue
            renewed_at = now
            self._lose([key for key in held if key not in kept])

    def _lose(self, keys: list[str]) -> None:
        for key in keys:
            lost = self._held.pop(key, None)
            if lost is not None:
                lost.set()
