"""The PostgreSQL schema: ordered migrations, recorded in memosd_migrations, applied under an advisory lock.

One migration set holds what SQLite keeps in three (memosd/storage/sqlite/schema/{vault,governance,store}.py),
table for table and column for column, so that a record module is the same statements in another dialect.
Choices, once for all tables:
- JSON columns (tags, metadata, manifest, derived_from, groups, acked, result_ids, metrics, snapshot) are
  `text`, not `jsonb`: the core parses and writes these strings itself, and text gives them back byte for
  byte as SQLite does (jsonb would reorder keys and respace what a user stored). The paths queried inside a
  manifest get expression indexes on the jsonb cast.
- Text that is compared by range or sorted (names, namespaces, topics, ids) is `COLLATE "C"`: bytewise like
  SQLite, so "p/" <= name < "p0" selects a subtree whatever the database's locale, on a plain btree index.
- Full text: a stored `tsvector` (english stemming, as SQLite's porter tokenizer) with a GIN index, and each
  text's length in tokens (text_len), both written by one BEFORE trigger from the text in the statement that
  changes it (m0007: generated columns parsed the text twice); BM25 also needs the collection's totals
  (search_stats, kept by triggers).
- Embeddings: one row per cube as in SQLite, in a pgvector `vector` column without a fixed dimension, because
  the dimension is the embedding model's and the model is configuration. HNSW (cosine) indexes are built per
  model and width, as partial expression indexes on `vector::vector(DIM)` over the model's vectors of that width
  (ensure_vector_index), which a query uses by spelling the same cast, `model = ...` and `dims = DIM`. The width
  is a stored column (m0011): vector_dims() reads a vector past 2 kB (500 floats) out of TOAST, in every row a
  backlog count looks at.
- States and event kinds are the same integers as in SQLite (LifecycleState, EventKind); times are seconds
  since the epoch in double precision; sequence numbers are bigint.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from memosd.cube import LifecycleState, MemoryKind
from memosd.errors import FailedPrecondition
from memosd.storage import segment

# pg_advisory_lock key for migrations: two daemons starting at once migrate one after the other.
MIGRATION_LOCK = 0x6D656D6F_73640001
TABLE = "memosd_migrations"
T = 'text COLLATE "C"'
# Rows of search_stats the writers spread their counts over (see m0006_search_stats).
SEARCH_STATS_SHARDS = 16


def m0001_governance(conn) -> None:
    conn.execute("CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL)")
    conn.execute(f"CREATE TABLE agents (name {T} PRIMARY KEY, public_key bytea NOT NULL, groups text NOT NULL"
                 " DEFAULT '[]', admin boolean NOT NULL DEFAULT false, created_at double precision NOT NULL,"
                 " revoked_at double precision)")
    conn.execute(f"CREATE TABLE policies (id {T} PRIMARY KEY, issuer {T} NOT NULL, subject {T} NOT NULL,"
                 " document bytea NOT NULL, signature bytea NOT NULL, created_at double precision NOT NULL,"
                 " revoked_at double precision)")
    # seq is the chain's position, given by the head (settings 'audit_head') under its row lock: gap-free.
    conn.execute(f"CREATE TABLE audit (seq bigint PRIMARY KEY, ts double precision NOT NULL, agent {T} NOT NULL,"
                 " action text NOT NULL, target text NOT NULL, decision text NOT NULL, detail text NOT NULL,"
                 " prev_hash text NOT NULL, hash text NOT NULL)")
    conn.execute("CREATE TABLE audit_checkpoints (n bigint PRIMARY KEY, seq bigint NOT NULL, hash text NOT NULL,"
                 " ts double precision NOT NULL, signature bytea NOT NULL)")


def m0002_store(conn) -> None:
    conn.execute(f"CREATE TABLE topics (name {T} PRIMARY KEY, owner {T} NOT NULL, created_at double precision"
                 " NOT NULL, last_seq bigint NOT NULL DEFAULT 0, first_seq bigint NOT NULL DEFAULT 1,"
                 " max_age double precision NOT NULL DEFAULT 0, max_events bigint NOT NULL DEFAULT 0)")
    conn.execute(f"CREATE TABLE events (topic {T} NOT NULL, seq bigint NOT NULL, kind integer NOT NULL,"
                 f" cube_id {T} NOT NULL, cube_version bigint NOT NULL, publisher {T} NOT NULL,"
                 " ts double precision NOT NULL, publish_id text, PRIMARY KEY (topic, seq))")
    conn.execute("CREATE UNIQUE INDEX events_publish_id ON events (topic, publish_id) WHERE publish_id IS NOT NULL")
    conn.execute("CREATE INDEX events_ts ON events (topic, ts)")
    conn.execute(f"CREATE TABLE topic_cubes (topic {T} NOT NULL, cube_id {T} NOT NULL, publisher {T} NOT NULL,"
                 " authority text, PRIMARY KEY (topic, cube_id, publisher))")
    conn.execute("CREATE INDEX topic_cubes_cube ON topic_cubes (cube_id)")
    conn.execute(f"CREATE TABLE durable_subscriptions (agent {T} NOT NULL, name {T} NOT NULL, pattern text NOT NULL,"
                 " acked text NOT NULL DEFAULT '{}', created_at double precision NOT NULL, PRIMARY KEY (agent, name))")


def m0003_cubes(conn) -> None:
    # One row per cube holding its current version; seq is the list order (and the key of its search rows).
    conn.execute(f"""
        CREATE TABLE cubes (
            seq bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            id {T} NOT NULL UNIQUE,
            namespace {T} NOT NULL,
            kind integer NOT NULL,
            state integer NOT NULL,
            version bigint NOT NULL,
            parent_version bigint NOT NULL,
            text text,
            tags text NOT NULL DEFAULT '[]',
            metadata text,
            source text NOT NULL DEFAULT '',
            owner {T} NOT NULL,
            visibility integer NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            expires_at double precision,
            access_count bigint NOT NULL DEFAULT 0,
            last_accessed_at double precision,
            derived_from text NOT NULL DEFAULT '[]',
            manifest text,
            text_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, coalesce(text, ''))) STORED
        )""")
    conn.execute("CREATE INDEX cubes_namespace ON cubes (namespace, seq)")
    conn.execute("CREATE INDEX cubes_created ON cubes (created_at)")
    conn.execute("CREATE INDEX cubes_expiry ON cubes (expires_at) WHERE expires_at IS NOT NULL")
    conn.execute("CREATE INDEX cubes_fts ON cubes USING gin (text_tsv)")
    conn.execute("CREATE INDEX cubes_tensor_model ON cubes (((manifest::jsonb) #>> '{model,model_fingerprint}'), seq)"
                 " WHERE manifest IS NOT NULL")
    conn.execute("CREATE INDEX cubes_blob ON cubes (((manifest::jsonb) #>> '{blob,sha256}')) WHERE manifest IS NOT NULL")
    conn.execute(f"CREATE TABLE cube_tags (tag {T} NOT NULL, seq bigint NOT NULL, PRIMARY KEY (tag, seq))")
    conn.execute("CREATE INDEX cube_tags_seq ON cube_tags (seq)")
    # Earlier versions, as JSON snapshots of the cubes row they replaced.
    conn.execute(f"CREATE TABLE cube_versions (id {T} NOT NULL, version bigint NOT NULL, snapshot text NOT NULL,"
                 " PRIMARY KEY (id, version))")
    conn.execute("CREATE TABLE embeddings (seq bigint PRIMARY KEY, model text NOT NULL, vector vector NOT NULL)")
    conn.execute("CREATE INDEX embeddings_model ON embeddings (model)")


def m0004_blobs(conn) -> None:
    conn.execute("CREATE TABLE blobs (sha256 text PRIMARY KEY, size bigint NOT NULL, refcount bigint NOT NULL"
                 " DEFAULT 0, created_at double precision NOT NULL, unreferenced_since double precision,"
                 " xxh3_128 text)")
    conn.execute("CREATE INDEX blobs_unreferenced ON blobs (unreferenced_since) WHERE refcount <= 0")
    conn.execute(f"CREATE TABLE blob_holders (sha256 text NOT NULL, agent {T} NOT NULL,"
                 " since double precision NOT NULL, PRIMARY KEY (sha256, agent))")
    conn.execute("CREATE TABLE activation_prefixes (key bytea NOT NULL, seq bigint NOT NULL, tokens bigint NOT NULL,"
                 " PRIMARY KEY (key, seq))")
    conn.execute("CREATE INDEX activation_prefixes_seq ON activation_prefixes (seq)")
    # As in SQLite: deleting a tensor cube (a tombstone, or a row removed outright) releases its blob and its
    # prefixes in the same transaction, whichever code path deletes it; a blob's holders go with it.
    deleted = f"{LifecycleState.DELETED:d}"  # DDL takes no parameters
    conn.execute(f"""
        CREATE FUNCTION memosd_release_blob() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.manifest IS NOT NULL AND OLD.state != {deleted}
               AND (TG_OP = 'DELETE' OR NEW.state = {deleted}) THEN
                UPDATE blobs SET refcount = refcount - 1,
                    unreferenced_since = CASE WHEN refcount <= 1 THEN extract(epoch FROM now())::double precision
                                         ELSE unreferenced_since END
                    WHERE sha256 = (OLD.manifest::jsonb) #>> '{{blob,sha256}}';
                DELETE FROM activation_prefixes WHERE seq = OLD.seq;
            END IF;
            RETURN NULL;
        END $$""")
    conn.execute("CREATE TRIGGER cubes_release_blob AFTER UPDATE OF state OR DELETE ON cubes"
                 " FOR EACH ROW EXECUTE FUNCTION memosd_release_blob()")
    conn.execute("""
        CREATE FUNCTION memosd_forget_holders() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM blob_holders WHERE sha256 = OLD.sha256;
            RETURN NULL;
        END $$""")
    conn.execute("CREATE TRIGGER blobs_forget_holders AFTER DELETE ON blobs"
                 " FOR EACH ROW EXECUTE FUNCTION memosd_forget_holders()")


def m0005_jobs(conn) -> None:
    # MemScheduler's job records, so that GetJob and ListJobs answer after a restart.
    conn.execute(f"CREATE TABLE jobs (id {T} PRIMARY KEY, kind text NOT NULL, owner {T} NOT NULL,"
                 " state integer NOT NULL, created_at double precision NOT NULL, started_at double precision,"
                 " finished_at double precision, done bigint NOT NULL, total bigint NOT NULL, message text NOT NULL,"
                 " result_ids text NOT NULL, metrics text NOT NULL, error_type text, error text)")
    conn.execute("CREATE INDEX jobs_created ON jobs (created_at)")


def m0000_extensions(conn) -> None:
    # pgvector: creating it needs the right to (a superuser, or the database owner where it is trusted).
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def m0006_search_stats(conn) -> None:
    # BM25 as SQLite's FTS5 computes it needs each text's length in tokens and the collection's totals; the
    # length is a generated column (so it follows the text in the statement that changes it) and the totals
    # are kept by a trigger in SHARDS rows, picked by backend, so that concurrent writers rarely wait on one.
    conn.execute("""
        CREATE FUNCTION memosd_tsv_length(tsvector) RETURNS integer LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS 'SELECT coalesce(sum(cardinality(positions)), 0)::integer FROM unnest($1)'""")
    conn.execute("ALTER TABLE cubes ADD COLUMN text_len integer GENERATED ALWAYS AS"
                 " (memosd_tsv_length(to_tsvector('english'::regconfig, coalesce(text, '')))) STORED")
    conn.execute("CREATE TABLE search_stats (shard integer PRIMARY KEY, docs bigint NOT NULL, tokens bigint NOT NULL)")
    conn.execute("INSERT INTO search_stats SELECT 0, count(text), coalesce(sum(text_len), 0) FROM cubes")
    conn.execute(f"""
        CREATE FUNCTION memosd_search_stats() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            docs bigint := 0;
            tokens bigint := 0;
        BEGIN
            IF TG_OP != 'INSERT' AND OLD.text IS NOT NULL THEN
                docs := docs - 1;
                tokens := tokens - OLD.text_len;
            END IF;
            IF TG_OP != 'DELETE' AND NEW.text IS NOT NULL THEN
                docs := docs + 1;
                tokens := tokens + NEW.text_len;
            END IF;
            IF docs != 0 OR tokens != 0 THEN
                INSERT INTO search_stats AS s VALUES (pg_backend_pid() % {SEARCH_STATS_SHARDS}, docs, tokens)
                    ON CONFLICT (shard) DO UPDATE SET docs = s.docs + excluded.docs, tokens = s.tokens + excluded.tokens;
            END IF;
            RETURN NULL;
        END $$""")
    conn.execute("CREATE TRIGGER cubes_search_stats AFTER INSERT OR DELETE OR UPDATE OF text ON cubes"
                 " FOR EACH ROW EXECUTE FUNCTION memosd_search_stats()")
    # The embedding backfill's claims: a cube handed to one daemon to embed is not handed to another until
    # the claim's lease runs out (a daemon that died), so each text is embedded once for the whole cluster.
    conn.execute("CREATE TABLE embedding_claims (seq bigint NOT NULL, model text NOT NULL, claimant text NOT NULL,"
                 " until double precision NOT NULL, PRIMARY KEY (seq, model))")


def m0007_job_leases(conn) -> None:
    # A job is held by one member under a lease: the member running it (runner), until when (lease_until, renewed
    # while it runs), whether someone at any member asked it to stop, and what another member needs to run it
    # again once the lease runs out (spec, JSON). Background work one member does at a time takes a named lease.
    conn.execute("ALTER TABLE jobs ADD COLUMN runner text, ADD COLUMN lease_until double precision,"
                 " ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false, ADD COLUMN spec text")
    from memosd.storage.records import JobState

    unfinished = f"{JobState.QUEUED:d}, {JobState.RUNNING:d}"  # DDL takes no parameters
    conn.execute(f"CREATE INDEX jobs_unfinished ON jobs (lease_until) WHERE state IN ({unfinished})")
    conn.execute(f"CREATE TABLE leases (name {T} PRIMARY KEY, holder text NOT NULL, until double precision NOT NULL)")


def m0008_cluster(conn) -> None:
    # The daemons serving this vault, refreshed by each on a heartbeat (memosd/cluster/members.py).
    conn.execute(f"CREATE TABLE members (member_id {T} PRIMARY KEY, listen text NOT NULL, version text NOT NULL,"
                 " started_at double precision NOT NULL, heard_at double precision NOT NULL)")
    # Each member signs checkpoints with its own audit key, recorded with the admin key's signature over it.
    conn.execute("ALTER TABLE audit_checkpoints ADD COLUMN signer text NOT NULL DEFAULT ''")
    conn.execute(f"CREATE TABLE audit_keys (fingerprint {T} PRIMARY KEY, public_key bytea NOT NULL,"
                 f" member_id {T} NOT NULL, endorsement bytea NOT NULL, created_at double precision NOT NULL)")


def m0009_search_ingest(conn) -> None:
    # Ingest cost (profiled at 100k cubes): text_tsv and text_len were two generated columns, each running
    # to_tsvector on the text (about 70 us a row each on one core), and search_stats took one upsert per row.
    # Now a BEFORE trigger parses the text once and derives both; the totals of a multi-row INSERT or COPY are
    # one upsert per statement (transition table, memosd_texts_added, which also files the new repeats).
    # Updates of the text and deletes keep the row trigger.
    # The columns stay what they were; only the trigger writes them (it overrides any value given for them).
    #
    # BM25 of a common word without scoring all its matches (fulltext._walked): text_repeats holds the lexemes
    # a text has more than once, with their positions (about one a text: most lexemes of a short text occur
    # once), and cube_repeats the same as rows (term, seq, tf, dl), in term order; every other match of a word
    # has tf 1, so its score only falls with its length, and cubes_text_len hands the shortest first.
    conn.execute("ALTER TABLE cubes ALTER COLUMN text_len DROP EXPRESSION")
    conn.execute("ALTER TABLE cubes ALTER COLUMN text_tsv DROP EXPRESSION")
    conn.execute("ALTER TABLE cubes ADD COLUMN text_repeats tsvector NOT NULL DEFAULT ''")
    conn.execute("""
        CREATE FUNCTION memosd_tsv_repeats(tsvector) RETURNS tsvector LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS 'SELECT ts_filter(setweight($1, ''A'', array(SELECT lexeme FROM unnest($1) WHERE cardinality(positions) > 1)),
               ''{a}'')'""")
    conn.execute("UPDATE cubes SET text_repeats = memosd_tsv_repeats(text_tsv) WHERE text IS NOT NULL")
    conn.execute("""
        CREATE FUNCTION memosd_text_search() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            repeats text[];
        BEGIN
            IF TG_OP = 'INSERT' OR NEW.text IS DISTINCT FROM OLD.text THEN
                NEW.text_tsv := to_tsvector('english'::regconfig, coalesce(NEW.text, ''));
                -- One pass over the lexemes for both (memosd_tsv_length, memosd_tsv_repeats).
                SELECT coalesce(sum(cardinality(positions)), 0)::integer,
                       coalesce(array_agg(lexeme) FILTER (WHERE cardinality(positions) > 1), '{}')
                    INTO NEW.text_len, repeats FROM unnest(NEW.text_tsv);
                NEW.text_repeats := ts_filter(setweight(NEW.text_tsv, 'A', repeats), '{a}');
            ELSE
                NEW.text_tsv := OLD.text_tsv;
                NEW.text_len := OLD.text_len;
                NEW.text_repeats := OLD.text_repeats;
            END IF;
            RETURN NEW;
        END $$""")
    conn.execute("CREATE TRIGGER cubes_text_search BEFORE INSERT OR UPDATE OF text, text_tsv, text_len, text_repeats"
                 " ON cubes FOR EACH ROW EXECUTE FUNCTION memosd_text_search()")
    # Lexemes are only compared for equality (with the query's): the database's collation, as the query's.
    # A term's repeats are read one tf at a time, shortest first (cube_repeats_rank).
    conn.execute("CREATE TABLE cube_repeats (term text NOT NULL, seq bigint NOT NULL, tf integer NOT NULL,"
                 " dl integer NOT NULL)")
    conn.execute("CREATE INDEX cube_repeats_rank ON cube_repeats (term, tf, dl, seq)")
    conn.execute("CREATE INDEX cube_repeats_seq ON cube_repeats (seq)")
    conn.execute("INSERT INTO cube_repeats SELECT u.lexeme, c.seq, cardinality(u.positions), c.text_len"
                 " FROM cubes c, unnest(c.text_repeats) u")
    conn.execute("""
        CREATE FUNCTION memosd_cube_repeats() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM cube_repeats WHERE seq = OLD.seq;
            IF TG_OP = 'UPDATE' THEN
                INSERT INTO cube_repeats SELECT u.lexeme, NEW.seq, cardinality(u.positions), NEW.text_len
                    FROM unnest(NEW.text_repeats) u;
            END IF;
            RETURN NULL;
        END $$""")
    conn.execute("CREATE TRIGGER cubes_repeats AFTER DELETE OR UPDATE OF text ON cubes"
                 " FOR EACH ROW EXECUTE FUNCTION memosd_cube_repeats()")
    conn.execute(f"CREATE INDEX cubes_text_len ON cubes (text_len, seq) WHERE kind = {MemoryKind.PLAINTEXT:d}"
                 " AND text IS NOT NULL")
    conn.execute("DROP TRIGGER cubes_search_stats ON cubes")
    conn.execute("CREATE TRIGGER cubes_search_stats AFTER DELETE OR UPDATE OF text ON cubes"
                 " FOR EACH ROW EXECUTE FUNCTION memosd_search_stats()")
    conn.execute(f"""
        CREATE FUNCTION memosd_texts_added() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO cube_repeats SELECT u.lexeme, a.seq, cardinality(u.positions), a.text_len
                FROM added a, unnest(a.text_repeats) u;
            INSERT INTO search_stats AS s
                SELECT pg_backend_pid() % {SEARCH_STATS_SHARDS}, count(text), coalesce(sum(text_len), 0)
                FROM added HAVING count(text) > 0
                ON CONFLICT (shard) DO UPDATE SET docs = s.docs + excluded.docs, tokens = s.tokens + excluded.tokens;
            RETURN NULL;
        END $$""")
    conn.execute("CREATE TRIGGER cubes_texts_added AFTER INSERT ON cubes REFERENCING NEW TABLE AS added"
                 " FOR EACH STATEMENT EXECUTE FUNCTION memosd_texts_added()")


def m0010_search_fields(conn) -> None:
    # Ranking sees more than the text, as SQLite's cubes_fts does (its m0009): the cube's search context
    # (CubeDraft.context, stored beside the text, never returned) and its metadata's top-level string values are
    # in text_tsv too, with weights B and C (the text's lexemes keep D), which fulltext scores by FIELD_WEIGHTS.
    # text_len (FTS5's document length) counts the tokens of all three. The triggers of m0009 follow the new
    # fields; every cube written before is reindexed here, with its repeats and the totals recounted.
    conn.execute("ALTER TABLE cubes ADD COLUMN search_context text")
    conn.execute("""
        CREATE FUNCTION memosd_search_tsv(body text, metadata text, context text) RETURNS tsvector
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            -- Cubes with neither (most outside dialogue) pay for the one parse of their text, as before.
            SELECT CASE WHEN body IS NULL THEN ''::tsvector
                WHEN context IS NULL AND metadata IS NULL THEN to_tsvector('english'::regconfig, body) ELSE
                to_tsvector('english'::regconfig, body)
                || setweight(to_tsvector('english'::regconfig, coalesce(context, '')), 'B')
                || setweight(to_tsvector('english'::regconfig, coalesce((
                       SELECT string_agg(e.value #>> '{}', ' ') FROM jsonb_each(CASE WHEN jsonb_typeof(metadata::jsonb)
                           = 'object' THEN metadata::jsonb ELSE '{}'::jsonb END) e
                       WHERE jsonb_typeof(e.value) = 'string'), '')), 'C')
            END $$""")
    for trigger in ("cubes_text_search", "cubes_search_stats", "cubes_repeats"):
        conn.execute(f"DROP TRIGGER {trigger} ON cubes")
    _reindex(conn, "text IS NOT NULL")
    conn.execute("DELETE FROM cube_repeats")
    conn.execute("INSERT INTO cube_repeats SELECT u.lexeme, c.seq, cardinality(u.positions), c.text_len"
                 " FROM cubes c, unnest(c.text_repeats) u")
    conn.execute("DELETE FROM search_stats")
    conn.execute("INSERT INTO search_stats SELECT 0, count(text), coalesce(sum(text_len), 0) FROM cubes")
    conn.execute("""
        CREATE OR REPLACE FUNCTION memosd_text_search() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            repeats text[];
        BEGIN
            IF TG_OP = 'INSERT' OR NEW.text IS DISTINCT FROM OLD.text OR NEW.metadata IS DISTINCT FROM OLD.metadata
               OR NEW.search_context IS DISTINCT FROM OLD.search_context THEN
                NEW.text_tsv := memosd_search_tsv(NEW.text, NEW.metadata, NEW.search_context);
                SELECT coalesce(sum(cardinality(positions)), 0)::integer,
                       coalesce(array_agg(lexeme) FILTER (WHERE cardinality(positions) > 1), '{}')
                    INTO NEW.text_len, repeats FROM unnest(NEW.text_tsv);
                NEW.text_repeats := ts_filter(setweight(NEW.text_tsv, 'A', repeats), '{a}');
            ELSE
                NEW.text_tsv := OLD.text_tsv;
                NEW.text_len := OLD.text_len;
                NEW.text_repeats := OLD.text_repeats;
            END IF;
            RETURN NEW;
        END $$""")
    fields = "text, metadata, search_context"
    conn.execute(f"CREATE TRIGGER cubes_text_search BEFORE INSERT OR UPDATE OF {fields}, text_tsv, text_len,"
                 " text_repeats ON cubes FOR EACH ROW EXECUTE FUNCTION memosd_text_search()")
    conn.execute(f"CREATE TRIGGER cubes_search_stats AFTER DELETE OR UPDATE OF {fields} ON cubes"
                 " FOR EACH ROW EXECUTE FUNCTION memosd_search_stats()")
    conn.execute(f"CREATE TRIGGER cubes_repeats AFTER DELETE OR UPDATE OF {fields} ON cubes"
                 " FOR EACH ROW EXECUTE FUNCTION memosd_cube_repeats()")


def m0011_vector_width(conn) -> None:
    # Each model's HNSW index covered all of the model's vectors, cast to the index's width: once the model's
    # encoder changed width (under the same name), every vector of the new width failed that cast and none could
    # be stored. Built again over the vectors of its width only (ensure_vector_index); that costs a build of each.
    built = {name for (name,) in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'embeddings'"
        " AND starts_with(indexname, 'embeddings_hnsw_')")}
    for name in built:
        conn.execute(f"DROP INDEX {name}")  # before the column: the table's rewrite would rebuild them
    conn.execute("ALTER TABLE embeddings ADD COLUMN dims integer NOT NULL GENERATED ALWAYS AS (vector_dims(vector)) STORED")
    for model, dims in conn.execute("SELECT DISTINCT model, dims FROM embeddings").fetchall():
        if vector_index_name(model, dims) in built:
            ensure_vector_index(conn, model, dims)


def m0012_search_sizes(conn) -> None:
    # BM25 scored within what a caller may read (fulltext.scope_stats) needs the scope's number of cubes with text
    # and their length: summed from these rows (per namespace, kind, visibility and owner, spread over shards
    # as search_stats is, so that concurrent writers to one namespace do not queue on one row) rather than read
    # from every cube the scope holds. A multi-row INSERT or COPY adds its totals once per statement.
    conn.execute(f"CREATE TABLE search_sizes (namespace {T} NOT NULL, kind integer NOT NULL, visibility integer NOT NULL,"
                 f" owner {T} NOT NULL, shard integer NOT NULL, docs bigint NOT NULL, length bigint NOT NULL,"
                 " PRIMARY KEY (namespace, kind, visibility, owner, shard))")
    conn.execute("INSERT INTO search_sizes SELECT namespace, kind, visibility, owner, 0, count(*), sum(text_len)"
                 " FROM cubes WHERE text IS NOT NULL GROUP BY namespace, kind, visibility, owner")
    upsert = (f"INSERT INTO search_sizes AS s SELECT %s, pg_backend_pid() %% {SEARCH_STATS_SHARDS}, %s"
              " ON CONFLICT (namespace, kind, visibility, owner, shard) DO UPDATE SET docs = s.docs + excluded.docs,"
              " length = s.length + excluded.length;")
    old = upsert % ("OLD.namespace, OLD.kind, OLD.visibility, OLD.owner", "-1, -OLD.text_len")
    new = upsert % ("NEW.namespace, NEW.kind, NEW.visibility, NEW.owner", "1, NEW.text_len")
    conn.execute(f"""
        CREATE FUNCTION memosd_search_sizes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.text IS NOT NULL THEN {old} END IF;
            IF TG_OP = 'UPDATE' AND NEW.text IS NOT NULL THEN {new} END IF;
            RETURN NULL;
        END $$""")
    conn.execute("CREATE TRIGGER cubes_search_sizes_deleted AFTER DELETE ON cubes FOR EACH ROW"
                 " EXECUTE FUNCTION memosd_search_sizes()")
    conn.execute("CREATE TRIGGER cubes_search_sizes AFTER UPDATE ON cubes FOR EACH ROW WHEN ("
                 " OLD.text_len IS DISTINCT FROM NEW.text_len OR (OLD.text IS NULL) <> (NEW.text IS NULL)"
                 " OR OLD.namespace <> NEW.namespace OR OLD.kind <> NEW.kind OR OLD.visibility <> NEW.visibility"
                 " OR OLD.owner <> NEW.owner) EXECUTE FUNCTION memosd_search_sizes()")
    conn.execute(f"""
        CREATE FUNCTION memosd_search_sizes_added() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO search_sizes AS s SELECT namespace, kind, visibility, owner,
                    pg_backend_pid() % {SEARCH_STATS_SHARDS}, count(*), sum(text_len)
                FROM added WHERE text IS NOT NULL GROUP BY namespace, kind, visibility, owner
                ON CONFLICT (namespace, kind, visibility, owner, shard) DO UPDATE SET docs = s.docs + excluded.docs,
                    length = s.length + excluded.length;
            RETURN NULL;
        END $$""")
    conn.execute("CREATE TRIGGER cubes_search_sizes_added AFTER INSERT ON cubes REFERENCING NEW TABLE AS added"
                 " FOR EACH STATEMENT EXECUTE FUNCTION memosd_search_sizes_added()")


def m0013_unspaced_scripts(conn) -> None:
    # Chinese, Japanese, Thai and the other scripts written without spaces are indexed as character pairs, as
    # on SQLite (memosd.storage.segment, whose index_text these are the same steps of): the parser took each run
    # of their letters for one word. memosd_search_tsv reads each field through the new function; the cubes whose
    # fields hold such a run (or metadata with \u escapes, which may spell one) are indexed again, with their
    # repeats, and the totals moved by the change in their lengths (search_sizes follows text_len by trigger).
    run, marks, index = segment.RUN, segment.MARKS, segment.INDEX_FUNCTION
    conn.execute(f"""
        CREATE FUNCTION {index}(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
        DECLARE
            parts text[];
            runs text[];
            units text;
            tail text[] := '{{}}';
            result text;
        BEGIN
            IF t !~ '[{run}]' THEN RETURN t; END IF;
            parts := regexp_split_to_array(t, '[{run}]+');
            runs := ARRAY(SELECT m[1] FROM regexp_matches(t, '([{run}]+)', 'g') AS m);
            result := parts[1];
            FOR i IN 1 .. cardinality(runs) LOOP
                units := regexp_replace(runs[i], '[{marks}]', '', 'g');
                IF length(units) < 2 THEN
                    result := result || ' ' || units || ' ';
                ELSE
                    result := result || ' ' || array_to_string(ARRAY(SELECT substr(units, k, 2)
                        FROM generate_series(1, length(units) - 1) AS k), ' ') || ' ';
                    tail := tail || regexp_split_to_array(units, '');
                END IF;
                result := result || parts[i + 1];
            END LOOP;
            IF cardinality(tail) > 0 THEN result := result || ' ' || array_to_string(tail, ' '); END IF;
            RETURN result;
        END $$""")
    conn.execute(f"""
        CREATE OR REPLACE FUNCTION memosd_search_tsv(body text, metadata text, context text) RETURNS tsvector
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN body IS NULL THEN ''::tsvector
                WHEN context IS NULL AND metadata IS NULL THEN to_tsvector('english'::regconfig, {index}(body)) ELSE
                to_tsvector('english'::regconfig, {index}(body))
                || setweight(to_tsvector('english'::regconfig, coalesce({index}(context), '')), 'B')
                || setweight(to_tsvector('english'::regconfig, coalesce({index}((
                       SELECT string_agg(e.value #>> '{{}}', ' ') FROM jsonb_each(CASE WHEN jsonb_typeof(metadata::jsonb)
                           = 'object' THEN metadata::jsonb ELSE '{{}}'::jsonb END) e
                       WHERE jsonb_typeof(e.value) = 'string')), '')), 'C')
            END $$""")
    conn.execute(f"""
        CREATE TEMP TABLE unspaced ON COMMIT DROP AS SELECT seq, text_len AS old_len FROM cubes
        WHERE text IS NOT NULL AND (text ~ '[{run}]' OR search_context ~ '[{run}]' OR metadata ~ '[{run}]'
                                    OR strpos(metadata, '\\u') > 0)""")
    conn.execute("ALTER TABLE cubes DISABLE TRIGGER cubes_text_search")  # it would keep the old index
    _reindex(conn, "seq IN (SELECT seq FROM unspaced)")
    conn.execute("ALTER TABLE cubes ENABLE TRIGGER cubes_text_search")
    conn.execute("DELETE FROM cube_repeats WHERE seq IN (SELECT seq FROM unspaced)")
    conn.execute("INSERT INTO cube_repeats SELECT u.lexeme, c.seq, cardinality(u.positions), c.text_len"
                 " FROM cubes c JOIN unspaced USING (seq), unnest(c.text_repeats) u")
    conn.execute("INSERT INTO search_stats AS s SELECT 0, 0, sum(c.text_len - u.old_len) FROM cubes c"
                 " JOIN unspaced u USING (seq) HAVING count(*) > 0"
                 " ON CONFLICT (shard) DO UPDATE SET tokens = s.tokens + excluded.tokens")


def _reindex(conn, where: str) -> None:
    """Index the cubes matching `where` again with memosd_search_tsv: text_tsv, text_len, text_repeats (with the
    BEFORE trigger dropped or disabled, which would keep the old values)."""
    conn.execute(f"""
        UPDATE cubes c SET text_tsv = s.tsv, text_len = s.len, text_repeats = ts_filter(setweight(s.tsv, 'A', s.repeats),
            '{{a}}')
        FROM (SELECT x.seq, x.tsv,
                     (SELECT coalesce(sum(cardinality(positions)), 0)::integer FROM unnest(x.tsv)) AS len,
                     (SELECT coalesce(array_agg(lexeme) FILTER (WHERE cardinality(positions) > 1), '{{}}')
                      FROM unnest(x.tsv)) AS repeats
              FROM (SELECT seq, memosd_search_tsv(text, metadata, search_context) AS tsv FROM cubes
                    WHERE {where}) x) s
        WHERE c.seq = s.seq""")


MIGRATIONS: tuple[tuple[str, Callable], ...] = tuple((f.__name__, f) for f in (
    m0000_extensions, m0001_governance, m0002_store, m0003_cubes, m0004_blobs, m0005_jobs,
    m0006_search_stats, m0007_job_leases, m0008_cluster, m0009_search_ingest, m0010_search_fields,
    m0011_vector_width, m0012_search_sizes, m0013_unspaced_scripts))


def vector_index_name(model: str, dims: int) -> str:
    """The name of one model's HNSW index at one width (ensure_vector_index creates it)."""
    return "embeddings_hnsw_" + hashlib.sha256(f"{model}\0{dims}".encode()).hexdigest()[:16]


def ensure_vector_index(conn, model: str, dims: int) -> str:
    """The HNSW (cosine) index over one model's embeddings of one width, created if missing; its name.
    Queries use it with `WHERE model = %s AND dims = DIMS ORDER BY vector::vector(DIMS) <=> %s`
    (DIMS a literal, as the planner matches it to the index's predicate)."""
    name = vector_index_name(model, dims)
    literal = model.replace("'", "''")  # DDL takes no parameters
    # Only vectors of this width: the cast would fail on any other, and so would every write of one.
    conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON embeddings USING hnsw ((vector::vector({int(dims)}))"
                 f" vector_cosine_ops) WHERE model = '{literal}' AND dims = {int(dims)}")
    return name


# -- applying ------------------------------------------------------------------------------------

def applied(conn) -> list[str] | None:
    """The names of the migrations applied, in order; None where the migrations table does not exist."""
    if conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None:
        return None
    return [r[0] for r in conn.execute(f"SELECT name FROM {TABLE} ORDER BY name")]


def check(names: list[str] | None) -> list[str]:
    """The migrations still to apply; FailedPrecondition where the database is ahead of this code."""
    known = [name for name, _ in MIGRATIONS]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise FailedPrecondition(
            f"the vault's schema is newer than this memosd (it has migration {unknown[-1]}, which this version"
            " does not know): upgrade memosd")
    return [name for name in known if name not in set(names or ())]


def migrate(conn, *, create: bool) -> list[str]:
    """Apply the pending migrations on an autocommit connection, each in its own transaction; the names applied.
    Without create, a database with no schema at all is refused (FailedPrecondition) rather than initialised."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        names = applied(conn)
        if names is None and not create:
            raise FailedPrecondition("the vault database has no memosd schema: create it with"
                                " `memosd init --vault-url URL` first")
        pending = check(names)
        if names is None:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (name {T} PRIMARY KEY,"
                         " applied_at double precision NOT NULL)")
        steps = dict(MIGRATIONS)
        for name in pending:
            with conn.transaction():
                steps[name](conn)
                conn.execute(f"INSERT INTO {TABLE} (name, applied_at) VALUES (%s, %s)", (name, time.time()))
        return pending
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
