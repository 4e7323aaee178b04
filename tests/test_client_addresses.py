"""Daemon address lists (MEMOS_ADDR=a,b, --addr, a list in code) and the table of calls sent again elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from memos_client import FailedPrecondition, InvalidArgument, MemosClient
from memos_client.addresses import parse_addresses, resolve_targets
from memos_client.cli.app import main
from memos_client.failover import BY_PUBLISH_ID, IDEMPOTENT, NOT_REPLAYABLE, READS, STREAMS, replayable
from memos_mip.v1 import store_pb2, vault_pb2
from memosd.server.app import SERVICES


@pytest.mark.parametrize("given, targets", [
    ("unix:/run/a.sock", ["unix:/run/a.sock"]),
    ("/run/a.sock", ["unix:/run/a.sock"]),
    ("unix:/a.sock,host2:7777", ["unix:/a.sock", "host2:7777"]),
    (" unix:/a.sock , 10.0.0.2:7777 ,[::1]:7070", ["unix:/a.sock", "10.0.0.2:7777", "[::1]:7070"]),
    (["unix:/a.sock", "/b.sock", "dns:///memosd.internal:7777"], ["unix:/a.sock", "unix:/b.sock", "dns:///memosd.internal:7777"]),
])
def test_addresses_parse_in_order(given, targets):
    assert parse_addresses(given) == targets


@pytest.mark.parametrize("given, message", [
    ("", "the address is empty; separate addresses with single commas"),
    ("unix:/a.sock,,host2:7777", "the address, entry 2 of 3 is empty"),
    ("unix:/a.sock,", "the address, entry 2 of 2 is empty"),
    ("http://host2:7777", "unknown scheme http:// in 'http://host2:7777'; give unix:/path/to.sock"),
    ("unix:/a.sock,tcp://host2:7777", "entry 2 of 2: unknown scheme tcp://"),
    ("unix:", "'unix:' names no socket path after unix:"),
    ("host2", "'host2' has no port"),
    ("host2:http", "the port of 'host2:http' must be a number from 1 to 65535"),
    ("host2:70000", "must be a number from 1 to 65535"),
    ("::1:7777", "'::1' is not a host name or IP address (IPv6 goes in brackets"),
    ("unix:/a b.sock", "contains a space"),
    ("unix:/a.sock,/a.sock", "entry 2 of 2: '/a.sock' is listed twice"),
    (["unix:/a.sock,host2:7777"], "give one address per list item"),
    ([], "is an empty list"),
    ([7777], "must be a string or a list of strings, not list"),
])
def test_bad_addresses_are_refused_saying_which_entry_and_why(given, message):
    with pytest.raises(InvalidArgument) as caught:
        parse_addresses(given)
    assert message in caught.value.message


def test_memos_addr_is_read_when_no_address_is_given_and_named_in_its_errors(monkeypatch):
    monkeypatch.setenv("MEMOS_ADDR", "unix:/a.sock,host2:7777")
    assert resolve_targets(None) == ["unix:/a.sock", "host2:7777"]
    assert resolve_targets("host3:7777") == ["host3:7777"]
    monkeypatch.setenv("MEMOS_ADDR", "unix:/a.sock,,host2:7777")
    with pytest.raises(InvalidArgument, match=r"\$MEMOS_ADDR, entry 2 of 3 is empty"):
        MemosClient()


def test_memosctl_refuses_a_bad_address_list_as_a_usage_error(capsys, monkeypatch):
    assert main(["--addr", "unix:/a.sock,,host2:7777", "status"]) == 2
    assert "memosctl: --addr, entry 2 of 3 is empty" in capsys.readouterr().err
    monkeypatch.setenv("MEMOS_ADDR", "grpc://host2:7777")
    assert main(["status"]) == 2
    assert "$MEMOS_ADDR: unknown scheme grpc://" in capsys.readouterr().err


def test_a_client_remembers_every_address_and_starts_at_the_first():
    with MemosClient(["unix:/tmp/memosd-none-a.sock", "127.0.0.1:7777"], key=None) as client:
        assert client.targets == ["unix:/tmp/memosd-none-a.sock", "127.0.0.1:7777"]
        assert client.target == "unix:/tmp/memosd-none-a.sock"


def test_every_rpc_is_classed_once_as_sent_again_elsewhere_or_not():
    classes = [READS, IDEMPOTENT, BY_PUBLISH_ID, NOT_REPLAYABLE, STREAMS]
    rpcs = {m.name for s in SERVICES for m in s.methods}
    assert set().union(*classes) == rpcs
    assert sum(len(c) for c in classes) == len(rpcs), "an RPC is in two classes"


def test_a_publish_is_sent_again_only_with_a_publish_id():
    assert replayable("Publish", store_pb2.PublishRequest(topic="t", cube_id="c", publish_id="p1"))
    assert not replayable("Publish", store_pb2.PublishRequest(topic="t", cube_id="c"))
    assert not replayable("Put", vault_pb2.PutRequest())
    assert replayable("Get", vault_pb2.GetRequest(id="x")) and replayable("Delete", vault_pb2.DeleteRequest(id="x"))


def test_a_closed_client_refuses_calls_with_a_clear_error(daemon, aclient_factory):
    """gRPC crashed the whole process (a segfault) on a call through a closed channel: a README block once
    called a client after its `with` block had closed it."""
    client = MemosClient(daemon.address, key=daemon.admin_key)
    client.put("before the close", "agents/admin/closed")
    client.close()
    with pytest.raises(FailedPrecondition, match="this client was closed"):
        client.put("after the close", "agents/admin/closed")
    with pytest.raises(FailedPrecondition, match="this client was closed"):
        list(client.subscribe("agents/admin/closed-topic"))

    async def closed_async():
        aclient = aclient_factory()
        await aclient.close()
        with pytest.raises(FailedPrecondition, match="this client was closed"):
            await aclient.put("after the close", "agents/admin/closed")

    asyncio.run(closed_async())
