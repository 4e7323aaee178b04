"""The embedded engine: SQLite in the data directory, its record functions one module per part of the core."""

from memosd.storage.sqlite import audit, events, export, fulltext, governance, jobs, shares, vectors

__all__ = ["audit", "events", "export", "fulltext", "governance", "jobs", "shares", "vectors"]
