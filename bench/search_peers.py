"""The BM25 engine a user would otherwise embed, on the same corpus and queries as bench/ingest_search.py: tantivy
(PyPI `tantivy`, Lucene's design in Rust: an inverted index with block-max WAND), in this process.

Its text field uses tantivy's `en_stem` tokenizer (lower-cased, English stemming, as memosd's porter); namespace
and tags are raw terms. The three searches are ingest_search's: BM25 top 10 of every query's words (OR, as memosd's
plain queries), the same within a namespace prefix (a regex term query on the raw namespace, ANDed), and within
one tag. Times are of searcher.search() alone, in process (no RPC): memosd's figures in the same run are from its
client, so the ratio holds the transport too; ingest_search prints memosd's own in-process figure beside it.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import tempfile
import time
from pathlib import Path

from bench.corpus import NAMESPACES, TAGS

K = 10


def tantivy_figures(records: list[dict], queries: list[str], summary) -> dict:
    """Index the records, then time the queries plain, by namespace prefix and by tag (ingest_search's cycles)."""
    import tantivy

    schema = tantivy.SchemaBuilder()
    schema.add_text_field("text", stored=False, tokenizer_name="en_stem")
    schema.add_text_field("namespace", stored=False, tokenizer_name="raw")
    schema.add_text_field("tags", stored=False, tokenizer_name="raw")
    schema.add_integer_field("seq", stored=True, indexed=False)
    built = schema.build()
    folder = Path(tempfile.mkdtemp(prefix="memosd-bench-tantivy-"))
    try:
        index = tantivy.Index(built, path=str(folder))
        started = time.perf_counter()
        writer = index.writer(heap_size=256 * 1024 * 1024, num_threads=1)
        for seq, r in enumerate(records, 1):
            writer.add_document(tantivy.Document(text=r["text"], namespace=r["namespace"], tags=r["tags"], seq=seq))
        writer.commit()
        writer.wait_merging_threads()
        index.reload()
        out: dict = {"engine": str(getattr(tantivy, "__version__", "tantivy")), "cubes": len(records),
                     "index_seconds": round(time.perf_counter() - started, 2),
                     "index_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
                     "timing": "searcher.search() in this process, one at a time, after 20 untimed"}
        searcher = index.searcher()

        def words(q: str):
            terms = re.findall(r"\w+", q)
            return index.parse_query(" ".join(terms), ["text"]) if terms else tantivy.Query.empty_query()

        def run(make) -> dict:
            built_queries = [make(i, q) for i, q in enumerate(queries)]
            for q in built_queries[:20]:
                searcher.search(q, K)
            seconds, hits = [], 0
            for q in built_queries:
                t = time.perf_counter()
                found = searcher.search(q, K).hits
                seconds.append(time.perf_counter() - t)
                hits += len(found)
            return dict(summary(seconds), mean_hits=round(hits / len(queries), 2))

        prefixes = [ns.rsplit("/", 1)[0] for ns in NAMESPACES[:10]]
        under = itertools.cycle(prefixes)
        tags = itertools.cycle(TAGS[:10])
        out["bm25"] = run(lambda i, q: words(q))
        out["bm25_namespace_prefix"] = run(lambda i, q: tantivy.Query.boolean_query([
            (tantivy.Occur.Must, words(q)),
            (tantivy.Occur.Must, tantivy.Query.regex_query(built, "namespace", re.escape(next(under)) + "(/.*)?"))]))
        out["bm25_tag"] = run(lambda i, q: tantivy.Query.boolean_query([
            (tantivy.Occur.Must, words(q)), (tantivy.Occur.Must, tantivy.Query.term_query(built, "tags", next(tags)))]))
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Queries (the first ones) whose top 10 is also ranked exactly, every match scored, for the agreement figure.
EXACT_QUERIES = 100


def memosd_in_process(data_dir: Path, queries: list[str], summary, vault_url: str = "sqlite:") -> dict:
    """memosd's own BM25 over the daemon's data directory (the daemon stopped), in this process: MemVault.search as
    the Search RPC calls it, as the admin, without gRPC; the same three searches. On a vault past FullText's
    LARGE_VAULT the rarest query words decide the matches (a cut-off, not exact ranking): `top10_agreement` is the
    share of the exact top 10 (every match scored, FullText without the cut-off) that the search returned, over the
    first EXACT_QUERIES queries, by number of query words too. vault_url: the daemon's (its engine's own
    cut-off, for PostgreSQL its walk, is what is measured)."""
    import asyncio

    from memosd.cube import CubeFilter
    from memosd.storage import open_database
    from memosd.vault.fulltext import FullText, words
    from memosd.vault.vault import MemVault

    prefixes = [ns.rsplit("/", 1)[0] for ns in NAMESPACES[:10]]

    async def top(vault, pairs) -> list[set[str]]:
        return [{h.cube.id for h in (await vault.search(q, f, K))[0]} for q, f in pairs]

    async def timed(filters) -> dict:
        vault = MemVault(data_dir, db=open_database(data_dir, url=vault_url))
        try:
            for q, f in list(zip(queries, filters))[:20]:
                await vault.search(q, f, K)
            seconds, hits, returned = [], 0, []
            for q, f in zip(queries, filters):
                t = time.perf_counter()
                found, _ = await vault.search(q, f, K)
                seconds.append(time.perf_counter() - t)
                hits += len(found)
                returned.append({h.cube.id for h in found})
            sample = list(zip(queries, filters))[:EXACT_QUERIES]
            vault.fulltext = FullText(large_vault=2**62)  # every match scored
            with _exact_engine(vault_url):
                exact = await top(vault, sample)
            return dict(summary(seconds), mean_hits=round(hits / len(queries), 2),
                        top10_agreement=_agreement(returned, exact, [len(words(q)) for q, _ in sample]))
        finally:
            await vault.close()

    n = len(queries)
    return {"timing": "MemVault.search in this process (the daemon's core without gRPC), one at a time, after 20"
                      " untimed",
            "bm25": asyncio.run(timed([CubeFilter()] * n)),
            "bm25_namespace_prefix": asyncio.run(timed([CubeFilter(namespace_prefix=p) for p, _ in
                                                        zip(itertools.cycle(prefixes), range(n))])),
            "bm25_tag": asyncio.run(timed([CubeFilter(tags=(t,)) for t, _ in zip(itertools.cycle(TAGS[:10]), range(n))]))}


@contextlib.contextmanager
def _exact_engine(vault_url: str):
    """PostgreSQL's own bounds off while the exact top 10 is ranked: its length-ordered walk over a common word's
    matches (WALK_FROM) and its sampled document counts on large vaults (LARGE_VAULT). SQLite has none."""
    if not vault_url.startswith("postgresql"):
        yield
        return
    from memosd.storage.postgres import fulltext as pg

    kept = pg.WALK_FROM, pg.LARGE_VAULT
    pg.WALK_FROM = pg.LARGE_VAULT = 2**62
    try:
        yield
    finally:
        pg.WALK_FROM, pg.LARGE_VAULT = kept


def _agreement(returned: list[set[str]], exact: list[set[str]], sizes: list[int]) -> dict:
    """The share of each exact top 10 returned, averaged: over all the queries, and by number of query words."""
    shares = [len(r & e) / len(e) if e else 1.0 for r, e in zip(returned, exact)]
    by: dict[str, list[float]] = {}
    for n, share in zip(sizes, shares):
        by.setdefault(f"{n}_words", []).append(share)
    return {"all": round(sum(shares) / max(len(shares), 1), 3),
            **{k: round(sum(v) / len(v), 3) for k, v in sorted(by.items())}}


def faiss_figures(vectors, queries: list[str], model: str, summary) -> dict:
    """faiss on the stand-in vectors (unit rows, inner product): exact (IndexFlatIP) and HNSW with memosd's own
    M, efConstruction and efSearch, one thread, queries embedded by the same model first (untimed); the HNSW's
    recall@10 against the exact top 10 of the same queries."""
    import faiss

    from memosd.runtime.embedder import Embedder
    from memosd.vault.ann import EF_CONSTRUCTION, EF_SEARCH, HNSW_M

    asked = Embedder(model).encode(queries).astype("float32")
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = EF_CONSTRUCTION
    hnsw.add(vectors)
    built = time.perf_counter() - started
    hnsw.hnsw.efSearch = EF_SEARCH
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        out: dict = {"engine": f"faiss {faiss.__version__}", "vectors": len(vectors), "hnsw_build_seconds":
                     round(built, 1), "timing": "index.search() of one embedded query, in this process, one thread"}
        found = {}
        for name, index in (("exact", flat), ("hnsw", hnsw)):
            for q in asked[:20]:
                index.search(q[None], K)
            seconds, found[name] = [], []
            for q in asked:
                t = time.perf_counter()
                found[name].append(set(index.search(q[None], K)[1][0].tolist()))
                seconds.append(time.perf_counter() - t)
            out[name] = summary(seconds)
        out["hnsw_recall_at_10"] = round(sum(len(a & b) for a, b in zip(found["exact"], found["hnsw"], strict=True))
                                         / (K * len(asked)), 3)
        out["recall_note"] = ("uniform random unit vectors have no neighbourhoods: HNSW's worst case, so this recall"
                              " says little of real embeddings; bench/dense_index.py measures recall on clustered"
                              " stand-ins")
        return out
    finally:
        faiss.omp_set_num_threads(threads)
