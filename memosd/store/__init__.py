"""MemStore: topics through which agents share cubes, with ordered, gap-free, resumable delivery."""

from memosd.store.memstore import MemStore

__all__ = ["MemStore"]
