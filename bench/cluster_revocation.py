"""Revocation lag across the members of a cluster: revoke an agent at member A, time until member B refuses it
(two daemons on one PostgreSQL, each polling the vault every `--poll` seconds; then the same with a NATS bus,
whose governance notice makes B reload at once, and B's poll at the first `--poll`).

    python bench/cluster_revocation.py [--trials 30] [--poll 0.5 0.1] [--no-bus]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memos_client import MemosClient, Unauthenticated  # noqa: E402
from tests.cluster import member_configs, running_members  # noqa: E402
from tests.nats_server import NatsServer  # noqa: E402
from tests.pg_server import PostgresServer, TestDatabases  # noqa: E402


def _lags(url: str, tmp: Path, poll: float, trials: int, bus_url: str = "") -> list[float]:
    configs = member_configs(tmp, url, 2, governance_poll_interval=poll, bus_url=bus_url)
    lags = []
    with running_members(configs) as (a, b), MemosClient(a.address, key=a.admin_key, timeout=30) as admin:
        for i in range(trials):
            key = tmp / f"agent{i}.key"
            admin.add_agent(f"agent{i}", out=str(key))
            with MemosClient(b.address, key=str(key), timeout=30) as agent:
                agent.whoami()  # known at B, with a token of B's epoch
                # At a random moment of B's poll cycle: trials one after another would otherwise each revoke just
                # after the poll that ended the trial before, and measure a whole interval every time.
                time.sleep(random.uniform(0, poll))
                started = time.perf_counter()
                admin.revoke_agent(f"agent{i}")
                while True:
                    try:
                        agent.whoami()
                    except Unauthenticated:
                        break
                    time.sleep(0.002)  # the measure's resolution; a busy loop would slow B down
                lags.append(time.perf_counter() - started)
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--poll", type=float, nargs="+", default=[0.5, 0.1])
    parser.add_argument("--no-bus", action="store_true", help="polling only")
    args = parser.parse_args()
    modes = [(f"poll {poll} s", poll, False) for poll in args.poll]
    if not args.no_bus:
        modes.append((f"bus, poll {args.poll[0]} s", args.poll[0], True))
    server = PostgresServer()
    server.start()
    databases = TestDatabases(server.url)
    databases.prepare()
    try:
        results = {}
        for name, poll, bus in modes:
            url = databases.create()
            nats = NatsServer() if bus else None
            if nats is not None:
                nats.start()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    lags = sorted(_lags(url, Path(tmp), poll, args.trials, nats.url if nats else ""))
            finally:
                if nats is not None:
                    nats.kill()
            databases.drop(url)
            results[name] = {
                "trials": len(lags), "p50_ms": round(1000 * statistics.median(lags), 1),
                "p99_ms": round(1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))], 1),
                "max_ms": round(1000 * lags[-1], 1)}
        print(json.dumps(results, indent=2))
    finally:
        databases.finish()
        server.stop()
        server.remove()


if __name__ == "__main__":
    main()
