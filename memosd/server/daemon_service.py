"""DaemonService: the daemon's own status."""

from __future__ import annotations

import time

from memos_mip.v1 import daemon_pb2
from memosd import __version__
from memosd.server.auth import principal
from memosd.server.convert import to_timestamp

_NO_STATS = {"counts": [], "data_bytes": 0, "embedding_model": "", "embedding_backlog": 0}


class DaemonService:
    def __init__(self, vault, started_at: float, listen: str):
        self.vault = vault
        self.started_at = started_at
        self.listen = listen

    async def Status(self, request, context):
        # Counts and sizes describe every agent's memory: the admin sees them, others see the daemon only.
        stats = await self.vault.stats() if principal().admin else _NO_STATS
        return daemon_pb2.StatusResponse(
            version=__version__,
            started_at=to_timestamp(self.started_at),
            uptime_seconds=time.time() - self.started_at,
            counts=[daemon_pb2.CubeCount(kind=int(k), state=int(s), count=n) for k, s, n in stats["counts"]],
            data_bytes=stats["data_bytes"],
            listen=self.listen,
            embedding_model=stats["embedding_model"],
            embedding_backlog=stats["embedding_backlog"],
        )
