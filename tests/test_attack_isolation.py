"""An outside attack on isolation, second round: what an agent with its own key, or a narrow grant, could learn."""

from __future__ import annotations

import hashlib
import json

import pytest

from memos_client import MemosClient

UNKNOWN_ID = "01JAAAAAAAAAAAAAAAAAAAAAAA"  # well-formed, and no cube of these tests has it


@pytest.fixture
def agents(daemon, client, tmp_path):
    """alice and bob, each with its own key; the tests grant what each needs."""
    opened = {}
    for name in ("alice", "bob"):
        client.add_agent(name, out=str(tmp_path / f"{name}.key"))
        opened[name] = MemosClient(daemon.address, key=str(tmp_path / f"{name}.key"), timeout=30)
    yield opened["alice"], opened["bob"]
    for c in opened.values():
        c.close()


def test_a_writer_who_may_not_read_gets_no_text_tags_or_metadata_back_from_update(agents, client):
    alice, bob = agents
    client.grant("agent:alice", ["read", "write"], ["teams/inbox/**"])
    client.grant("agent:bob", ["write"], ["teams/inbox/**"])  # bob may drop notes there, not read them
    note = alice.put("alice's inbox secret", "teams/inbox", tags=["alice-tag"], metadata={"k": "alice-meta"},
                     source="alice-source")
    updated = bob.update(note.id, priority=3)
    assert updated.id == note.id and updated.version == 2
    seen = repr(updated)
    for secret in ("alice's inbox secret", "alice-tag", "alice-meta", "alice-source", "alice"):
        assert secret not in seen, (secret, seen)
    # The write itself happened, and alice still reads her text.
    got = alice.get(note.id)
    assert got.priority == 3 and got.text == "alice's inbox secret" and got.tags == ["alice-tag"]
    # A reader who writes gets the whole cube back, as before.
    client.grant("agent:bob", ["read"], ["teams/inbox/**"])
    assert bob.update(note.id, priority=4).text == "alice's inbox secret"
