"""The PostgreSQL engine itself: its schema and migrations, snapshots, concurrent writers, its search columns, its
completeness against the SQLite engine (faults: test_postgres_faults.py; the storage contract runs on it too)."""

import asyncio
import importlib
import inspect
import pkgutil
import re
import threading
from pathlib import Path

import psycopg
import pytest

import memosd.storage.postgres as pg_engine
from memosd.storage import filter_sql as shared_filters
import memosd.storage.sqlite as sqlite_engine
from memosd.cube import CubeFilter, LifecycleState, MemoryKind, Visibility
from memosd.errors import FailedPrecondition
from memosd.governance import audit
from memosd.governance.core import ScopeRule
from memosd.storage.postgres import schema
from memosd.storage.postgres.db import Database
from memosd.store.memstore import EventKind
from tests.pg_server import admin_connect, database_url

# Not record modules the core calls: the runner, the schema, the embedded backup, and the two sides of `memosd
# migrate` (copy.py reads the embedded vault on SQLite and writes it on PostgreSQL, so their functions differ).
# vector_index: the embedded vault's HNSW index support (PostgreSQL searches vectors in the database).
ENGINE_ONLY = {"db", "backup", "schema", "copy", "vector_index"}


def _run(coro):
    return asyncio.run(coro)


# -- completeness ---------------------------------------------------------------------------------

def _modules(package) -> set[str]:
    return {m.name for m in pkgutil.iter_modules(package.__path__)} - ENGINE_ONLY - {"urls"}


def _functions(module) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(f) for name, f in vars(module).items()
            if inspect.isfunction(f) and not name.startswith("_") and f.__module__ == module.__name__}


def _shape(sig: inspect.Signature) -> list:
    # Names, kinds and defaults: the connection's annotation is the engine's own.
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_the_postgres_engine_has_every_sqlite_record_function_with_its_signature():
    missing = set(pg_engine.MISSING)
    sqlite_mods, pg_mods = _modules(sqlite_engine), _modules(pg_engine)
    assert not missing & pg_mods, f"now implemented, take them out of postgres.MISSING: {missing & pg_mods}"
    assert sqlite_mods - pg_mods <= missing, f"not on PostgreSQL and not in postgres.MISSING: {sqlite_mods - pg_mods - missing}"
    for name in sorted(sqlite_mods & pg_mods):
        ours = _functions(importlib.import_module(f"memosd.storage.postgres.{name}"))
        theirs = _functions(importlib.import_module(f"memosd.storage.sqlite.{name}"))
        assert set(theirs) <= set(ours), f"postgres.{name} lacks {set(theirs) - set(ours)}"
        for fn, sig in theirs.items():
            assert _shape(ours[fn]) == _shape(sig), f"postgres.{name}.{fn}{ours[fn]} differs from sqlite's {sig}"
    assert set(sqlite_engine.__all__) - missing - ENGINE_ONLY <= set(pg_engine.__all__)  # db.sql offers the same modules


# -- schema and migrations ------------------------------------------------------------------------

def _empty_database(postgres_server, name):
    with admin_connect(postgres_server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(postgres_server, name)


def test_migrations_are_recorded_in_order_and_applied_once(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert schema.applied(conn) == [name for name, _ in schema.MIGRATIONS]
        assert schema.migrate(conn, create=False) == []
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone() == ("vector",)
        # Names compared by range ("p/" <= name < "p0") compare bytewise, as in SQLite, whatever the locale.
        assert conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND column_name IN ('namespace', 'name', 'topic', 'id', 'owner', 'agent')"
            " AND collation_name IS DISTINCT FROM 'C'").fetchall() == []


def test_two_daemons_creating_the_schema_at_once_migrate_it_once(postgres_server):
    url = _empty_database(postgres_server, "memosd_race")
    done, errors = [], []

    def create():
        try:
            db = Database(url, create=True)
            done.append(db.applied)
            db.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(d) for d in done) == [0, 0, len(schema.MIGRATIONS)]


def test_a_database_without_the_schema_is_refused_unless_created(postgres_server):
    url = _empty_database(postgres_server, "memosd_blank")
    with pytest.raises(FailedPrecondition, match="no memosd schema.*memosd init --vault-url"):
        Database(url, create=False)
    with psycopg.connect(url) as conn:  # refusing created nothing
        assert schema.applied(conn) is None


def test_a_schema_newer_than_the_code_is_refused(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {schema.TABLE} (name, applied_at) VALUES ('m9999_from_the_future', 0)")
    with pytest.raises(FailedPrecondition, match="newer than this memosd.*m9999_from_the_future"):
        Database(postgres_url, create=False)


def test_a_snapshot_keeps_seeing_what_was_committed_when_it_began(postgres_url):
    db = Database(postgres_url, create=False)
    try:
        def agents(conn):
            return sorted(r[0] for r in db.sql.governance.load_agents(conn))

        _run(db.write(lambda conn: db.sql.governance.insert_agent(conn, "alice", b"k" * 32, (), False, 1.0)))
        with db.snapshot() as conn:
            first = agents(conn)
            _run(db.write(lambda c: db.sql.governance.insert_agent(c, "bob", b"k" * 32, (), False, 2.0)))
            assert agents(conn) == first == ["alice"]
        assert _run(db.read(agents)) == ["alice", "bob"]
    finally:
        db.close()


# -- concurrent writers ----------------------------------------------------------------------------

def _write_from_two_daemons(postgres_url, job_for, jobs_per_thread: int, threads_per_daemon: int = 4):
    """job_for(db, n) written by threads_per_daemon threads on each of two Databases at once, jobs_per_thread
    each (n = thread * 1000 + i), all in flight together; returns both Databases, still open."""
    daemons = [Database(postgres_url, create=False, pool_size=4) for _ in range(2)]
    errors: list[BaseException] = []

    def writer(db, w):
        async def go():
            await asyncio.gather(*(db.write(job_for(db, w * 1000 + i)) for i in range(jobs_per_thread)))
        try:
            _run(go())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(db, d * threads_per_daemon + t))
               for d, db in enumerate(daemons) for t in range(threads_per_daemon)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for d in daemons:
            d.close()
    assert errors == []
    return daemons


def _gap_free_topics_and_intact_chain(db, topics) -> int:
    """Each topic's seqs 1..n with its last_seq n, the audit chain verified over every event; the events' count."""
    total = 0
    for topic in topics:
        seqs = [r[0] for r in _run(db.read(lambda conn, t=topic: db.sql.events.events_after(conn, t, 0, 10_000)))]
        assert seqs == list(range(1, len(seqs) + 1)), f"{topic}: {seqs}"
        assert _run(db.read(lambda conn, t=topic: db.sql.events.topics(conn, None)[t].last_seq)) == len(seqs)
        total += len(seqs)
    ok, checked, bad, reason = _run(db.read(lambda conn: audit.verify(db.sql.audit.entries(conn),
                                                                    db.sql.audit.head(conn))))
    assert (ok, checked, reason) == (True, total, "")
    return total


def test_concurrent_writers_in_two_daemons_keep_topic_seqs_gap_free_and_the_audit_chain_intact(postgres_url):
    topics, per_thread, threads_per_daemon = ("news", "ops", "fresh/one"), 15, 4

    def publish(db, n):
        topic = topics[(n // 1000 + n % 1000) % len(topics)]  # thread w's i-th write: topic (w + i)

        def job(conn):
            seq = db.sql.events.append_event(conn, topic, int(EventKind.PUBLISHED), f"c{n}", 1, "alice", float(n),
                                             None, max_age=0.0, max_events=0)
            db.sql.audit.append(conn, float(n), "alice", "store.publish", topic, "allow", audit.detail(seq=seq))
            return seq
        return job

    daemons = _write_from_two_daemons(postgres_url, publish, per_thread, threads_per_daemon)
    try:
        assert _gap_free_topics_and_intact_chain(daemons[0], topics) == 2 * threads_per_daemon * per_thread
    finally:
        for d in daemons:
            d.close()


def test_groups_of_events_from_two_daemons_at_once_keep_topic_seqs_gap_free_and_the_audit_chain_intact(postgres_url):
    # As MemStore's group commit writes them: topics locked in name order, each topic's events in one statement,
    # the group's audit entries together.
    topics, groups_per_thread, threads_per_daemon = ("news", "ops", "fresh/one"), 6, 4

    def group(db, n):
        def job(conn):
            mine = sorted({topics[(n + k) % len(topics)] for k in range(1 + n % 3)})
            written = []
            for topic in mine:
                db.sql.events.lock_topic(conn, topic)
                rows = [(int(EventKind.PUBLISHED), f"c{n}-{i}", 1, "alice", float(n), None) for i in range(1 + n % 4)]
                first = db.sql.events.append_events(conn, topic, rows, max_age=0.0, max_events=0)
                written += [(topic, first + i) for i in range(len(rows))]
            db.sql.audit.append_many(conn, [(float(n), "alice", "store.publish", topic, "allow", audit.detail(seq=seq))
                                            for topic, seq in written])
            return written
        return job

    daemons = _write_from_two_daemons(postgres_url, group, groups_per_thread, threads_per_daemon)
    try:
        expected = sum(len({topics[(n + k) % 3] for k in range(1 + n % 3)}) * (1 + n % 4)
                       for w in range(2 * threads_per_daemon) for n in range(w * 1000, w * 1000 + groups_per_thread))
        assert _gap_free_topics_and_intact_chain(daemons[0], topics) == expected
    finally:
        for d in daemons:
            d.close()


def test_a_publish_id_sent_to_two_daemons_at_once_publishes_once(postgres_url):
    daemons = [Database(postgres_url, create=False, pool_size=4) for _ in range(2)]
    results: list = []

    def job(db):
        def publish(conn):
            # As MemStore's publish: a publish id seen already answers with its event, else a new one is appended.
            found = db.sql.events.find_published(conn, "news", "p-1")
            if found:
                return found[0], True
            return db.sql.events.append_event(conn, "news", 1, "c1", 1, "alice", 1.0, "p-1",
                                              max_age=0.0, max_events=0), False
        return publish

    def send(db):
        async def go():
            return await asyncio.gather(*(db.write(job(db)) for _ in range(4)))
        results.extend(_run(go()))

    threads = [threading.Thread(target=send, args=(db,)) for db in daemons]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [(1, False)] + [(1, True)] * 7
    finally:
        for d in daemons:
            d.close()


# -- cubes' search columns and the export ---------------------------------------------------------------

def _insert_cube(conn, cube_id, namespace, text="", kind=MemoryKind.PLAINTEXT, state=LifecycleState.ACTIVE,
                 expires_at=None, owner="alice", visibility=Visibility.NAMESPACE):
    return conn.execute(
        "INSERT INTO cubes (id, namespace, kind, state, version, parent_version, text, owner, visibility,"
        " created_at, updated_at, expires_at) VALUES (%s, %s, %s, %s, 1, 0, %s, %s, %s, 1.0, 1.0, %s) RETURNING seq",
        (cube_id, namespace, int(kind), int(state), text, owner, int(visibility), expires_at)).fetchone()[0]


def test_full_text_follows_the_text_and_uses_its_gin_index(postgres_url):
    db = Database(postgres_url, create=False)
    try:
        def setup(conn):
            _insert_cube(conn, "a", "n", "Running dogs chased cats")
            seq = _insert_cube(conn, "b", "n", "nothing here")
            conn.execute("UPDATE cubes SET text = 'the dog runs' WHERE seq = %s", (seq,))

        _run(db.write(setup))

        def hits(conn):
            conn.execute("SET LOCAL enable_seqscan = off")
            plan = conn.execute("EXPLAIN SELECT id FROM cubes WHERE text_tsv @@ plainto_tsquery('english', 'run')")
            ids = conn.execute("SELECT id FROM cubes WHERE text_tsv @@ plainto_tsquery('english', 'dog run')"
                               " ORDER BY id").fetchall()
            return " ".join(r[0] for r in plan), [r[0] for r in ids]

        plan, ids = _run(db.read(hits))
        assert ids == ["a", "b"] and "cubes_fts" in plan
    finally:
        db.close()


def test_embeddings_of_any_dimension_and_a_per_model_hnsw_index(postgres_url):
    db = Database(postgres_url, create=False)
    try:
        def setup(conn):
            for i, vector in enumerate(([1, 0, 0], [0.9, 0.1, 0], [0, 1, 0])):
                seq = _insert_cube(conn, f"v{i}", "n")
                conn.execute("INSERT INTO embeddings (seq, model, vector) VALUES (%s, 'mini', %s::vector)",
                             (seq, str(vector)))
            seq = _insert_cube(conn, "w", "n")
            conn.execute("INSERT INTO embeddings (seq, model, vector) VALUES (%s, 'wide', %s::vector)",
                         (seq, str([0.5] * 5)))
            return schema.ensure_vector_index(conn, "mini", 3)

        index = _run(db.write(setup))
        assert _run(db.write(lambda conn: schema.ensure_vector_index(conn, "mini", 3))) == index  # idempotent

        def nearest(conn):
            conn.execute("SET LOCAL enable_seqscan = off")
            query = ("SELECT c.id FROM embeddings e JOIN cubes c ON c.seq = e.seq WHERE e.model = 'mini'"
                     " AND e.dims = 3 ORDER BY e.vector::vector(3) <=> '[1,0,0]'::vector(3) LIMIT 2")
            plan = " ".join(r[0] for r in conn.execute("EXPLAIN " + query))
            return plan, [r[0] for r in conn.execute(query)]

        plan, ids = _run(db.read(nearest))
        assert ids == ["v0", "v1"] and index in plan
    finally:
        db.close()


def test_the_export_reads_the_cubes_a_filter_selects_in_storage_order(postgres_url):
    db = Database(postgres_url, create=False)
    try:
        def setup(conn):
            _insert_cube(conn, "a", "a")
            _insert_cube(conn, "ab", "a/b", kind=MemoryKind.ACTIVATION)
            _insert_cube(conn, "other", "ab")
            _insert_cube(conn, "expired", "a", expires_at=5.0)
            _insert_cube(conn, "mine", "a", owner="bob", visibility=Visibility.OWNER)
            _insert_cube(conn, "archived", "a", state=LifecycleState.ARCHIVED)

        _run(db.write(setup))

        def ids(f, batch=1000):
            return _run(db.read(lambda conn: [r[1] for r in db.sql.export.cube_rows(conn, f, 10.0, batch)]))

        assert ids(CubeFilter(namespace_prefix="a")) == ["a", "ab", "mine"]
        assert ids(CubeFilter(), batch=1) == ["a", "ab", "other", "mine"]
        assert ids(CubeFilter(viewer="alice")) == ["a", "ab", "other"]
        assert ids(CubeFilter(states=frozenset({LifecycleState.EXPIRED, LifecycleState.ARCHIVED}))) == [
            "expired", "archived"]
        assert ids(CubeFilter(kinds=frozenset({MemoryKind.ACTIVATION}))) == ["ab"]
        scope = (ScopeRule("a", False), ScopeRule("a", True, frozenset({MemoryKind.ACTIVATION})))
        assert ids(CubeFilter(scope=scope)) == ["a", "ab", "mine"]
        assert ids(CubeFilter(scope=())) == []
    finally:
        db.close()


def test_a_scope_too_large_to_inline_filters_through_one_parameter(postgres_url, monkeypatch):
    db = Database(postgres_url, create=False)
    try:
        _run(db.write(lambda conn: [_insert_cube(conn, i, ns, kind=k) for i, ns, k in (
            ("a", "a", MemoryKind.PLAINTEXT), ("ab", "a/b", MemoryKind.ACTIVATION), ("b", "b", MemoryKind.PLAINTEXT),
            ("bc", "b/c", MemoryKind.PLAINTEXT), ("c", "c", MemoryKind.PLAINTEXT))]))
        scope = (ScopeRule("a", True, frozenset({MemoryKind.ACTIVATION})), ScopeRule("b", False), ScopeRule("c", True))

        def ids():
            return _run(db.read(lambda conn: [r[1] for r in db.sql.export.cube_rows(conn, CubeFilter(scope=scope), 10.0)]))

        inline = ids()
        monkeypatch.setattr(shared_filters, "MAX_INLINE_RULES", 0)  # the limit both engines' dialects share
        assert inline == ids() == ["ab", "b", "c"]
    finally:
        db.close()


def test_each_advisory_lock_key_names_one_lock():
    # Two locks on one key would make unrelated work wait for each other (a migration blocked every put once).
    root = Path(__file__).resolve().parents[1] / "memosd" / "storage" / "postgres"
    keys: dict[str, list[str]] = {}
    for path in sorted(root.glob("*.py")):
        for name, value in re.findall(r"^(\w+_LOCK) = (0x[0-9A-Fa-f_]+)$", path.read_text(), re.M):
            keys.setdefault(value.replace("_", "").lower(), []).append(f"{path.name}:{name}")
    assert len(keys) >= 5
    assert {k: v for k, v in keys.items() if len(v) > 1} == {}
