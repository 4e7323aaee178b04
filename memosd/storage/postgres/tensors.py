"""Tensor cubes and imports on PostgreSQL: new cube rows, the blob reference they take, FindByPrefix's block index,
adapters by base model, and the import's id and payload checks."""

from __future__ import annotations

from collections.abc import Sequence

from memosd.cube import CubeFilter, LifecycleState, MemCube, MemoryKind
from memosd.storage.postgres import cubes as cube_records
from memosd.storage.postgres.filters import filter_sql
from memosd.vault import rows

# Block keys looked up per statement (one bytea[] parameter): the groups bound each statement's work.
KEYS_PER_QUERY = 4096
# The conditions spell the partial expression indexes' (cubes_tensor_model, cubes_blob) expressions and predicate.
_MODEL = "c.manifest IS NOT NULL AND ((c.manifest::jsonb) #>> '{model,model_fingerprint}') = %s"
_BLOB = "manifest IS NOT NULL AND ((manifest::jsonb) #>> '{blob,sha256}') = %s"


def insert_cubes(conn, cubes: Sequence[MemCube]) -> list[int]:
    """Store new cubes as version 1 rows with their tags, as given (kind, state, owner, times, text, manifest);
    returns their seqs, in order."""
    values = [(c.id, c.namespace, int(c.kind), int(c.state), c.text, rows.dumps(list(c.tags)), rows.dumps(c.metadata),
               c.source, c.owner, int(c.visibility), c.priority, c.created_at, c.updated_at, c.expires_at,
               rows.dumps(list(c.derived_from)), rows.dumps(c.manifest)) for c in cubes]
    return cube_records.copy_cubes(conn, values, [c.tags for c in cubes])


def reference_blob(conn, sha256: str) -> bool:
    """Take one reference on a stored blob (it is no longer collectable); False when it is not stored."""
    # The row lock taken here makes a concurrent collection of the blob wait, then see the reference.
    return conn.execute("UPDATE blobs SET refcount = refcount + 1, unreferenced_since = NULL WHERE sha256 = %s",
                        (sha256,)).rowcount > 0


def index_prefixes(conn, seq: int, index: Sequence[tuple[bytes, int]]) -> None:
    """Index an activation cube under its prefix keys, each with the number of tokens it covers."""
    if not index:
        return
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO activation_prefixes (key, seq, tokens) VALUES (%s, %s, %s)"
                        " ON CONFLICT (key, seq) DO NOTHING", [(bytes(key), seq, tokens) for key, tokens in index])


def prefix_candidates(conn, keys: Sequence[bytes], root: bytes, f: CubeFilter, now: float,
                      limit: int) -> list[tuple]:
    """The rows (rows.COLUMNS) of up to `limit` cubes the filter selects that are indexed under the longest of
    the chained block keys any of them has (all of them tied at that length), newest first; failing that,
    those indexed under the root key (shorter than one block). Empty when none is."""
    where, params = filter_sql(f, now)
    seqs: list[int] = []
    # Keys are chained, so later blocks are longer prefixes: the last group of keys with a match holds the best.
    for start in reversed(range(0, len(keys), KEYS_PER_QUERY)):
        group = [bytes(k) for k in keys[start:start + KEYS_PER_QUERY]]
        found = conn.execute(
            f"SELECT p.tokens, c.seq FROM activation_prefixes p JOIN cubes c ON c.seq = p.seq"
            f" WHERE p.key = ANY(%s) AND {where} ORDER BY p.tokens DESC, c.seq DESC LIMIT %s",
            [group, *params, limit]).fetchall()
        if found:
            seqs = [seq for tokens, seq in found if tokens == found[0][0]]
            break
    if not seqs:
        seqs = [seq for (seq,) in conn.execute(
            f"SELECT c.seq FROM activation_prefixes p JOIN cubes c ON c.seq = p.seq WHERE p.key = %s"
            f" AND {where} ORDER BY c.seq DESC LIMIT %s", [bytes(root), *params, limit]).fetchall()]
    if not seqs:
        return []
    return conn.execute(f"SELECT {rows.COLUMNS} FROM cubes WHERE seq = ANY(%s) ORDER BY seq DESC",
                        (seqs,)).fetchall()


def of_model(conn, model_fingerprint: str, f: CubeFilter, now: float,
             derived_from: Sequence[str] | None, limit: int) -> list[tuple]:
    """The rows (rows.COLUMNS) of up to `limit` cubes the filter selects whose manifest names this model,
    newest first; with derived_from, only those derived from at least one of those ids."""
    where, params = filter_sql(f, now)
    lineage, lineage_params = "", []
    if derived_from is not None:
        if not derived_from:
            return []
        lineage = (" AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(c.derived_from::jsonb) d(value)"
                   " WHERE d.value = ANY(%s))")
        lineage_params = [list(derived_from)]
    return conn.execute(
        f"SELECT {rows.COLUMNS} FROM cubes c WHERE {_MODEL} AND {where}{lineage} ORDER BY c.seq DESC LIMIT %s",
        [model_fingerprint, *params, *lineage_params, limit]).fetchall()


# pg_advisory_xact_lock key an import's transaction holds from looking up its ids to its commit, in every daemon
# on the database: a second import of the same ids then finds them taken (skips them) instead of failing on the
# primary key. Only imports bring ids of their own (every other cube gets a fresh one), so only they take it.
IMPORT_LOCK = 0x6D656D6F_73640005


def lock_imports(conn) -> None:
    """Wait for any other import's transaction to end; held until this one does."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (IMPORT_LOCK,))


def namespaces_of(conn, ids: Sequence[str]) -> dict[str, str]:
    """The namespace of each of these ids that a cube has, by id (ids no cube has are left out)."""
    if not ids:
        return {}
    # One text[] parameter, however many ids (PostgreSQL has no limit on an array's elements to speak of).
    return dict(conn.execute("SELECT id, namespace FROM cubes WHERE id = ANY(%s)", (list(ids),)).fetchall())


def has_live_payload(conn, namespace: str, kind: MemoryKind, sha256: str, owner: str | None = None) -> bool:
    """Whether a cube of this kind in the namespace (owned by owner, if given), not deleted, has the payload with
    this sha256."""
    mine, params = ("", ()) if owner is None else (" AND owner = %s", (owner,))
    return conn.execute(f"SELECT 1 FROM cubes WHERE namespace = %s AND kind = %s AND state != %s AND {_BLOB}{mine} LIMIT 1",
                        (namespace, int(kind), int(LifecycleState.DELETED), sha256, *params)).fetchone() is not None
