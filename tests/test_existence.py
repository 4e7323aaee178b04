"""No agent learns that a cube it may not read exists: every RPC naming one answers as for an unknown id."""

import json
from dataclasses import replace

import pytest

from memos_client import MemosClient, NotFound, PermissionDenied
from memos_mip.v1 import cube_pb2, vault_pb2
from tests.existence import UNKNOWN_ID, answer, assert_hidden
from tests.daemon import running
from tests.kv_helpers import put_kv
from tests.test_metrics import scrape, value

LAB = "teams/lab"


@pytest.fixture
def alice_bob(daemon, client, tmp_path):
    """alice and bob, who both may read, write, delete and share in teams/lab; bob also owns his feed."""
    opened = []
    for name in ("alice", "bob"):
        client.add_agent(name, out=str(tmp_path / f"{name}.key"))
        client.grant(f"agent:{name}", ["read", "write", "delete", "share"], [LAB, f"{LAB}/**"])
        opened.append(MemosClient(daemon.address, key=str(tmp_path / f"{name}.key"), timeout=30))
    yield opened
    for c in opened:
        c.close()


def _owner_only(c, text):
    draft = cube_pb2.CubeDraft(namespace=LAB, text=text, visibility=cube_pb2.VISIBILITY_OWNER)
    return c._call(c._vault.Put, vault_pb2.PutRequest(cube=draft)).cube.header.descriptive.id


def test_a_cube_one_may_not_read_is_answered_as_an_unknown_id_and_audited(alice_bob, client):
    alice, bob = alice_bob
    note = _owner_only(alice, "alice's owner-only note")  # in a namespace bob may read, write and delete in
    alice.update(note, text="alice's owner-only note, v2")
    kv = put_kv(alice, [1, 2, 3], "agents/alice/kv")  # in alice's own namespace, which bob may not read
    calls = {
        "Get": (bob.get, note),
        "Get(version)": (lambda i: bob.get(i, version=1), note),
        "Get(no such version)": (lambda i: bob.get(i, version=9), note),
        "History": (bob.history, note),
        "Update": (lambda i: bob.update(i, text="bob was here"), note),
        "Delete": (bob.delete, note),
        "Download": (bob.download_blob, kv.id),
        "OpenLocal": (bob.open_local, kv.id),
        "Publish": (lambda i: bob.publish("agents/bob/feed", i), note),
        "Retract": (lambda i: bob.retract("agents/bob/feed", i), note),
        "Retract(not his topic)": (lambda i: bob.retract("teams/news", i), note),
    }
    for what, (call, cube_id) in calls.items():
        said = answer(call, cube_id)
        assert said[0] is NotFound and said == answer(call, UNKNOWN_ID), (what, said)
    assert [v.text for v in alice.history(note)] == ["alice's owner-only note", "alice's owner-only note, v2"]
    assert alice.get(kv.id).activation.blob == kv.activation.blob

    # The daemon still records each of them as bob's denial on that very cube; an unknown id is no denial.
    denied = [e for e in client.audit() if e.decision == "deny" and e.agent == "bob"]
    methods = {e.action.rsplit("/", 1)[-1] for e in denied if json.loads(e.detail)["reason"].endswith(
        (f"no cube with id {note}", f"no cube with id {note} to publish", f"no cube with id {kv.id}"))}
    assert methods == {"Get", "History", "Update", "Delete", "Download", "OpenLocal", "Publish", "Retract"}
    assert not any(UNKNOWN_ID in e.detail for e in denied)


def test_a_reader_lacking_the_action_is_still_told_it_is_denied(alice_bob):
    alice, bob = alice_bob
    alice.grant("agent:bob", ["read"], ["agents/alice/shared", "agents/alice/shared/**"])
    shared = alice.put("alice shares this", "agents/alice/shared")
    assert bob.get(shared.id).text == "alice shares this"
    with pytest.raises(PermissionDenied, match=f"agent bob may not write cube {shared.id}"):
        bob.update(shared.id, text="x")
    with pytest.raises(PermissionDenied, match=f"agent bob may not delete cube {shared.id}"):
        bob.delete(shared.id)
    with pytest.raises(PermissionDenied, match="share"):
        bob.publish("agents/bob/feed", shared.id)
    with pytest.raises(PermissionDenied, match="may not publish in teams/news"):
        bob.retract("teams/news", shared.id)
    assert_hidden(bob.get, alice.put("alice's own", "agents/alice/private").id)


def test_the_metrics_anyone_on_the_host_may_scrape_count_a_hidden_cube_as_an_unknown_id(config, tmp_path):
    # The endpoint has no authentication: were Hidden counted as a denial there, the counter would be the oracle.
    with running(replace(config, metrics_listen="127.0.0.1:0")) as daemon, \
            MemosClient(daemon.address, key=daemon.admin_key) as admin:
        admin.add_agent("bob", out=str(tmp_path / "bob.key"))
        cube = admin.put("the admin's note", "agents/admin/notes")
        with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
            assert_hidden(bob.get, cube.id)
        _, _, text = scrape(daemon.server.metrics_endpoint.address)
        assert value(text, "memosd_requests_total", method="Get", code="NOT_FOUND") == 2
        assert value(text, "memosd_auth_denials_total", code="PERMISSION_DENIED") == 0
        assert [e.action.rsplit("/", 1)[-1] for e in admin.audit() if e.decision == "deny"] == ["Get"]
