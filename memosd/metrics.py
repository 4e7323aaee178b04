"""Daemon metrics: request counters and latency histograms fed by one hook, gauges read on demand,
rendered in the Prometheus text exposition format (version 0.0.4).

Labels are bounded sets only (service, method, status code, kind, state); never a namespace, an
agent or anything else a caller chooses, so a scrape neither grows without end nor leaks names.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable

log = logging.getLogger("memosd.metrics")
# Seconds: from a cached-token Get (well under a millisecond) to a long stream.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DENIAL_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


@dataclass
class Family:
    """One metric: its name, type, help line and samples (labels, value)."""

    name: str
    type: str  # counter, gauge or histogram
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


@dataclass
class Histogram:
    """Cumulative-bucket latency histogram."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def quantile(self, q: float) -> float:
        """An upper bound of the q-quantile: the first bucket edge the q share of calls falls under."""
        if not self.count:
            return 0.0
        rank, seen = q * self.count, 0
        for edge, n in zip((*LATENCY_BUCKETS, math.inf), self.counts):
            seen += n
            if seen >= rank:
                return edge
        return math.inf


Collector = Callable[[], Awaitable[list[Family]]]


class Metrics:
    """What the daemon counts. observe_request() is the hook every RPC passes through; collectors
    (registered by the vault, the store, ...) report gauges when a scrape or Status asks."""

    def __init__(self, clock=time.time):
        self.started_at = clock()
        self.clock = clock
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.denials: dict[str, int] = {}
        self._collectors: list[tuple[str, Collector]] = []
        self.address = ""  # where the HTTP endpoint serves them, once it does

    def observe_request(self, path: str, code: str, seconds: float, denied: bool = False) -> None:
        """Count one finished call: path "/memos.v1.VaultService/Put", code a status name like "OK";
        denied when it was refused for its credentials or a grant (a stale token is not: it is renewed)."""
        service, _, method = path.lstrip("/").partition("/")
        key = (service, method, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get((service, method))
        if hist is None:
            hist = self.latency[(service, method)] = Histogram()
        hist.observe(seconds)
        if denied and code in DENIAL_CODES:
            self.denials[code] = self.denials.get(code, 0) + 1

    def add_collector(self, name: str, collect: Collector) -> None:
        """Register a source of gauges; a failing collector is logged and skipped, never fatal."""
        self._collectors.append((name, collect))

    async def collect(self) -> list[Family]:
        families = self._own()
        for name, collect in self._collectors:
            try:
                families += await collect()
            except Exception:  # a scrape must not take the daemon's other metrics down with it
                log.exception("metrics collector %s failed", name)
        return families

    def _own(self) -> list[Family]:
        requests = Family("memosd_requests_total", "counter", "RPCs finished, by service, method and status code.")
        for (service, method, code), n in sorted(self.requests.items()):
            requests.samples.append(({"service": service, "method": method, "code": code}, n))
        latency = Family("memosd_request_duration_seconds", "histogram",
                         "Time from a call's arrival to its last response (whole stream for streams).")
        for (service, method), hist in sorted(self.latency.items()):
            labels = {"service": service, "method": method}
            seen = 0
            for edge, n in zip((*LATENCY_BUCKETS, math.inf), hist.counts):
                seen += n
                latency.samples.append(({**labels, "le": _number(edge)}, seen))
            latency.samples.append(({**labels, "__suffix": "_sum"}, hist.total))
            latency.samples.append(({**labels, "__suffix": "_count"}, hist.count))
        denials = Family("memosd_auth_denials_total", "counter",
                         "Calls refused for want of valid credentials (UNAUTHENTICATED) or of a grant (PERMISSION_DENIED);"
                         " not a stale token's, which the client renews and retries.")
        denials.samples = [({"code": code}, self.denials.get(code, 0)) for code in sorted(DENIAL_CODES)]
        uptime = Family("memosd_start_time_seconds", "gauge", "When the daemon started, in Unix seconds.",
                        [({}, self.started_at)])
        return [requests, latency, denials, uptime]


def subscriber_families(hub) -> list[Family]:
    """MemStore's live subscriptions (a Hub: len(), queue_depths(), dropped_slow)."""
    depths = hub.queue_depths()
    return [
        Family("memosd_subscribers", "gauge", "Open Subscribe streams.", [({}, len(hub))]),
        Family("memosd_subscriber_queue_depth", "gauge", "Events queued for subscribers, summed over all of them.",
               [({}, sum(depths))]),
        Family("memosd_subscriber_queue_depth_max", "gauge", "Events queued for the subscriber furthest behind.",
               [({}, max(depths, default=0))]),
        Family("memosd_slow_subscribers_dropped_total", "counter",
               "Subscribe streams ended with RESOURCE_EXHAUSTED because their queue overflowed.",
               [({}, hub.dropped_slow)]),
    ]


def publish_families(groups) -> list[Family]:
    """MemStore's group commit of unary publishes (memosd/store/grouping.py: transactions, publishes)."""
    return [
        Family("memosd_publish_transactions_total", "counter",
               "Transactions that committed unary Publish calls; fewer than the publishes when concurrent ones"
               " were committed together.", [({}, groups.transactions)]),
        Family("memosd_publish_transaction_publishes_total", "counter", "Unary Publish calls in those transactions.",
               [({}, groups.publishes)]),
    ]


def render(families: list[Family]) -> str:
    """The Prometheus text exposition format."""
    lines = []
    for f in families:
        lines.append(f"# HELP {f.name} {_escape_help(f.help)}")
        lines.append(f"# TYPE {f.name} {f.type}")
        for labels, value in f.samples:
            labels = dict(labels)
            suffix = labels.pop("__suffix", "_bucket" if "le" in labels else "")
            text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{f.name}{suffix}{{{text}}} {_number(value)}" if text else f"{f.name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


def sample_value(families: list[Family], name: str, **labels) -> float:
    """Sum of a family's samples whose labels include these (0 if none): for Status and tests."""
    return sum(v for f in families if f.name == name for ls, v in f.samples
               if all(ls.get(k) == str(val) for k, val in labels.items()))


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
