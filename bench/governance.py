"""Cost of MemGovernance: Get throughput and Search p95 with authentication and authorization on,
against the same daemon with governance bypassed in-process, at 100 agents and 1,000 policies.

    python bench/governance.py [--cubes 20000] [--gets 4000] [--searches 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memos_client import MemosClient  # noqa: E402

AGENTS, POLICIES, TEAMS = 100, 1000, 200
WORDS = ("memory agent cache vector graph budget meeting paper result model kernel token adapter review "
         "design deploy socket policy audit stream topic schedule plan query index shard replica").split()


def _serve(data_dir: str, listen: str, bypass: bool, ready, stop) -> None:
    from memosd.config import Config
    from memosd.governance import MemGovernance, Principal
    from memosd.server import build_server

    class Bypass(MemGovernance):
        """Admits every token as the agent it names and allows everything: the baseline."""

        def authenticate(self, token, **_):
            from memos_mip.auth import read_token

            claims, _, _ = read_token(token)
            return Principal(claims["sub"])

        def can(self, p, action, namespace, kind=None):
            return True

        def readable(self, p, f):
            return f

        def check_cube(self, p, action, cube):
            return None

    async def main():
        config = Config(data_dir=Path(data_dir), listen=listen, log_level="warning", sweep_interval=3600)
        server = build_server(config, Bypass if bypass else MemGovernance)
        await server.start()
        ready.set()
        while not stop.is_set():  # noqa: ASYNC110 (stop is a threading.Event the bench's thread sets)
            await asyncio.sleep(0.05)
        await server.stop(grace=1)

    asyncio.run(main())


def _start(data_dir, listen, bypass):
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(str(data_dir), listen, bypass, ready, stop))
    proc.start()
    if not ready.wait(120):
        raise RuntimeError("daemon did not start")
    return proc, stop


def _populate(addr, data_dir: Path, keys: Path, cubes: int) -> list[str]:
    rng = random.Random(7)
    with MemosClient(addr, key=data_dir / "admin.key") as admin:
        for i in range(AGENTS):
            admin.add_agent(f"agent{i}", groups=[f"g{i % 10}"], out=str(keys / f"agent{i}.key"))
        for n in range(POLICIES):
            subject = f"agent:agent{n % AGENTS}" if n % 5 else f"group:g{n % 10}"
            admin.grant(subject, ["read", "write"], [f"teams/t{(n * 7) % TEAMS}/**"])
        readable = sorted({(n * 7) % TEAMS for n in range(POLICIES)
                           if (n % 5 and n % AGENTS == 0) or (not n % 5 and n % 10 == 0)})  # agent0, group g0
        texts = (" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(cubes))
        ids = admin.put_many(({"text": t, "namespace": f"teams/t{readable[i % len(readable)]}/notes"}
                              for i, t in enumerate(texts)), batch_size=1000)
    return ids


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux): steadier than wall time on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(addr, key, ids, gets, searches, pid) -> dict:
    rng = random.Random(11)
    sample = [rng.choice(ids) for _ in range(gets)]
    threads, per = 4, gets // 4

    def worker(chunk, out):
        with MemosClient(addr, key=key) as c:
            c.get(chunk[0])
            t0 = time.perf_counter()
            for cube_id in chunk:
                c.get(cube_id)
            out.append(time.perf_counter() - t0)

    spans: list[float] = []
    workers = [threading.Thread(target=worker, args=(sample[i * per:(i + 1) * per], spans)) for i in range(threads)]
    cpu0 = _cpu_seconds(pid)
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    get_rate = threads * per / (time.perf_counter() - t0)
    get_cpu_us = (_cpu_seconds(pid) - cpu0) / (threads * per) * 1e6
    latencies = []
    cpu0 = _cpu_seconds(pid)
    with MemosClient(addr, key=key) as c:
        for _ in range(searches):
            query = " ".join(rng.sample(WORDS, 3))
            t = time.perf_counter()
            hits = c.search(query, limit=10, mode="bm25")
            latencies.append((time.perf_counter() - t) * 1e3)
            assert hits
    search_cpu_us = (_cpu_seconds(pid) - cpu0) / searches * 1e6
    latencies.sort()
    return {"get_per_s": round(get_rate), "search_p50_ms": round(statistics.median(latencies), 3),
            "search_p95_ms": round(latencies[int(0.95 * len(latencies)) - 1], 3),
            "daemon_cpu_us_per_get": round(get_cpu_us, 1), "daemon_cpu_us_per_search": round(search_cpu_us, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cubes", type=int, default=20000)
    ap.add_argument("--gets", type=int, default=4000)
    ap.add_argument("--searches", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, keys = Path(tmp) / "data", Path(tmp) / "keys"
        keys.mkdir()
        listen = f"unix:{tmp}/memosd.sock"
        proc, stop = _start(data, listen, bypass=False)
        try:
            ids = _populate(listen, data, keys, args.cubes)
        finally:
            stop.set()
            proc.join()
        rounds = {"governed": [], "bypassed": []}
        for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
            for mode in ("governed", "bypassed"):
                proc, stop = _start(data, listen, bypass=mode == "bypassed")
                try:
                    rounds[mode].append(_measure(listen, keys / "agent0.key", ids, args.gets, args.searches, proc.pid))
                finally:
                    stop.set()
                    proc.join()
    result = {"agents": AGENTS, "policies": POLICIES, "cubes": args.cubes, "caller": "agent0 (non-admin)"}
    for mode, runs in rounds.items():
        result[mode] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    g, b = result["governed"], result["bypassed"]
    result["get_throughput_ratio"] = round(g["get_per_s"] / b["get_per_s"], 3)
    result["search_p95_ratio"] = round(g["search_p95_ms"] / b["search_p95_ms"], 3)
    # The same comparison in daemon CPU per call, which other load on a shared machine disturbs far less.
    result["cpu_per_get_ratio"] = round(g["daemon_cpu_us_per_get"] / b["daemon_cpu_us_per_get"], 3)
    result["cpu_per_search_ratio"] = round(g["daemon_cpu_us_per_search"] / b["daemon_cpu_us_per_search"], 3)
    result["target"] = "get_throughput_ratio >= 0.90 and search_p95_ratio <= 1.10"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
