"""memosctl mcp against a real daemon, driven over stdio (and HTTP once) by the MCP SDK's own client."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from memos_client import InvalidArgument, MemosClient
from memos_client.mcp.http import loopback
from tests.daemon import RunningDaemon, running
from tests.mcp_helpers import MEMOSCTL, call, mcp_session, memosctl, server_env

pytestmark = pytest.mark.timeout(120)  # each test starts two or three MCP servers (the SDK takes seconds to import)

TOOLS = {"memory_add", "memory_search", "memory_get", "memory_update", "memory_delete", "memory_list",
         "memory_share", "memory_unshare", "memory_publish", "memory_feed"}
UNKNOWN_ID = "01JZZZZZZZZZZZZZZZZZZZZZZZ"


@pytest.fixture
def agents(client, tmp_path):
    """Key files of two agents, alice and bob."""
    return {name: client.add_agent(name, out=str(tmp_path / f"{name}.key"))[1] for name in ("alice", "bob")}


def test_tools_listed_with_schemas_and_a_memory_round_trip(daemon, agents):
    async def main():
        async with mcp_session(daemon.address, agents["alice"]) as s:
            listed = {t.name: t for t in (await s.list_tools()).tools}
            assert set(listed) == TOOLS
            for tool in listed.values():
                assert tool.description and len(tool.description) > 30
                assert tool.input_schema["type"] == "object"
                assert tool.input_schema["additionalProperties"] is False
            assert listed["memory_add"].input_schema["required"] == ["text"]
            assert listed["memory_search"].annotations.read_only_hint is True

            added, text, err = await call(s, "memory_add", text="Alice prefers window seats on long flights",
                                          tags=["travel"], metadata={"speaker": "alice"})
            assert not err and added["namespace"] == "agents/alice/notes" and added["id"] in text
            found, text, err = await call(s, "memory_search", query="window seat flights", limit=5)
            assert not err and [h["id"] for h in found["hits"]] == [added["id"]]
            hit = found["hits"][0]
            assert hit["text"].startswith("Alice prefers") and hit["tags"] == ["travel"] and hit["when"]
            assert "window seats" in text

            got, text, err = await call(s, "memory_get", id=added["id"])
            assert not err and got["metadata"] == {"speaker": "alice"} and got["owner"] == "alice"
            updated, _, err = await call(s, "memory_update", id=added["id"], text="Alice prefers aisle seats now",
                                         expected_version=1)
            assert not err and updated["version"] == 2
            page, _, err = await call(s, "memory_list", namespace="agents/alice", page_size=1)
            assert not err and [m["text"] for m in page["memories"]] == ["Alice prefers aisle seats now"]
            read = await s.read_resource(f"memos://cube/{added['id']}")
            assert json.loads(read.contents[0].text)["text"] == "Alice prefers aisle seats now"
            listed_resources = {r.uri for r in (await s.list_resources()).resources}
            assert "memos://namespace/agents/alice" in listed_resources
            gone, _, err = await call(s, "memory_delete", id=added["id"])
            assert not err and gone["deleted"]
            _, text, err = await call(s, "memory_get", id=added["id"])
            assert err and text.startswith("not found")
    asyncio.run(main())


def test_bad_calls_are_tool_errors_and_the_server_goes_on(daemon, agents):
    async def main():
        async with mcp_session(daemon.address, agents["alice"]) as s:
            bad = [
                ("memory_add", {}, "text is required"),
                ("memory_add", {"text": "x", "colour": "red"}, "colour is not an argument of memory_add"),
                ("memory_search", {"query": "x", "limit": "ten"}, "limit:"),
                ("memory_search", {"query": "x", "limit": 10_000}, "limit:"),
                ("memory_get", {"id": UNKNOWN_ID}, "not found"),
                ("memory_add", {"text": "x", "namespace": "agents/bob/notes"}, "permission denied"),
                ("memory_add", {"text": "y" * 70_000}, "limit"),
                ("memory_feed", {"topic": "agents/alice/news", "cursor": "!!"}, "cursor is not one memory_feed"),
                ("memory_update", {"id": UNKNOWN_ID}, "nothing to update"),
                ("memory_forget_everything", {}, "no tool"),
            ]
            for tool, arguments, expected in bad:
                r = await s.call_tool(tool, arguments)
                text = r.content[0].text
                assert r.is_error, (tool, arguments, text)
                assert expected in text, (tool, text)
                assert len(text) < 400 and "y" * 100 not in text  # short, and the input is not echoed
            _, _, err = await call(s, "memory_add", text="still here")
            assert not err
    asyncio.run(main())


def test_bob_sees_nothing_of_alice_until_she_shares_and_not_after_she_unshares(daemon, client, agents):
    secret = "alice's private plan " + secrets.token_hex(4)

    async def main():
        async with mcp_session(daemon.address, agents["alice"]) as alice, \
                mcp_session(daemon.address, agents["bob"]) as bob:
            added, _, _ = await call(alice, "memory_add", text=secret, namespace="agents/alice/plans")
            cube_id = added["id"]

            async def bob_sees() -> bool:
                got, got_text, got_err = await call(bob, "memory_get", id=cube_id)
                found, _, _ = await call(bob, "memory_search", query="private plan")
                listed, _, _ = await call(bob, "memory_list", namespace="agents/alice")
                hidden = {"get": got_err, "search": not found["hits"], "list": not listed["memories"]}
                if all(hidden.values()):
                    # Exactly what an id that names nothing gets: bob cannot tell her cube exists.
                    _, unknown_text, _ = await call(bob, "memory_get", id=UNKNOWN_ID)
                    assert got_text.replace(cube_id, "ID") == unknown_text.replace(UNKNOWN_ID, "ID")
                    assert secret not in got_text
                    return False
                assert not any(hidden.values()), hidden  # all or nothing
                assert got["text"] == secret and found["hits"][0]["id"] == cube_id
                return True

            assert not await bob_sees()
            shared, _, err = await call(alice, "memory_share", subject="bob", namespace="agents/alice/plans")
            assert not err
            assert await bob_sees()
            _, _, err = await call(alice, "memory_unshare", policy_id=shared["policy_id"])
            assert not err
            assert not await bob_sees()
            # Bob's own server cannot share what alice owns.
            _, text, err = await call(bob, "memory_share", subject="bob", namespace="agents/alice/plans")
            assert err and "permission denied" in text

    asyncio.run(main())
    # The refusals are the daemon's own, in its audit log under bob's name: both reads (before the share and
    # after its revocation) and the share he tried.
    assert [e.action.rsplit("/", 1)[1] for e in client.audit() if e.agent == "bob" and e.decision == "deny"] == \
        ["Get", "Get", "PutPolicy"]


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")  # the handshake era's subscriptions
def test_subscribers_hear_of_a_publish_on_both_protocols_and_read_the_feed(daemon, client, agents):
    from mcp.client.subscriptions import ResourceUpdated, listen

    client.grant("agent:alice", ["publish"], ["teams/research/**"])
    client.grant("agent:bob", ["subscribe"], ["teams/research/**"])
    topic = "teams/research/summaries"
    uri, other = f"memos://topic/{topic}", "memos://topic/teams/other/news"

    async def main():
        updated = anyio.Event()
        uris = []

        async def on_message(message):
            if isinstance(message, types.ResourceUpdatedNotification):
                uris.append(message.params.uri)
                updated.set()

        async with mcp_session(daemon.address, agents["alice"]) as alice, \
                mcp_session(daemon.address, agents["bob"], on_message=on_message) as bob, \
                mcp_session(daemon.address, agents["bob"], modern=True) as bob_2026:
            await bob.subscribe_resource(uri)  # up to protocol 2025-11-25
            # On 2026-07-28, a listen stream: only the topics bob may follow are acknowledged.
            async with listen(bob_2026, resource_subscriptions=[uri, other, "memos://cube/x"]) as stream:
                assert stream.honored.resource_subscriptions == [uri]
                added, _, _ = await call(alice, "memory_add", text="summary: FlashAttention-3 notes")
                published, _, err = await call(alice, "memory_publish", topic=topic, id=added["id"])
                assert not err and published["seq"] == 1
                with anyio.fail_after(20):
                    await updated.wait()
                    assert await anext(aiter(stream)) == ResourceUpdated(uri=uri)
            assert uris == [uri]

            feed, text, err = await call(bob, "memory_feed", topic="teams/research/**")
            assert not err, text
            assert [(e["seq"], e["cube_id"], e["text"]) for e in feed["events"]] == \
                [(1, added["id"], "summary: FlashAttention-3 notes")]
            again, _, _ = await call(bob, "memory_feed", topic="teams/research/**", cursor=feed["next_cursor"])
            assert again["events"] == []
            # The topic is a resource bob may list and read; so is the cube published to it.
            assert uri in {r.uri for r in (await bob.list_resources()).resources}
            read = json.loads((await bob.read_resource(uri)).contents[0].text)
            assert [e["cube_id"] for e in read["events"]] == [added["id"]]
            cube = json.loads((await bob_2026.read_resource(f"memos://cube/{added['id']}")).contents[0].text)
            assert cube["text"] == "summary: FlashAttention-3 notes"
            # Bob may follow the topic but not publish to it; a topic outside his grant is refused.
            _, text, err = await call(bob, "memory_publish", topic=topic, id=added["id"])
            assert err and "permission denied" in text
            with pytest.raises(Exception, match="permission denied"):
                await bob.subscribe_resource(other)

            # memory_feed with wait_seconds: nothing new ends the wait empty; a publish meanwhile ends it early.
            idle, _, err = await call(bob, "memory_feed", topic=topic, cursor=feed["next_cursor"], wait_seconds=1)
            assert not err and idle["events"] == [] and idle["next_cursor"] == feed["next_cursor"]
            waiting = asyncio.create_task(call(bob, "memory_feed", topic=topic, cursor=feed["next_cursor"],
                                               wait_seconds=60))
            second, _, _ = await call(alice, "memory_add", text="summary: ring attention")
            await call(alice, "memory_publish", topic=topic, id=second["id"])
            with anyio.fail_after(30):
                later, _, _ = await waiting
            assert [e["text"] for e in later["events"]] == ["summary: ring attention"]
    asyncio.run(main())


def test_streamable_http_on_loopback(daemon, agents):
    proc = subprocess.Popen([*MEMOSCTL, "mcp", "--http", "127.0.0.2:0"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **server_env(daemon.address, agents["alice"])})
    try:
        line = proc.stderr.readline()
        url = line.rsplit(" at ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.2:") and url.endswith("/mcp"), line
        token = proc.stderr.readline().split("Bearer ", 1)[-1].strip().strip('"')
        bearer = {"Authorization": f"Bearer {token}"}
        # Any process of any user on the host can reach a loopback port: without the server's token it is refused
        # before anything is done with alice's key.
        for headers in ({}, {"Authorization": "Bearer " + "x" * len(token)}):
            request = urllib.request.Request(url, data=b"{}", method="POST", headers={
                **headers, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401

        async def main():
            async with create_mcp_http_client(headers=bearer) as http, \
                    streamable_http_client(url, http_client=http) as (read, write), ClientSession(read, write) as s:
                await s.initialize()
                assert {t.name for t in (await s.list_tools()).tools} == TOOLS
                added, _, err = await call(s, "memory_add", text="over HTTP")
                assert not err
                got, _, _ = await call(s, "memory_get", id=added["id"])
                assert got["text"] == "over HTTP" and got["owner"] == "alice"
        asyncio.run(main())
        # A web page cannot reach it through DNS rebinding: another Host (or Origin) is refused.
        for header, value, status in (("Host", "attacker.example", 421), ("Origin", "http://attacker.example", 403)):
            request = urllib.request.Request(url, data=b"{}", method="POST", headers={**bearer,
                header: value, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == status
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


def test_http_off_loopback_is_refused(agents):
    done = memosctl("mcp", "--http", "0.0.0.0:8765", env=server_env("unix:/nonexistent/memosd.sock", agents["alice"]))
    assert done.returncode == 2
    assert "loopback only" in done.stderr and len(done.stderr) < 300
    for addr in ("192.168.1.10:8765", "[::]:8765", "example.com:80", "8765", "127.0.0.1:99999", "127.0.0.1:x"):
        with pytest.raises(InvalidArgument, match="loopback"):
            loopback(addr)
    assert [loopback(a) for a in ("127.0.0.1:0", "[::1]:8765", "localhost:1")] == \
        [("127.0.0.1", 0), ("::1", 8765), ("localhost", 1)]


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")
def test_daemon_down_at_start_restarted_mid_session_and_a_revoked_key(config, tmp_path):
    with running(config) as d:
        with MemosClient(d.address, key=d.admin_key) as admin:
            keys = {n: admin.add_agent(n, out=str(tmp_path / f"{n}.key"))[1] for n in ("alice", "bob")}
            admin.grant("agent:alice", ["publish"], ["teams/t/**"])
            admin.grant("agent:bob", ["subscribe"], ["teams/t/**"])
        address = d.address

    async def main():
        updated = anyio.Event()

        async def on_message(message):
            if isinstance(message, types.ResourceUpdatedNotification):
                updated.set()

        async with mcp_session(address, keys["alice"]) as alice:
            # Started with no daemon: the server answers, and says how to start one.
            _, text, err = await call(alice, "memory_add", text="while the daemon is down")
            assert err and "is the daemon running?" in text and "memosd serve" in text, text
            first = RunningDaemon(config)
            try:
                added, text, err = await call(alice, "memory_add", text="once it is up")
                assert not err, text
                async with mcp_session(address, keys["bob"], on_message=on_message) as bob:
                    await bob.subscribe_resource("memos://topic/teams/t/news")
                    first.stop()
                    first = RunningDaemon(config)  # restarted while both sessions are open
                    _, text, err = await call(alice, "memory_publish", topic="teams/t/news", id=added["id"])
                    assert not err, text
                    with anyio.fail_after(30):  # bob's server resubscribed by itself
                        await updated.wait()
                    feed, _, _ = await call(bob, "memory_feed", topic="teams/t/news")
                    assert [e["cube_id"] for e in feed["events"]] == [added["id"]]

                    with MemosClient(address, key=first.admin_key) as admin:
                        admin.revoke_agent("bob")
                    for _ in range(2):  # a clear error each time, and the server still answers
                        _, text, err = await call(bob, "memory_search", query="anything")
                        assert err and "revoked" in text, text
            finally:
                first.stop()
    asyncio.run(main())
