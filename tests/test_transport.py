"""Listening: socket and directory modes, loopback-only plaintext TCP, TLS, the async client."""

import asyncio
import dataclasses
import os
import stat

import pytest

from memos_client import AsyncMemosClient, MemosClient, Unavailable
from memosd.config import load_config
from memosd.errors import InvalidArgument
from tests.certs import self_signed
from tests.daemon import make_config, running


def test_socket_is_0660_in_a_0750_directory(daemon):
    path = daemon.address[len("unix:"):]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o750


def test_a_socket_in_a_shared_sticky_directory_leaves_the_directory_as_it_was(tmp_path):
    # As root, /tmp is the daemon's own: closing it to 0750 locked every other user out of /tmp.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    config = make_config(tmp_path, listen=f"unix:{shared}/memosd.sock")
    with running(config) as d, MemosClient(d.address, key=d.admin_key) as c:
        assert c.put("in a shared directory", "agents/admin/n").id
        assert stat.S_IMODE(os.stat(shared / "memosd.sock").st_mode) == 0o660
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777


def test_plaintext_tcp_only_on_loopback(tmp_path):
    for listen in ("0.0.0.0:7700", "192.168.1.5:7700", "example.com:7700"):
        with pytest.raises(InvalidArgument, match="TLS"):
            load_config({"data_dir": str(tmp_path), "listen": listen}, env={})
    config = load_config({"data_dir": str(tmp_path), "listen": "0.0.0.0:7700", "tls_cert": "c", "tls_key": "k"}, env={})
    assert config.listen == "0.0.0.0:7700"


def test_loopback_tcp_and_async_client(tmp_path):
    config = make_config(tmp_path, listen="127.0.0.1:0")
    with running(config) as d:
        assert d.address.startswith("127.0.0.1:") and not d.address.endswith(":0")

        async def go():
            async with AsyncMemosClient(d.address, key=d.admin_key) as c:
                cube = await c.put("over tcp", "agents/admin/n")
                assert (await c.get(cube.id)).text == "over tcp"
                assert [x.id async for x in c.list()] == [cube.id]

        asyncio.run(go())


def test_tls_listener(tmp_path):
    cert, key = map(str, self_signed(tmp_path, "listener"))
    config = dataclasses.replace(make_config(tmp_path, listen="127.0.0.1:0"), tls_cert=cert, tls_key=key)
    with running(config) as d:
        with MemosClient(d.address, key=d.admin_key, tls_ca=cert) as c:
            assert c.put("secret over tls", "agents/admin/n").text == "secret over tls"
        with MemosClient(d.address, key=d.admin_key, timeout=3) as plain:
            with pytest.raises(Unavailable):
                plain.status()
