"""What `memosctl mcp` costs: a memory_search round trip through it next to the same search through the Python
client (p50/p95, same daemon, same run), its start-up to the first answered tools/list, and the delay from one
agent's memory_publish to another agent's notifications/resources/updated.

    python bench/mcp_search.py [--cubes 2000] [--searches 300]
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
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients" / "python"))

from bench.shared import serve  # noqa: E402

WORDS = ("memory agent cache vector graph budget meeting paper result model kernel token adapter review "
         "design deploy socket policy audit stream topic schedule plan query index shard replica").split()


def _ms(values: list[float]) -> dict:
    values = sorted(values)
    return {"p50_ms": round(1000 * statistics.median(values), 3),
            "p95_ms": round(1000 * values[int(0.95 * (len(values) - 1))], 3)}


def _server(addr: str, key: str):
    from mcp import StdioServerParameters

    path = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python"), os.environ.get("PYTHONPATH", "")])
    return StdioServerParameters(command=sys.executable, args=["-m", "memos_client.cli", "mcp"],
                                 env={"MEMOS_ADDR": addr, "MEMOS_KEY": key, "PYTHONPATH": path})


async def _run(addr: str, keys: dict[str, str], queries: list[str]) -> dict:
    import mcp_types as types
    from mcp import ClientSession, stdio_client

    from memos_client import AsyncMemosClient

    out: dict = {}
    started = time.perf_counter()
    async with stdio_client(_server(addr, keys["alice"])) as (r, w), ClientSession(r, w) as alice:
        await alice.initialize()
        await alice.list_tools()
        out["startup_to_tools_list_s"] = round(time.perf_counter() - started, 3)
        async with AsyncMemosClient(addr, key=keys["alice"]) as direct:
            via_mcp, via_client = [], []
            for i, q in enumerate(queries):  # interleaved, so both see the same machine at the same moment
                for first in (i % 2 == 0, i % 2 == 1):
                    t = time.perf_counter()
                    if first:
                        result = await alice.call_tool("memory_search", {"query": q, "limit": 10})
                        assert not result.is_error, result.content
                        via_mcp.append(time.perf_counter() - t)
                    else:
                        await direct.search(q, limit=10)
                        via_client.append(time.perf_counter() - t)
            mcp_ms, client_ms = _ms(via_mcp), _ms(via_client)
            out["search_via_mcp"], out["search_via_client"] = mcp_ms, client_ms
            out["mcp_adds_p95_ms"] = round(mcp_ms["p95_ms"] - client_ms["p95_ms"], 3)

            heard: asyncio.Queue = asyncio.Queue()

            async def on_message(message):
                if isinstance(message, types.ResourceUpdatedNotification):
                    heard.put_nowait(time.perf_counter())

            # The handshake era's subscriptions, which the server serves (docs/mcp.md).
            warnings.filterwarnings("ignore", "resources/subscribe is removed")
            async with stdio_client(_server(addr, keys["bob"])) as (r, w), \
                    ClientSession(r, w, message_handler=on_message) as bob:
                await bob.initialize()
                await bob.subscribe_resource("memos://topic/teams/bench/news")
                cube = await direct.put("bench news", "agents/alice/news")
                delays = []
                for i in range(20):
                    t = time.perf_counter()
                    result = await alice.call_tool("memory_publish", {"topic": "teams/bench/news", "id": cube.id,
                                                                      "publish_id": f"p{i}"})
                    assert not result.is_error, result.content
                    delays.append(await asyncio.wait_for(heard.get(), 10) - t)
                out["publish_to_resources_updated"] = _ms(delays)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cubes", type=int, default=2000)
    parser.add_argument("--searches", type=int, default=300)
    args = parser.parse_args()

    from memos_client import MemosClient

    with tempfile.TemporaryDirectory() as tmp:
        data, sock = Path(tmp) / "data", f"/tmp/memosd-bench-mcp-{os.getpid()}.sock"
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=serve, args=(str(data), f"unix:{sock}", ready, stop), daemon=True)
        proc.start()
        try:
            if not ready.wait(120):
                raise SystemExit("the daemon did not start")
            addr = f"unix:{sock}"
            rng = random.Random(0)
            with MemosClient(addr, key=data / "admin.key") as admin:
                keys = {n: admin.add_agent(n, out=str(Path(tmp) / f"{n}.key"))[1] for n in ("alice", "bob")}
                admin.grant("agent:alice", ["publish"], ["teams/bench/**"])
                admin.grant("agent:bob", ["subscribe"], ["teams/bench/**"])
            with MemosClient(addr, key=keys["alice"]) as alice:
                alice.put_many({"text": " ".join(rng.choices(WORDS, k=12)), "namespace": "agents/alice/notes"}
                               for _ in range(args.cubes))
            queries = [" ".join(rng.choices(WORDS, k=3)) for _ in range(args.searches)]
            result = asyncio.run(_run(addr, keys, queries))
        finally:
            stop.set()
            proc.join(30)
    print(json.dumps({"benchmark": "mcp_search", "cubes": args.cubes, "searches": args.searches,
                      "cpus": os.cpu_count(), **result}, indent=2))


if __name__ == "__main__":
    main()
