"""Writing a moved-in vault into PostgreSQL table by table, each batch committed with its resume point (`memosd migrate`).

Two tables of the migration's own (outside the schema's migrations: they describe a copy, not the vault) make it
resumable and make a half-copied vault recognisable: memosd_migration (one row: the source's daemon id and
database digest, when it started and finished) and memosd_migration_tables (per table: the key of the last row
copied, how many rows, whether it is done). A batch and its table's resume point commit in one transaction, so a
run stopped anywhere continues after the last committed row and never inserts a row twice.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import psycopg

from memosd.storage.postgres import schema

_PROGRESS = (
    "CREATE TABLE IF NOT EXISTS memosd_migration (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),"
    " source_id text NOT NULL, source_digest text NOT NULL, started_at double precision NOT NULL,"
    " finished_at double precision)",
    'CREATE TABLE IF NOT EXISTS memosd_migration_tables (tbl text COLLATE "C" PRIMARY KEY, after text,'
    " copied bigint NOT NULL DEFAULT 0, done boolean NOT NULL DEFAULT false)",
)
# Tables whose rows mean a database already holds a vault (a daemon's first start writes each of them).
MIGRATE_LOCK = 0x6D656D6F_73640004
_VAULT_TABLES = ("settings", "agents", "audit", "cubes", "topics")


def connect(url: str) -> psycopg.Connection:
    # The copy's own connection: no statement timeout (a batch of large rows, the final counts), durable commits.
    return psycopg.connect(url, options="-c synchronous_commit=on -c statement_timeout=0",
                           application_name="memosd-migrate", connect_timeout=10)


def prepare(conn: psycopg.Connection) -> None:
    for statement in _PROGRESS:
        conn.execute(statement)
    conn.commit()


def migration(conn: psycopg.Connection) -> tuple[str, str, float | None] | None:
    """(source daemon id, source digest, finished_at) of the migration into this database, None if none."""
    if _one(conn, "SELECT to_regclass('memosd_migration')") is None:
        return None
    row = conn.execute("SELECT source_id, source_digest, finished_at FROM memosd_migration").fetchone()
    return (row[0], row[1], row[2]) if row else None


def unfinished(conn: psycopg.Connection) -> str:
    """The source daemon id of a migration into this database that has not finished ("" if none)."""
    found = migration(conn)
    return found[0] if found and found[2] is None else ""


def vault_daemon_id(conn: psycopg.Connection) -> str | None:
    """The daemon id of the vault this database holds: '' if it holds one without an id yet, None if empty."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'daemon_id'").fetchone()
    if row:
        return str(row[0])
    holds = any(_one(conn, f"SELECT EXISTS (SELECT 1 FROM {t})") for t in _VAULT_TABLES)
    return "" if holds else None


def begin(conn: psycopg.Connection, source_id: str, digest: str) -> None:
    conn.execute("INSERT INTO memosd_migration (source_id, source_digest, started_at) VALUES (%s, %s, %s)"
                 " ON CONFLICT (only_row) DO UPDATE SET source_digest = excluded.source_digest",
                 (source_id, digest, time.time()))
    conn.commit()


def progress(conn: psycopg.Connection) -> dict[str, tuple[Any, int, bool]]:
    """Per table: (the key of its last copied row, decoded; rows copied; done)."""
    found = conn.execute("SELECT tbl, after, copied, done FROM memosd_migration_tables").fetchall()
    return {t: (_key_in(after), copied, done) for t, after, copied, done in found}


def columns(conn: psycopg.Connection, table: str) -> dict[str, str]:
    """The columns a row may be written to (generated ones left out), each with its type's name."""
    found = conn.execute("SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema ="
                         " current_schema() AND table_name = %s AND is_generated = 'NEVER' ORDER BY ordinal_position",
                         (table,)).fetchall()
    return dict(found)


def write(conn: psycopg.Connection, table: str, cols: list[str], types: dict[str, str], rows: list[tuple],
          last_key: tuple, done: bool) -> None:
    """Insert rows (values in SQLite's types, converted to the target's) and move the table's resume point to
    last_key, in one committed transaction."""
    convert = [_converter(types[c]) for c in cols]
    with conn.cursor() as cur:
        if rows:
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([None if v is None else f(v) for f, v in zip(convert, row)])
        cur.execute("INSERT INTO memosd_migration_tables (tbl, after, copied, done) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (tbl) DO UPDATE SET after = excluded.after,"
                    " copied = memosd_migration_tables.copied + %s, done = excluded.done",
                    (table, _key_out(last_key), len(rows), done, len(rows)))
    conn.commit()


def mark(conn: psycopg.Connection, table: str, last_key: tuple | None, done: bool) -> None:
    """Move a table's resume point without writing rows (the blobs' bytes, which live elsewhere)."""
    write(conn, table, [], {}, [], last_key or (), done)


def finish(conn: psycopg.Connection) -> None:
    """After the last row: identity sequences continue after the copied values, vector indexes are built, and
    the migration is done."""
    identities = conn.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema ="
                              " current_schema() AND is_identity = 'YES'").fetchall()
    for table, column in identities:
        conn.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), coalesce((SELECT max({column}) FROM {table}),"
                     f" 0) + 1, false)", (table, column))
    # Each embedding model's HNSW index, built once over all its vectors rather than at the first search.
    for model, dims in conn.execute("SELECT DISTINCT model, dims FROM embeddings").fetchall():
        schema.ensure_vector_index(conn, model, dims)
    conn.execute("UPDATE memosd_migration SET finished_at = %s", (time.time(),))
    conn.commit()


def count(conn: psycopg.Connection, table: str) -> int:
    return int(_one(conn, f"SELECT count(*) FROM {table}"))


def _converter(udt: str):
    if udt == "bool":
        return bool
    if udt == "vector":
        # SQLite keeps float32 bytes; pgvector's text form, with each float32 spelled so it reads back exactly.
        return lambda v: "[" + ",".join(repr(float(x)) for x in np.frombuffer(v, dtype=np.float32)) + "]"
    return lambda v: v


def _key_out(key: tuple) -> str:
    # Keys hold text, integers and (activation_prefixes) bytes: JSON with bytes as {"b": hex}.
    return json.dumps([{"b": v.hex()} if isinstance(v, bytes) else v for v in key])


def _key_in(text: str | None):
    if not text:
        return None
    values = json.loads(text)
    return tuple(bytes.fromhex(v["b"]) if isinstance(v, dict) else v for v in values) or None


def lock(conn: psycopg.Connection) -> bool:
    """Take the migration's session lock (held until the connection closes); False if another run holds it."""
    return bool(_one(conn, "SELECT pg_try_advisory_lock(%s)", (MIGRATE_LOCK,)))


def _one(conn: psycopg.Connection, query, params: tuple = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None, "an aggregate or function call answers one row"
    return row[0]
