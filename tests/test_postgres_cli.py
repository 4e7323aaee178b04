"""vault_url, blob_url and s3_endpoint_url from every source; `memosd init` and `serve` on a PostgreSQL vault_url."""

import subprocess
import sys

import psycopg
import pytest

from memosd.cli import main as memosd_main
from memosd.config import load_config
from memosd.errors import InvalidArgument
from memosd.storage.postgres import schema
from memosd.storage.urls import redact, redact_text, vault_engine
from tests.pg_server import admin_connect, database_url

PG = "postgresql://memosd@db.example:5432/memos"


def test_storage_urls_come_from_flags_variables_and_the_toml_file(tmp_path):
    assert (load_config({}, env={}).vault_url, load_config({}, env={}).blob_url) == ("sqlite:", "file:")
    (tmp_path / "memosd.toml").write_text(f'vault_url = "{PG}"\nblob_url = "s3://bucket/pre"\n'
                                          's3_endpoint_url = "http://127.0.0.1:9000"\n')
    from_file = load_config({"data_dir": str(tmp_path)}, env={})
    assert (from_file.vault_url, from_file.blob_url, from_file.s3_endpoint_url) == (
        PG, "s3://bucket/pre", "http://127.0.0.1:9000")
    env = {"MEMOSD_VAULT_URL": "postgresql://env@/memos?host=/run/pg", "MEMOSD_BLOB_URL": "file:",
           "MEMOSD_S3_ENDPOINT_URL": "http://env"}
    from_env = load_config({"data_dir": str(tmp_path)}, env=env)
    assert (from_env.vault_url, from_env.blob_url, from_env.s3_endpoint_url) == (
        "postgresql://env@/memos?host=/run/pg", "file:", "http://env")
    flags = load_config({"data_dir": str(tmp_path), "vault_url": "sqlite:", "blob_url": "s3://b",
                         "s3_endpoint_url": "http://flag"}, env=env)
    assert (flags.vault_url, flags.blob_url, flags.s3_endpoint_url) == ("sqlite:", "s3://b", "http://flag")


@pytest.mark.parametrize("url", ["sqlite:/elsewhere.db", "mysql://x@h/db", "postgresql:memos", "memos.db"])
def test_a_vault_url_of_no_engine_is_refused(url):
    with pytest.raises(InvalidArgument, match="use sqlite:"):
        load_config({"vault_url": url}, env={})


def test_a_bad_url_is_refused_without_its_password():
    with pytest.raises(InvalidArgument, match="vault_url 'mysql://x:\\*\\*\\*@h/db'"):
        load_config({"vault_url": "mysql://x:hunter2@h/db"}, env={})
    with pytest.raises(InvalidArgument, match="blob_url"):
        load_config({"blob_url": "ftp://x"}, env={})


def test_the_engine_is_the_urls_scheme():
    assert vault_engine("sqlite:") == "sqlite"
    assert vault_engine(PG) == vault_engine("postgres://u@/db?host=/run/pg") == "postgresql"


def test_a_password_in_the_url_is_never_shown():
    assert redact("postgresql://memosd:hunter2@db:5432/memos?sslmode=require") == (
        "postgresql://memosd:***@db:5432/memos?sslmode=require")
    assert redact("postgresql://memosd@/memos?host=/run/pg&password=hunter2") == (
        "postgresql://memosd@/memos?host=/run/pg&password=***")
    assert redact(PG) == PG and redact("sqlite:") == "sqlite:"
    assert redact_text("auth failed for hunter%32 and hunter2", "postgresql://u:hunter%32@h/db") == (
        "auth failed for *** and ***")
    config = load_config({"vault_url": "postgresql://memosd:hunter2@db/memos"}, env={})
    assert "hunter2" not in repr(config)


# -- init and serve --------------------------------------------------------------------------------

def _blank(postgres_server, name):
    with admin_connect(postgres_server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(postgres_server, name)


def _with_password(url: str, password: str) -> str:
    # The test server trusts local connections: a password in the URL is carried, and ignored by the server.
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


def test_init_creates_the_schema_and_the_admin_and_never_prints_the_password(postgres_server, tmp_path, capsys):
    url = _with_password(_blank(postgres_server, "memosd_init"), "hunter2")
    assert memosd_main(["init", "--data-dir", str(tmp_path / "data"), "--vault-url", url]) == 0
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err and "postgres:***@" in out.out
    assert (tmp_path / "data" / "admin.key").is_file()
    with psycopg.connect(url) as conn:
        assert schema.applied(conn) == [name for name, _ in schema.MIGRATIONS]
        assert conn.execute("SELECT admin FROM agents WHERE name = 'admin'").fetchone() == (True,)
    # A second init finds everything in place.
    assert memosd_main(["init", "--data-dir", str(tmp_path / "data"), "--vault-url", url]) == 0


def _serve(tmp_path, url, capsys) -> tuple[int, str]:
    # A process of its own: serve sets up logging and signal handlers for the whole process.
    done = subprocess.run([sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(tmp_path / "data"),
                           "--vault-url", url, "--listen", f"unix:{tmp_path}/memosd.sock"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr + done.stdout


def test_serve_refuses_an_unreachable_database(tmp_path, capsys):
    code, said = _serve(tmp_path, f"postgresql://memosd:hunter2@/memos?host={tmp_path}&connect_timeout=2", capsys)
    assert code == 2 and said.startswith("memosd: cannot reach the PostgreSQL vault at") and "hunter2" not in said
    assert said.count("\n") == 1
    assert not (tmp_path / "memosd.sock").exists()


def test_serve_refuses_a_database_without_the_schema(postgres_server, tmp_path, capsys):
    url = _blank(postgres_server, "memosd_noschema")
    code, said = _serve(tmp_path, url, capsys)
    assert code == 2 and said.count("\n") == 1 and "no memosd schema" in said and "memosd init --vault-url" in said
    with psycopg.connect(url) as conn:
        assert schema.applied(conn) is None


def test_serve_refuses_a_schema_newer_than_the_code(postgres_url, tmp_path, capsys):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {schema.TABLE} (name, applied_at) VALUES ('m9999_from_the_future', 0)")
    code, said = _serve(tmp_path, postgres_url, capsys)
    assert code == 2 and said.count("\n") == 1 and "newer than this memosd" in said and "upgrade memosd" in said

