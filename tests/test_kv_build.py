"""MemScheduler's plaintext -> activation promotion: the daemon prefills its configured model with plaintext
cubes as a background job, and the cache it stores is exact in the client's copy of the model."""

import json

import pytest
import torch

import memosd.runtime.causal_lm as causal_lm
from memos_client import FailedPrecondition, InvalidArgument, Kind, MemosClient, NotFound, PermissionDenied
from memos_client.cli import main
from memos_client.kv import cache_keyword
from memos_client.kv_models import JobState
from memos_mip.fingerprint import tokenizer_fingerprint
from tests.daemon import make_config, running
from tests.existence import assert_hidden
from tests.kv_helpers import WORDS, save_tiny

TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture
def builder(tmp_path, model_dir):
    config = make_config(tmp_path, activation_model=str(model_dir), activation_dtype="float32")
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        yield daemon, client


def _finish(client, job):
    states = list(client.watch_job(job.id))
    assert states[-1].finished
    return states


def test_daemon_built_cache_is_exact_in_the_clients_model(builder, model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(causal_lm, "PREFILL_STEP", 3)  # several forward passes, several progress reports
    daemon, client = builder
    a = client.put("alice prefers window seats on the train to paris", "agents/admin/notes")
    b = client.put("bob likes tea in the morning and coffee in the evening", "agents/admin/notes")
    job = client.build_kv([a.id, b.id], template="note : {text}", prefix="memory notes :", suffix=" question :",
                          tags=["built"])
    states = _finish(client, job)
    final = states[-1]
    assert final.state is JobState.SUCCEEDED, final
    # Progress only moves forward to the total (how many steps a watcher sees depends on timing).
    assert final.done == final.total > 6 and [s.done for s in states] == sorted(s.done for s in states)
    cube = client.get(final.result_ids[0])
    assert cube.kind is Kind.ACTIVATION and cube.derived_from == [a.id, b.id] and cube.tags == ["built"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "memory notes :" + "\n\n".join(f"note : {c.text}" for c in (a, b)) + " question :"
    act = cube.activation
    assert act.token_ids == tokenizer(text).input_ids
    assert act.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer)
    cache = client.pull_kv(cube.id, model, tokenizer=tokenizer)
    query = torch.tensor([tokenizer("who likes tea ?", add_special_tokens=False).input_ids])
    with torch.no_grad():
        injected = model(query, **{cache_keyword(model): cache}).logits[0, -1]
        full = model(torch.cat([torch.tensor([act.token_ids]), query], 1)).logits[0, -1]
    assert (injected - full).abs().max().item() <= TOLERANCE
    # And the agent finds it by its prompt's prefix.
    found, matched = client.find_kv(act.model_fingerprint, act.token_ids + query[0].tolist())
    assert found.id == cube.id and matched == len(act.token_ids)


def test_build_refuses_what_it_cannot_prefill(builder, tmp_path):
    daemon, client = builder
    text = client.put("alice likes tea", "agents/admin/notes")
    with pytest.raises(NotFound):
        client.build_kv(["01J9Z3K5Q8W2E4R6T8Y0V2X4N6"])
    with pytest.raises(InvalidArgument, match="source_ids is empty"):
        client.build_kv([])
    with pytest.raises(InvalidArgument, match="template"):
        client.build_kv([text.id], template="no placeholder")
    job = client.build_kv([text.id])
    cube_id = _finish(client, job)[-1].result_ids[0]
    with pytest.raises(InvalidArgument, match="activation cube; only plaintext"):
        client.build_kv([cube_id])
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
        assert_hidden(lambda i: bob.build_kv([i]), text.id)
        with pytest.raises(NotFound):  # another agent's job is not even there
            bob.get_job(job.id)
        assert bob.list_jobs(include_finished=True) == []
        mine = bob.put("bob likes coffee")
        with pytest.raises(PermissionDenied, match="may not write in agents/admin/kv"):
            bob.build_kv([mine.id], "agents/admin/kv")
        bob_job = bob.build_kv([mine.id])
        assert _finish(bob, bob_job)[-1].state is JobState.SUCCEEDED
    assert {j.owner for j in client.list_jobs(include_finished=True)} == {"admin", "bob"}


def test_cancelled_build_stores_nothing(builder, monkeypatch):
    monkeypatch.setattr(causal_lm, "PREFILL_STEP", 1)
    daemon, client = builder
    text = client.put(" ".join(WORDS * 4), "agents/admin/notes")
    job = client.build_kv([text.id])
    client.cancel_job(job.id)
    final = _finish(client, job)[-1]
    assert final.state is JobState.CANCELLED and not final.result_ids
    assert list(client.list(kinds=[Kind.ACTIVATION])) == []
    assert client.get_job(job.id).state is JobState.CANCELLED


def test_no_model_configured_is_a_failed_precondition(client):
    text = client.put("alice likes tea", "agents/admin/notes")
    with pytest.raises(FailedPrecondition, match="activation_model"):
        client.build_kv([text.id])


def test_a_model_that_does_not_load_fails_the_job(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    config = make_config(tmp_path, activation_model=str(broken))
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        text = client.put("alice likes tea", "agents/admin/notes")
        final = _finish(client, client.build_kv([text.id]))[-1]
        assert final.state is JobState.FAILED and final.error_code == "FAILED_PRECONDITION"
        assert "activation_model" in final.error


def test_memosctl_kv_and_job(builder, capsys):
    daemon, client = builder
    base = ["--addr", daemon.address, "--key", str(daemon.admin_key)]
    text = client.put("carol has a cat called miso", "agents/admin/notes")
    assert main([*base, "kv", "build", text.id, "-t", "cli", "--progress"]) == 0
    out, err = capsys.readouterr()
    cube_id = out.strip()
    assert "kv.build" in err and "100%" in err
    assert main([*base, "kv", "ls"]) == 0
    out, _ = capsys.readouterr()
    assert cube_id in out and "float32" in out
    assert main([*base, "kv", "ls", "--json", "--model", "0000"]) == 0
    assert capsys.readouterr().out == ""
    assert main([*base, "kv", "show", cube_id, "--tokens"]) == 0
    out, _ = capsys.readouterr()
    assert "layers     2" in out and "token ids" in out and text.id in out
    assert main([*base, "kv", "show", cube_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["activation"]["num_layers"] == 2 and "token_ids" not in shown["activation"]
    assert main([*base, "job", "ls", "--all", "--json"]) == 0
    jobs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert jobs[0]["state"] == "succeeded" and jobs[0]["result_ids"] == [cube_id]
    assert main([*base, "job", "show", jobs[0]["id"]]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main([*base, "kv", "build", text.id, "--detach"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main([*base, "job", "watch", job_id]) == 0
    second = capsys.readouterr().out.strip()
    assert main([*base, "job", "cancel", job_id]) == 0
    assert "already ended" in capsys.readouterr().out
    assert main([*base, "kv", "rm", cube_id, second, text.id]) == 1
    out, err = capsys.readouterr()
    assert f"deleted {cube_id}" in out and f"deleted {second}" in out and "plaintext cube" in err
    with pytest.raises(NotFound):
        client.get(cube_id)
