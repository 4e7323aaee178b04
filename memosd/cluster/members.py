"""Cluster membership: this daemon's member id, its row in the vault's members table, and its heartbeat."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from memosd.errors import MemosError

log = logging.getLogger("memosd.cluster")
MEMBER_FILE = "member.id"
# A member not heard from for this many heartbeats is shown as stale (stopped, cut off or hung) ...
STALE_BEATS = 3
# ... and after this long it is forgotten (any member's heartbeat prunes it): a day covers a weekend's outage
# being visible, not a month's.
PRUNE_AFTER = 24 * 3600.0


@dataclass(frozen=True)
class Member:
    """One daemon serving the vault, as the vault last heard of it."""

    member_id: str
    listen: str
    version: str
    started_at: float
    heard_at: float
    stale: bool = False
    local: bool = False  # the daemon that answered


def member_id(data_dir: Path) -> str:
    """The member id kept in the data directory, created on first use (host name and random hex)."""
    path = Path(data_dir) / MEMBER_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found:
        return found
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:40] or "memosd"
    made = f"{host}-{secrets.token_hex(4)}"
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(made + "\n")
    with open(temp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, path)
    return made


class Membership:
    """Records this daemon in the vault at start, refreshes its heartbeat every `interval` seconds, removes it
    at a clean stop, and lists the members. A daemon alone on its vault (SQLite) is a one-member cluster."""

    def __init__(self, db, data_dir: Path, *, version: str, interval: float = 5.0, clock=time.time):
        self.db = db
        self.sql = db.sql
        self.id = member_id(data_dir)
        self.version = version
        self.interval = interval
        self.clock = clock
        self.listen = ""
        self.started_at = 0.0
        self._task: asyncio.Task | None = None

    @property
    def stale_after(self) -> float:
        return STALE_BEATS * self.interval

    async def start(self, listen: str) -> None:
        self.listen, self.started_at = listen, self.clock()
        await self._record()
        if self.interval > 0:
            self._task = asyncio.create_task(self._beat(), name="memosd-member-heartbeat")

    async def set_listen(self, listen: str) -> None:
        """The address once bound (a TCP port 0 becomes the port given)."""
        if listen != self.listen:
            self.listen = listen
            await self._record()

    async def _record(self) -> None:
        now = self.clock()
        await self.db.write(lambda conn: self.sql.governance.put_member(
            conn, self.id, self.listen, self.version, self.started_at, now))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.db.write(self._beat_once)
            except (MemosError, OSError) as exc:  # the vault is away: the heartbeat resumes when it is back
                log.warning("member %s could not record its heartbeat: %s", self.id, exc)

    def _beat_once(self, conn) -> None:
        now = self.clock()
        records = self.sql.governance
        if not records.beat(conn, self.id, now):
            records.put_member(conn, self.id, self.listen, self.version, self.started_at, now)
        pruned = records.prune_members(conn, now - PRUNE_AFTER)
        if pruned:
            log.info("forgot %d member(s) not heard from for %.0f hours", pruned, PRUNE_AFTER / 3600)

    async def members(self) -> list[Member]:
        rows = await self.db.read(self.sql.governance.members)
        now = self.clock()
        return [Member(mid, listen, version, started, heard, stale=now - heard > self.stale_after, local=mid == self.id)
                for mid, listen, version, started, heard in rows]

    async def stop(self) -> None:
        """Stop beating and leave the members table: a member that stopped cleanly is no longer one."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await self.db.write(lambda conn: self.sql.governance.remove_member(conn, self.id))
        except (MemosError, OSError) as exc:
            log.warning("member %s could not leave the members table (it will show as stale): %s", self.id, exc)
