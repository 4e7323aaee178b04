"""LoRA adapters of real (tiny, seeded) transformers models through the daemon: a pulled adapter computes exactly
what the same adapter loaded from its PEFT directory does, bound to its base model, added to or swapped into an
existing PeftModel, written back as a PEFT directory, governed like any cube."""

import asyncio

import pytest
import torch

from memos_client import (
    AsyncMemosClient, FailedPrecondition, InvalidArgument, Kind, MemosClient, NotFound, PermissionDenied,
)
from memos_mip.fingerprint import base_model_fingerprint, model_fingerprint
from tests.existence import assert_hidden
from tests.adapter_helpers import logits, save_adapter, tiny_peft
from tests.kv_helpers import tiny_model

# peft asks transformers a deprecated question while wrapping a model; not ours to answer.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

ARCHS = ["llama", "qwen2"]


def _ids(seed: int = 1, n: int = 24):
    torch.manual_seed(seed)
    return torch.randint(4, 128, (2, n))


@pytest.mark.parametrize("arch", ARCHS)
def test_pulled_adapter_computes_what_the_local_directory_does(client, tmp_path, arch):
    from peft import PeftModel

    directory = save_adapter(tmp_path / "adapter", arch)
    cube_id = client.push_adapter(directory, tiny_model(arch), tags=["demo"])
    loaded = client.load_adapter(cube_id, tiny_model(arch))
    local = PeftModel.from_pretrained(tiny_model(arch), directory)
    ids = _ids()
    torch.testing.assert_close(logits(loaded, ids), logits(local, ids), atol=1e-6, rtol=0)
    assert (logits(loaded, ids) - logits(tiny_model(arch), ids)).abs().max() > 0.05  # the adapter does something
    assert type(loaded).__name__ == "PeftModelForCausalLM" and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    cube = client.get(cube_id)
    a = cube.adapter
    assert cube.kind is Kind.PARAMETRIC and cube.text is None and cube.tags == ["demo"]
    assert a.model_fingerprint == model_fingerprint(tiny_model(arch)) and a.peft_type == "LORA"
    assert (a.rank, a.lora_alpha, a.target_modules, a.task_type) == (4, 8.0, ["q_proj", "v_proj"], "CAUSAL_LM")
    assert a.num_modules == 4 and a.dtype == "float32" and a.blob.size == len(client.download_blob(cube_id))
    assert a.num_parameters == sum(p.numel() for n, p in local.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_pushed_peft_model_round_trips_and_pulls_back_as_a_peft_directory(client, tmp_path, arch):
    from peft import PeftModel

    original = tiny_peft(arch, rank=8, alpha=16, targets=("q_proj", "k_proj", "o_proj", "down_proj"))
    assert base_model_fingerprint(original) == model_fingerprint(tiny_model(arch))
    cube_id = client.push_adapter(original)
    ids = _ids(2)
    torch.testing.assert_close(logits(client.load_adapter(cube_id, tiny_model(arch)), ids), logits(original, ids),
                               atol=1e-6, rtol=0)
    directory = client.pull_adapter(cube_id, tmp_path / "pulled")
    assert sorted(p.name for p in directory.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    from_directory = PeftModel.from_pretrained(tiny_model(arch), directory)
    torch.testing.assert_close(logits(from_directory, ids), logits(original, ids), atol=1e-6, rtol=0)
    # The pulled directory pushes back to the very same blob.
    again = client.push_adapter(directory, tiny_model(arch))
    assert client.get(again).adapter.blob.sha256 == client.get(cube_id).adapter.blob.sha256


def test_adapters_added_to_a_peft_model_and_swapped_in_place(client, tmp_path):
    first = tiny_peft("llama", adapter_seed=1)
    second = tiny_peft("llama", adapter_seed=2)
    a, b = client.push_adapter(first), client.push_adapter(second)
    ids = _ids(3)
    model = client.load_adapter(a, tiny_model("llama"))
    same = client.load_adapter(b, model, adapter_name="second")
    assert same is model and set(model.peft_config) == {"default", "second"}
    torch.testing.assert_close(logits(model, ids), logits(first, ids), atol=1e-6, rtol=0)
    model.set_adapter("second")
    torch.testing.assert_close(logits(model, ids), logits(second, ids), atol=1e-6, rtol=0)
    model.set_adapter("default")
    with pytest.raises(InvalidArgument, match="already"):
        client.load_adapter(b, model)  # the name is taken: add under another name, or hot-swap
    lora_a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    swapped = client.load_adapter(b, model, hotswap=True)
    assert swapped is model and set(model.peft_config) == {"default", "second"}
    torch.testing.assert_close(logits(model, ids), logits(second, ids), atol=1e-6, rtol=0)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight is lora_a  # in place


def test_loading_for_training_and_fresh_weights_each_time(client):
    cube_id = client.push_adapter(tiny_peft("qwen2"))
    trainable = client.load_adapter(cube_id, tiny_model("qwen2"), is_trainable=True)
    lora = [p for n, p in trainable.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    with torch.no_grad():
        lora[0].add_(1.0)  # training this copy never touches the stored adapter
    fresh = client.load_adapter(cube_id, tiny_model("qwen2"))
    ids = _ids(4)
    torch.testing.assert_close(logits(fresh, ids), logits(tiny_peft("qwen2"), ids), atol=1e-6, rtol=0)


def test_adapter_cubes_are_governed_listed_and_released(client, daemon, tmp_path):
    cube_id = client.push_adapter(tiny_peft("llama"), namespace="agents/admin/adapters")
    text = client.put("a plaintext note", "agents/admin/notes")
    assert [c.id for c in client.list(kinds=[Kind.PARAMETRIC])] == [cube_id]
    with pytest.raises(FailedPrecondition, match="not an adapter"):
        client.load_adapter(text.id, tiny_model("llama"))
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
        assert_hidden(lambda i: bob.load_adapter(i, tiny_model("llama")), cube_id)
        with pytest.raises(PermissionDenied):
            bob.push_adapter(tiny_peft("llama"), namespace="agents/admin/adapters")
        mine = bob.push_adapter(tiny_peft("llama"))
        assert bob.get(mine).namespace == "agents/bob/adapters"
    client.grant("agent:bob", ["read"], ["agents/admin/adapters/**", "agents/admin/adapters"], kinds=["parametric"])
    with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
        assert bob.load_adapter(cube_id, tiny_model("llama")) is not None
    sha = client.get(cube_id).adapter.blob.sha256
    client.delete(cube_id)
    client.delete(mine)
    with pytest.raises(NotFound):
        client.get(cube_id)
    assert daemon.call(daemon.vault.db.read(lambda c: c.execute(
        "SELECT refcount FROM blobs WHERE sha256 = ?", (sha,)).fetchone()))[0] == 0


def test_async_client_pushes_and_loads(aclient_factory):
    async def scenario():
        async with aclient_factory() as memos:
            original = tiny_peft("qwen2", adapter_seed=5)
            cube_id = await memos.push_adapter(original)
            return original, await memos.load_adapter(cube_id, tiny_model("qwen2"))

    original, loaded = asyncio.run(asyncio.wait_for(scenario(), 60))
    ids = _ids(5)
    torch.testing.assert_close(logits(loaded, ids), logits(original, ids), atol=1e-6, rtol=0)


def test_importing_the_client_does_not_import_torch_or_peft():
    import subprocess
    import sys

    code = ("import sys, memos_client, memos_client.adapter_client, memos_mip.adapter_format;"
            " sys.exit(int(any(m in sys.modules for m in ('torch', 'peft', 'transformers'))))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert AsyncMemosClient.load_adapter and MemosClient.push_adapter


def test_an_adapter_published_on_a_topic_loads_for_its_subscribers(client, daemon, tmp_path):
    cube_id = client.push_adapter(tiny_peft("llama"), tags=["skill"])
    client.add_agent("bob", out=str(tmp_path / "bob.key"))
    client.grant("agent:bob", ["subscribe"], ["teams/skills"])
    with MemosClient(daemon.address, key=str(tmp_path / "bob.key")) as bob:
        assert_hidden(lambda i: bob.load_adapter(i, tiny_model("llama")), cube_id)
        client.publish("teams/skills", cube_id)
        subscription = bob.subscribe("teams/skills")
        try:
            event = next(iter(subscription))
        finally:
            subscription.close()
        assert event.cube.kind is Kind.PARAMETRIC and event.cube.adapter.rank == 4
        ids = _ids(6)
        torch.testing.assert_close(logits(bob.load_adapter(cube_id, tiny_model("llama")), ids),
                                   logits(tiny_peft("llama"), ids), atol=1e-6, rtol=0)
