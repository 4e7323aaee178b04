"""The floors under a MemStore event's CPU, each the bare part alone on one thread at the benchmark's rate, for
bench/pubsub_floor.py's --parts:
- `sqlite_publish`: the statements one lone publish's commit group runs today (read back with SQLite's trace
  from the daemon: the audit head, the share row, the cube, the topic's seq, the event, the audit entry, the head
  again), against a vault database made by memosd's own migrations, with the daemon's connection settings (WAL,
  synchronous=FULL): what SQLite itself costs an event, without memosd's Python around it;
- `sqlite_event_only`: one INSERT of the event row and its COMMIT, nothing else: SQLite's least for a durable
  event;
- `append_fdatasync`: an encoded event (about Redis's 274 bytes) appended to a file and fdatasync'd, as Redis's
  AOF with appendfsync always does: the floor of a durable log with no database at all;
- `grpc_unary`, `grpc_echo_stream`, `grpc_push_stream`: gRPC's own server CPU per message with nothing behind it;
  `unix_echo_frames`: the same echo as length-prefixed frames over a Unix socket on asyncio (measure_grpc).
cpu_us_per_event is that thread's CPU (time.thread_time: user and system) over the events; for the gRPC parts,
this process's.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from memosd.storage.sqlite.db import all_migrations, connect

PARTS = ("sqlite_publish", "sqlite_event_only", "append_fdatasync")


def _paced(total: int, rate: float, step) -> tuple[float, float]:
    """step(i) for i in range(total), each due every 1/rate s (sleeping until due): (CPU s, wall s) of the loop."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for i in range(total):
        delay = wall + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        step(i)
    return time.thread_time() - cpu, time.perf_counter() - wall


def _vault(folder: Path):
    from sqlite_utils import Database

    path = folder / "memos.db"
    conn = connect(path)
    db = Database(conn)
    for migrations in all_migrations():
        migrations.apply(db)
    conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('audit_head', '0:')")
    return conn


def _sqlite_publish(conn, cube_id: str):
    topic = "floor/parts"
    conn.execute("INSERT INTO topics (name, owner, created_at) VALUES (?, 'admin', 0)", (topic,))

    def step(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SAVEPOINT job")
        head = conn.execute("SELECT value FROM settings WHERE key = 'audit_head'").fetchone()[0]
        conn.execute("SELECT topic, cube_id, publisher, authority FROM topic_cubes WHERE topic = ? AND cube_id IN (?)",
                     (topic, cube_id)).fetchall()
        conn.execute("SELECT * FROM cubes WHERE id = ?", (cube_id,)).fetchall()
        conn.execute("INSERT INTO topic_cubes (topic, cube_id, publisher, authority) VALUES (?, ?, 'admin', 'own')"
                     " ON CONFLICT DO NOTHING", (topic, cube_id))
        seq = conn.execute("UPDATE topics SET last_seq = last_seq + 1 WHERE name = ? RETURNING last_seq",
                           (topic,)).fetchone()[0]
        conn.execute("INSERT INTO events (topic, seq, kind, cube_id, cube_version, publisher, ts, publish_id)"
                     " VALUES (?, ?, 2, ?, 1, 'admin', ?, NULL)", (topic, seq, cube_id, time.time()))
        prev = head.split(":", 1)[1]
        digest = os.urandom(32).hex()
        audit_seq = conn.execute(
            "INSERT INTO audit (ts, agent, action, target, decision, detail, prev_hash, hash)"
            " VALUES (?, 'admin', 'store.publish', ?, 'allow', ?, ?, ?)",
            (time.time(), topic, f'{{"cube": "{cube_id}", "seq": {seq}}}', prev, digest)).lastrowid
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('audit_head', ?)", (f"{audit_seq}:{digest}",))
        conn.execute("RELEASE job")
        conn.execute("COMMIT")

    return step


def _sqlite_event_only(conn, cube_id: str):
    topic = "floor/event-only"

    def step(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (topic, seq, kind, cube_id, cube_version, publisher, ts, publish_id)"
                     " VALUES (?, ?, 2, ?, 1, 'admin', ?, NULL)", (topic, i + 1, cube_id, time.time()))
        conn.execute("COMMIT")

    return step


def measure(part: str, rate: float, seconds: float) -> dict:
    """One paced run of a part: CPU per event, and the rate it kept."""
    total = int(rate * seconds)
    cube_id = "01JFLOORPARTS0000000000000"
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        if part == "append_fdatasync":
            fd = os.open(Path(tmp) / "events.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            record = (b"*8\r\n$4\r\nXADD\r\n" + b"$11\r\nfloor/parts\r\n$1\r\n*\r\n" + b"x" * 230)[:274]
            try:
                cpu, wall = _paced(total, rate, lambda i: (os.write(fd, record), os.fdatasync(fd)))
            finally:
                os.close(fd)
        else:
            conn = _vault(Path(tmp))
            step = _sqlite_publish(conn, cube_id) if part == "sqlite_publish" else _sqlite_event_only(conn, cube_id)
            try:
                cpu, wall = _paced(total, rate, step)
            finally:
                conn.close()
    return {"events": total, "cpu_us_per_event": round(cpu / total * 1e6, 1), "rate_kept_per_s": round(total / wall)}


GRPC_PARTS = ("grpc_unary", "grpc_echo_stream", "grpc_push_stream", "unix_echo_frames")
_CLIENT = r"""
import sys, time, grpc
address, mode, total, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
channel = grpc.insecure_channel(address)
if mode == "grpc_echo_stream":
    call = channel.stream_stream("/floor.Floor/Echo")
    def paced():
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            yield b"x" * 274
    assert sum(1 for _ in call(paced())) == total
elif mode == "grpc_unary":
    call, start = channel.unary_unary("/floor.Floor/Unary"), time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        call(b"x" * 274)
elif mode == "unix_echo_frames":
    import socket, struct
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    reader, start = sock.makefile("rb"), time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sock.sendall(struct.pack(">I", 274) + b"x" * 274)
        (size,) = struct.unpack(">I", reader.read(4))
        assert len(reader.read(size)) == size
else:
    call = channel.unary_stream("/floor.Floor/Push")
    assert sum(1 for _ in call(f"{total} {rate}".encode())) == total
"""


def measure_grpc(part: str, rate: float, seconds: float) -> dict:
    """gRPC's own cost per message, with nothing behind it: a grpc.aio server in this process (its own loop, as
    the daemon's) and a client process; `grpc_unary` answers paced unary calls (Publish's shape),
    `grpc_echo_stream` answers each message of one stream (PublishStream's shape), `grpc_push_stream` pushes paced
    messages of 274 bytes to one reader (Subscribe's); `unix_echo_frames` echoes length-prefixed frames on an
    asyncio Unix socket server (what a same-host publish path would cost). cpu_us_per_event
    is this process's CPU over the messages."""
    import asyncio
    import resource
    import subprocess
    import sys
    import threading

    import grpc

    total = int(rate * seconds)

    async def unary(request, context):
        return request

    async def echo(requests, context):
        async for message in requests:
            yield message

    async def push(request, context):
        count, pace = request.decode().split()
        start = time.perf_counter()
        for i in range(int(count)):
            delay = start + i / float(pace) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            yield b"y" * 274

    identity = {"request_deserializer": None, "response_serializer": None}
    handler = grpc.method_handlers_generic_handler("floor.Floor", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **identity),
        "Echo": grpc.stream_stream_rpc_method_handler(echo, **identity),
        "Push": grpc.unary_stream_rpc_method_handler(push, **identity)})
    loop, started = asyncio.new_event_loop(), threading.Event()
    box: dict = {}

    async def frames(reader, writer):  # length-prefixed frames over a Unix socket, as same-host delivery writes
        while True:
            try:
                head = await reader.readexactly(4)
            except asyncio.IncompleteReadError:
                break
            writer.write(head + await reader.readexactly(int.from_bytes(head, "big")))
        writer.close()

    async def serve():
        if part == "unix_echo_frames":
            box["server"] = await asyncio.start_unix_server(frames, box["path"])
            started.set()
            return
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        box["port"], box["server"] = server.add_insecure_port("127.0.0.1:0"), server
        await server.start()
        started.set()

    folder = tempfile.TemporaryDirectory(dir="/tmp")
    box["path"] = str(Path(folder.name) / "floor.sock")
    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    started.wait(30)
    address = box["path"] if part == "unix_echo_frames" else f"127.0.0.1:{box['port']}"
    before = resource.getrusage(resource.RUSAGE_SELF)
    subprocess.run([sys.executable, "-c", _CLIENT, address, part, str(total), str(rate)],
                   check=True, timeout=seconds * 5 + 60)
    after = resource.getrusage(resource.RUSAGE_SELF)

    async def stop():
        if part == "unix_echo_frames":
            box["server"].close()
        else:
            await box["server"].stop(None)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    folder.cleanup()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"events": total, "cpu_us_per_event": round(used / total * 1e6, 1)}
