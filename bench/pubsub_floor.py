"""Where a MemStore event's daemon CPU goes: MemStore's own work, without any transport, at the rate and with the
durability of bench/pubsub.py, so that its server_cpu_us_per_event splits into the core and the transport.

    python bench/pubsub_floor.py [--rate 1000] [--seconds 5] [--repeats 3] [--parts]

In this process: the real daemon (build_server, SQLite, a commit and fsync per commit group) on its own loop
thread, and an open-loop publisher on that loop calling MemStore.publish_stream directly (one publish per batch,
as bench/pubsub.py's PublishStream publisher sends them), so no gRPC and no socket is involved:
- `core_publish`: no subscriber (group, checks, commit with its audit entry and share, the Hub);
- `core_deliver`: one live subscription (admin) whose send encodes each message as Subscribe does
  (store_service._item) and writes it nowhere.
cpu_us_per_event is this process's CPU (all threads) over the events published, system_us_per_event the kernel's
share of it, context_switches_per_event the thread switches it took; bytes_written_per_event and
write_calls_per_event what it handed to write calls (the WAL's page frames, the log); latency is the publish's
acknowledgement. Runs alternate; medians with [min, max].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pubsub_common import cpu_seconds, percentiles  # noqa: E402


async def _publish(store, p, topic: str, cube_id: str, total: int, rate: float) -> list[float]:
    """Open loop over one in-process publish stream: each publish due every 1/rate s; its ack latency."""
    due: list[float] = []

    async def batches():
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            due.append(time.perf_counter())
            yield [(topic, cube_id, "")]

    latencies = []
    async for acks in store.publish_stream(p, batches()):
        now, done = time.perf_counter(), len(latencies)
        latencies.extend(now - due[done + i] for i in range(len(acks)))
    return latencies


def run(daemon, mode: str, cube_id: str, rate: float, seconds: float, run_no: int) -> dict:
    from memosd.governance import Principal
    from memosd.server.store_service import _item
    from memosd.store.memstore import SubscribeSpec

    store, admin = daemon.server.store, Principal("admin", admin=True)
    topic, total = f"floor/{mode}-{run_no}", int(rate * seconds)
    subscription = None
    if mode == "core_deliver":
        async def send(item):
            _item(item)

        async def subscribe():
            return asyncio.ensure_future(store.run_subscription(
                admin, SubscribeSpec(topic=topic, live_only=True, heartbeat_seconds=300), send))

        subscription = daemon.call(subscribe())
        deadline = time.monotonic() + 30
        while len(store.hub) < 1:
            assert time.monotonic() < deadline, "the subscription never opened"
            time.sleep(0.01)
    before, written, usage = cpu_seconds(), _written(), resource.getrusage(resource.RUSAGE_SELF)
    latencies = daemon.call(_publish(store, admin, topic, cube_id, total, rate), timeout=seconds * 10 + 60)
    used, written = cpu_seconds() - before, [b - a for a, b in zip(written, _written(), strict=True)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    if subscription is not None:
        async def cancel():
            subscription.cancel()
            await asyncio.gather(subscription, return_exceptions=True)

        daemon.call(cancel())
    return {"events": len(latencies), "cpu_us_per_event": round(used / total * 1e6, 1),
            "system_us_per_event": round((after.ru_stime - usage.ru_stime) / total * 1e6, 1),
            "context_switches_per_event": round((after.ru_nvcsw + after.ru_nivcsw - usage.ru_nvcsw - usage.ru_nivcsw)
                                                / total, 1),
            "bytes_written_per_event": round(written[0] / total), "write_calls_per_event": round(written[1] / total, 1),
            **percentiles(latencies)}


def _written() -> tuple[int, int]:
    """This process's bytes handed to write calls so far, and how many write calls (/proc/self/io): what one
    commit costs the disk (SQLite's WAL appends whole pages, one frame each, for every page the commit changed)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"]), int(fields["syscw"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", action="store_true",
                    help="also time the bare parts under it (bench/floor_parts.py: grpc.aio, a framed Unix socket, SQLite's"
                         " statements, a log's fdatasync)")
    args = ap.parse_args()
    from bench import floor_parts
    from memos_client import MemosClient
    from tests.daemon import make_config, running

    modes = ("core_publish", "core_deliver", *(floor_parts.PARTS + floor_parts.GRPC_PARTS if args.parts else ()))
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp, running(make_config(Path(tmp))) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key) as c:
            cube_id = c.put("event payload " + "x" * 200, "agents/admin/bench").id
        run(daemon, "core_publish", cube_id, args.rate, 1, 0)  # warm up
        for rep in range(args.repeats):
            for mode in modes[rep % 2:] + modes[:rep % 2]:
                if mode in floor_parts.PARTS:
                    result = floor_parts.measure(mode, args.rate, args.seconds)
                elif mode in floor_parts.GRPC_PARTS:
                    result = floor_parts.measure_grpc(mode, args.rate, args.seconds)
                else:
                    result = run(daemon, mode, cube_id, args.rate, args.seconds, rep + 1)
                runs[mode].append(result)
                print(json.dumps({"mode": mode, "repeat": rep, **result}), file=sys.stderr, flush=True)
    fields = ("cpu_us_per_event", "system_us_per_event", "context_switches_per_event", "bytes_written_per_event",
              "write_calls_per_event", "p50_ms", "p99_ms", "rate_kept_per_s")
    summary = {m: {f: [statistics.median(v := [r[f] for r in rs]), min(v), max(v)] for f in fields if f in rs[0]}
               for m, rs in runs.items()}
    print(json.dumps({"rate_per_s": args.rate, "seconds": args.seconds, "repeats": args.repeats,
                      "results": summary}, indent=2))


if __name__ == "__main__":
    main()
