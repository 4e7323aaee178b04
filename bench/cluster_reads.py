"""Reads at one member while another ingests: Search and Get p95 through members B and C of a three-member
cluster (one PostgreSQL, one NATS, each daemon its own process), with member A idle and then with A ingesting
plaintext cubes as fast as one client can put them. Quiet and loaded rounds alternate; medians and ranges.

    python bench/cluster_reads.py [--seed 20000] [--rounds 3] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import ProcessCluster  # noqa: E402

WORDS = ("memory agent vault cube search plan tensor cache adapter policy grant stream topic event shard"
         " ledger sketch harbor meadow copper violet lantern orbit quiet rapid silver tunnel").split()


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 70)))


def ingest(address: str, key: str, stop, counted) -> None:
    """In its own process (the measuring one must not share a GIL with it): put until told to stop."""
    from memos_client import MemosClient

    rng = random.Random(7)
    with MemosClient(address, key=key, timeout=120) as client:
        while not stop.is_set():
            client.put_many([{"text": text(rng), "namespace": "bench/ingest"} for _ in range(200)], batch_size=200)
            counted.value += 200


def measure(address: str, key: str, ids: list[str], queries: int, rng: random.Random) -> dict:
    from memos_client import MemosClient

    search, get = [], []
    with MemosClient(address, key=key, timeout=120) as client:
        for _ in range(queries):
            started = time.perf_counter()
            client.search(" ".join(rng.sample(WORDS, 2)), limit=10)
            search.append(time.perf_counter() - started)
            started = time.perf_counter()
            client.get(rng.choice(ids))
            get.append(time.perf_counter() - started)
    return {"search_p95_ms": p95(search), "get_p95_ms": p95(get)}


def p95(values: list[float]) -> float:
    return round(1000 * sorted(values)[int(0.95 * (len(values) - 1))], 2)


def summary(rounds: list[dict]) -> dict:
    keys = rounds[0].keys()
    return {k: {"median": round(statistics.median(r[k] for r in rounds), 2),
                "range": [min(r[k] for r in rounds), max(r[k] for r in rounds)]} for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20000, help="cubes in the vault before the rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200, help="searches (and as many gets) per member per round")
    args = ap.parse_args()
    rng = random.Random(1)
    from memos_client import MemosClient

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        cluster = ProcessCluster(Path(tmp), 3)
        try:
            (a, key, _), (b, _, _), (c, _, _) = cluster.members
            with MemosClient(a, key=key, timeout=300) as client:
                ids = client.put_many([{"text": text(rng), "namespace": "bench/seed"} for _ in range(args.seed)])
            results: dict[str, list[dict]] = {}
            ingested = []
            # spawn, not fork: this process holds gRPC channels and threads, and a forked child can hang in
            # gRPC for good (the loaded round then ingested nothing, and the exit waited on the child).
            ctx = multiprocessing.get_context("spawn")
            for _ in range(args.rounds):
                for loaded in (False, True):
                    stop, counted = ctx.Event(), ctx.Value("q", 0)
                    writer = None
                    if loaded:
                        writer = ctx.Process(target=ingest, args=(a, key, stop, counted))
                        writer.start()
                    started = time.perf_counter()
                    for name, address in (("B", b), ("C", c)):
                        row = f"{name}, A {'ingesting' if loaded else 'idle'}"
                        results.setdefault(row, []).append(measure(address, key, ids, args.queries, rng))
                    if writer is not None:
                        stop.set()
                        writer.join(120)
                        if writer.is_alive():
                            writer.terminate()
                            sys.exit("the ingesting client did not stop")
                        ingested.append(round(counted.value / (time.perf_counter() - started)))
            print(json.dumps({"seed_cubes": args.seed, "rounds": args.rounds, "queries": args.queries,
                              "ingest_at_A_cubes_per_s": ingested,
                              **{row: summary(rounds) for row, rounds in results.items()}}, indent=2))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
