"""Export and import throughput (100k plaintext cubes, 1 GiB of KV-cache tensors) between two daemons,
and the longest write stall an online backup causes. Prints one JSON object.

    python bench/export_import.py [--cubes 100000] [--tensor-mib 1024] [--kv-mib 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memos_client import MemosClient  # noqa: E402
from tests.bundle_helpers import write_bundle  # noqa: E402
from tests.daemon import wait_serving  # noqa: E402


def serve(data_dir: Path, sock: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(data_dir), "--listen",
                             f"unix:{sock}", "--log-level", "warning"], stderr=open(log, "wb"))
    wait_serving(f"unix:{sock}", timeout=120)
    return proc


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cubes", type=int, default=100_000)
    parser.add_argument("--tensor-mib", type=int, default=1024)
    parser.add_argument("--kv-mib", type=int, default=16, help="size of each KV-cache payload")
    args = parser.parse_args()
    layers, heads, head_dim = 16, 8, 128
    tokens = args.kv_mib * (1 << 20) // (2 * layers * heads * head_dim * 2)
    kv_count = max(1, args.tensor_mib // args.kv_mib)
    out: dict = {"cubes": args.cubes, "kv_payloads": kv_count, "kv_payload_mib": args.kv_mib}
    tmp = Path(tempfile.mkdtemp(prefix="memosd-bench-io-"))
    sock_dir = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    procs = []
    try:
        (_, gen_s) = timed(lambda: (write_bundle(tmp / "plain", cubes=args.cubes, namespace="agents/admin/plain"),
                                    write_bundle(tmp / "kv", kv=kv_count, namespace="agents/admin/kv",
                                                 kv_shape=(layers, heads, tokens, head_dim))))
        out["generate_seconds"] = round(gen_s, 2)
        tensor_bytes = du(tmp / "kv" / "tensors")
        plain_bytes = du(tmp / "plain")
        procs.append(serve(tmp / "a", sock_dir / "a.sock", sock_dir / "a.log"))
        procs.append(serve(tmp / "b", sock_dir / "b.sock", sock_dir / "b.log"))
        a = MemosClient(f"unix:{sock_dir / 'a.sock'}", key=tmp / "a" / "admin.key", timeout=600)
        b = MemosClient(f"unix:{sock_dir / 'b.sock'}", key=tmp / "b" / "admin.key", timeout=600)

        r, s = timed(lambda: a.import_bundle(tmp / "plain"))
        assert r.cubes == args.cubes, r
        out["import_plaintext"] = {"seconds": round(s, 2), "cubes_per_s": round(args.cubes / s),
                                   "mib_per_s": round(plain_bytes / s / 2**20, 1)}
        r, s = timed(lambda: a.import_bundle(tmp / "kv"))
        assert r.tensors == kv_count, r
        out["import_tensors"] = {"seconds": round(s, 2), "mib": round(tensor_bytes / 2**20),
                                 "mib_per_s": round(tensor_bytes / s / 2**20, 1)}

        m, s = timed(lambda: a.export(tmp / "plain-out", "agents/admin/plain"))
        assert m["counts"]["cubes"] == args.cubes
        out["export_plaintext"] = {"seconds": round(s, 2), "cubes_per_s": round(args.cubes / s)}
        m, s = timed(lambda: a.export(tmp / "kv-out.tar", "agents/admin/kv", kinds=["activation"]))
        assert m["counts"]["activation"] == kv_count
        out["export_tensors"] = {"seconds": round(s, 2), "mib_per_s": round(tensor_bytes / s / 2**20, 1)}

        r, s = timed(lambda: b.import_bundle(tmp / "plain-out", "teams/copy"))
        assert r.cubes == args.cubes
        out["round_trip_import_plaintext"] = {"seconds": round(s, 2), "cubes_per_s": round(args.cubes / s)}
        r, s = timed(lambda: b.import_bundle(tmp / "kv-out.tar", "teams/kv"))
        assert r.tensors == kv_count
        out["round_trip_import_tensors"] = {"seconds": round(s, 2), "mib_per_s": round(tensor_bytes / s / 2**20, 1)}
        shutil.rmtree(tmp / "plain-out")
        (tmp / "kv-out.tar").unlink()

        out["backup_under_writes"] = backup_under_writes(a, f"unix:{sock_dir / 'a.sock'}", tmp)
        a.close()
        b.close()
    except BaseException:
        for log in sorted(sock_dir.glob("*.log")):  # the daemons' side of a failure
            print(f"--- {log.name}", log.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)
    print(json.dumps(out))


def _writer(addr: str, key: str, stop, out) -> None:
    """In its own process, so that what it measures is the daemon, not this script's GIL."""
    samples = []
    with MemosClient(addr, key=key) as w:
        i = 0
        while not stop.is_set():
            started = time.time()
            w.put(f"written during the backup {i}", "agents/admin/live")
            samples.append((started, time.time() - started))
            i += 1
    out.send(samples)


def backup_under_writes(client: MemosClient, addr: str, tmp: Path) -> dict:
    """Writes go on, one at a time, while the backup runs: the longest any of them waited is the stall."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    writer = ctx.Process(target=_writer, args=(addr, str(tmp / "a" / "admin.key"), stop, send))
    writer.start()
    time.sleep(3)  # a baseline before the backup starts
    began = time.time()
    manifest = client.backup(tmp / "backup")
    ended = time.time()
    time.sleep(0.5)
    stop.set()
    samples = receive.recv()
    writer.join()
    during = [(at - began, lat) for at, lat in samples if began <= at + lat and at <= ended]
    before = [lat for at, lat in samples if at + lat < began]
    worst = max(during, key=lambda x: x[1], default=(0.0, 0.0))
    size = sum(f["size"] for f in manifest["files"])
    return {"seconds": round(ended - began, 2), "bytes": size, "mib_per_s": round(size / (ended - began) / 2**20, 1),
            "writes_during": len(during), "write_max_ms_during": round(worst[1] * 1e3, 1),
            "write_max_at_s": round(worst[0], 2),
            "write_p50_ms_during": round(statistics.median(lat for _, lat in during) * 1e3, 2) if during else None,
            "write_p99_ms_during": round(sorted(lat for _, lat in during)[int(len(during) * 0.99)] * 1e3, 1)
            if during else None,
            "write_max_ms_before": round(max(before, default=0) * 1e3, 1)}


if __name__ == "__main__":
    os.umask(0o077)
    main()
