"""What bench/pubsub.py's runs of every system share: CPU clocks, percentiles and the open-loop publisher."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path

# At most this many publishes in flight (gRPC cancels calls past a few thousand on one connection); if a
# server falls behind that, the achieved rate drops below the offered one and the JSON shows it.
WINDOW = 200


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of a process so far: this one, or `pid` (a server)."""
    if pid is None:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50_ms": round(pick(0.50) * 1e3, 3), "p99_ms": round(pick(0.99) * 1e3, 3),
            "max_ms": round(values[-1] * 1e3, 3)}


def paced(total: int, rate: float):
    """(i, due) for i = 1..total, each yielded at its due time (wall clock) or at once when late; a late
    publish keeps its due time, so a publisher falling behind counts as latency, as a queue in front of
    the server would."""
    start, wall = time.perf_counter(), time.time()
    for i in range(1, total + 1):
        delay = start + (i - 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i, wall + (i - 1) / rate


async def open_loop(one, total: int, rate: float, sent: dict) -> float:
    """Start one(i) for i = 1..total every 1/rate seconds whether or not earlier ones have returned, as
    independent agents publishing would; sent[one's result] = the time it was due. Returns the seconds
    taken."""
    window = asyncio.Semaphore(WINDOW)

    async def timed(i: int, t: float) -> None:
        try:
            sent[await one(i)] = t
        finally:
            window.release()

    loop = asyncio.get_running_loop()
    start, wall, tasks = loop.time(), time.time(), []
    for i in range(1, total + 1):
        delay = start + (i - 1) / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await window.acquire()
        tasks.append(asyncio.ensure_future(timed(i, wall + (i - 1) / rate)))
    await asyncio.gather(*tasks)
    return loop.time() - start
