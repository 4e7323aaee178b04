"""MemVault: SQLite metadata, full-text and vector search, versions of MemCubes."""

from memosd.vault.vault import MemVault

__all__ = ["MemVault"]
