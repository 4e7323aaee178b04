"""MemStore publish-to-receive latency, delivered rate and server CPU next to durable brokers, in the same run.

    python bench/pubsub.py [--rate 1000] [--seconds 5] [--subscribers 1,8,32] [--repeats 3] [--systems ...]
    python bench/pubsub.py --cluster [--subscribers 1,8] [...]
    python bench/pubsub.py --closed-loop 8 [--cluster] [--seconds 5] [--repeats 3]

Systems: memosd with unary Publish (`memosd`), with the PublishStream call (`memosd_stream`), both delivering
over the Subscribe gRPC stream, and with PublishStream and same-host delivery (`memosd_local`: the events as
frames on a socket of each subscription's own, the client's default on a Unix socket); Redis
Streams with `appendonly yes`, `appendfsync always` (XADD, XREAD BLOCK); NATS JetStream with file storage
and `sync_interval: always` (publish awaits its PubAck); Redis pub/sub, which keeps nothing (the floor). The
three durable ones answer a publish only once it is on disk, and can replay it. Each is started by this
script on loopback (memosd on a Unix socket) in a temporary directory.

--cluster adds two members on one PostgreSQL vault with a NATS bus (bench/pubsub_cluster.py):
`memosd_pg_one` publishes and subscribes at member A (one daemon on PostgreSQL), `memosd_pg_cluster`
publishes at A and subscribes at B (A's commit, its notice over the bus, B's read of the vault).

Every run: one publisher in this process sending at a fixed rate (open loop: a publish starts every 1/rate
seconds whether or not earlier ones have returned), one spawned process holding all subscribers, every
event delivered to every subscriber, Python clients on both sides. Latency is receive time minus the
publisher's time just before the publish call. delivered_rate_per_s: the slowest subscriber's events per
second from the first publish to its last receive (equal to the offered rate when it keeps up).
server_cpu_us_per_event: the server's CPU during the run over the events published. Configurations are
alternated (every system at each subscriber count, then the next repeat) and reported as medians with
[min, max] over the repeats; ratios are memosd's medians over each durable peer's.

--closed-loop N measures throughput instead: N unary publishers to one topic, each starting its next publish
when its last is acknowledged, for --seconds, on the SQLite daemon (`memosd`) and, with --cluster, the
PostgreSQL member (`memosd_pg_one`), alternated; publishes_per_s and server CPU per publish, no subscribers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import pubsub_peers as peers  # noqa: E402
from bench.pubsub_common import cpu_seconds, open_loop, paced, percentiles  # noqa: E402

SYSTEMS = ("memosd", "memosd_stream", "memosd_local", "redis_streams", "nats_jetstream", "redis_pubsub")
MEMOSD_SYSTEMS = ("memosd", "memosd_stream", "memosd_local")
CLUSTER_SYSTEMS = ("memosd_pg_one", "memosd_pg_cluster")
DURABLE_PEERS = ("redis_streams", "nats_jetstream")


# ---- memosd --------------------------------------------------------------------------------------------------

def _memos_subscribers(addr, key, topic, n, total, ready, out, same_host):
    from memos_client import MemosClient

    received: list[dict] = [{} for _ in range(n)]

    def one(i):
        with MemosClient(addr, key=key, local_transfers=same_host) as c:
            sub = c.subscribe(topic, live_only=True, heartbeat_seconds=1, heartbeats=True)
            for item in sub:
                if hasattr(item, "seq"):
                    received[i][item.seq] = time.time()
                    if len(received[i]) >= total:
                        break
                elif not ready[i].is_set():
                    ready[i].set()  # the first heartbeat: the stream is open

    peers._threads(one, n)
    out.put((received, cpu_seconds()))


def _publish_memos(addr, key, topic, cube_id, total, rate, sent) -> float:
    from memos_client import AsyncMemosClient

    async def main():
        async with AsyncMemosClient(addr, key=key) as c:
            async def one(i):
                seq, _ = await c.publish(topic, cube_id)
                return seq
            return await open_loop(one, total, rate, sent)

    return asyncio.run(main())


def _publish_memos_stream(addr, key, topic, cube_id, total, rate, sent) -> float:
    """Open loop over one PublishStream: the request generator (on gRPC's sending thread) waits for each
    publish's time; acknowledgements come back in order, each once its event is durable."""
    from memos_client import MemosClient

    times: list[float] = []

    def requests():
        for _, due in paced(total, rate):
            times.append(due)
            yield topic, cube_id

    with MemosClient(addr, key=key) as c:
        start = time.perf_counter()
        for i, (seq, _) in enumerate(c.publish_stream(requests())):
            sent[seq] = times[i]
        return time.perf_counter() - start


def closed_loop(system: str, servers: dict, publishers: int, seconds: float, run_no: int) -> dict:
    """N publishers in a loop, each awaiting its acknowledgement before the next: publishes/s and server CPU."""
    from memos_client import AsyncMemosClient

    addr, _, key, pid = servers[system]
    topic = f"bench/closed{run_no}"

    async def main() -> int:
        async with AsyncMemosClient(addr, key=key) as c:
            cube_id = (await c.put("event payload " + "x" * 200, "agents/admin/bench")).id
            await c.publish(topic, cube_id)  # the topic exists before the clock starts
            end = time.perf_counter() + seconds

            async def publisher() -> int:
                done = 0
                while time.perf_counter() < end:
                    await c.publish(topic, cube_id)
                    done += 1
                return done

            return sum(await asyncio.gather(*(publisher() for _ in range(publishers))))

    cpu, start = cpu_seconds(pid), time.perf_counter()
    done = asyncio.run(main())
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    return {"publishes": done, "publishes_per_s": round(done / elapsed),
            "server_cpu_us_per_event": round(cpu / max(done, 1) * 1e6, 1)}


# ---- one run -------------------------------------------------------------------------------------------------

def run_once(system: str, servers: dict, n: int, rate: float, seconds: float, run_no: int) -> dict:
    total = int(rate * seconds)
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(n)]
    out = ctx.Queue()
    name = f"bench{run_no}"
    if system.startswith("memosd"):
        from memos_client import MemosClient

        addr, sub_addr, key, pid = servers[system]
        topic = f"bench/{name}"
        with MemosClient(addr, key=key) as c:
            cube_id = c.put("event payload " + "x" * 200, "agents/admin/bench").id
        target, args = _memos_subscribers, (sub_addr, key, topic, n, total, ready, out, system == "memosd_local")
        publish = _publish_memos if system in ("memosd", *CLUSTER_SYSTEMS) else _publish_memos_stream
        pub_args = (addr, key, topic, cube_id, total, rate)
    elif system == "redis_streams":
        port, pid = servers["redis"].port, servers["redis"].proc.pid
        target, args = peers.redis_stream_subscribers, (port, name, n, total, ready, out)
        publish, pub_args = peers.publish_redis_stream, (port, name, total, rate)
    elif system == "redis_pubsub":
        port, pid = servers["redis"].port, servers["redis"].proc.pid
        target, args = peers.redis_pubsub_subscribers, (port, name, n, total, ready, out)
        publish, pub_args = peers.publish_redis_pubsub, (port, name, total, rate)
    else:
        url, pid = servers["nats"].url, servers["nats"].proc.pid
        peers.nats_add_stream(url, name.upper(), name)
        target, args = peers.nats_subscribers, (url, name, n, total, ready, out)
        publish, pub_args = peers.publish_nats, (url, name, total, rate)
    proc = ctx.Process(target=target, args=args)
    proc.start()
    for r in ready:
        r.wait(60)
    sent: dict[int, float] = {}
    server_cpu, publisher_cpu = cpu_seconds(pid), cpu_seconds()
    elapsed = publish(*pub_args, sent)
    received, subscribers_cpu = out.get(timeout=180)
    server_cpu, publisher_cpu = cpu_seconds(pid) - server_cpu, cpu_seconds() - publisher_cpu
    proc.join(30)
    latencies = [r[s] - sent[s] for r in received for s in r if s in sent]
    first = min(sent.values()) if sent else 0.0
    rates = [len(r) / (max(r.values()) - first) if r else 0.0 for r in received]
    return {"published": total, "publish_rate_per_s": round(total / elapsed), "delivered": len(latencies),
            "expected": total * n, "delivered_rate_per_s": round(min(rates)), **percentiles(latencies),
            "server_cpu_s": round(server_cpu, 2), "server_cpu_us_per_event": round(server_cpu / total * 1e6, 1),
            "cpu_s": {"subscribers": round(subscribers_cpu, 2), "publisher": round(publisher_cpu, 2)}}


def summarize(runs: list[dict]) -> dict:
    """[median, min, max] over the repeats of one configuration."""
    out: dict = {"runs": len(runs), "all_delivered": all(r["delivered"] == r["expected"] for r in runs)}
    for field in ("p50_ms", "p99_ms", "delivered_rate_per_s", "server_cpu_us_per_event", "publish_rate_per_s"):
        values = [r[field] for r in runs if r[field] is not None]
        if values:
            out[field] = [round(statistics.median(values), 3), min(values), max(values)]
    return out


def ratios(summary: dict) -> dict:
    """memosd's medians over each durable peer's (p99 and server CPU per event): the targets are <= 2."""
    found = {}
    for ours in MEMOSD_SYSTEMS:
        for peer in DURABLE_PEERS:
            a, b = summary.get(ours), summary.get(peer)
            if a and b and a.get("p99_ms") and b.get("p99_ms"):
                found[f"{ours}/{peer}"] = {
                    "p99": round(a["p99_ms"][0] / b["p99_ms"][0], 2),
                    "cpu_per_event": round(a["server_cpu_us_per_event"][0] / b["server_cpu_us_per_event"][0], 2)}
    return found


def round_trips(listen: str, redis_port: int, calls: int = 2000) -> dict:
    """The floor under any publish-to-receive latency: one request and its answer with no work behind it, on
    each server: a gRPC health check on the daemon's socket (no memosd code runs) and a Redis PING."""
    import grpc
    import redis
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def timed(call) -> dict:
        for _ in range(100):  # warm up
            call()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return percentiles(times)

    with grpc.insecure_channel(listen) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        grpc_rt = timed(lambda: check(health_pb2.HealthCheckRequest()))
    r = redis.Redis(port=redis_port)
    try:
        redis_rt = timed(r.ping)
    finally:
        r.close()
    return {"grpc_health_check": grpc_rt, "redis_ping": redis_rt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--subscribers", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, of: " + ", ".join(SYSTEMS))
    ap.add_argument("--cluster", action="store_true", help="also " + ", ".join(CLUSTER_SYSTEMS) + " (PostgreSQL, NATS)")
    ap.add_argument("--closed-loop", type=int, default=0, metavar="N",
                    help="throughput of N closed-loop unary publishers instead of latency runs")
    args = ap.parse_args()
    if args.closed_loop:
        args.systems = "memosd"
    systems = [s for s in args.systems.split(",") if s] + (list(CLUSTER_SYSTEMS) if args.cluster else [])
    unknown = set(systems) - set(SYSTEMS) - set(CLUSTER_SYSTEMS)
    if unknown:
        sys.exit(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS + CLUSTER_SYSTEMS)}")
    counts = [int(x) for x in args.subscribers.split(",")]
    runs: dict = {(s, n): [] for s in systems for n in counts}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        servers: dict = {"redis": peers.RedisServer(tmp)}
        listen = f"unix:{tmp}/memosd.sock"
        memosd = subprocess.Popen([sys.executable, "-m", "memosd.cli", "serve", "--data-dir", f"{tmp}/data",
                                   "--listen", listen, "--log-level", "warning"])
        try:
            if "nats_jetstream" in systems:
                servers["nats"] = peers.NatsServer(tmp)
            from tests.daemon import wait_serving

            wait_serving(listen)
            for system in MEMOSD_SYSTEMS:
                servers[system] = (listen, listen, f"{tmp}/data/admin.key", memosd.pid)
            if args.cluster:
                from tests.cluster import ProcessCluster

                servers["cluster"] = cluster = ProcessCluster(Path(tmp), 2)
                (a, key, a_pid), (b, _, b_pid) = cluster.members
                servers["memosd_pg_one"] = (a, a, key, a_pid)
                servers["memosd_pg_cluster"] = (a, b, key, b_pid)  # server CPU: the receiving member's
            if args.closed_loop:
                closed_systems = ["memosd"] + (["memosd_pg_one"] if args.cluster else [])
                closed: dict = {s: [] for s in closed_systems}
                for rep in range(args.repeats):
                    for system in closed_systems[rep % 2:] + closed_systems[:rep % 2]:
                        result = closed_loop(system, servers, args.closed_loop, args.seconds, rep)
                        closed[system].append(result)
                        print(json.dumps({"system": system, "repeat": rep, **result}), file=sys.stderr, flush=True)
                print(_dumps({"closed_loop_publishers": args.closed_loop, "seconds": args.seconds,
                              "repeats": args.repeats, "results": {
                                  s: {f: [statistics.median(v := [r[f] for r in rs]), min(v), max(v)]
                                      for f in ("publishes_per_s", "server_cpu_us_per_event")}
                                  for s, rs in closed.items()}}, indent=2))
                return
            floor = round_trips(listen, servers["redis"].port)
            run_no = 0
            for rep in range(args.repeats):
                for n in counts:
                    # Rotated each repeat, so no system always runs right after the same neighbour.
                    for system in systems[rep % len(systems):] + systems[:rep % len(systems)]:
                        run_no += 1
                        result = run_once(system, servers, n, args.rate, args.seconds, run_no)
                        runs[(system, n)].append(result)
                        print(json.dumps({"system": system, "subscribers": n, "repeat": rep, **result}),
                              file=sys.stderr, flush=True)
        finally:
            memosd.send_signal(signal.SIGTERM)
            memosd.wait(30)
            for server in servers.values():
                if not isinstance(server, tuple) and hasattr(server, "stop"):
                    server.stop()
    results = []
    for n in counts:
        summary = {s: summarize(runs[(s, n)]) for s in systems}
        results.append({"subscribers": n, **summary, "ratios": ratios(summary)})
    print(_dumps({"rate_per_s": args.rate, "seconds": args.seconds, "repeats": args.repeats,
                      "round_trip_floor": floor, "results": results,
                      "targets": "memosd p99 and server CPU per event at most 2x Redis Streams (appendfsync always);"
                                 " delivered_rate_per_s equal to the rate at 32 subscribers"}, indent=2))


def _dumps(value, **kwargs) -> str:
    """JSON with each [median, min, max] on one line."""
    text = json.dumps(value, **kwargs)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


if __name__ == "__main__":
    main()
