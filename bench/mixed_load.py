"""Mixed load: many clients at once putting, getting, listing and searching for a while; latency per call kind, errors
and the daemon's memory over time; prints JSON.

    python bench/mixed_load.py [--cubes 20000] [--clients 64] [--seconds 60] [--mix get=40,list=20,search=25,put=15]

The real daemon (`memosd serve` in a child process, as bench/ingest_search.py starts it) is seeded with the bench
corpus through put_many, untimed; then --clients client threads, spread over --processes client processes (one
Python process's GIL is too little for 64 gRPC clients on a small machine: the client would be what is measured),
each call a kind drawn from --mix, run for --seconds. A Get reads a seeded cube, a List one first page (counted) of a
namespace, a Search BM25 over the bench queries, a Put a new cube. The daemon's VmRSS is read every --rss-interval
seconds; "flat" means the samples of the last half of the run lie within 5% of their mean. Results also go to
bench/results/mixed_load.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from bench.corpus import NAMESPACES, Corpus  # noqa: E402
from bench.daemon_memory import memory  # noqa: E402
from bench.ingest_search import Daemon, ingest  # noqa: E402
from bench.shared import emit  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "mixed_load.json"
KINDS = ("get", "list", "search", "put")
FLAT_WITHIN = 0.05


def _mix(text: str) -> dict[str, float]:
    weights = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in KINDS or not weight:
            raise argparse.ArgumentTypeError(f"--mix wants kind=weight,... with kinds {', '.join(KINDS)}")
        weights[kind] = float(weight)
    return weights


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cubes", type=int, default=20_000, help="cubes seeded before the load")
    p.add_argument("--clients", type=int, default=64, help="client threads in all")
    p.add_argument("--processes", type=int, default=4, help="client processes the threads are spread over")
    p.add_argument("--seconds", type=float, default=60, help="how long the load runs")
    p.add_argument("--mix", type=_mix, default=_mix("get=40,list=20,search=25,put=15"), help="kind=weight,...")
    p.add_argument("--rss-interval", type=float, default=5, help="seconds between the daemon's VmRSS samples")
    p.add_argument("--seed", type=int, default=7, help="corpus seed")
    p.add_argument("--data-dir", type=Path, help="an empty directory to keep the data in (default: a temporary one)")
    p.add_argument("--daemon-prefix", default="",
                   help="command put before the daemon's, e.g. 'py-spy record -o /tmp/mixed.svg --'")
    p.add_argument("--output", type=Path, default=RESULTS, help="where the JSON is written too")
    return p


# -- one client process ---------------------------------------------------------------------------


def _client_process(target: str, key: str, threads: int, index: int, seconds: float, mix: dict, ids: list[str],
                    queries: list[str], seed: int, go, out) -> None:
    """Run `threads` clients until `seconds` after `go`; send back (kind, latency seconds, error name or '')."""
    from memos_client import MemosClient, MemosError

    corpus = Corpus(seed)
    kinds, weights = list(mix), list(mix.values())
    done: list[tuple[str, float, str]] = []
    lock = threading.Lock()

    def one(n: int, until: float) -> None:
        rng = random.Random(f"client-{index}-{n}")
        mine = []
        with MemosClient(target, key=key, timeout=60) as client:
            client.status()  # the channel is up and the token minted before the clock starts
            ready.wait()
            while time.perf_counter() < until:
                kind = rng.choices(kinds, weights)[0]
                started = time.perf_counter()
                error = ""
                try:
                    if kind == "get":
                        client.get(rng.choice(ids))
                    elif kind == "list":
                        client.list_page(rng.choice(NAMESPACES), page_size=50)
                    elif kind == "search":
                        client.search(rng.choice(queries), mode="bm25", limit=10)
                    else:
                        draft = next(corpus.cubes(1, start=10_000_000 + index * 100_000 + n * 1000 + len(mine)))
                        client.put(draft["text"], draft["namespace"], tags=draft["tags"])
                except MemosError as exc:
                    error = type(exc).__name__
                mine.append((kind, time.perf_counter() - started, error))
        with lock:
            done.extend(mine)

    ready = threading.Event()
    go.wait()
    until = time.perf_counter() + seconds
    workers = [threading.Thread(target=one, args=(n, until)) for n in range(threads)]
    for w in workers:
        w.start()
    ready.set()
    for w in workers:
        w.join()
    out.put(done)


# -- the run --------------------------------------------------------------------------------------


def _summary(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": len(ms), "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "p99_ms": round(float(p99), 2), "max_ms": round(float(ms.max()), 2)}


def _children_cpu() -> float:
    # The client processes once joined (the daemon, still running, is not among the children counted).
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _rss(daemon: Daemon, at: float) -> tuple[float, float, float, float]:
    # SQLite's memory-mapped pages count in VmRSS as file-backed (RssFile): the OS's page cache, not the heap.
    mem = memory(daemon.pid)
    return round(at, 1), mem["VmRSS"], mem["RssAnon"], mem["RssFile"]


def _flat(samples: list[tuple[float, float, float, float]], seconds: float, column: int) -> dict:
    tail = [s[column] for s in samples if s[0] >= seconds / 2]
    if len(tail) < 2:
        return {"flat": None, "spread": None}
    mean = sum(tail) / len(tail)
    spread = max(abs(r - mean) for r in tail) / mean
    return {"flat": spread <= FLAT_WITHIN, "spread": round(spread, 4)}


def run(args, daemon: Daemon, ids: list[str], queries: list[str]) -> dict:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    shares = [args.clients // args.processes + (i < args.clients % args.processes) for i in range(args.processes)]
    procs = [ctx.Process(target=_client_process, args=(daemon.target, str(daemon.admin_key), n, i, args.seconds,
                                                       args.mix, ids, queries, args.seed, go, out))
             for i, n in enumerate(shares) if n]
    for proc in procs:
        proc.start()
    cpu, clients_cpu = daemon.cpu_seconds(), _children_cpu()
    go.set()
    started = time.perf_counter()
    samples = [_rss(daemon, 0.0)]
    while time.perf_counter() - started < args.seconds:
        time.sleep(min(args.rss_interval, max(0.0, args.seconds - (time.perf_counter() - started))))
        samples.append(_rss(daemon, time.perf_counter() - started))
    calls = [c for _ in procs for c in out.get(timeout=args.seconds + 300)]
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join()
    cpu, clients_cpu = daemon.cpu_seconds() - cpu, _children_cpu() - clients_cpu
    by_kind = {kind: _summary([s for k, s, e in calls if k == kind and not e]) for kind in KINDS if kind in args.mix}
    errors: dict[str, int] = {}
    for kind, _, error in calls:
        if error:
            errors[f"{kind}:{error}"] = errors.get(f"{kind}:{error}", 0) + 1
    worst = max((f["p99_ms"] for f in by_kind.values() if f["n"]), default=0.0)
    return {
        "calls": len(calls), "calls_per_s": round(len(calls) / wall), "latency": by_kind,
        "all": _summary([s for _, s, e in calls if not e]), "worst_kind_p99_ms": worst, "errors": errors,
        # Both share the machine's cores: the clients' CPU is what the daemon could not have.
        "daemon_cpu_seconds": round(cpu, 1), "client_processes_cpu_seconds": round(clients_cpu, 1),
        "rss_mib_at_rss_anon_file": samples,
        "rss_last_half": _flat(samples, args.seconds, 1), "rss_anon_last_half": _flat(samples, args.seconds, 2),
        "peak_rss_mib": memory(daemon.pid)["VmHWM"],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    corpus = Corpus(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="memosd-mixed-"))
    data_dir = args.data_dir or tmp / "data"
    try:
        with Daemon(data_dir, tmp / "memosd.sock", prefix=args.daemon_prefix) as daemon:
            with daemon.client() as client:
                ids = ingest(client, daemon, list(corpus.cubes(args.cubes)), 500)[1]
            rss_seeded = memory(daemon.pid)["VmRSS"]
            figures = run(args, daemon, ids, corpus.queries(500))
            # The bound on RssFile: SQLite maps the database file (MMAP_BYTES), its pages count as resident.
            figures["database_mib"] = round(sum(p.stat().st_size for p in data_dir.glob("memos.db*")) / 2**20, 1)
        result = {
            "bench": "mixed_load", "cubes": len(ids), "clients": args.clients, "client_processes": args.processes,
            "seconds": args.seconds, "mix": args.mix, "rss_mib_after_seeding": rss_seeded, **figures,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "note": "a shared machine: other engineers' builds and tests run beside the bench"},
        }
        emit(result, args.output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
