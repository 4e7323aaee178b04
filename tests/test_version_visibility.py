"""Each version of a cube has its own visibility: History and Get(version) decide on it per version."""

import asyncio

import pytest

from memos_client import MemosClient, NotFound, PermissionDenied
from memos_mip.v1 import cube_pb2, vault_pb2
from memosd.cube import CubeDraft
from memosd.errors import Hidden
from memosd.vault import MemVault
from tests.existence import assert_hidden

OWNER, NAMESPACE = cube_pb2.VISIBILITY_OWNER, cube_pb2.VISIBILITY_NAMESPACE


@pytest.fixture
def alice_bob(daemon, client, tmp_path):
    """alice, and bob who may read alice's agents/alice/shared subtree."""
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    alice = MemosClient(daemon.address, key=str(tmp_path / "alice.key"))
    bob = MemosClient(daemon.address, key=str(tmp_path / "bob.key"))
    alice.grant("agent:bob", ["read"], ["agents/alice/shared/**"])
    yield alice, bob
    alice.close()
    bob.close()


def _put(c, text, visibility):
    return c._call(c._vault.Put, vault_pb2.PutRequest(cube=cube_pb2.CubeDraft(
        namespace="agents/alice/shared", text=text, visibility=visibility))).cube.header.descriptive.id


def _update(c, cube_id, text, visibility):
    c._call(c._vault.Update, vault_pb2.UpdateRequest(
        id=cube_id, cube=cube_pb2.CubeDraft(text=text, visibility=visibility),
        update_mask={"paths": ["text", "visibility"]}))


def test_owner_only_version_stays_hidden_after_the_cube_is_made_visible(alice_bob):
    alice, bob = alice_bob
    cube_id = _put(alice, "v1: alice's private draft", OWNER)
    _update(alice, cube_id, "v2: for the team", NAMESPACE)
    assert bob.get(cube_id).text == "v2: for the team"
    assert [(v.version, v.text) for v in bob.history(cube_id)] == [(2, "v2: for the team")]
    # bob reads the cube, so he may learn that version 1 exists, not what it says.
    with pytest.raises(PermissionDenied, match="version 1 of cube .* is not readable by you") as info:
        bob.get(cube_id, version=1)
    assert "private draft" not in str(info.value)
    # The owner still sees every version.
    assert [v.text for v in alice.history(cube_id)] == ["v1: alice's private draft", "v2: for the team"]
    assert alice.get(cube_id, version=1).text == "v1: alice's private draft"


def test_visible_version_stays_readable_when_a_later_one_is_owner_only(alice_bob):
    alice, bob = alice_bob
    cube_id = _put(alice, "v1: for the team", NAMESPACE)
    _update(alice, cube_id, "v2: alice only", OWNER)
    # bob reads version 1, so the cube is no secret to him: he is denied version 2, not told it is unknown.
    with pytest.raises(PermissionDenied, match="version 2 of cube .* is not readable by you"):
        bob.get(cube_id)
    assert [(v.version, v.text) for v in bob.history(cube_id)] == [(1, "v1: for the team")]
    assert bob.get(cube_id, version=1).text == "v1: for the team"
    with pytest.raises(PermissionDenied, match="version 2 of cube .* is not readable by you"):
        bob.get(cube_id, version=2)
    with pytest.raises(NotFound, match="no version 7"):
        bob.get(cube_id, version=7)


def test_versions_of_a_cube_one_may_not_read_reveal_nothing(alice_bob, client):
    alice, bob = alice_bob
    hidden = alice.put("alice's notes", "agents/alice/private")
    alice.update(hidden.id, text="alice's notes, v2")
    for call in (bob.history, lambda i: bob.get(i, version=1), lambda i: bob.get(i, version=2),
                 lambda i: bob.get(i, version=99)):
        assert_hidden(call, hidden.id)
    # A reader of the cube learns that a version does not exist, as before.
    with pytest.raises(NotFound, match="no version 99"):
        alice.get(hidden.id, version=99)
    owner_only = _put(alice, "only alice, ever", OWNER)
    _update(alice, owner_only, "still only alice", OWNER)
    assert_hidden(bob.history, owner_only)
    assert_hidden(lambda i: bob.get(i, version=1), owner_only)
    assert len(client.history(owner_only)) == 2  # the admin reads every version


def test_a_grant_landing_between_two_decisions_on_one_get_lets_the_reader_in(tmp_path):
    """Guards run in a reader thread while governance changes in the event loop: Get's first decision may be
    made before a grant and the check of the other versions after it. The answer is the later decision on the
    version asked for, not a PermissionDenied that says the one version the cube has is unreadable (seen in CI
    on a cluster, where a grant reaches a member between the two)."""
    async def scenario():
        vault = MemVault(tmp_path)
        await vault.start()
        try:
            (cube,) = await vault.put_many([CubeDraft(namespace="agents/alice/shared", text="v1")], owner="alice")
            decisions = []

            def granted_after_the_first_decision(c):
                decisions.append(c.version)
                if len(decisions) == 1:
                    raise Hidden(f"no cube with id {c.id}")

            assert (await vault.get(cube.id, guard=granted_after_the_first_decision)).text == "v1"
            assert decisions == [1, 1]

            def never(c):
                raise Hidden(f"no cube with id {c.id}")

            with pytest.raises(Hidden, match="no cube with id"):
                await vault.get(cube.id, guard=never)
        finally:
            await vault.close()

    asyncio.run(scenario())
