"""An in-memory matrix of unit-length embeddings for exact cosine search."""

from __future__ import annotations

import threading

import numpy as np


class DenseIndex:
    """Vectors by cube seq; exact top-k by dot product (vectors are L2-normalised)."""

    def __init__(self, dim: int):
        self.dim = dim
        self._lock = threading.Lock()
        self._seqs = np.empty(0, dtype=np.int64)
        self._matrix = np.empty((0, dim), dtype=np.float32)
        self._pending_seqs: list[int] = []
        self._pending_vecs: list[np.ndarray] = []
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self._seqs) + len(self._pending_seqs) - len(self._removed)

    def add(self, seqs, vectors: np.ndarray) -> None:
        with self._lock:
            self._pending_seqs.extend(int(s) for s in seqs)
            self._pending_vecs.append(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
            self._removed.difference_update(int(s) for s in seqs)

    def remove(self, seqs) -> None:
        with self._lock:
            self._removed.update(int(s) for s in seqs)

    def _compact(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._pending_seqs or self._removed:
                seqs = np.concatenate([self._seqs, np.asarray(self._pending_seqs, dtype=np.int64)])
                matrix = np.concatenate([self._matrix, *self._pending_vecs]) if self._pending_vecs else self._matrix
                # Later additions of a seq win over earlier ones (a re-embedded update).
                _, last = np.unique(seqs[::-1], return_index=True)
                keep = np.sort(len(seqs) - 1 - last)
                if self._removed:
                    keep = keep[~np.isin(seqs[keep], np.fromiter(self._removed, dtype=np.int64))]
                self._seqs, self._matrix = seqs[keep], np.ascontiguousarray(matrix[keep])
                self._pending_seqs, self._pending_vecs, self._removed = [], [], set()
            return self._seqs, self._matrix

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k nearest seqs with their cosine similarity, best first."""
        seqs, matrix = self._compact()
        if not len(seqs) or k <= 0:
            return []
        scores = matrix @ np.asarray(query, dtype=np.float32).reshape(self.dim)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [(int(seqs[i]), float(scores[i])) for i in top]
