"""The vault's schema: ordered migrations, recorded by sqlite-utils in _sqlite_migrations."""

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from memosd.cube import LifecycleState
from memosd.storage import segment

migrations = Migrations("memosd.vault")


@migrations()
def m0001_cubes(db: Database) -> None:
    # One row per cube holding its current version; seq is the FTS rowid and the list order.
    db.execute(
        """
        CREATE TABLE cubes (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            namespace TEXT NOT NULL,
            kind INTEGER NOT NULL,
            state INTEGER NOT NULL,
            version INTEGER NOT NULL,
            parent_version INTEGER NOT NULL,
            text TEXT,
            tags TEXT NOT NULL DEFAULT '[]',
            metadata TEXT,
            source TEXT NOT NULL DEFAULT '',
            owner TEXT NOT NULL,
            visibility INTEGER NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL,
            access_count INTEGER NOT NULL DEFAULT 0,
            last_accessed_at REAL,
            derived_from TEXT NOT NULL DEFAULT '[]',
            manifest TEXT
        )
        """
    )
    db.execute("CREATE INDEX cubes_namespace ON cubes(namespace, seq)")
    db.execute("CREATE INDEX cubes_created ON cubes(created_at)")
    db.execute("CREATE INDEX cubes_expiry ON cubes(expires_at) WHERE expires_at IS NOT NULL")
    db.execute("CREATE TABLE cube_tags (tag TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (tag, seq)) WITHOUT ROWID")
    db.execute("CREATE INDEX cube_tags_seq ON cube_tags(seq)")
    # Earlier versions, as JSON snapshots of the cubes row they replaced.
    db.execute(
        "CREATE TABLE cube_versions (id TEXT NOT NULL, version INTEGER NOT NULL, snapshot TEXT NOT NULL,"
        " PRIMARY KEY (id, version)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE VIRTUAL TABLE cubes_fts USING fts5(text, content='cubes', content_rowid='seq',"
        " tokenize='porter unicode61 remove_diacritics 2')"
    )
    # External-content FTS kept in step by triggers, inside the writing transaction.
    db.execute(
        "CREATE TRIGGER cubes_ai AFTER INSERT ON cubes WHEN new.text IS NOT NULL BEGIN"
        " INSERT INTO cubes_fts(rowid, text) VALUES (new.seq, new.text); END"
    )
    db.execute(
        "CREATE TRIGGER cubes_ad AFTER DELETE ON cubes WHEN old.text IS NOT NULL BEGIN"
        " INSERT INTO cubes_fts(cubes_fts, rowid, text) VALUES ('delete', old.seq, old.text); END"
    )
    db.execute(
        "CREATE TRIGGER cubes_au_old AFTER UPDATE OF text ON cubes WHEN old.text IS NOT NULL BEGIN"
        " INSERT INTO cubes_fts(cubes_fts, rowid, text) VALUES ('delete', old.seq, old.text); END"
    )
    db.execute(
        "CREATE TRIGGER cubes_au_new AFTER UPDATE OF text ON cubes WHEN new.text IS NOT NULL BEGIN"
        " INSERT INTO cubes_fts(rowid, text) VALUES (new.seq, new.text); END"
    )
    db.execute("CREATE TABLE embeddings (seq INTEGER PRIMARY KEY, model TEXT NOT NULL, vector BLOB NOT NULL)")
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migrations()
def m0002_blobs_and_activation_prefixes(db: Database) -> None:
    # Content-addressed blobs (files under blobs/sha256/): one row per distinct content, counting the
    # live cubes whose manifest names it; at 0 since unreferenced_since it may be collected.
    db.execute(
        "CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, refcount INTEGER NOT NULL DEFAULT 0,"
        " created_at REAL NOT NULL, unreferenced_since REAL) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX blobs_unreferenced ON blobs(unreferenced_since) WHERE refcount <= 0")
    # FindByPrefix: one row per complete token block of each activation cube (chained hash of the model
    # and the tokens up to the block's end), so the longest shared prefix is an index lookup.
    db.execute(
        "CREATE TABLE activation_prefixes (key BLOB NOT NULL, seq INTEGER NOT NULL, tokens INTEGER NOT NULL,"
        " PRIMARY KEY (key, seq)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX activation_prefixes_seq ON activation_prefixes(seq)")
    # Deleting a tensor cube (a tombstone, or a row removed outright) releases its blob and its prefixes in
    # the same transaction, whichever code path deletes it.
    deleted = f"{LifecycleState.DELETED:d}"  # DDL takes no parameters
    release = (
        "UPDATE blobs SET refcount = refcount - 1, unreferenced_since = CASE WHEN refcount <= 1"
        " THEN (julianday('now') - 2440587.5) * 86400.0 ELSE unreferenced_since END"
        " WHERE sha256 = json_extract(old.manifest, '$.blob.sha256');"
        " DELETE FROM activation_prefixes WHERE seq = old.seq;"
    )
    db.execute(
        "CREATE TRIGGER cubes_release_blob AFTER UPDATE OF state ON cubes"
        f" WHEN new.state = {deleted} AND old.state != {deleted} AND old.manifest IS NOT NULL BEGIN {release} END"
    )
    db.execute(
        "CREATE TRIGGER cubes_release_blob_on_delete AFTER DELETE ON cubes"
        f" WHEN old.state != {deleted} AND old.manifest IS NOT NULL BEGIN {release} END"
    )


@migrations()
def m0003_tensor_cubes_by_model(db: Database) -> None:
    # MemScheduler's plan and Distill look tensor cubes up by the model they were made for; the fingerprint
    # lives in the manifest JSON, so the index is on that expression (used by queries that spell it the same).
    db.execute(
        "CREATE INDEX cubes_tensor_model ON cubes(json_extract(manifest, '$.model.model_fingerprint'), seq)"
        " WHERE manifest IS NOT NULL"
    )


@migrations()
def m0004_jobs(db: Database) -> None:
    # MemScheduler's job records, so that GetJob and ListJobs answer after a restart. A job that was
    # queued or running when the daemon stopped is recorded as failed at the next start.
    db.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL, state INTEGER NOT NULL,"
        " created_at REAL NOT NULL, started_at REAL, finished_at REAL, done INTEGER NOT NULL, total INTEGER NOT NULL,"
        " message TEXT NOT NULL, result_ids TEXT NOT NULL, metrics TEXT NOT NULL, error_type TEXT, error TEXT)"
    )


@migrations()
def m0005_fts_update_in_order(db: Database) -> None:
    # SQLite fires the triggers of one event newest first, so the two update triggers of m0001 inserted
    # the new text before deleting the old, and the delete took the new text's shared words with it.
    # One trigger does both in order; 'rebuild' repairs indexes written by the old pair.
    db.execute("DROP TRIGGER cubes_au_old")
    db.execute("DROP TRIGGER cubes_au_new")
    db.execute(
        "CREATE TRIGGER cubes_au AFTER UPDATE OF text ON cubes BEGIN"
        " INSERT INTO cubes_fts(cubes_fts, rowid, text) SELECT 'delete', old.seq, old.text WHERE old.text IS NOT NULL;"
        " INSERT INTO cubes_fts(rowid, text) SELECT new.seq, new.text WHERE new.text IS NOT NULL;"
        " END"
    )
    db.execute("INSERT INTO cubes_fts(cubes_fts) VALUES ('rebuild')")


@migrations()
def m0006_blob_checksums(db: Database) -> None:
    # XXH3-128 of each blob, taken while its sha256 was checked: what a same-host client verifies a mapped
    # payload against (OpenLocal). Blobs stored before this get theirs on first use.
    db.execute("ALTER TABLE blobs ADD COLUMN xxh3_128 TEXT")


@migrations()
def m0007_blob_holders(db: Database) -> None:
    # Who proved possession of a blob's bytes (uploaded them, or stored them by import or a job): a digest
    # alone is an address, not a credential. Rows go with their blob. No rows are made for blobs stored
    # before: their owners still reach them through the cubes they may read.
    db.execute(
        "CREATE TABLE blob_holders (sha256 TEXT NOT NULL, agent TEXT NOT NULL, since REAL NOT NULL,"
        " PRIMARY KEY (sha256, agent)) WITHOUT ROWID"
    )
    db.execute("CREATE TRIGGER blobs_forget_holders AFTER DELETE ON blobs BEGIN"
               " DELETE FROM blob_holders WHERE sha256 = old.sha256; END")
    # The live cubes naming a blob, for the read-grant check (and the import's same-payload check).
    db.execute(
        "CREATE INDEX cubes_blob ON cubes(json_extract(manifest, '$.blob.sha256'))"
        " WHERE manifest IS NOT NULL"
    )


@migrations()
def m0008_job_leases(db: Database) -> None:
    # Jobs held by a daemon under a lease (the jobs module of memosd/storage/postgres shares the columns): the
    # member running one, until when, whether someone asked it to stop, and what another member needs to run it
    # again (spec). Background work one daemon does at a time (sweeps, compaction) takes a named lease.
    for column in ("runner TEXT", "lease_until REAL", "cancel_requested INTEGER NOT NULL DEFAULT 0", "spec TEXT"):
        db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
    db.execute("CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL)")


# The full-text index's fields beside the text (m0009): the search context a writer gave with the cube, and the
# string values of its metadata's top-level keys (speaker, date, title, ...), as SQL over a cubes row `r`.
# A row whose metadata is not JSON (a hand edit, an older daemon's damage) indexes none rather than failing its write.
_META_TEXT = ("(SELECT group_concat(value, ' ') FROM json_each(CASE WHEN json_valid({r}.metadata) THEN {r}.metadata"
              " ELSE '{{}}' END) WHERE type = 'text')")


@migrations()
def m0009_search_fields(db: Database) -> None:
    # Ranking sees more than the text: the cube's search context (CubeDraft.context, stored beside the text and
    # never returned) and its metadata's string values are two more columns of cubes_fts, weighted lower in
    # bm25 (storage.fts5.FIELD_WEIGHTS). The index is contentless: the metadata column is computed, which an
    # external-content table cannot read back (FTS5 fails to read a view computing it with json_each), and
    # ranking reads only the index. The triggers compute the values from old and new rows alike, so a 'delete'
    # removes exactly what was indexed; every cube written before this migration is indexed here.
    db.execute("ALTER TABLE cubes ADD COLUMN search_context TEXT")
    for trigger in ("cubes_ai", "cubes_ad", "cubes_au"):
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute("DROP TABLE cubes_fts")
    db.execute(
        "CREATE VIRTUAL TABLE cubes_fts USING fts5(text, context, meta, content='',"
        " tokenize='porter unicode61 remove_diacritics 2')"
    )

    def values(r: str) -> str:
        return f"{r}.seq, {r}.text, {r}.search_context, {_META_TEXT.format(r=r)}"

    _fts_triggers(db, values)
    db.execute(f"INSERT INTO cubes_fts(rowid, text, context, meta) SELECT {values('cubes')} FROM cubes"
               " WHERE text IS NOT NULL ORDER BY seq")


def _fts_triggers(db: Database, values) -> None:
    """The triggers keeping cubes_fts in step with cubes, indexing values(row) (rowid, text, context, meta)."""
    db.execute(
        "CREATE TRIGGER cubes_ai AFTER INSERT ON cubes WHEN new.text IS NOT NULL BEGIN"
        f" INSERT INTO cubes_fts(rowid, text, context, meta) VALUES ({values('new')}); END"
    )
    db.execute(
        "CREATE TRIGGER cubes_ad AFTER DELETE ON cubes WHEN old.text IS NOT NULL BEGIN"
        f" INSERT INTO cubes_fts(cubes_fts, rowid, text, context, meta) VALUES ('delete', {values('old')}); END"
    )
    db.execute(
        "CREATE TRIGGER cubes_au AFTER UPDATE OF text, search_context, metadata ON cubes BEGIN"
        f" INSERT INTO cubes_fts(cubes_fts, rowid, text, context, meta) SELECT 'delete', {values('old')}"
        " WHERE old.text IS NOT NULL;"
        f" INSERT INTO cubes_fts(rowid, text, context, meta) SELECT {values('new')} WHERE new.text IS NOT NULL;"
        " END"
    )


@migrations()
def m0010_vector_log(db: Database) -> None:
    # Every change to a cube's stored vector, in commit order: what the daemon's saved HNSW index (which
    # records the last rev it covers) replays at start to come up to date without reading every vector.
    # Rows the saved index already covers are trimmed after each save.
    db.execute("CREATE TABLE vector_log (rev INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL)")
    for event, row in (("INSERT", "new"), ("UPDATE", "new"), ("DELETE", "old")):
        db.execute(f"CREATE TRIGGER embeddings_log_{event.lower()} AFTER {event} ON embeddings BEGIN"
                   f" INSERT INTO vector_log (seq) VALUES ({row}.seq); END")


@migrations()
def m0011_scoped_search(db: Database) -> None:
    # BM25 scored within what a caller may read (storage.sqlite.fulltext.scope_stats, _scoped) needs, besides
    # FTS5's index: every occurrence of a term (term, cube, column, offset), read by term, to count a word's
    # occurrences in a cube as FTS5's own bm25() does; and how many cubes with text, and how long, each namespace
    # holds per kind, visibility and owner (search_sizes, kept by triggers), so that a scope's totals are a sum
    # over a few rows, not a read of every text it holds. Length is in characters of the three indexed fields.
    db.execute("CREATE VIRTUAL TABLE cubes_fts_instances USING fts5vocab(cubes_fts, instance)")
    db.execute("CREATE TABLE search_sizes (namespace TEXT NOT NULL, kind INTEGER NOT NULL, visibility INTEGER NOT NULL,"
               " owner TEXT NOT NULL, docs INTEGER NOT NULL, length INTEGER NOT NULL,"
               " PRIMARY KEY (namespace, kind, visibility, owner)) WITHOUT ROWID")

    def length(r: str) -> str:
        return f"length({r}.text) + coalesce(length({r}.search_context), 0) + coalesce(length({r}.metadata), 0)"

    def add(r: str) -> str:
        return (f"INSERT INTO search_sizes SELECT {r}.namespace, {r}.kind, {r}.visibility, {r}.owner, 1, {length(r)}"
                f" WHERE {r}.text IS NOT NULL ON CONFLICT DO UPDATE SET docs = docs + 1,"
                " length = search_sizes.length + excluded.length;")

    def remove(r: str) -> str:
        key = f"namespace = {r}.namespace AND kind = {r}.kind AND visibility = {r}.visibility AND owner = {r}.owner"
        return (f"UPDATE search_sizes SET docs = docs - 1, length = length - ({length(r)}) WHERE {key}"
                f" AND {r}.text IS NOT NULL; DELETE FROM search_sizes WHERE {key} AND docs = 0;")

    db.execute(f"CREATE TRIGGER cubes_sizes_ai AFTER INSERT ON cubes BEGIN {add('new')} END")
    db.execute(f"CREATE TRIGGER cubes_sizes_ad AFTER DELETE ON cubes BEGIN {remove('old')} END")
    db.execute("CREATE TRIGGER cubes_sizes_au AFTER UPDATE OF text, search_context, metadata, namespace, kind,"
               f" visibility, owner ON cubes BEGIN {remove('old')} {add('new')} END")
    db.execute(f"INSERT INTO search_sizes SELECT namespace, kind, visibility, owner, count(*), sum({length('cubes')})"
               " FROM cubes WHERE text IS NOT NULL GROUP BY namespace, kind, visibility, owner")


@migrations()
def m0012_unspaced_scripts(db: Database) -> None:
    # Chinese, Japanese, Thai and the other scripts written without spaces are indexed as character pairs
    # (memosd.storage.segment): the triggers index each field through segment.INDEX_FUNCTION, which every
    # connection registers (storage.sqlite.db.register_functions). The cubes whose fields hold such a run are
    # indexed again: removed by the terms they were indexed with, added by the new ones. Others index as before.
    index = segment.INDEX_FUNCTION
    for trigger in ("cubes_ai", "cubes_ad", "cubes_au"):
        db.execute(f"DROP TRIGGER {trigger}")

    def values(r: str) -> str:
        return f"{r}.seq, {index}({r}.text), {index}({r}.search_context), {index}({_META_TEXT.format(r=r)})"

    _fts_triggers(db, values)
    meta = _META_TEXT.format(r="c")
    fields = f"SELECT c.seq, c.text, c.search_context, {meta} AS meta FROM cubes c WHERE c.text IS NOT NULL"
    changed = (f"{index}(text) IS NOT text OR {index}(search_context) IS NOT search_context"
               f" OR {index}(meta) IS NOT meta")
    db.execute("CREATE TEMP TABLE unspaced AS SELECT * FROM (" + fields + f") WHERE {changed}")
    db.execute("INSERT INTO cubes_fts(cubes_fts, rowid, text, context, meta)"
               " SELECT 'delete', seq, text, search_context, meta FROM unspaced ORDER BY seq")
    db.execute(f"INSERT INTO cubes_fts(rowid, text, context, meta) SELECT seq, {index}(text),"
               f" {index}(search_context), {index}(meta) FROM unspaced ORDER BY seq")
    db.execute("DROP TABLE unspaced")
