"""Upload and download throughput of a KV cache through the daemon over its Unix socket, against this
machine's single-thread memory copy bandwidth measured in the same run (and, for context, what gRPC
itself streams over the same socket with no work on either side).

    python bench/blob_throughput.py [--size-mib 1024] [--repeats 2] [--no-raw-grpc] [--data-parent DIR]

Upload: a DynamicCache-shaped payload (safetensors header + tensors, not joined) hashed on the client,
sent in 1 MiB chunks, hashed and written by the daemon, fsynced and renamed; ends when acknowledged.
`bounds` measures what every upload must do once per byte whatever the transport (sha256, and write +
fsync on the data's disk); `upload_bound_ratio` is the best an upload could reach here.
Download, the way pull_kv does it (Get, payload, per-layer key/value tensors with decode_kv), alternated:
  local   the daemon hands over the blob's descriptor (OpenLocal); the client maps it copy-on-write and
          checks its XXH3-128: the default for a client on the daemon's host;
  stream  over gRPC in 1 MiB messages into one fresh torch buffer, sha256-verified as it arrives.
Prints one JSON object; download_ratio is the local path's, download_stream_ratio the stream's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import serve  # noqa: E402  (bench/shared.py)

LAYERS, HEADS, HEAD_DIM = 24, 8, 128  # float32: 192 KiB of cache per token


def memcpy_gbps(mib: int = 256, repeats: int = 5) -> float:
    """Single-thread copy bandwidth between two already-faulted buffers (bytes copied per second)."""
    import numpy as np

    src = np.ones(mib << 20, dtype=np.uint8)
    dst = np.zeros_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return src.nbytes / best / 1e9


def upload_bounds(directory: Path, size: int) -> dict:
    """What any upload of `size` bytes must do at least once per byte, measured here: sha256 it (the blob's
    address) and write it durably (write + fsync) on the disk holding the daemon's data."""
    data = os.urandom(size)
    start = time.perf_counter()
    hashlib.sha256(data).digest()
    sha_s = time.perf_counter() - start
    path = directory / "bound.bin"
    start = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    disk_s = time.perf_counter() - start
    path.unlink()
    return {"sha256_gbps": round(len(data) / sha_s / 1e9, 3), "disk_write_fsync_gbps": round(len(data) / disk_s / 1e9, 3)}


def _raw_server(listen: str, size: int, ready, stop) -> None:
    import grpc

    async def main():
        chunk = os.urandom(1 << 20)

        async def download(request, context):
            for _ in range(size >> 20):
                yield chunk

        async def upload(requests, context):
            total = 0
            async for data in requests:
                total += len(data)
            return str(total).encode()

        handler = grpc.method_handlers_generic_handler("bench.Raw", {
            "Download": grpc.unary_stream_rpc_method_handler(download),
            "Upload": grpc.stream_unary_rpc_method_handler(upload)})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(listen)
        await server.start()
        ready.set()
        while not stop.is_set():  # noqa: ASYNC110 (stop is a threading.Event the bench's thread sets)
            await asyncio.sleep(0.05)
        await server.stop(0)

    asyncio.run(main())


def raw_grpc_gbps(listen: str, size: int) -> dict:
    """What gRPC Python streams in 1 MiB messages over a Unix socket with no work on either side."""
    import grpc

    ready, stop = mp.Event(), mp.Event()
    proc = mp.Process(target=_raw_server, args=(listen, size, ready, stop), daemon=True)
    proc.start()
    try:
        ready.wait(60)
        with grpc.insecure_channel(listen) as channel:
            down = channel.unary_stream("/bench.Raw/Download")
            start = time.perf_counter()
            got = sum(len(m) for m in down(b""))
            down_s = time.perf_counter() - start
            up = channel.stream_unary("/bench.Raw/Upload")
            chunk = os.urandom(1 << 20)
            start = time.perf_counter()
            up(iter([chunk] * (size >> 20)))
            up_s = time.perf_counter() - start
        return {"download_gbps": round(got / down_s / 1e9, 3), "upload_gbps": round(size / up_s / 1e9, 3)}
    finally:
        stop.set()
        proc.join(10)


def make_cache(size: int, seed: int):
    import torch

    tokens = max(1, size // (LAYERS * 2 * HEADS * HEAD_DIM * 4))
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, HEADS, tokens, HEAD_DIM, generator=gen), torch.randn(1, HEADS, tokens, HEAD_DIM, generator=gen))
            for _ in range(LAYERS)], tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="cache size in MiB (default 1024)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each direction; the best is reported")
    parser.add_argument("--data-parent", default=None,
                        help="directory for the daemon's data (default: the system temp dir); its disk bounds uploads")
    parser.add_argument("--no-raw-grpc", action="store_true", help="skip the bare gRPC reference measurement")
    args = parser.parse_args()

    from memos_client import MemosClient
    from memos_client.kv import decode_kv, encode_kv
    from memos_mip.tensor_format import parse_header
    from tests.kv_helpers import manifest_for

    size = args.size_mib << 20
    copy_gbps = memcpy_gbps()
    result = {"size_bytes": 0, "memcpy_gbps": round(copy_gbps, 3), "target_ratio": 0.5, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=args.data_parent) as tmp:
        result["bounds"] = upload_bounds(Path(tmp), size)
        sock_dir = Path(tempfile.mkdtemp(prefix="memosd-bench-", dir="/tmp"))
        if not args.no_raw_grpc:
            result["raw_grpc"] = raw_grpc_gbps(f"unix:{sock_dir}/raw.sock", size)
        listen = f"unix:{sock_dir}/memosd.sock"
        ready, stop = mp.Event(), mp.Event()
        proc = mp.Process(target=serve, args=(tmp, listen, ready, stop, 64 << 30), daemon=True)
        proc.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("the daemon did not start")
            with MemosClient(listen, key=str(Path(tmp) / "admin.key"), timeout=600) as client:
                uploads, hashes, downloads, cube_id = [], [], {"local": [], "stream": []}, None
                for run in range(args.repeats):
                    layers, tokens = make_cache(size, seed=run)  # new bytes each run: nothing deduplicated
                    _, payload = encode_kv(layers)
                    start = time.perf_counter()
                    _ = payload.sha256  # the digest the upload declares up front
                    hashed = time.perf_counter()
                    ref = client.upload_blob(payload, "agents/admin/kv")
                    done = time.perf_counter()
                    assert not ref.deduplicated
                    uploads.append(done - start)
                    hashes.append(hashed - start)
                    result["size_bytes"] = payload.size
                    specs = tuple((k, v) for k, v in encode_kv(layers)[0])
                    cube_id = client.put_activation(manifest_for(b"", specs, range(tokens), blob_sha256=payload.sha256,
                                                                 blob_size=payload.size), "agents/admin/kv").id
                    del layers, payload
                streaming = MemosClient(listen, key=str(Path(tmp) / "admin.key"), timeout=600, local_transfers=False)
                with streaming:
                    for _ in range(args.repeats):  # alternated, so that both see the same machine
                        for name, reader in (("local", client), ("stream", streaming)):
                            start = time.perf_counter()
                            blob = reader.get(cube_id).activation.blob
                            buffer = reader.fetch_payload(cube_id, blob)
                            header = parse_header(memoryview(buffer.numpy()), blob.size)
                            tensors = decode_kv(buffer, header, LAYERS)
                            downloads[name].append(time.perf_counter() - start)
                            assert tensors[0][0].shape[2] == tokens
                            del buffer, tensors
                    assert client.local_transfers  # the local runs did map the daemon's file
        finally:
            stop.set()
            proc.join(30)
            shutil.rmtree(sock_dir, ignore_errors=True)
    n = result["size_bytes"]
    up = n / min(uploads) / 1e9
    transfer_only = n / min(u - h for u, h in zip(uploads, hashes)) / 1e9
    local, stream = (n / min(downloads[k]) / 1e9 for k in ("local", "stream"))
    bound = min(result["bounds"]["sha256_gbps"], result["bounds"]["disk_write_fsync_gbps"])
    result.update({
        "download_gbps": round(local, 3), "download_ratio": round(local / copy_gbps, 3),
        "download_stream_gbps": round(stream, 3), "download_stream_ratio": round(stream / copy_gbps, 3),
        "upload_gbps": round(up, 3), "upload_ratio": round(up / copy_gbps, 3),
        "upload_bound_ratio": round(bound / copy_gbps, 3),
        "upload_transfer_only_gbps": round(transfer_only, 3), "client_sha256_s": round(min(hashes), 3),
        "upload_runs_s": [round(u, 3) for u in uploads],
        "download_runs_s": {k: [round(d, 3) for d in v] for k, v in downloads.items()},
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
