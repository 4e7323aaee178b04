"""MemGovernance against the real daemon: identities, grants, the attack list, the audit chain."""

import threading
import time

import grpc
import pytest

from memos_client import InvalidArgument, MemosClient, NotFound, PermissionDenied, Unauthenticated
from memos_client.auth import AgentKey, b64url, mint_token, sign_policy, unb64url
from memos_mip.v1 import vault_pb2, vault_pb2_grpc
from tests.storage_engine import raw_connection
from tests.existence import assert_hidden

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)


@pytest.fixture
def agents(daemon, client, tmp_path):
    """alice and bob (group research) with key files; returns a factory of clients by name."""
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    client.add_agent("bob", groups=["research"], out=str(tmp_path / "bob.key"))
    opened = []

    def connect(name):
        c = MemosClient(daemon.address, key=str(tmp_path / f"{name}.key"))
        opened.append(c)
        return c

    yield connect
    for c in opened:
        c.close()


def _raw_get(daemon, token, cube_id="01JAAAAAAAAAAAAAAAAAAAAAAA"):
    with grpc.insecure_channel(daemon.address) as channel:
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        with pytest.raises(grpc.RpcError) as info:
            vault_pb2_grpc.VaultServiceStub(channel).Get(vault_pb2.GetRequest(id=cube_id), metadata=metadata, timeout=10)
    return info.value


def _denials(client):
    return [e for e in client.audit() if e.decision == "deny"]


def test_owner_has_its_namespace_and_nothing_else(agents):
    alice = agents("alice")
    cube = alice.put("alice's secret", "agents/alice/notes")
    assert alice.get(cube.id).owner == "alice"
    with pytest.raises(PermissionDenied, match="may not write"):
        alice.put("x", "agents/bob/notes")
    with pytest.raises(PermissionDenied):
        alice.put("x", "teams/research/papers")


def test_other_agent_cannot_see_or_touch_private_cube(agents):
    alice, bob = agents("alice"), agents("bob")
    cube = alice.put("alice likes hiking", "agents/alice/notes", tags=["t"])
    for call in (bob.get, bob.history, lambda i: bob.update(i, text="x"), bob.delete):
        assert_hidden(call, cube.id)
    assert bob.list_page().total_size == 0
    assert bob.list_page("agents/alice").total_size == 0
    assert bob.search("hiking") == []
    assert bob.search("hiking", tags=["t"]) == []
    assert alice.get(cube.id).version == 1  # untouched


def test_grant_read_and_revoke_takes_effect_next_call(agents, client):
    alice, bob = agents("alice"), agents("bob")
    cube = alice.put("shared paper notes", "agents/alice/shared/papers")
    alice.put("still private", "agents/alice/private")
    policy_id = alice.grant("agent:bob", ["read"], ["agents/alice/shared/**"])
    assert bob.get(cube.id).text == "shared paper notes"
    assert [c.id for c in bob.list("agents/alice")] == [cube.id]
    assert [h.cube.id for h in bob.search("paper notes private")] == [cube.id]
    with pytest.raises(PermissionDenied, match=f"agent bob may not write cube {cube.id}"):
        bob.update(cube.id, text="bob was here")
    with pytest.raises(PermissionDenied, match=f"agent bob may not delete cube {cube.id}"):
        bob.delete(cube.id)
    alice.revoke_policy(policy_id)
    assert_hidden(bob.get, cube.id)
    assert bob.list_page().total_size == 0


def test_group_grant_and_owner_only_visibility(agents, client):
    alice, bob = agents("alice"), agents("bob")
    client.grant("group:research", ["read", "write"], ["teams/research/**"])
    shared = bob.put("team note", "teams/research/notes")
    alice_cube = None
    with pytest.raises(PermissionDenied):
        alice.put("not in group", "teams/research/notes")
    # The admin writes an owner-only cube into the team namespace: bob may read the namespace but not it.
    from memos_mip.v1 import cube_pb2

    owner_only = client._call(client._vault.Put, vault_pb2.PutRequest(cube=cube_pb2.CubeDraft(
        namespace="teams/research/notes", text="admin only", visibility=cube_pb2.VISIBILITY_OWNER))).cube
    made_private = client.put("admin, then admin only", "teams/research/notes")
    client._call(client._vault.Update, vault_pb2.UpdateRequest(
        id=made_private.id, cube=cube_pb2.CubeDraft(visibility=cube_pb2.VISIBILITY_OWNER),
        update_mask={"paths": ["visibility"]}))
    assert [c.id for c in bob.list("teams/research")] == [shared.id]
    assert_hidden(bob.get, owner_only.header.descriptive.id)
    # bob read version 1 of the other one: it is no secret to him, its owner-only version 2 is.
    with pytest.raises(PermissionDenied, match="version 2 of cube .* is not readable"):
        bob.get(made_private.id)
    assert [v.version for v in bob.history(made_private.id)] == [1]
    assert alice_cube is None


def test_pass_on_narrowed_grant_but_never_wider(agents, client, tmp_path):
    alice, bob = agents("alice"), agents("bob")
    client.add_agent("carol", out=str(tmp_path / "carol.key"))
    carol = agents("carol")
    client.grant("agent:bob", ["read", "write", "share"], ["teams/research/**"])
    cube = bob.put("research result", "teams/research/results")
    # Narrower: only read, only a sub-namespace: allowed.
    bob.grant("agent:carol", ["read"], ["teams/research/results/**", "teams/research/results"])
    assert carol.get(cube.id).text == "research result"
    # Wider action, wider namespace, unlimited time on a limited grant: refused.
    with pytest.raises(PermissionDenied, match="may not grant"):
        bob.grant("agent:carol", ["delete"], ["teams/research/**"])
    with pytest.raises(PermissionDenied, match="may not grant"):
        bob.grant("agent:carol", ["read"], ["teams/**"])
    with pytest.raises(PermissionDenied, match="may not grant"):
        alice.grant("agent:carol", ["read"], ["agents/bob/**"])
    # Revoking bob's grant makes what bob passed on lapse too.
    [bobs] = [p for p in client.list_policies("agent:bob")]
    client.revoke_policy(bobs.id)
    assert_hidden(carol.get, cube.id)


def test_time_limited_grant_cannot_be_passed_on_forever(agents, client, tmp_path):
    bob = agents("bob")
    client.add_agent("carol", out=str(tmp_path / "carol.key"))
    client.grant("agent:bob", ["read", "share"], ["teams/x/**"], expires_at=time.time() + 3600)
    with pytest.raises(PermissionDenied, match="may not grant"):
        bob.grant("agent:carol", ["read"], ["teams/x/**"])
    bob.grant("agent:carol", ["read"], ["teams/x/**"], expires_at=time.time() + 600)


def test_forged_and_unauthorised_policies(agents, client, daemon):
    alice = agents("alice")
    doc, sig = sign_policy(alice.tokens.key, subject="agent:alice", actions=["read"], namespaces=["agents/bob/**"])
    with pytest.raises(PermissionDenied, match="may not grant"):
        alice.put_policy(doc, sig)
    admin_key = AgentKey.load(daemon.admin_key)
    good_doc, good_sig = sign_policy(admin_key, subject="agent:alice", actions=["read"], namespaces=["teams/**"])
    with pytest.raises(PermissionDenied, match="signature does not match"):
        client.put_policy(good_doc.replace(b"teams", b"tenms"), good_sig)
    with pytest.raises(PermissionDenied, match="signature does not match"):
        client.put_policy(good_doc, bytes(64))
    with pytest.raises(PermissionDenied, match="only store policies it signed"):
        alice.put_policy(good_doc, good_sig)
    with pytest.raises(InvalidArgument, match="not JSON"):
        client.put_policy(b"{nope", good_sig)
    with pytest.raises(InvalidArgument, match="namespace"):
        client.grant("agent:alice", ["read"], ["agents/alice/../bob/**"])
    assert any(e.action.endswith("PutPolicy") for e in _denials(client))


@pytest.mark.parametrize("namespace", ["agents/alice/../bob", "agents/alice//x", "agents/аlice/x", "agents/alice/./x"])
def test_path_like_namespace_tricks(agents, namespace):
    alice = agents("alice")
    with pytest.raises(InvalidArgument, match="namespace"):
        alice.put("x", namespace)


def test_bad_tokens_are_unauthenticated_and_audited(agents, client, daemon):
    key = AgentKey.load(daemon.admin_key)
    now = time.time()
    good = mint_token(key, daemon.server.governance.epoch)
    body, sig = good.split(".")
    tampered_claims = unb64url(body).replace(b'"sub":"admin"', b'"sub":"alice"')
    cases = {
        "no token": None,
        "garbage": "not-a-token",
        "unknown key": mint_token(AgentKey.generate("admin", key.audience), 1),
        "unknown agent": mint_token(AgentKey.generate("mallory", key.audience), 1),
        "one byte changed": body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + sig,
        "claims swapped": b64url(tampered_claims) + "." + sig,
        "expired": mint_token(key, 1, lifetime=60, now=now - 3600),
        "from the future": mint_token(key, 1, now=now + 3600),
        "wrong audience": mint_token(AgentKey(key.agent, key.private_key, "memosd-other"), 1),
        "stale epoch": mint_token(key, 0),
        "too long-lived": mint_token(key, 1, lifetime=86400),
    }
    before = len(_denials(client))
    for name, token in cases.items():
        err = _raw_get(daemon, token)
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED, name
    denials = _denials(client)
    # A stale epoch is the normal renewal signal after a revocation, not an attack: not audited.
    assert len(denials) - before == len(cases) - 1
    assert "no token" in denials[before].detail
    assert not any("epoch" in d.detail for d in denials)


def test_revoked_agent_token_replay_and_stale_epoch_recovery(agents, client, daemon):
    alice = agents("alice")
    alice.put("x", "agents/alice/n")
    token = alice.tokens.token()
    client.revoke_agent("alice")
    with pytest.raises(Unauthenticated, match="revoked"):
        alice.put("y", "agents/alice/n")
    assert _raw_get(daemon, token).code() is grpc.StatusCode.UNAUTHENTICATED
    # Revocation moved the policy epoch on; the admin client renews its token transparently.
    assert client.whoami()[2] == daemon.server.governance.epoch > 1


def test_audit_log_records_writes_and_detects_tampering(agents, client, daemon):
    alice = agents("alice")
    cube = alice.put("audited", "agents/alice/n")
    alice.update(cube.id, text="changed")
    alice.delete(cube.id)
    actions = [(e.agent, e.action) for e in client.audit()]
    assert ("alice", "vault.put") in actions and ("alice", "vault.delete") in actions
    assert ("admin", "agent.add") in actions
    assert client.verify_audit()[0] is True
    with pytest.raises(PermissionDenied):
        list(alice.audit())
    with raw_connection(daemon.config) as conn:
        conn.execute("UPDATE audit SET agent = 'bob' WHERE action = 'vault.update'")
        ok, _, bad, reason = client.verify_audit()
        assert not ok and bad > 0 and "changed" in reason
        conn.execute("UPDATE audit SET agent = 'alice' WHERE action = 'vault.update'")
        assert client.verify_audit()[0]
        conn.execute("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
        ok, _, _, reason = client.verify_audit()
        assert not ok and "removed" in reason


def test_flood_of_bad_tokens_leaves_daemon_responsive(agents, daemon):
    alice = agents("alice")
    cube = alice.put("x", "agents/alice/n")
    key = AgentKey.generate("alice", "memosd-x")
    stop = threading.Event()
    sent = [0]

    def flood():
        with grpc.insecure_channel(daemon.address) as channel:
            stub = vault_pb2_grpc.VaultServiceStub(channel)
            while not stop.is_set():
                for token in ("garbage", mint_token(key, 1)):
                    try:
                        stub.Get(vault_pb2.GetRequest(id=cube.id), metadata=[("authorization", f"Bearer {token}")], timeout=5)
                    except grpc.RpcError:
                        sent[0] += 1

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        slowest, deadline, good = 0.0, time.monotonic() + 30, 0
        while (sent[0] < 400 or good < 20) and time.monotonic() < deadline:
            t0 = time.perf_counter()
            assert alice.get(cube.id).id == cube.id
            slowest, good = max(slowest, time.perf_counter() - t0), good + 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sent[0] >= 400 and good >= 20
    assert slowest < 2.0, f"a good call took {slowest:.2f}s under a flood of bad tokens"


def test_non_admin_cannot_administer(agents):
    bob = agents("bob")
    with pytest.raises(PermissionDenied):
        bob.list_agents()
    with pytest.raises(PermissionDenied):
        bob.revoke_agent("alice")
    with pytest.raises(NotFound):
        bob.get_policy("pol_0000000000000000")
    assert bob.whoami()[0].name == "bob"
    assert bob.status().counts == {}


def test_revoking_an_agent_ends_its_open_stream(agents, client, daemon):
    import queue

    alice = agents("alice")
    feed: queue.Queue = queue.Queue()

    def batches():
        while True:
            item = feed.get()
            if item is None:
                return
            yield item

    from memos_mip.v1 import cube_pb2

    call = alice._vault.PutStream(batches(), timeout=20)
    feed.put(vault_pb2.PutBatchRequest(cubes=[cube_pb2.CubeDraft(namespace="agents/alice/n", text="one")]))
    assert len(next(call).ids) == 1
    client.revoke_agent("alice")  # alice's stream is idle, waiting for her next batch
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    feed.put(None)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED and "revoked" in info.value.details()


def test_page_tokens_are_bound_to_the_callers_view(agents, client):
    alice, bob = agents("alice"), agents("bob")
    alice.put_many([{"text": f"a{i}", "namespace": "agents/alice/n"} for i in range(5)])
    page = client.list_page(page_size=2)
    assert page.total_size == 5 and page.next_page_token
    client.put("added after the first page", "agents/alice/n")
    assert client.list_page(page_size=2, page_token=page.next_page_token).total_size == 5  # as first counted
    with pytest.raises(InvalidArgument, match="different filter"):
        bob.list_page(page_size=2, page_token=page.next_page_token)  # the admin's view is not bob's


def test_governance_narrows_a_filter_to_what_the_caller_may_read(agents, client, daemon):
    from memosd.cube import CubeFilter, MemoryKind
    from memosd.governance import Principal
    from memosd.governance.core import ScopeRule

    client.grant("group:research", ["read"], ["teams/research/**"], kinds=["plaintext"])
    gov, asked = daemon.server.governance, CubeFilter(namespace_prefix="teams", tags=("x",))
    narrowed = gov.readable(Principal("bob", frozenset({"research"})), asked)
    assert (narrowed.namespace_prefix, narrowed.tags, narrowed.viewer) == ("teams", ("x",), "bob")
    assert set(narrowed.scope) == {ScopeRule("agents/bob", True),
                                   ScopeRule("teams/research", True, frozenset({MemoryKind.PLAINTEXT}))}
    assert gov.readable(Principal("admin", admin=True), asked) == asked  # everything, owner-only cubes too


def test_servicers_leave_the_read_scope_to_governance():
    # Authorization is decided in MemGovernance: a servicer that built its own scope could forget the viewer.
    from pathlib import Path

    server = Path(__file__).parent.parent / "memosd" / "server"
    for path in server.glob("*.py"):
        text = path.read_text()
        assert "read_scope" not in text and "scope=" not in text and "viewer=" not in text, path.name
