"""bench/pubsub.py --cluster: two memosd members on one PostgreSQL vault (the tests' embedded server) and one
NATS bus (core, notices only), each daemon its own process, data directory and Unix socket.

    python bench/pubsub_cluster.py [--events 200]

on its own measures the notice path one event at a time (no queueing): publish at A until a subscriber at B
has it, next to publish at A until a subscriber at A has it."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import ProcessCluster  # noqa: E402


def one_at_a_time(pub_addr: str, sub_addr: str, key: str, topic: str, events: int) -> dict:
    """Publish at pub_addr, wait until the subscriber at sub_addr has the event, then the next: p50/p99 (ms)."""
    from bench.pubsub_common import percentiles
    from memos_client import MemosClient

    arrived, ready, times = threading.Event(), threading.Event(), []
    with MemosClient(pub_addr, key=key) as a, MemosClient(sub_addr, key=key) as b:
        cube = a.put("x", "agents/admin/latency")
        sub = b.subscribe(topic, live_only=True, heartbeat_seconds=1, heartbeats=True)

        def read():
            for item in sub:
                (arrived if hasattr(item, "seq") else ready).set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(30)  # the first heartbeat: the stream is open
        for _ in range(events):
            arrived.clear()
            start = time.perf_counter()
            a.publish(topic, cube.id)
            if not arrived.wait(10):
                sys.exit("an event never arrived")
            times.append(time.perf_counter() - start)
        sub.close()
    return percentiles(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        cluster = ProcessCluster(Path(tmp), 2)
        try:
            (a, key, _), (b, _, _) = cluster.members
            print(json.dumps({"events": args.events,
                              "one_daemon_a_to_a": one_at_a_time(a, a, key, "bench/one", args.events),
                              "across_daemons_a_to_b": one_at_a_time(a, b, key, "bench/across", args.events)},
                             indent=2))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
