"""The embedded engine: SQLite in the data directory, its record functions one module per part of the core."""

from memosd.storage.sqlite import (
    audit, blobs, cubes, events, export, fulltext, governance, holders, jobs, leases, shares, tensors, usage, vector_index,
    vectors,
)

__all__ = ["audit", "blobs", "cubes", "events", "export", "fulltext", "governance", "holders", "jobs", "leases",
           "shares", "tensors", "usage", "vector_index", "vectors"]
