"""The `engine` fixture of the storage contract: each storage engine's database, migrated as the daemon opens it.

Contract tests take `engine` and run once per engine in ENGINES. A test module whose functions a newer engine
does not implement yet says so with `pytestmark = pytest.mark.engines("sqlite")`, never with a skip.
The PostgreSQL engine's database is a fresh one per test on the session's server (tests/pg_server.py)."""

import asyncio
import dataclasses
import sqlite3
from contextlib import closing, contextmanager

import pytest

from memosd.daemon import open_storage
from memosd.storage.sqlite.db import register_functions
from tests.daemon import make_config

ENGINES = ["sqlite", "postgresql"]
# The daemon-level suites marked `pytestmark = pytest.mark.vaults` run once per vault engine: their `config`
# (and so `daemon`, `client`, ...) is parametrized, the tests themselves unchanged.
VAULTS = ["sqlite", "postgresql"]


class Engine:
    """One storage engine's database, with the core's two ways in: a write transaction and a read snapshot."""

    def __init__(self, name, db):
        self.name = name
        self.db = db
        self.sql = db.sql  # the engine's record functions, as the core calls them

    def write(self, job):
        return asyncio.run(self.db.write(job))

    def read(self, job):
        return asyncio.run(self.db.read(job))


def engine_params(metafunc) -> None:
    """Parametrize `engine` over ENGINES, narrowed by an `engines` mark, and a `vaults`-marked test's `config`
    over VAULTS (pytest_generate_tests calls this)."""
    if "engine" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("engines")
        names = [e for e in ENGINES if mark is None or e in mark.args]
        metafunc.parametrize("engine", names, indirect=True)
    mark = metafunc.definition.get_closest_marker("vaults")
    if mark is not None and "config" in metafunc.fixturenames:
        metafunc.parametrize("config", [v for v in VAULTS if not mark.args or v in mark.args], indirect=True)


def vault_settings(vault: str, request) -> dict:
    """Config overrides that put the daemon's vault on `vault` (a fresh, migrated database for postgresql)."""
    return {} if vault == "sqlite" else {"vault_url": request.getfixturevalue("postgres_url")}


@contextmanager
def raw_connection(config):
    """A plain connection to the daemon's vault database, autocommitting, for tests that tamper with it."""
    if config.vault_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(config.vault_url, autocommit=True) as conn:
            yield conn
    else:
        with closing(sqlite3.connect(config.data_dir / "memos.db", isolation_level=None)) as conn:
            register_functions(conn)  # the triggers' own (a tool writing cubes without them is refused)
            yield conn


@pytest.fixture
def engine(request, tmp_path):
    config = make_config(tmp_path)
    if request.param == "postgresql":
        config = dataclasses.replace(config, vault_url=request.getfixturevalue("postgres_url"))
    config.data_dir.mkdir(parents=True, mode=0o700)
    db, _ = asyncio.run(open_storage(config))  # migrated, as the daemon opens it
    yield Engine(request.param, db)
    db.close()
