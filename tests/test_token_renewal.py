"""Token renewal after a revocation: every streaming call of both clients, and only real denials counted."""

import asyncio
import os
from types import SimpleNamespace

import grpc
import pytest

from memos_client import AsyncMemosClient, MemosClient, NotFound, Unauthenticated
from memos_client.auth import AgentKey, mint_token
from memos_client.cli import main as memosctl
from memos_mip.v1 import governance_pb2, governance_pb2_grpc
from tests.kv_helpers import put_kv

TOPIC = "agents/admin/renewal"


@pytest.fixture
def world(daemon, client, tmp_path):
    """Something for each streaming call to read: a tensor cube, a bundle, a topic with one event."""
    cube = put_kv(client, range(8))
    note = client.put("for the bundle", "agents/admin/src")
    client.export(tmp_path / "bundle", "agents/admin/src")
    event = client.put("an event", "agents/admin/events")
    client.publish(TOPIC, event.id)
    return SimpleNamespace(daemon=daemon, admin=client, tmp=tmp_path, cube=cube, note=note, event=event, n=[0])


def revoke(w) -> None:
    """What the issue did: grant something, revoke it; the policy epoch moves on."""
    before = w.daemon.server.governance.epoch
    w.admin.revoke_policy(w.admin.grant("group:x", ["read"], ["teams/x/**"]))
    assert w.daemon.server.governance.epoch == before + 1


def refusals(daemon) -> int:
    """Calls the daemon answered UNAUTHENTICATED, stale tokens included."""
    return sum(n for (_, _, code), n in daemon.server.metrics.requests.items() if code == "UNAUTHENTICATED")


def denials(daemon) -> int:
    return sum(daemon.server.metrics.denials.values())


def deny_entries(admin, about: str = "") -> list:
    # A token that fails authentication has no caller yet: the entry's reason names the agent.
    return [e for e in admin.audit() if e.decision == "deny" and about in e.detail]


def fresh(w) -> str:
    w.n[0] += 1
    return str(w.n[0])


def drafts(count: int, namespace: str):
    # A one-shot generator, as a caller's would be: a retry cannot simply read it again.
    return ({"text": f"note {i}", "namespace": namespace} for i in range(count))


# Each streaming RPC the clients make, as (sync call, async call, check of what came back).
SYNC = {
    "PutStream": lambda c, w, i: c.put_many(drafts(1100, f"agents/admin/bulk{i}"), batch_size=500),
    "Upload": lambda c, w, i: c.upload_blob(os.urandom(64), "agents/admin/kv"),
    "Download": lambda c, w, i: bytes(c.download_blob(w.cube.id)),
    "WatchJob": lambda c, w, i: _not_found(lambda: list(c.watch_job("job_nonexistent"))),
    "Subscribe": lambda c, w, i: _first(c.subscribe(TOPIC)),
    "Backup": lambda c, w, i: c.backup(w.tmp / f"backup{i}"),
    "Export": lambda c, w, i: c.export(w.tmp / f"export{i}", "agents/admin/src"),
    "Import": lambda c, w, i: c.import_bundle(w.tmp / "bundle", f"agents/admin/copy{i}"),
}


async def _anot_found(coro_fn):
    with pytest.raises(NotFound):
        await coro_fn()
    return "not found"


async def _alist(aiter):
    return [x async for x in aiter]


async def _afirst(sub):
    try:
        async for event in sub:
            return event
    finally:
        sub.close()


ASYNC = {
    "PutStream": lambda c, w, i: c.put_many(drafts(1100, f"agents/admin/bulk{i}"), batch_size=500),
    "Upload": lambda c, w, i: c.upload_blob(os.urandom(64), "agents/admin/kv"),
    "Download": lambda c, w, i: _abytes(c.download_blob(w.cube.id)),
    "WatchJob": lambda c, w, i: _anot_found(lambda: _alist(c.watch_job("job_nonexistent"))),
    "Subscribe": lambda c, w, i: _afirst(c.subscribe(TOPIC)),
    "Backup": lambda c, w, i: c.backup(w.tmp / f"backup{i}"),
    "Export": lambda c, w, i: c.export(w.tmp / f"export{i}", "agents/admin/src"),
    "Import": lambda c, w, i: c.import_bundle(w.tmp / "bundle", f"agents/admin/copy{i}"),
}


async def _abytes(coro):
    return bytes(await coro)


def _not_found(call):
    with pytest.raises(NotFound):
        call()
    return "not found"


def _first(sub):
    with sub:
        return next(iter(sub))


def check(kind: str, result, w, i: str) -> None:
    """What each call must have returned: all of it, nothing lost to the renewal."""
    if kind == "PutStream":
        assert len(result) == 1100 and w.admin.list_page(f"agents/admin/bulk{i}", page_size=1).total_size == 1100
    elif kind == "Upload":
        assert result.size == 64
    elif kind == "Download":
        assert len(result) == w.cube.activation.blob.size
    elif kind == "WatchJob":
        assert result == "not found"  # authenticated, then told the job does not exist
    elif kind == "Subscribe":
        assert result.cube_id == w.event.id
    elif kind in ("Backup", "Export"):
        assert result["files"]
    elif kind == "Import":
        assert result.cubes == 1


@pytest.mark.parametrize("kind", sorted(SYNC))
def test_a_fresh_client_after_a_revoke_is_never_refused(world, kind):
    revoke(world)
    i = fresh(world)
    with MemosClient(world.daemon.address, key=world.daemon.admin_key) as c:
        check(kind, SYNC[kind](c, world, i), world, i)
    assert refusals(world.daemon) == 0 and denials(world.daemon) == 0


@pytest.mark.parametrize("kind", sorted(ASYNC))
def test_a_fresh_async_client_after_a_revoke_is_never_refused(world, kind):
    revoke(world)
    i = fresh(world)

    async def go():
        async with AsyncMemosClient(world.daemon.address, key=world.daemon.admin_key) as c:
            return await ASYNC[kind](c, world, i)

    check(kind, asyncio.run(go()), world, i)
    assert refusals(world.daemon) == 0 and denials(world.daemon) == 0


@pytest.mark.parametrize("kind", sorted(SYNC))
def test_a_client_whose_token_predates_a_revoke_renews_and_retries_streams(world, kind):
    with MemosClient(world.daemon.address, key=world.daemon.admin_key) as c:
        c.whoami()  # its token is current now, and cached
        revoke(world)
        i = fresh(world)
        check(kind, SYNC[kind](c, world, i), world, i)
    # A stale token is the renewal signal, not a denial: neither counted nor audited.
    assert denials(world.daemon) == 0 and deny_entries(world.admin) == []


@pytest.mark.parametrize("kind", sorted(ASYNC))
def test_an_async_client_whose_token_predates_a_revoke_renews_and_retries_streams(world, kind):
    async def go():
        async with AsyncMemosClient(world.daemon.address, key=world.daemon.admin_key) as c:
            await c.whoami()
            revoke(world)
            i = fresh(world)
            return i, await ASYNC[kind](c, world, i)

    i, result = asyncio.run(go())
    check(kind, result, world, i)
    assert denials(world.daemon) == 0 and deny_entries(world.admin) == []


def test_a_revoked_agents_single_whoami_is_one_denial(daemon, client, tmp_path):
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    with MemosClient(daemon.address, key=str(tmp_path / "alice.key")) as alice:
        alice.whoami()
        client.revoke_agent("alice")
        with pytest.raises(Unauthenticated, match="revoked"):
            alice.whoami()
    assert len(deny_entries(client, "alice")) == 1 and denials(daemon) == 1
    # A new process of the revoked agent: still one refused call, one entry, one count.
    with MemosClient(daemon.address, key=str(tmp_path / "alice.key")) as alice:
        with pytest.raises(Unauthenticated, match="revoked"):
            alice.whoami()
    assert len(deny_entries(client, "alice")) == 2 and denials(daemon) == 2
    # Its first call is another one: the epoch look-up before it is refused, and that is the one denial.
    with MemosClient(daemon.address, key=str(tmp_path / "alice.key")) as alice:
        with pytest.raises(Unauthenticated, match="revoked"):
            alice.put_many([{"text": "x", "namespace": "agents/alice/n"}])
    assert len(deny_entries(client, "alice")) == 3 and denials(daemon) == 3
    assert client.status().metrics["auth_denials"] == 3


def test_only_real_denials_are_counted(daemon, client, tmp_path):
    key = AgentKey.load(daemon.admin_key)
    for _ in range(3):
        client.revoke_policy(client.grant("group:x", ["read"], ["teams/x/**"]))
        with MemosClient(daemon.address, key=daemon.admin_key) as c:  # a new memosctl process, say
            c.whoami()
            c.put_many([{"text": "x", "namespace": "agents/admin/n"}])
    with grpc.insecure_channel(daemon.address) as channel:
        stub = governance_pb2_grpc.GovernanceServiceStub(channel)
        # A token for an old epoch is refused on other calls, but is no denial.
        stale = [("authorization", f"Bearer {mint_token(key, 1)}")]
        with pytest.raises(grpc.RpcError) as info:
            stub.ListAgents(governance_pb2.ListAgentsRequest(), metadata=stale, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert dict(info.value.trailing_metadata())["memos-error"] == "StaleToken"
        # One real one: a key the daemon does not know.
        mallory = [("authorization", f"Bearer {mint_token(AgentKey.generate('mallory', key.audience), 4)}")]
        with pytest.raises(grpc.RpcError):
            stub.ListAgents(governance_pb2.ListAgentsRequest(), metadata=mallory, timeout=10)
    assert denials(daemon) == 1 and len([e for e in client.audit() if e.decision == "deny"]) == 1
    assert client.status().metrics["auth_denials"] == 1


def test_whoami_tells_a_client_the_epoch_whatever_its_token_says(daemon, client):
    client.revoke_policy(client.grant("group:x", ["read"], ["teams/x/**"]))
    key = AgentKey.load(daemon.admin_key)
    with grpc.insecure_channel(daemon.address) as channel:
        stub = governance_pb2_grpc.GovernanceServiceStub(channel)
        for epoch in (0, 1, 7):
            metadata = [("authorization", f"Bearer {mint_token(key, epoch)}")]
            assert stub.WhoAmI(governance_pb2.WhoAmIRequest(), metadata=metadata, timeout=10).policy_epoch == 2
    assert refusals(daemon) == 0


def test_memosctl_import_after_a_revoke(daemon, tmp_path, capsys):
    args = ["--addr", daemon.address, "--key", str(daemon.admin_key)]
    assert memosctl([*args, "grant", "group:x", "read", "teams/x/**"]) == 0
    policy = capsys.readouterr().out.strip()
    assert memosctl([*args, "policy", "revoke", policy]) == 0
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"text": "Bob is allergic to peanuts", "tags": ["health"]}\n')
    capsys.readouterr()
    assert memosctl([*args, "import", str(notes)]) == 0
    out, err = capsys.readouterr()
    assert "imported 1 cube" in out + err and "epoch" not in out + err
    assert refusals(daemon) == 0
