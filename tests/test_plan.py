"""MemScheduler's query plan: for an agent, a query and a model, the plaintext hits, the activation cube (longest
prefix, else lineage) and the adapters (lineage, tags) to use, each with a score and a reason; only what the agent
may read."""

import pytest

from memos_client import InvalidArgument, MemosClient, NotFound, PermissionDenied
from memos_mip.fingerprint import model_fingerprint
from tests.adapter_helpers import tiny_peft
from tests.kv_helpers import FINGERPRINT, put_kv, tiny_model

# peft asks transformers a deprecated question while wrapping a model; not ours to answer.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


@pytest.fixture
def memory(client):
    """Notes, a KV cache and adapters of one model (the tiny llama's), plus one adapter of another model."""
    notes = {
        "paris": client.put("alice prefers window seats on the train to paris", "agents/admin/notes", tags=["travel"]),
        "tea": client.put("bob likes tea in the morning", "agents/admin/notes", tags=["food"]),
        "miso": client.put("carol has a cat called miso", "agents/admin/notes", tags=["pets"]),
    }
    fp = model_fingerprint(tiny_model("llama"))
    travel = client.push_adapter(tiny_peft("llama", adapter_seed=1), derived_from=[notes["paris"].id], tags=["travel"])
    food = client.push_adapter(tiny_peft("llama", adapter_seed=2), derived_from=[notes["tea"].id])
    tagged = client.push_adapter(tiny_peft("llama", adapter_seed=3), tags=["train", "unrelated"])
    other_model = client.push_adapter(tiny_peft("qwen2", adapter_seed=4), derived_from=[notes["paris"].id],
                                      tags=["travel"])
    built = put_kv(client, list(range(40)), fingerprint=fp, derived_from=[notes["paris"].id])
    return dict(notes=notes, fp=fp, travel=travel, food=food, tagged=tagged, other=other_model, built=built.id)


def test_a_plan_chooses_each_kind_with_a_reason(client, memory):
    plan = client.plan("who takes the train to paris", tiny_model("llama"))
    assert [c.cube.id for c in plan.plaintext] == [memory["notes"]["paris"].id]
    assert plan.plaintext[0].reason.startswith("bm25 search, rank 1") and plan.plaintext[0].score > 0
    # Without the prompt's tokens the KV cache is chosen by its lineage.
    assert plan.activation.cube.id == memory["built"] and plan.matched_tokens == 0
    assert "built from 1 of the 1 plaintext hits" in plan.activation.reason and plan.activation.score == 1.0
    ids = [c.cube.id for c in plan.adapters]
    assert ids[:2] == [memory["travel"], memory["tagged"]] and memory["other"] not in ids and memory["food"] not in ids
    travel, tagged = plan.adapters[0], plan.adapters[1]
    assert "trained on 1 of the 1 plaintext hits" in travel.reason and "tagged travel, like the hits" in travel.reason
    assert tagged.reason == "tagged train, like the query" and travel.score > tagged.score > 0
    assert travel.score == pytest.approx(1.0) and tagged.score == pytest.approx(0.3 * 0.5)


def test_the_longest_prefix_wins_when_the_prompt_is_known(client, memory):
    fp = memory["fp"]
    longer = put_kv(client, list(range(60)), fingerprint=fp, seed=2)
    plan = client.plan("bob likes tea", model_fingerprint=fp, token_ids=list(range(50)) + [999] * 10)
    assert plan.activation.cube.id == longer.id and plan.matched_tokens == 50
    assert plan.activation.reason == "its KV cache covers the first 50 of the prompt's 60 tokens"
    assert plan.activation.score == pytest.approx(50 / 60)
    assert [c.cube.id for c in plan.adapters] == [memory["food"]]
    # A prompt no cache shares falls back to lineage; the tea note built nothing.
    assert client.plan("bob likes tea", model_fingerprint=fp, token_ids=[999, 998]).activation is None
    assert [c.cube.id for c in client.plan("tea", max_adapters=1, model_fingerprint=fp).adapters] == [memory["food"]]


def test_plaintext_only_without_a_model_and_bad_requests(client, memory):
    plan = client.plan("miso the cat", limit=1)
    assert [c.cube.id for c in plan.plaintext] == [memory["notes"]["miso"].id]
    assert plan.activation is None and plan.adapters == [] and plan.to_json()["plaintext"][0]["kind"] == "plaintext"
    with pytest.raises(InvalidArgument, match="query is empty"):
        client.plan("   ")
    with pytest.raises(InvalidArgument, match="model_fingerprint"):
        client.plan("tea", model_fingerprint="abc")
    with pytest.raises(InvalidArgument, match="token_ids need the model_fingerprint"):
        client.plan("tea", token_ids=[1, 2])
    with pytest.raises(InvalidArgument, match="limit"):
        client.plan("tea", limit=1000)
    assert client.plan("tea", model_fingerprint=FINGERPRINT).adapters == []  # a model nothing was made for


def test_an_agent_is_planned_only_what_it_may_read(client, daemon, memory, tmp_path):
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
        mine = bob.put("bob's own train ticket to paris", tags=["travel"])
        plan = bob.plan("train to paris", model_fingerprint=memory["fp"])
        assert [c.cube.id for c in plan.plaintext] == [mine.id] and plan.activation is None and plan.adapters == []
        with pytest.raises(PermissionDenied, match="only for itself"):
            bob.plan("paris", agent="admin")
    as_bob = client.plan("train to paris", model_fingerprint=memory["fp"], agent="bob")
    assert [c.cube.id for c in as_bob.plaintext] == [mine.id]
    client.grant("agent:bob", ["read"], ["agents/admin/**"])
    as_bob = client.plan("train to paris", model_fingerprint=memory["fp"], agent="bob")
    assert {c.cube.id for c in as_bob.plaintext} == {mine.id, memory["notes"]["paris"].id}
    assert memory["travel"] in [c.cube.id for c in as_bob.adapters]
    with pytest.raises(NotFound):
        client.plan("paris", agent="nobody")
