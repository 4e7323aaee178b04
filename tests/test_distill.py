"""MemScheduler's plaintext -> parametric promotion: the daemon trains a LoRA adapter on plaintext cubes with its
configured base model as a background job (progress, loss, cancellation), and the adapter it stores really has
learned the texts: loaded into the client's copy of the model it lowers their loss by a clear margin."""

import json
import threading

import pytest
import torch

from memos_client import FailedPrecondition, InvalidArgument, Kind, MemosClient, NotFound, PermissionDenied
from memos_client.kv_models import JobState
from memos_mip.fingerprint import model_fingerprint
from tests.daemon import make_config, running
from tests.existence import assert_hidden
from tests.kv_helpers import save_tiny
from tests.adapter_helpers import put_raw_adapter

# peft asks transformers a deprecated question while wrapping a model; not ours to answer.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

TEXTS = ["alice prefers window seats on the train to paris", "bob likes tea in the morning and coffee in the evening",
         "carol has a cat called miso", "the budget meeting is on monday morning"]
FAST = dict(rank=8, steps=40, learning_rate=0.02, batch_size=4, target_modules=["q_proj", "v_proj", "lm_head"])


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture
def trainer(tmp_path, model_dir):
    config = make_config(tmp_path, parametric_model=str(model_dir), parametric_dtype="float32")
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        yield daemon, client


def _finish(client, job):
    states = list(client.watch_job(job.id))
    assert states[-1].finished
    return states


def _loss(model, tokenizer, texts) -> float:
    """Mean next-token loss over the texts, each with BOS and EOS, as the daemon trains on them."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text).input_ids + [tokenizer.eos_token_id]])
            out = model(ids, labels=ids)
            n = ids.shape[1] - 1
            total, count = total + out.loss.item() * n, count + n
    return total / count


def test_a_distilled_adapter_has_learned_its_sources(trainer, model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    daemon, client = trainer
    ids = [client.put(t, "agents/admin/notes", tags=["facts"]).id for t in TEXTS]
    client.put("an unrelated note elsewhere", "agents/admin/other")
    job, sources = client.distill(namespace_prefix="agents/admin/notes", adapter_tags=["facts"], seed=3, **FAST)
    assert sources == ids and job.kind == "adapter.distill" and job.total == 40
    states = _finish(client, job)
    final = states[-1]
    assert final.state is JobState.SUCCEEDED, final
    assert final.done == final.total == 40 and len({s.done for s in states}) > 3  # progress step by step
    assert "loss" in final.metrics and final.metrics["loss_after"] < final.metrics["loss_before"] / 2
    cube = client.get(final.result_ids[0])
    assert cube.kind is Kind.PARAMETRIC and cube.derived_from == ids and cube.tags == ["facts"]
    assert cube.source == f"distill:{model_dir.name}" and cube.namespace == "agents/admin/adapters"
    a = cube.adapter
    assert (a.rank, a.lora_alpha, a.target_modules) == (8, 16.0, ["lm_head", "q_proj", "v_proj"])
    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    assert a.model_fingerprint == model_fingerprint(base)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # the daemon's own: texts tokenize the same
    before = _loss(base, tokenizer, TEXTS)
    adapted = client.load_adapter(cube.id, base)
    after = _loss(adapted, tokenizer, TEXTS)
    assert after < 0.5 * before, (before, after)  # a clear margin: the adapter knows the texts
    assert abs(before - final.metrics["loss_before"]) < 1e-4 and abs(after - final.metrics["loss_after"]) < 1e-4
    # Unrelated text is not what it learned.
    assert _loss(adapted, tokenizer, ["dave has a dog"]) > after


def test_the_same_seed_trains_the_same_adapter(trainer):
    daemon, client = trainer
    ids = [client.put(t, "agents/admin/notes").id for t in TEXTS[:2]]
    blobs = []
    for seed in (5, 5, 6):
        job, _ = client.distill(cube_ids=ids, seed=seed, **{**FAST, "steps": 5})
        final = _finish(client, job)[-1]
        assert final.state is JobState.SUCCEEDED, final
        blobs.append(client.get(final.result_ids[0]).adapter.blob.sha256)
    assert blobs[0] == blobs[1] != blobs[2]


def test_sources_by_tag_and_query_and_ids(trainer):
    daemon, client = trainer
    cubes = [client.put(t, "agents/admin/notes", tags=["travel"] if "train" in t else ["misc"]) for t in TEXTS]
    _, by_tag = client.distill(tags=["travel"], steps=1)
    assert by_tag == [cubes[0].id]
    _, by_query = client.distill(query="tea coffee", steps=1, limit=1)
    assert by_query == [cubes[1].id]
    _, by_ids = client.distill(cube_ids=[cubes[3].id, cubes[2].id], steps=1)
    assert by_ids == [cubes[3].id, cubes[2].id]
    _, limited = client.distill(namespace_prefix="agents/admin", limit=2, steps=1)
    assert limited == [cubes[0].id, cubes[1].id]
    for job in client.list_jobs(include_finished=True):
        _finish(client, job)


def test_distillation_over_zero_cubes_is_refused(trainer, tmp_path):
    daemon, client = trainer
    with pytest.raises(FailedPrecondition, match="selects no plaintext cube"):
        client.distill(namespace_prefix="agents/admin/empty")
    client.put("a note", "agents/admin/notes", tags=["x"])
    with pytest.raises(FailedPrecondition, match="selects no plaintext cube"):
        client.distill(tags=["nope"])
    with pytest.raises(FailedPrecondition, match="selects no plaintext cube"):
        client.distill(query="zebra")
    with pytest.raises(InvalidArgument, match="source is empty"):
        client.distill()
    with pytest.raises(InvalidArgument, match="cube_ids excludes"):
        client.distill(cube_ids=["01J9Z3K5Q8W2E4R6T8Y0V2X4N6"], tags=["x"])
    with pytest.raises(NotFound):
        client.distill(cube_ids=["01J9Z3K5Q8W2E4R6T8Y0V2X4N6"])
    # Another agent's notes are no source for bob: his selection is empty, naming one is naming no cube.
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    note = client.put("admin's secret plan", "agents/admin/notes")
    with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
        with pytest.raises(FailedPrecondition, match="selects no plaintext cube"):
            bob.distill(namespace_prefix="agents/admin")
        assert_hidden(lambda i: bob.distill(cube_ids=[i]), note.id)
        with pytest.raises(PermissionDenied, match="may not write in agents/admin/adapters"):
            bob.distill("agents/admin/adapters", cube_ids=[bob.put("mine").id])
    assert list(client.list(kinds=[Kind.PARAMETRIC])) == []


def test_settings_out_of_bounds_and_non_plaintext_sources_are_refused(trainer):
    daemon, client = trainer
    note = client.put("a note", "agents/admin/notes")
    for fields, message in ((dict(rank=1000), "rank must be from 1 to 256"), (dict(steps=10**6), "steps"),
                            (dict(learning_rate=5.0), "learning_rate"), (dict(lora_dropout=0.95), "lora_dropout"),
                            (dict(max_tokens=4), "max_tokens"), (dict(target_modules=["q_proj; rm -rf"]), "target_modules"),
                            (dict(template="no placeholder"), "template"), (dict(model_fingerprint="abc"), "model_fingerprint"),
                            (dict(bogus=1), "unknown distill settings")):
        with pytest.raises(InvalidArgument, match=message):
            client.distill(cube_ids=[note.id], **fields)
    job, _ = client.distill(cube_ids=[note.id], steps=1)
    adapter = _finish(client, job)[-1].result_ids[0]
    with pytest.raises(InvalidArgument, match="parametric cube; adapters are trained on plaintext only"):
        client.distill(cube_ids=[adapter])


def test_a_target_module_the_model_lacks_or_another_base_model_fails_the_job(trainer):
    daemon, client = trainer
    note = client.put("alice likes tea", "agents/admin/notes")
    job, _ = client.distill(cube_ids=[note.id], steps=1, target_modules=["attn_qkv"])
    final = _finish(client, job)[-1]
    assert final.state is JobState.FAILED and final.error_code == "INVALID_ARGUMENT" and "target_modules" in final.error
    job, _ = client.distill(cube_ids=[note.id], steps=1, model_fingerprint="ab" * 32)
    final = _finish(client, job)[-1]
    assert final.state is JobState.FAILED and final.error_code == "FAILED_PRECONDITION" and "fingerprint" in final.error
    assert list(client.list(kinds=[Kind.PARAMETRIC])) == []


def test_once_the_daemon_knows_its_base_model_it_checks_adapters_against_it(trainer):
    daemon, client = trainer
    note = client.put("alice likes tea", "agents/admin/notes")
    final = _finish(client, client.distill(cube_ids=[note.id], steps=1, target_modules=["q_proj"])[0])[-1]
    fingerprint = client.get(final.result_ids[0]).adapter.model_fingerprint
    # An adapter for that base model naming a layer it does not have: the daemon loaded the model, so it knows.
    config = json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                         "task_type": "CAUSAL_LM"})
    weights = {"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64),
               "base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight": torch.zeros(64, 8)}
    with pytest.raises(InvalidArgument, match="layers.9.self_attn.q_proj is not a module of the base model"):
        put_raw_adapter(client, config, weights, fingerprint, rank=8, lora_alpha=16.0)
    # For a base model it has not loaded, only the adapter's own consistency can be checked.
    assert put_raw_adapter(client, config, weights, "cd" * 32, rank=8, lora_alpha=16.0).adapter.num_modules == 1


def test_cancelling_mid_training_stores_nothing_and_cancelling_twice_is_harmless(trainer):
    daemon, client = trainer
    ids = [client.put(t, "agents/admin/notes").id for t in TEXTS]
    job, _ = client.distill(cube_ids=ids, steps=100_000, batch_size=1)
    seen = threading.Event()
    states = []

    def watch():
        for state in client.watch_job(job.id):
            states.append(state)
            if state.done >= 2:
                seen.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert seen.wait(60), "training never reported progress"
    first = client.cancel_job(job.id)
    second = client.cancel_job(job.id)  # while it stops: no error, the same request
    watcher.join(60)
    final = states[-1]
    assert final.state is JobState.CANCELLED and not final.result_ids and 2 <= final.done < 100_000
    assert first.id == second.id == job.id and second.state in (JobState.RUNNING, JobState.CANCELLED)
    third = client.cancel_job(job.id)  # after it ended: reported as it is, nothing changes
    assert third.state is JobState.CANCELLED and third.finished_at == final.finished_at
    assert sum(s.state is JobState.CANCELLED for s in states) == 1
    assert list(client.list(kinds=[Kind.PARAMETRIC])) == []


def test_no_base_model_configured_is_a_failed_precondition(client):
    note = client.put("alice likes tea", "agents/admin/notes")
    with pytest.raises(FailedPrecondition, match="parametric_model"):
        client.distill(cube_ids=[note.id])


def test_the_activation_model_serves_when_no_parametric_model_is_set(tmp_path, model_dir):
    config = make_config(tmp_path, activation_model=str(model_dir), activation_dtype="float32")
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        note = client.put("alice likes tea", "agents/admin/notes")
        final = _finish(client, client.distill(cube_ids=[note.id], steps=2)[0])[-1]
        assert final.state is JobState.SUCCEEDED, final
        cube = client.get(final.result_ids[0])
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
        assert cube.adapter.model_fingerprint == model_fingerprint(base)
