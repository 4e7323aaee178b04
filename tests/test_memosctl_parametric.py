"""memosctl's parametric commands against a real daemon: adapter ls/show/rm/push/pull, distill with its progress
bar, plan, and jobs ls/cancel."""

import json

import pytest

from memos_client import MemosClient, NotFound
from memos_client.cli import main
from tests.adapter_helpers import save_adapter
from tests.daemon import make_config, running
from tests.kv_helpers import save_tiny

# peft asks transformers a deprecated question while wrapping a model; not ours to answer.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture
def ctl(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # tables fit the terminal; give them room
    config = make_config(tmp_path, parametric_model=str(model_dir), parametric_dtype="float32")
    with running(config) as daemon, MemosClient(daemon.address, key=daemon.admin_key) as client:
        def run(*args: str):
            code = main(["--addr", daemon.address, "--key", str(daemon.admin_key), *args])
            out, err = capsys.readouterr()
            return code, out, err

        yield run, client


def test_adapter_push_ls_show_pull_rm(ctl, tmp_path, model_dir):
    run, client = ctl
    directory = save_adapter(tmp_path / "adapter", "llama")
    note = client.put("the adapter's source", "agents/admin/notes")
    code, out, err = run("adapter", "push", str(directory), "--base-model", str(model_dir), "-t", "demo",
                         "--from", note.id, "--source", "cli-test")
    assert (code, err) == (0, "")
    cube_id = out.strip()
    cube = client.get(cube_id)
    assert cube.tags == ["demo"] and cube.derived_from == [note.id] and cube.source == "cli-test"
    code, out, _ = run("adapter", "ls")
    assert code == 0 and cube_id in out and "q_proj,v_proj" in out
    code, out, _ = run("adapter", "ls", "--json", "--model", cube.adapter.model_fingerprint[:8])
    assert json.loads(out)["adapter"]["rank"] == 4
    code, out, err = run("adapter", "ls", "--model", "0000")
    assert (code, out) == (0, "") and "no adapters match" in err
    code, out, _ = run("adapter", "show", cube_id)
    assert code == 0 and "rank        4" in out and note.id in out and "q_proj, v_proj" in out
    code, out, _ = run("adapter", "pull", cube_id, str(tmp_path / "pulled"))
    assert code == 0 and (tmp_path / "pulled" / "adapter_model.safetensors").is_file()
    code, out, err = run("adapter", "push", str(tmp_path / "pulled"), "--model", cube.adapter.model_fingerprint, "--json")
    assert code == 0 and json.loads(out)["adapter"]["blob"]["sha256"] == cube.adapter.blob.sha256
    code, out, err = run("adapter", "push", str(directory))
    assert code == 2 and "--base-model" in err
    code, out, err = run("adapter", "rm", cube_id, note.id)
    assert code == 1 and f"deleted {cube_id}" in out and "plaintext cube, not an adapter" in err
    with pytest.raises(NotFound):
        client.get(cube_id)


def test_adapter_push_refuses_a_pickle_unless_allowed(ctl, tmp_path, model_dir):
    import shutil

    import torch
    from safetensors.torch import load_file

    run, client = ctl
    directory = save_adapter(tmp_path / "adapter", "llama")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(directory / "adapter_config.json", pickled)
    torch.save(load_file(directory / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    code, out, err = run("adapter", "push", str(pickled), "--base-model", str(model_dir))
    assert code == 1 and "--allow-pickle" in err and out == ""
    code, out, err = run("adapter", "push", str(pickled), "--base-model", str(model_dir), "--allow-pickle")
    assert code == 0 and client.get(out.strip()).adapter.num_modules == 4


def test_distill_with_a_progress_bar_then_plan(ctl):
    run, client = ctl
    notes = [client.put(t, "agents/admin/notes", tags=["travel"]).id
             for t in ("alice prefers window seats on the train to paris", "bob takes the train to berlin")]
    code, out, err = run("distill", "-n", "agents/admin/notes", "-t", "travel", "--steps", "6", "--rank", "4",
                         "--alpha", "8", "--target-module", "q_proj", "--target-module", "v_proj", "--lr", "0.01",
                         "--batch-size", "2", "--max-tokens", "64", "--seed", "1", "--adapter-tag", "travel",
                         "--progress")
    assert code == 0, err
    cube_id = out.strip()
    assert "training on 2 plaintext cubes" in err and "adapter.distill" in err and "100%" in err
    assert "mean loss on the training texts" in err
    cube = client.get(cube_id)
    assert cube.derived_from == notes and cube.tags == ["travel"] and cube.adapter.rank == 4
    fingerprint = cube.adapter.model_fingerprint
    code, out, _ = run("plan", "train to paris", "--model", fingerprint, "--limit", "1", "--adapters", "1")
    assert code == 0 and notes[0] in out and cube_id in out and "trained on 1 of the 1 plaintext hits" in out
    code, out, _ = run("plan", "train to paris", "--json", "--tokens", "1,2,3", "--model", fingerprint)
    plan = json.loads(out)
    assert plan["adapters"][0]["id"] == cube_id and plan["activation"] is None
    code, out, _ = run("plan", "train", "-n", "agents/admin/notes", "--agent", "admin")
    assert code == 0 and "give --model" in out
    code, out, err = run("plan", "train", "--tokens", "a,b", "--model", fingerprint)
    assert code == 1 and "--tokens" in err


def test_distill_detached_then_jobs_ls_show_cancel(ctl):
    run, client = ctl
    note = client.put("alice likes tea and coffee", "agents/admin/notes").id
    code, out, err = run("distill", note, "--steps", "100000", "--batch-size", "1", "--into", "agents/admin/ad",
                         "--template", "note: {text}", "--dropout", "0.1", "--detach")
    assert code == 0
    job_id = out.strip()
    code, out, _ = run("jobs", "ls", "--json")
    assert json.loads(out.splitlines()[0])["id"] == job_id
    code, out, _ = run("jobs", "cancel", job_id)
    assert code == 0 and out.startswith(f"cancelling {job_id}")
    code, out, _ = run("jobs", "watch", job_id)
    assert code == 1
    code, out, _ = run("jobs", "cancel", job_id)
    assert code == 0 and "already ended (cancelled)" in out
    code, out, _ = run("jobs", "show", job_id)
    assert code == 0 and "cancelled" in out and "metrics" in out
    code, out, _ = run("jobs", "ls", "--all")
    assert job_id in out
    code, out, err = run("distill", "-n", "agents/admin/nothing-here")
    assert code == 1 and "selects no plaintext cube" in err
    code, out, err = run("distill", "--model", "ab" * 32, note, "--steps", "1")
    assert code == 1 and "fingerprint" in err
