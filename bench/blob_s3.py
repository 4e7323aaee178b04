"""A KV cache through the daemon onto S3 (moto's server standing in) next to the `file:` store and the disk's own
bound, in one run; prints JSON.

    python bench/blob_s3.py [--size-mib 1024] [--repeats 3] [--data-parent DIR]

Two daemons run side by side on the same disk, one with `blob_url = file:`, one with `s3://BUCKET/PREFIX` on a
moto server in a child process (in memory, on loopback: a stand-in for S3, MinIO or Ceph, not a model of their
speed). Each repeat, alternating the stores so that both see the same machine, uploads a fresh payload (random
bytes in a valid safetensors KV layout: nothing deduplicated), stores its activation cube, then downloads it over
the gRPC stream (sha256-verified as it arrives) and through OpenLocal (on S3 a cold read-through cache fetch,
verified; on `file:` the blob's own descriptor, no bytes moved). The disk bound is a dd-like sequential write of
the same size with fsync, then a read of it after dropping its pages (posix_fadvise DONTNEED), in the same
directory. Figures: medians and [min, max] over the repeats, in GB/s (1e9 bytes per second).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from bench.ingest_search import Daemon  # noqa: E402
from tests.kv_helpers import kv_payload, manifest_for  # noqa: E402
from tests.s3_server import AWS_ENV, _announced  # noqa: E402
from bench.shared import emit  # noqa: E402

LAYERS, HEADS, HEAD_DIM = 24, 8, 128  # float32: 192 KiB of cache per token
NS = "agents/admin/kv"


def disk_bound(directory: Path, size: int) -> dict:
    """Sequential write + fsync and a cold sequential read of `size` bytes, in 16 MiB blocks, seconds each."""
    block = os.urandom(16 << 20)
    path = directory / "disk-bound.bin"
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(size // len(block)):
            f.write(block)
        os.fsync(f.fileno())
    write_s = time.perf_counter() - start
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped, so the read is cold
        start = time.perf_counter()
        while f.read(16 << 20):
            pass
        read_s = time.perf_counter() - start
    path.unlink()
    return {"write_fsync": write_s, "read_cold": read_s}


def moto_server(log: Path):
    """moto's server on a free loopback port; its request log (and any traceback) goes to `log`."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    endpoint = _announced(proc, log)
    with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=10) as health:
        assert health.status == 200
    return proc, endpoint


def one_repeat(client, size: int, store: str, raw, bucket: str) -> dict:
    tokens = max(1, size // (LAYERS * 2 * HEADS * HEAD_DIM * 4))
    payload, specs = kv_payload(LAYERS, tokens, HEADS, HEAD_DIM, seed=None)
    manifest = manifest_for(payload, specs, range(tokens))
    start = time.perf_counter()
    ref = client.upload_blob(payload, NS)
    upload = time.perf_counter() - start
    assert not ref.deduplicated and ref.sha256 == manifest.blob_sha256
    cube = client.put_activation(manifest, NS)
    start = time.perf_counter()
    got = client.download_blob(cube.id, size=len(payload))
    stream = time.perf_counter() - start
    assert len(got) == len(payload)
    del got
    start = time.perf_counter()
    view = client.open_local(cube.id)
    local = time.perf_counter() - start
    assert len(view) == len(payload)
    del view
    client.delete(cube.id)
    if raw is not None:  # moto holds objects in memory: free this one before the next repeat
        sha = manifest.blob_sha256
        raw.delete_object(Bucket=bucket, Key=f"memosd/sha256/{sha[:2]}/{sha}")
    return {"bytes": len(payload), "upload": upload, "download_stream": stream, "download_local": local}


def figures(runs: list[dict], key: str) -> dict:
    rates = [r["bytes"] / r[key] / 1e9 for r in runs]
    return {"median_gbps": round(statistics.median(rates), 3), "range_gbps": [round(min(rates), 3), round(max(rates), 3)],
            "seconds": [round(r[key], 2) for r in runs]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024, help="KV cache size in MiB (default 1024)")
    p.add_argument("--repeats", type=int, default=3, help="runs per store, alternated (default 3)")
    p.add_argument("--data-parent", default=None, help="directory for the daemons' data (default: the temp dir)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "blob_s3.json")
    p.add_argument("--moto-log", type=Path, default=Path(tempfile.gettempdir()) / "memosd-bench-moto.log")
    args = p.parse_args(argv)
    import boto3

    from memos_client import MemosClient

    os.environ.update(AWS_ENV)  # the stand-in's credentials, for moto, boto3 here and the S3 daemon
    size = args.size_mib << 20
    result: dict = {"bench": "blob_s3", "size_mib": args.size_mib, "repeats": args.repeats, "cpus": os.cpu_count(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                    "s3": "moto server (in memory, loopback): a stand-in, not S3's speed"}
    tmp = Path(tempfile.mkdtemp(prefix="memosd-bench-blob-s3-", dir=args.data_parent))
    moto, endpoint = moto_server(args.moto_log)
    sock_dir = Path(tempfile.mkdtemp(prefix="memosd-bench-", dir="/tmp"))
    daemons = []
    try:
        raw = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        bucket = "memosd-bench"
        raw.create_bucket(Bucket=bucket)
        daemons.append(Daemon(tmp / "file", sock_dir / "file.sock"))
        daemons.append(Daemon(tmp / "s3", sock_dir / "s3.sock",
                              extra=("--blob-url", f"s3://{bucket}/memosd", "--s3-endpoint-url", endpoint)))
        runs: dict[str, list] = {"file": [], "s3": [], "disk": []}
        clients = {name: MemosClient(d.target, key=str(d.admin_key), timeout=3600) for name, d in
                   zip(("file", "s3"), daemons)}
        for _ in range(args.repeats):
            for name in ("file", "s3"):
                runs[name].append(one_repeat(clients[name], size, name, raw if name == "s3" else None, bucket))
            bound = disk_bound(tmp, size)
            runs["disk"].append({"bytes": size, **bound})
        for c in clients.values():
            c.close()
        for name in ("file", "s3"):
            result[name] = {k: figures(runs[name], k) for k in ("upload", "download_stream", "download_local")}
        result["file"]["download_local"]["note"] = "the blob's own descriptor: no bytes move (mapped on use)"
        result["s3"]["download_local"]["note"] = "cold: a verified fetch into the read cache, then the descriptor"
        result["disk_bound"] = {k: figures(runs["disk"], k) for k in ("write_fsync", "read_cold")}
        result["bytes"] = runs["file"][0]["bytes"]
    finally:
        for d in daemons:
            d.stop()
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
