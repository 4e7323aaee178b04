import glob
import os
import shutil

import pytest

from memos_client import AsyncMemosClient, MemosClient
from tests.daemon import make_config, running
from tests.pg_server import postgres_databases, postgres_server, postgres_url  # noqa: F401 (fixtures)
from tests.storage_engine import engine, engine_params, vault_settings  # noqa: F401 (the storage contract's fixture)
from tests.s3_server import blob_config, s3_server  # noqa: F401 (blob tests on each object store)
from tests.nats_server import nats_server  # noqa: F401 (the cluster's bus)


@pytest.fixture(scope="session", autouse=True)
def _remove_socket_dirs():
    """Socket directories live in /tmp (short paths); remove this run's when it ends."""
    yield
    for path in glob.glob(f"/tmp/memosd-test-{os.getpid()}-*"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(request, tmp_path):
    # One vault engine per run of a `vaults`-marked test (tests/storage_engine.py), SQLite otherwise.
    return make_config(tmp_path, **vault_settings(getattr(request, "param", "sqlite"), request))


@pytest.fixture
def daemon(config):
    with running(config) as d:
        yield d


@pytest.fixture
def client(daemon):
    with MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as c:
        yield c


@pytest.fixture
def aclient_factory(daemon):
    return lambda: AsyncMemosClient(daemon.address, key=daemon.admin_key, timeout=30)


@pytest.fixture
def agents(daemon, client, tmp_path):
    """alice and bob, each with its own key and no grant until a test gives one (the attack tests)."""
    opened = {}
    for name in ("alice", "bob"):
        client.add_agent(name, out=str(tmp_path / f"{name}.key"))
        opened[name] = MemosClient(daemon.address, key=str(tmp_path / f"{name}.key"), timeout=30)
    yield opened["alice"], opened["bob"]
    for c in opened.values():
        c.close()


def pytest_generate_tests(metafunc):
    engine_params(metafunc)
