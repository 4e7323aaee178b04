"""An in-memory matrix of unit-length embeddings for exact cosine search."""

from __future__ import annotations

import threading

import numpy as np

_FREE = -1


class DenseIndex:
    """Vectors by cube seq in one growable matrix; exact scores by dot product (vectors are unit length).

    Rows are written in place (a new seq takes a free row or the next one, a re-embedded seq keeps its
    row), so adding a batch costs the batch, not a copy of the matrix."""

    def __init__(self, dim: int, capacity: int = 1024):
        self.dim = dim
        self._lock = threading.Lock()
        self._matrix = np.zeros((capacity, dim), dtype=np.float32)
        self._seqs = np.full(capacity, _FREE, dtype=np.int64)
        self._rows: dict[int, int] = {}
        self._free: list[int] = []
        self._used = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, seq: int) -> bool:
        return int(seq) in self._rows

    def add(self, seqs, vectors: np.ndarray) -> None:
        """Set the vectors of these seqs, replacing any they had."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            for seq, vector in zip(seqs, vectors):
                seq = int(seq)
                row = self._rows.get(seq)
                if row is None:
                    row = self._free.pop() if self._free else self._next_row()
                    self._rows[seq] = row
                    self._seqs[row] = seq
                self._matrix[row] = vector

    def remove(self, seqs) -> None:
        with self._lock:
            for seq in seqs:
                row = self._rows.pop(int(seq), None)
                if row is not None:
                    self._seqs[row] = _FREE
                    self._matrix[row] = 0.0
                    self._free.append(row)

    def scores(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every indexed seq and its cosine similarity to the query (same order, unsorted)."""
        query = np.asarray(query, dtype=np.float32).reshape(self.dim)
        with self._lock:
            n = self._used
            # einsum, not BLAS: a memory-bound product gains nothing from BLAS threads, and they slow
            # to a crawl when the encoder or SQLite is busy on another core at the same moment.
            scores = np.einsum("ij,j->i", self._matrix[:n], query)
            seqs = self._seqs[:n].copy()
            holes = bool(self._free)
        if not holes:
            return seqs, scores
        live = seqs != _FREE
        return seqs[live], scores[live]

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k nearest seqs with their cosine similarity, best first."""
        return top(*self.scores(query), k)

    def _next_row(self) -> int:
        if self._used == len(self._seqs):
            # Doubling keeps appends amortised O(1) per vector.
            grown = max(1024, 2 * len(self._seqs))
            matrix = np.zeros((grown, self.dim), dtype=np.float32)
            matrix[: self._used] = self._matrix[: self._used]
            seqs = np.full(grown, _FREE, dtype=np.int64)
            seqs[: self._used] = self._seqs[: self._used]
            self._matrix, self._seqs = matrix, seqs
        self._used += 1
        return self._used - 1


def top(seqs: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k highest-scoring (seq, score) pairs, best first."""
    k = min(k, len(scores))
    if k <= 0:
        return []
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(seqs[i]), float(scores[i])) for i in best]
