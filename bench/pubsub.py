"""MemStore publish-to-receive latency and throughput next to Redis pub/sub, in the same run.

    python bench/pubsub.py [--rate 1000] [--seconds 5] [--subscribers 1,8,32]

Both systems: one publisher process sending at a fixed rate (open loop), one process holding all subscribers
(a thread each), over a Unix socket, Python clients on both sides (grpcio for memosd, redis-py for
Redis). Latency is receive time minus the publisher's time just before the publish call. memosd
commits every event to SQLite (synchronous=FULL) before delivering it and can replay it to a late or
returning subscriber; Redis pub/sub keeps nothing. cpu_s: CPU seconds of the server and the publisher
during the run, and of the subscriber process from its start (imports included); the machine's cores are
shared by all of them, so these show which side limits a run. round_trip_floor: one request and its
answer with no work behind it (a gRPC health check on the daemon's socket, a Redis PING), the least any
publish-to-receive path through each server can take.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of a process so far: this one, or `pid` (a server)."""
    if pid is None:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50_ms": round(pick(0.50) * 1e3, 3), "p99_ms": round(pick(0.99) * 1e3, 3),
            "max_ms": round(values[-1] * 1e3, 3)}


# ---- memosd --------------------------------------------------------------------------------------------------

def _memos_subscribers(addr, key, n, total, ready, out):
    from memos_client import MemosClient

    received: list[dict] = [{} for _ in range(n)]

    def one(i):
        with MemosClient(addr, key=key) as c:
            sub = c.subscribe("bench/topic", live_only=True, heartbeat_seconds=1, heartbeats=True)
            for item in sub:
                if hasattr(item, "seq"):
                    received[i][item.seq] = time.time()
                    if len(received[i]) >= total:
                        break
                elif not ready[i].is_set():
                    ready[i].set()  # the first heartbeat: the stream is open

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    out.put((received, _cpu_seconds()))


async def _publish_open_loop(addr, key, cube_id, total, rate, sent) -> float:
    from memos_client import AsyncMemosClient

    # At most 200 publishes in flight (gRPC cancels calls past a few thousand on one connection); if the
    # daemon falls behind that, the achieved rate drops below the target and the JSON shows it.
    window = asyncio.Semaphore(200)
    async with AsyncMemosClient(addr, key=key) as c:
        async def one(t: float) -> None:
            try:
                seq, _ = await c.publish("bench/topic", cube_id)
                sent[seq] = t
            finally:
                window.release()

        loop = asyncio.get_running_loop()
        start, tasks = loop.time(), []
        for i in range(total):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await window.acquire()
            tasks.append(asyncio.ensure_future(one(time.time())))
        await asyncio.gather(*tasks)
        return loop.time() - start


def _cpu(server: float, subscribers: float, publisher: float) -> dict:
    """Where the CPU went during one run (2 shared vCPUs show which side is the bottleneck)."""
    return {"cpu_s": {"server": round(server, 2), "subscribers": round(subscribers, 2), "publisher": round(publisher, 2)}}


def run_memos(addr, key, n, rate, seconds, server_pid) -> dict:
    from memos_client import MemosClient

    total = int(rate * seconds)
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(n)]
    out = ctx.Queue()
    proc = ctx.Process(target=_memos_subscribers, args=(addr, key, n, total, ready, out))
    proc.start()
    for r in ready:
        r.wait(60)
    sent: dict[int, float] = {}
    with MemosClient(addr, key=key) as c:
        cube_id = c.put("event payload " + "x" * 200, "agents/admin/bench").id
    server_cpu, publisher_cpu = _cpu_seconds(server_pid), _cpu_seconds()
    # Open loop: a publish starts every 1/rate seconds whether or not earlier ones have returned, as
    # independent agents publishing would; the daemon batches concurrent commits.
    elapsed = asyncio.run(_publish_open_loop(addr, key, cube_id, total, rate, sent))
    received, subscribers_cpu = out.get(timeout=180)
    server_cpu, publisher_cpu = _cpu_seconds(server_pid) - server_cpu, _cpu_seconds() - publisher_cpu
    proc.join(30)
    latencies = [r[s] - sent[s] for r in received for s in r if s in sent]
    return {"subscribers": n, "published": total, "publish_rate_per_s": round(total / elapsed),
            "delivered": len(latencies), "expected": total * n, **_percentiles(latencies),
            **_cpu(server_cpu, subscribers_cpu, publisher_cpu)}


# ---- Redis ---------------------------------------------------------------------------------------------------

def _redis_subscribers(sock, n, total, ready, out):
    import redis

    received: list[dict] = [{} for _ in range(n)]

    def one(i):
        r = redis.Redis(unix_socket_path=sock)
        p = r.pubsub()
        p.subscribe("bench")
        while True:
            msg = p.get_message(timeout=1.0)
            if msg is None:
                continue
            if msg["type"] == "subscribe":
                ready[i].set()
                continue
            seq, t = msg["data"].split(b" ", 2)[:2]
            received[i][int(seq)] = time.time()
            if len(received[i]) >= total:
                break

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    out.put((received, _cpu_seconds()))


def run_redis(sock, n, rate, seconds, server_pid) -> dict:
    import redis

    total = int(rate * seconds)
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(n)]
    out = ctx.Queue()
    proc = ctx.Process(target=_redis_subscribers, args=(sock, n, total, ready, out))
    proc.start()
    for r in ready:
        r.wait(60)
    r = redis.Redis(unix_socket_path=sock)
    sent = {}
    payload = b"x" * 200
    server_cpu, publisher_cpu = _cpu_seconds(server_pid), _cpu_seconds()
    start = time.perf_counter()
    for i in range(1, total + 1):
        delay = start + (i - 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = time.time()
        sent[i] = t
        r.publish("bench", b"%d %f " % (i, t) + payload)
    elapsed = time.perf_counter() - start
    received, subscribers_cpu = out.get(timeout=180)
    server_cpu, publisher_cpu = _cpu_seconds(server_pid) - server_cpu, _cpu_seconds() - publisher_cpu
    proc.join(30)
    latencies = [rec[s] - sent[s] for rec in received for s in rec]
    return {"subscribers": n, "published": total, "publish_rate_per_s": round(total / elapsed),
            "delivered": len(latencies), "expected": total * n, **_percentiles(latencies),
            **_cpu(server_cpu, subscribers_cpu, publisher_cpu)}


def round_trips(listen: str, sock: str, calls: int = 2000) -> dict:
    """The floor under any publish-to-receive latency: one request and its answer, with no work behind it,
    on each server's socket: a gRPC health check (no memosd code runs) and a Redis PING."""
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
        return _percentiles(times)

    with grpc.insecure_channel(listen) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        grpc_rt = timed(lambda: check(health_pb2.HealthCheckRequest()))
    r = redis.Redis(unix_socket_path=sock)
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
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed: run scripts/install_redis.sh")
    counts = [int(x) for x in args.subscribers.split(",")]
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        sock = f"{tmp}/redis.sock"
        redis_proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                                       "--appendonly", "no", "--daemonize", "no"], stdout=subprocess.DEVNULL)
        listen = f"unix:{tmp}/memosd.sock"
        memosd = subprocess.Popen([sys.executable, "-m", "memosd.cli", "serve", "--data-dir", f"{tmp}/data",
                                   "--listen", listen, "--log-level", "warning"])
        try:
            from tests.daemon import wait_serving

            wait_serving(listen)
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            key = f"{tmp}/data/admin.key"
            floor = round_trips(listen, sock)
            results = []
            for n in counts:
                m = run_memos(listen, key, n, args.rate, args.seconds, memosd.pid)
                r = run_redis(sock, n, args.rate, args.seconds, redis_proc.pid)
                results.append({"subscribers": n, "memosd": m, "redis": r,
                                "p99_ratio": round(m["p99_ms"] / r["p99_ms"], 2) if m["p99_ms"] and r["p99_ms"] else None})
        finally:
            memosd.send_signal(signal.SIGTERM)
            memosd.wait(30)
            redis_proc.terminate()
            redis_proc.wait(10)
    print(json.dumps({"rate_per_s": args.rate, "seconds": args.seconds, "round_trip_floor": floor, "results": results,
                      "target": "memosd p99 within 2x of Redis, every event durable and resumable"}, indent=2))


if __name__ == "__main__":
    main()
