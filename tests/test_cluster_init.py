"""Two `memosd init` runs at once on one empty PostgreSQL vault (two members set up at the same moment): one
creates the schema and the admin, the other says the vault was initialised already; no traceback, one admin,
and no admin key file that is not the vault's."""

from __future__ import annotations

import os
import subprocess
import sys

from memos_client.auth import AgentKey
from memosd.storage.postgres import schema
from tests.pg_server import admin_connect, database_url
from tests.timing import wait_for

_WAITING = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"


def _blank(postgres_server: str, name: str) -> str:
    with admin_connect(postgres_server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(postgres_server, name)


def test_two_inits_at_once_on_an_empty_vault_make_one_admin_and_say_so(postgres_server, tmp_path):
    import psycopg

    url = _blank(postgres_server, "memosd_init_race")
    dirs = [tmp_path / "a", tmp_path / "b"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # Both start behind the migration lock, held here, and are let go together: they race from the schema on.
    with psycopg.connect(url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (schema.MIGRATION_LOCK,))
        runs = [subprocess.Popen([sys.executable, "-m", "memosd.cli", "init", "--data-dir", str(d), "--vault-url",
                                  url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                 stdin=subprocess.DEVNULL) for d in dirs]
        try:
            wait_for(lambda: gate.execute(_WAITING).fetchone()[0] == 2, "the two inits never both reached the vault")
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (schema.MIGRATION_LOCK,))
        results = [(run.wait(120), *run.communicate()) for run in runs]
    for code, out, err in results:
        assert "Traceback" not in out + err, err
        assert code == 0, err
    said = sorted("already" in out for _code, out, _err in results)
    assert said == [False, True], [out for _c, out, _e in results]
    with psycopg.connect(url) as conn:
        assert schema.applied(conn) == [name for name, _ in schema.MIGRATIONS]
        admins = conn.execute("SELECT public_key FROM agents WHERE admin").fetchall()
    assert len(admins) == 1
    keys = [d / "admin.key" for d in dirs if (d / "admin.key").exists()]
    assert len(keys) == 1 and bytes(admins[0][0]) == AgentKey.load(keys[0]).public_bytes
    joined = next(out for _c, out, _e in results if "already" in out)
    assert str(keys[0].parent) not in joined and "admin.key" in joined  # it says where the key must come from


