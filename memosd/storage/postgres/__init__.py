"""The PostgreSQL engine (with pgvector): its record functions one module per part of the core, as in the SQLite engine.

MISSING names the record modules the core needs that this engine does not have yet: `memosd serve` refuses to run
on PostgreSQL while it is not empty (tests/test_postgres_engine.py keeps it true to the two packages)."""

from memosd.storage.postgres import (
    audit,
    blobs,
    cubes,
    events,
    export,
    fulltext,
    governance,
    holders,
    jobs,
    leases,
    shares,
    tensors,
    usage,
    vectors,
)

MISSING: tuple[str, ...] = ()

__all__ = [
    "MISSING",
    "audit",
    "blobs",
    "cubes",
    "events",
    "export",
    "fulltext",
    "governance",
    "holders",
    "jobs",
    "leases",
    "shares",
    "tensors",
    "usage",
    "vectors",
]
