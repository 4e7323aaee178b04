"""The embedded engine: SQLite in the data directory, its record functions one module per part of the core."""

from memosd.storage.sqlite import audit, blobs, events, export, governance, jobs, shares

__all__ = ["audit", "blobs", "events", "export", "governance", "jobs", "shares"]
