"""Dense index benchmark: exact DenseIndex vs the HNSW AnnIndex (and faiss/usearch used directly); prints JSON.

    python bench/dense_index.py                    # 100k stand-in 384-dim unit vectors
    python bench/dense_index.py --cubes 1000000    # a million

Stand-in vectors are clustered (2,000 centres, noise like a sentence encoder's spread) rather than uniform on the
sphere: uniform 384-dim vectors have no near neighbours at all, unlike text embeddings. Queries are drawn the same
way and are not in the data. Each figure is the median over --repeats rounds with the range; the methods take
turns within a round, in a rotating order. Results also go to bench/results/dense_index.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

import faiss  # noqa: E402

from bench.shared import emit  # noqa: E402
from memosd.cube import CubeFilter  # noqa: E402
from memosd.vault import ann, ann_file  # noqa: E402
from memosd.vault.ann import AnnIndex  # noqa: E402
from memosd.vault.dense import DenseIndex, top  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dense_index.json"
K = 10


def stand_ins(rng, n: int, centres: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, centres.shape[1]), dtype=np.float32) * 0.06
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def namespaces_for(n: int) -> np.ndarray:
    # 100 namespaces of 1% each; "ns/00".."ns/09" together are the 10% filter, "ns/42" alone the 1% one.
    return np.arange(n) % 100


def stats(times: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3), "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 3)}


def timed(fn, queries) -> tuple[dict, list]:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(fn(q))
        times.append(time.perf_counter() - t)
    return stats(times), found


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth)])), 4)


def summary(rounds: list[dict]) -> dict:
    out = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        out[key] = {"median": round(float(np.median(values)), 3), "min": round(min(values), 3), "max": round(max(values), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--threads", type=int, default=0, help="faiss build threads (0: all cores)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    n, dim = args.cubes, args.dim
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = stand_ins(rng, n, centres)
    queries = stand_ins(rng, args.queries, centres)
    ns = namespaces_for(n)
    seqs = np.arange(1, n + 1, dtype=np.int64)
    names = [f"ns/{i:02d}" for i in range(100)]
    result: dict = {"cubes": n, "dim": dim, "queries": args.queries, "k": K, "repeats": args.repeats,
                    "params": {"M": ann.HNSW_M, "ef_construction": ann.EF_CONSTRUCTION, "ef_search": ann.EF_SEARCH,
                               "exact_max": ann.EXACT_MAX},
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__,
                                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                                "note": "shared with other engineers' builds and tests while measured: absolute "
                                        "figures are noisy; compare methods within one run"}}

    # -- build -------------------------------------------------------------------------------------
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    result["machine"]["build_threads"] = faiss.omp_get_max_threads()
    exact = DenseIndex(dim, capacity=n)
    t = time.perf_counter()
    exact.add(seqs, data)
    exact_build = time.perf_counter() - t
    index = AnnIndex(dim)
    t = time.perf_counter()
    for i in range(0, n, 20_000):
        index.add(seqs[i:i + 20_000], data[i:i + 20_000], [names[j] for j in ns[i:i + 20_000]], np.zeros(min(20_000, n - i)))
    ann_build = time.perf_counter() - t
    extra = stand_ins(rng, 128 * 20, centres)
    t = time.perf_counter()
    for b in range(20):  # the backfill's batches of 128, into the built graph (kept: queries see them too)
        part = slice(b * 128, (b + 1) * 128)
        index.add(np.arange(n + 1 + b * 128, n + 1 + (b + 1) * 128), extra[part], ["ns/99"] * 128, np.zeros(128))
    incremental = time.perf_counter() - t
    exact.add(np.arange(n + 1, n + 1 + len(extra)), extra)
    all_ns = np.concatenate([ns, np.full(len(extra), 99)])
    all_data = np.concatenate([data, extra])
    result["build"] = {"exact_vectors_per_s": round(n / exact_build), "hnsw_vectors_per_s": round(n / ann_build),
                       "hnsw_build_s": round(ann_build, 1), "hnsw_incremental_add_per_s": round(len(extra) / incremental)}
    faiss.omp_set_num_threads(1)  # queries: one thread each, as the daemon runs them

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ann_file.save(index, Path(tmp), "bench", 1)
        saved = time.perf_counter() - t
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        t = time.perf_counter()
        loaded, _ = ann_file.load(Path(tmp), "bench", dim)
        result["persistence"] = {"save_s": round(saved, 2), "load_s": round(time.perf_counter() - t, 2),
                                 "file_mb": round(size / 2**20, 1), "loaded_vectors": len(loaded)}
        del loaded

    # -- peers used directly ---------------------------------------------------------------------
    flat = faiss.IndexFlatIP(dim)
    flat.add(all_data)
    hnsw = index.graph  # the same graph, searched straight through faiss (no Python around it)
    try:
        from usearch.index import Index as USearch

        us = USearch(ndim=dim, metric="ip", dtype="f32", connectivity=ann.HNSW_M // 2 * 2, expansion_add=ann.EF_CONSTRUCTION,
                     expansion_search=ann.EF_SEARCH)
        t = time.perf_counter()
        us.add(np.arange(len(all_data)), all_data, threads=max(1, result["machine"]["build_threads"]))
        result["build"]["usearch_vectors_per_s"] = round(len(all_data) / (time.perf_counter() - t))
    except ImportError:
        us = None
        result["build"]["usearch_vectors_per_s"] = "usearch not installed"

    from memosd.governance.core import ScopeRule

    filters = {"unfiltered": CubeFilter(), "ns_10pct": CubeFilter(scope=tuple(ScopeRule(f"ns/{i:02d}", True) for i in range(10))),
               "ns_1pct": CubeFilter(namespace_prefix="ns/42")}
    masks = {"unfiltered": np.ones(len(all_data), dtype=bool), "ns_10pct": all_ns < 10, "ns_1pct": all_ns == 42}

    truth = {}
    for name, mask in masks.items():
        rows = np.flatnonzero(mask)
        truth[name] = [[int(s) for s, _ in top(rows + 1, all_data[rows] @ q, K)] for q in queries]

    def methods(name):
        f = filters[name]
        mask = masks[name]
        rows = np.flatnonzero(mask)
        bits = np.packbits(mask, bitorder="little")
        keep = [bits]  # what faiss reads through raw pointers must outlive the searches
        out = {
            "exact_dense_index": lambda q: [s for s, _ in (top(*_masked(exact.scores(q), mask), K))],
            "hnsw_ann_index": lambda q: [s for s, _ in index.nearest(q, f, K)[0]],
        }
        if name == "unfiltered":
            out["faiss_flat_ip"] = lambda q: (flat.search(q[None], K)[1][0] + 1).tolist()
            out["faiss_hnsw_direct"] = lambda q: (hnsw.search(q[None], K, params=_params(None))[1][0] + 1).tolist()
            if us is not None:
                out["usearch_hnsw_direct"] = lambda q: (us.search(q, K).keys + 1).tolist()
        else:
            sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
            keep.append(sel)
            out["faiss_flat_ip"] = lambda q: (flat.search(q[None], K, params=faiss.SearchParameters(sel=sel))[1][0] + 1).tolist()
            out["faiss_hnsw_direct"] = lambda q: (hnsw.search(q[None], K, params=_params(sel))[1][0] + 1).tolist()
            out["numpy_exact_prefiltered"] = lambda q: [int(s) for s, _ in top(rows + 1, all_data[rows] @ q, K)]
        return out, keep

    result["search"] = {}
    for name in masks:
        found, keep = methods(name)
        rounds: dict[str, list] = {m: [] for m in found}
        recalls = {}
        order = list(found)
        for r in range(args.repeats):
            for m in order[r % len(order):] + order[:r % len(order)]:
                figures, hits = timed(found[m], queries)
                rounds[m].append(figures)
                recalls[m] = recall(hits, truth[name])
        result["search"][name] = {m: {**summary(rounds[m]), "recall_at_10": recalls[m]} for m in found}
        base = result["search"][name]["exact_dense_index"]["p95_ms"]["median"]
        for m in found:
            p95 = result["search"][name][m]["p95_ms"]["median"]
            result["search"][name][m]["p95_vs_exact"] = round(p95 / base, 3) if base else None
        del keep
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.output)


def _masked(found, mask):
    seqs, scores = found
    keep = mask[seqs - 1]
    return seqs[keep], scores[keep]


def _params(sel):
    params = faiss.SearchParametersHNSW()
    params.efSearch = ann.EF_SEARCH
    if sel is not None:
        params.sel = sel
    return params


if __name__ == "__main__":
    main()
