"""bench/pubsub.py --cluster: two memosd members on one PostgreSQL vault (the tests' embedded server) and one
NATS bus (core, notices only), each daemon its own process, data directory and Unix socket."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon import wait_serving  # noqa: E402
from tests.nats_server import NatsServer  # noqa: E402
from tests.pg_server import PostgresServer, admin_connect, database_url  # noqa: E402


class Cluster:
    """PostgreSQL, NATS and members A and B: members[i] = (listen, admin key, pid)."""

    def __init__(self, tmp: str, count: int = 2):
        self.pg = PostgresServer()
        self.pg.start()
        with admin_connect(self.pg.url) as conn:
            conn.execute("CREATE DATABASE bench")
        url = database_url(self.pg.url, "bench")
        self.nats = NatsServer()
        self.nats.start()
        self.procs: list[subprocess.Popen] = []
        self.members: list[tuple[str, str, int]] = []
        first = Path(tmp) / "member0"
        subprocess.run([sys.executable, "-m", "memosd.cli", "init", "--data-dir", str(first), "--vault-url", url],
                       check=True, capture_output=True)
        for i in range(count):
            data = Path(tmp) / f"member{i}"
            if i:
                data.mkdir(mode=0o700)
                shutil.copy2(first / "admin.key", data / "admin.key")  # one admin key for the cluster
            listen = f"unix:{tmp}/member{i}.sock"
            proc = subprocess.Popen([sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(data),
                                     "--listen", listen, "--vault-url", url, "--bus-url", self.nats.url,
                                     "--log-level", "warning"])
            self.procs.append(proc)
            wait_serving(listen)
            self.members.append((listen, str(data / "admin.key"), proc.pid))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(30)
        self.nats.kill()
        self.pg.stop()
        self.pg.remove()
