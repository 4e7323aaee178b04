"""DaemonService: the daemon's own status."""

from __future__ import annotations

import time

from memos_mip.v1 import daemon_pb2
from memosd import __version__
from memosd.cube import MemoryKind
from memosd.server.auth import principal
from memosd.metrics import LATENCY_BUCKETS, Metrics, sample_value
from memosd.server.convert import to_timestamp

_NO_STATS = {"counts": [], "data_bytes": 0, "embedding_model": "", "embedding_backlog": 0}


class DaemonService:
    def __init__(self, vault, started_at: float, listen: str, metrics: Metrics | None = None, core=None):
        self.vault = vault
        self.started_at = started_at
        self.listen = listen
        self.metrics = metrics
        self.core = core  # the Daemon: its members and, once it has one, its bus

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
            metrics=await self._metrics() if principal().admin and self.metrics else None,
            **await self._cluster(),
        )

    async def _cluster(self) -> dict:
        # The other daemons' hosts, addresses and versions, and the bus's URL, are the operator's to know: an
        # agent is shown none of them (it reaches the cluster through the addresses it was given).
        if not principal().admin:
            return {}
        members = getattr(self.core, "members", None)
        found = {"bus": self.core.cluster_state() if hasattr(self.core, "cluster_state") else ""}
        if members is None:
            return found
        now = time.time()
        listed = [daemon_pb2.Member(member_id=m.member_id, listen=m.listen, version=m.version,
                                    started_at=to_timestamp(m.started_at), heard_at=to_timestamp(m.heard_at),
                                    seconds_since_heard=max(now - m.heard_at, 0.0), stale=m.stale, local=m.local)
                  for m in await members.members()]
        return {**found, "member_id": members.id, "members": listed}

    async def _metrics(self) -> daemon_pb2.DaemonMetrics:
        m = self.metrics
        families = await m.collect()
        out = daemon_pb2.DaemonMetrics(
            blob_store_bytes=int(sample_value(families, "memosd_blob_store_bytes")),
            database_bytes=int(sample_value(families, "memosd_database_bytes")),
            wal_bytes=int(sample_value(families, "memosd_wal_bytes")),
            auth_denials=sum(m.denials.values()),
            subscribers=int(sample_value(families, "memosd_subscribers")),
            subscriber_queue_depth=int(sample_value(families, "memosd_subscriber_queue_depth")),
            slow_subscribers_dropped=int(sample_value(families, "memosd_slow_subscribers_dropped_total")),
            metrics_address=m.address,
        )
        for (service, method, code), n in sorted(m.requests.items()):
            out.requests.add(service=service, method=method, code=code, count=n)
        for (service, method), hist in sorted(m.latency.items()):
            out.latencies.add(service=service, method=method, count=hist.count, sum_seconds=hist.total,
                              p50_seconds=_bounded(hist.quantile(0.5)), p99_seconds=_bounded(hist.quantile(0.99)))
        for kind in MemoryKind:
            out.usage.add(kind=int(kind), bytes=int(sample_value(families, "memosd_cube_bytes", kind=kind.name.lower())))
        return out


def _bounded(seconds: float) -> float:
    # Past the last bucket the histogram only knows "more than"; report that edge.
    return min(seconds, LATENCY_BUCKETS[-1])
