"""The PostgreSQL engine (with pgvector): its record functions one module per part of the core, as in the SQLite engine.

MISSING names the record modules the core needs that this engine does not have yet: `memosd serve` refuses to run
on PostgreSQL while it is not empty (tests/test_postgres_engine.py keeps it true to the two packages)."""

from memosd.storage.postgres import (
    audit,
    events,
    export,
    fulltext,
    governance,
    jobs,
    shares,
    vectors,
)

MISSING: tuple[str, ...] = ("cubes", "usage", "tensors", "holders", "blobs")

__all__ = [
    "MISSING",
    "audit",
    "events",
    "export",
    "fulltext",
    "governance",
    "jobs",
    "shares",
    "vectors",
]
