"""The PostgreSQL engine's faults: an unreachable, restarted or cut-off server, a statement timeout, a failing job."""

import asyncio
from urllib.parse import urlsplit

import psycopg
import pytest

from memosd.errors import FailedPrecondition, Unavailable
from memosd.storage.postgres.db import Database
from tests.pg_server import PostgresServer, admin_connect


def _run(coro):
    return asyncio.run(coro)


def test_an_unreachable_database_is_unavailable_and_the_password_never_shown(tmp_path):
    url = f"postgresql://memosd:s3cret-pw@/memosd?host={tmp_path}&connect_timeout=2"
    with pytest.raises(Unavailable, match="cannot reach the PostgreSQL vault") as caught:
        Database(url)
    assert "s3cret-pw" not in str(caught.value) and "***" in str(caught.value)


def test_a_statement_past_the_timeout_is_unavailable_and_the_connection_serves_on(postgres_url):
    db = Database(postgres_url, create=False, pool_size=1, statement_timeout=0.2)
    try:
        with pytest.raises(Unavailable, match="statement_timeout"):
            _run(db.write(lambda conn: conn.execute("SELECT pg_sleep(5)")))
        assert _run(db.read(lambda conn: conn.execute("SELECT 1").fetchone())) == (1,)
    finally:
        db.close()


def test_connections_the_server_drops_are_replaced_by_themselves(postgres_url):
    db = Database(postgres_url, create=False, pool_size=2)
    try:
        pid = _run(db.read(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0]))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'memosd' AND datname = current_database()")
        assert _run(db.read(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])) != pid
    finally:
        db.close()


def test_calls_during_an_outage_are_unavailable_and_the_pool_reconnects_after_it(postgres_url, postgres_server):
    name = urlsplit(postgres_url).path.lstrip("/")
    db = Database(postgres_url, create=False, pool_size=2, connect_timeout=2)
    try:
        _run(db.write(lambda conn: db.sql.governance.init_settings(conn, {"before": "1"})))
        with admin_connect(postgres_server) as admin:  # the database goes away: no new connections, old ones cut
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        with pytest.raises(Unavailable, match="cannot reach the PostgreSQL vault"):
            _run(db.write(lambda conn: db.sql.governance.init_settings(conn, {"during": "1"})))
        with admin_connect(postgres_server) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        # No restart of the daemon's Database: the pool connects again by itself; nothing acknowledged is lost.
        _run(db.write(lambda conn: db.sql.governance.init_settings(conn, {"after": "1"})))
        settings = _run(db.read(db.sql.governance.load_settings))
        assert (settings.get("before"), settings.get("during"), settings.get("after")) == ("1", None, "1")
    finally:
        db.close()


def test_a_server_restarted_under_the_daemon_is_unavailable_meanwhile_and_served_again_after():
    server = PostgresServer()  # a server of its own: this one is stopped mid-test
    try:
        server.start()
        db = Database(server.url, create=True, connect_timeout=2)
        try:
            _run(db.write(lambda conn: db.sql.governance.init_settings(conn, {"before": "1"})))
            server.stop()
            with pytest.raises(Unavailable, match="cannot reach the PostgreSQL vault"):
                _run(db.write(lambda conn: db.sql.governance.init_settings(conn, {"during": "1"})))
            server.start()
            _run(db.write(lambda conn: db.sql.governance.init_settings(conn, {"after": "1"})))
            settings = _run(db.read(db.sql.governance.load_settings))
            assert (settings.get("before"), settings.get("during"), settings.get("after")) == ("1", None, "1")
        finally:
            db.close()
    finally:
        server.stop()
        server.remove()


def test_a_failing_write_commits_nothing_and_a_read_may_not_write(postgres_url):
    db = Database(postgres_url, create=False)
    try:
        def half(conn):
            db.sql.governance.insert_agent(conn, "alice", b"k" * 32, (), False, 1.0)
            raise FailedPrecondition("changed my mind")

        with pytest.raises(FailedPrecondition):
            _run(db.write(half))
        assert "alice" not in {r[0] for r in _run(db.read(db.sql.governance.load_agents))}
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            _run(db.read(lambda conn: db.sql.governance.insert_agent(conn, "bob", b"k" * 32, (), False, 1.0)))
        assert _run(db.read(lambda conn: conn.execute("SHOW synchronous_commit").fetchone())) == ("on",)
        # A read is one read-only snapshot, a write the server's default, on whichever pooled connection served
        # the other before.
        mode = "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')"
        for _ in range(4):
            assert _run(db.read(lambda conn: conn.execute(mode).fetchone())) == ("repeatable read", "on")
            assert _run(db.write(lambda conn: conn.execute(mode).fetchone())) == ("read committed", "off")
        with db.snapshot() as conn:
            assert conn.execute(mode).fetchone() == ("repeatable read", "on")
    finally:
        db.close()
