"""An HNSW graph (faiss) of unit-length embeddings by cube seq, searched with the caller's filter inside it."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

from memosd.cube import CubeFilter, MemoryKind

# Graph degree and build/search breadth, chosen on bench/dense_index.py (384-dim stand-ins): efSearch 64 gave
# recall@10 0.95 at 20k, 128 is the margin for 0.98; a query still costs a millisecond or two. The model's own
# vectors of the bench corpus (bench/daemon_memory.py --vectors real) are far harder: its word-salad texts all lie
# about as near a query (the 10th and the 50th nearest differ by 0.03 in cosine), and at 100k, efSearch 128 finds
# 0.63 of the exact top 10, 2048 finds 0.95 (8 ms), and efConstruction 200 lifts 128's to 0.77 for a build 3.5x
# as long. Not retuned on that corpus alone: real conversational text is what the graph serves.
HNSW_M = 32
EF_CONSTRUCTION = 64
EF_SEARCH = 128
# A filter admitting a share s of the rows leaves the walk about s of the candidates it looks at, so the breadth
# is divided by s (faiss's filtered HNSW at a fixed ef kept 0.5 of the top 10 at s = 10%), up to this.
EF_FILTERED_MAX = 2048
# Below this many admitted vectors an exact scan of just those rows is as fast as the graph (a gather and a
# dot product of ~10 MB) and exact; a filter that narrow also leaves HNSW too few admitted neighbours to follow.
EXACT_MAX = 20_000
# Up to this many admitted rows, copying them out and scoring them in numpy beats faiss's scan of every row's bit.
_GATHER_MAX = 2_000
_DEAD = -1


def _faiss():
    import faiss  # lazily: only a daemon with an embedding model needs it

    return faiss


class AnnIndex:
    """Vectors by seq in rows of a faiss IndexHNSWFlat (inner product: vectors are unit length).

    faiss cannot delete from an HNSW graph, so a removed or re-embedded seq leaves a dead row, which the ID
    selector of every search leaves out; `dead` says how many, for the caller to compact by rebuilding. Each row
    also keeps its cube's namespace and creation time, which never change for a seq, so the namespace, scope,
    kinds and time conditions of a filter become a bitmap of rows before the graph is walked."""

    def __init__(self, dim: int):
        self.dim = dim
        self.lock = threading.Lock()
        self._graph: object | None = None  # made on first use: a PostgreSQL vault's daemon never needs faiss
        self.row_seq = np.zeros(0, dtype=np.int64)
        self.row_ns = np.zeros(0, dtype=np.int32)
        self.row_created = np.zeros(0, dtype=np.float64)
        self.rows: dict[int, int] = {}
        self.namespaces: list[str] = []
        self._ns_ids: dict[str, int] = {}
        self._allowed_cache: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def graph(self):
        if self._graph is None:
            faiss = _faiss()
            graph = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = EF_CONSTRUCTION
            self._graph = graph
        return self._graph

    @graph.setter
    def graph(self, graph) -> None:
        self._graph = graph

    def __contains__(self, seq: int) -> bool:
        return int(seq) in self.rows

    @property
    def dead(self) -> int:
        return len(self.row_seq) - len(self.rows)

    # -- changes ---------------------------------------------------------------------------------

    def add(self, seqs: Iterable[int], vectors: np.ndarray, namespaces: list[str], created: Iterable[float]) -> None:
        """Set the vectors of these seqs (replacing any they had) with their cubes' namespaces and creation times."""
        seqs = np.asarray(list(seqs), dtype=np.int64)
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        if not len(seqs):
            return
        with self.lock:
            self._remove_locked(seqs.tolist())
            ns = np.array([self._ns_id(n) for n in namespaces], dtype=np.int32)
            first = len(self.row_seq)
            self.graph.add(vectors)
            self.row_seq = np.concatenate([self.row_seq, seqs])
            self.row_ns = np.concatenate([self.row_ns, ns])
            self.row_created = np.concatenate([self.row_created, np.asarray(list(created), dtype=np.float64)])
            for i, seq in enumerate(seqs.tolist()):
                self.rows[seq] = first + i

    def remove(self, seqs: Iterable[int]) -> None:
        with self.lock:
            self._remove_locked([int(s) for s in seqs])

    def _remove_locked(self, seqs: list[int]) -> None:
        for seq in seqs:
            row = self.rows.pop(seq, None)
            if row is not None:
                self.row_seq[row] = _DEAD

    def _ns_id(self, namespace: str) -> int:
        found = self._ns_ids.get(namespace)
        if found is None:
            found = self._ns_ids[namespace] = len(self.namespaces)
            self.namespaces.append(namespace)
        return found

    # -- search ----------------------------------------------------------------------------------

    def _matrix(self) -> np.ndarray:
        # The graph's own flat storage, viewed without a copy (valid until the next add; callers hold the lock).
        faiss = _faiss()
        n = self.graph.ntotal
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        storage = faiss.downcast_index(self.graph.storage)
        return faiss.rev_swig_ptr(storage.get_xb(), n * self.dim).reshape(n, self.dim)

    def nearest(self, query: np.ndarray, f: CubeFilter, k: int, among: np.ndarray | None = None,
                ef: int = EF_SEARCH) -> tuple[list[tuple[int, float]], int]:
        """The k nearest live seqs that the filter's namespace, scope, kinds and time conditions admit (and, with
        `among`, only those seqs), best first; and how many seqs were admitted in all."""
        query = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, self.dim))
        with self.lock:
            mask = self._mask(f, among)
            admitted = int(np.count_nonzero(mask))
            if k <= 0 or admitted == 0:
                return [], admitted
            if admitted <= max(EXACT_MAX, k):
                return self._exact(query, mask, admitted, k), admitted
            share = admitted / max(1, len(self.rows))
            found = self._walk(query, mask, k, min(EF_FILTERED_MAX, int(np.ceil(max(ef, k) / share))))
            if len(found) < k:
                # The walk ran out of admitted neighbours before k (a narrow filter): exact over the admitted.
                found = self._exact(query, mask, admitted, k)
            return found, admitted

    def _exact(self, query: np.ndarray, mask: np.ndarray, admitted: int, k: int) -> list[tuple[int, float]]:
        if admitted <= _GATHER_MAX:
            rows = np.flatnonzero(mask)
            # einsum, not BLAS: a memory-bound product gains nothing from BLAS threads (see memosd/vault/dense.py).
            scores = np.einsum("ij,j->i", self._matrix()[rows], query[0])
            k = min(k, len(rows))
            best = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
            best = best[np.argsort(-scores[best], kind="stable")]
            return [(int(self.row_seq[rows[i]]), float(scores[i])) for i in best]
        # More rows than that: faiss scans its flat storage in place, skipping the rows the bitmap leaves out
        # (bench/dense_index.py, 10% of 100k: 8 ms against 43 ms for a numpy gather and product).
        faiss = _faiss()
        bits = np.packbits(mask, bitorder="little")
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        scores, labels = faiss.downcast_index(self.graph.storage).search(query, k, params=params)
        del bits
        return [(int(self.row_seq[r]), float(v)) for r, v in zip(labels[0], scores[0]) if r >= 0]

    def _walk(self, query: np.ndarray, mask: np.ndarray, k: int, ef: int) -> list[tuple[int, float]]:
        faiss = _faiss()
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef, k)
        bits = None
        if not mask.all():
            # faiss reads bit (row & 7) of byte (row >> 3): little bit order; the array outlives the search.
            bits = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        scores, labels = self.graph.search(query, k, params=params)
        del bits
        return [(int(self.row_seq[r]), float(s)) for r, s in zip(labels[0], scores[0]) if r >= 0]

    def _mask(self, f: CubeFilter, among: np.ndarray | None) -> np.ndarray:
        """Which rows are live and admitted by the filter's conditions that do not change for a seq."""
        mask = self.row_seq != _DEAD
        if f.kinds and MemoryKind.PLAINTEXT not in f.kinds:
            return np.zeros_like(mask)
        allowed = self._allowed_namespaces(f)
        if allowed is not None:
            mask &= allowed[self.row_ns]
        if f.created_after is not None:
            mask &= self.row_created >= f.created_after
        if f.created_before is not None:
            mask &= self.row_created < f.created_before
        if among is not None:
            chosen = np.zeros_like(mask)
            rows = [self.rows[s] for s in among.tolist() if s in self.rows]
            chosen[np.asarray(rows, dtype=np.int64)] = True
            mask &= chosen
        return mask

    def _allowed_namespaces(self, f: CubeFilter) -> np.ndarray | None:
        """A bool per namespace id: admitted by the namespace prefix and the read scope (None: all are)."""
        if not f.namespace_prefix and f.scope is None:
            return None
        key = (f.namespace_prefix, f.scope, len(self.namespaces))
        cached = self._allowed_cache.get(key)
        if cached is not None:
            return cached
        allowed = np.fromiter((_admits(f, ns) for ns in self.namespaces), dtype=bool, count=len(self.namespaces))
        if len(self._allowed_cache) > 256:
            self._allowed_cache.clear()
        self._allowed_cache[key] = allowed
        return allowed


def _under(namespace: str, prefix: str) -> bool:
    return namespace == prefix or namespace.startswith(prefix + "/")


def _admits(f: CubeFilter, namespace: str) -> bool:
    # The same rules as memosd/storage/filter_sql.py's namespace and scope conditions, for plaintext cubes.
    if f.namespace_prefix and not _under(namespace, f.namespace_prefix):
        return False
    if f.scope is None:
        return True
    return any((r.namespace == namespace or (r.subtree and _under(namespace, r.namespace)))
               and (not r.kinds or MemoryKind.PLAINTEXT in r.kinds) for r in f.scope)
