"""The embedded engine: SQLite in the data directory, its record functions one module per part of the core."""

from memosd.storage.sqlite import audit, events, export, governance, holders, jobs, shares, tensors

__all__ = ["audit", "events", "export", "governance", "holders", "jobs", "shares", "tensors"]
