import pytest

from memos_client import AsyncMemosClient, MemosClient
from tests.daemon import make_config, running


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


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
