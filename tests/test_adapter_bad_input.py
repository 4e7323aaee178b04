"""Each way of handing memosd a bad adapter is refused with a typed error that says what is wrong: by the client
before anything is sent, by the daemon for what reaches it anyway, at load time for what only the model shows."""

import json
import pickle
import shutil

import pytest
import torch

from memos_client import DataLoss, InvalidArgument, ModelMismatch, NotFound
from memos_mip.adapter_format import AdapterManifest
from memos_mip.fingerprint import model_fingerprint
from memos_mip.tensor_format import TensorSpec, encode_header
from tests.adapter_helpers import logits, put_raw_adapter, save_adapter, tiny_peft
from tests.kv_helpers import kv_payload, tiny_model

# peft asks transformers a deprecated question while wrapping a model; not ours to answer.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def _rewrite(directory, change) -> None:
    """Apply change(state dict) to a PEFT directory's adapter_model.safetensors."""
    from safetensors.torch import load_file, save_file

    path = directory / "adapter_model.safetensors"
    state = load_file(path)
    change(state)
    save_file(state, path)


def _config(directory) -> dict:
    return json.loads((directory / "adapter_config.json").read_text())


def test_an_adapter_for_another_base_model_is_refused(client):
    cube_id = client.push_adapter(tiny_peft("llama"))
    for other in (tiny_model("llama", seed=1), tiny_model("qwen2"), tiny_peft("llama", seed=1)):
        with pytest.raises(ModelMismatch, match="made for the base model"):
            client.load_adapter(cube_id, other)
    with pytest.raises(ModelMismatch, match="not the base model"):
        client.push_adapter(tiny_peft("llama"), model_fingerprint=model_fingerprint(tiny_model("qwen2")))
    # The same weights in another dtype are another base model.
    with pytest.raises(ModelMismatch):
        client.load_adapter(cube_id, tiny_model("llama").to(torch.bfloat16))


def test_adapter_config_that_is_not_json(client, tmp_path):
    directory = save_adapter(tmp_path / "a")
    (directory / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4,')
    with pytest.raises(InvalidArgument, match="adapter_config.json is not valid JSON"):
        client.push_adapter(directory, tiny_model("llama"))
    weights = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4)}
    with pytest.raises(InvalidArgument, match="not valid JSON"):  # the daemon reads the config itself
        put_raw_adapter(client, "{nope", weights, model_fingerprint(tiny_model("llama")))
    for text, message in (('["LORA"]', "not a JSON object"), ('{"peft_type": "IA3"}', "only LORA"),
                          ('{"peft_type": "LORA", "r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}', "r must be"),
                          ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],'
                           ' "modules_to_save": ["lm_head"]}', "not a pure LoRA adapter")):
        with pytest.raises(InvalidArgument, match=message):
            put_raw_adapter(client, text, weights, model_fingerprint(tiny_model("llama")))


def test_adapter_config_naming_modules_the_base_model_lacks(client, tmp_path):
    directory = save_adapter(tmp_path / "a")
    config = _config(directory)
    config["target_modules"] = ["q_proj", "v_proj", "attn_qkv"]
    (directory / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidArgument, match="'attn_qkv' names no module of the base model"):
        client.push_adapter(directory, tiny_model("llama"))
    # Weights for a layer the model does not have: refused against the model, whenever it is at hand.
    moved = save_adapter(tmp_path / "b")
    _rewrite(moved, lambda s: s.update({k.replace("layers.1.", "layers.7."): s.pop(k) for k in list(s) if "layers.1." in k}))
    with pytest.raises(InvalidArgument, match="layers.7.self_attn.q_proj is not a module of the base model"):
        client.push_adapter(moved, tiny_model("llama"))
    cube_id = client.push_adapter(moved, model_fingerprint=model_fingerprint(tiny_model("llama")))  # nothing to check against
    with pytest.raises(ModelMismatch, match="layers.7"):
        client.load_adapter(cube_id, tiny_model("llama"))
    # Weights for a module the config does not target.
    stray = save_adapter(tmp_path / "c")
    _rewrite(stray, lambda s: s.update({k.replace("q_proj", "k_proj"): s.pop(k) for k in list(s) if "q_proj" in k}))
    with pytest.raises(InvalidArgument, match="k_proj carries LoRA weights but is not among the config's target"):
        client.push_adapter(stray, model_fingerprint=model_fingerprint(tiny_model("llama")))


def test_safetensors_with_tensors_of_the_wrong_shapes(client, tmp_path):
    fingerprint = model_fingerprint(tiny_model("llama"))
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    wrong_rank = save_adapter(tmp_path / "a")
    _rewrite(wrong_rank, lambda s: s.update({name: torch.zeros(5, 64)}))
    with pytest.raises(InvalidArgument, match=r"lora_A has shape \[5, 64\].*rank 4"):
        client.push_adapter(wrong_rank, tiny_model("llama"))
    weights = {name: torch.zeros(5, 64), name.replace("lora_A", "lora_B"): torch.zeros(64, 4)}
    with pytest.raises(InvalidArgument, match=r"rank 4"):  # and the daemon checks it too
        put_raw_adapter(client, json.dumps(_config(wrong_rank)), weights, fingerprint, num_modules=1)
    wrong_width = save_adapter(tmp_path / "b")  # consistent with its rank, not with the model
    _rewrite(wrong_width, lambda s: s.update({name: torch.zeros(4, 65)}))
    with pytest.raises(InvalidArgument, match="maps 65 -> 64 features, the base model's module maps 64 -> 64"):
        client.push_adapter(wrong_width, tiny_model("llama"))
    cube_id = client.push_adapter(wrong_width, model_fingerprint=fingerprint)
    with pytest.raises(ModelMismatch, match="maps 65 -> 64"):
        client.load_adapter(cube_id, tiny_model("llama"))
    half = save_adapter(tmp_path / "c")
    _rewrite(half, lambda s: s.pop(name.replace("lora_A", "lora_B")))
    with pytest.raises(InvalidArgument, match="lacks its lora_B tensor"):
        client.push_adapter(half, tiny_model("llama"))


def test_manifests_and_blobs_that_do_not_agree_are_refused_by_the_daemon(client, tmp_path):
    fingerprint = model_fingerprint(tiny_model("llama"))
    config = json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                         "task_type": "CAUSAL_LM"})
    weights = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4)}
    assert put_raw_adapter(client, config, weights, fingerprint).adapter.rank == 4
    with pytest.raises(InvalidArgument, match="the manifest says rank 8, the blob holds 4"):
        put_raw_adapter(client, config, weights, fingerprint, rank=8)
    with pytest.raises(InvalidArgument, match="model_fingerprint"):
        put_raw_adapter(client, config, weights, "not a fingerprint")
    payload, _ = kv_payload()  # a valid safetensors file, but a KV cache
    client.upload_blob(payload, "agents/admin/adapters", kind=3)
    import hashlib

    lie = AdapterManifest(hashlib.sha256(payload).hexdigest(), len(payload), fingerprint, "float32", "LORA", 4, 8.0,
                          ("q_proj",))
    with pytest.raises(InvalidArgument, match="not a memos-adapter/1 adapter"):
        client.put_adapter(lie, "agents/admin/adapters")
    with pytest.raises(NotFound, match="upload it"):
        client.put_adapter(AdapterManifest("ab" * 32, 10, fingerprint, "float32", "LORA", 4, 8.0, ("q_proj",)))
    garbage = encode_header([("x", TensorSpec("float32", (1,)))], {"format": "memos-adapter/1"}) + b"\0" * 4
    client.upload_blob(garbage, "agents/admin/adapters", kind=3)
    with pytest.raises(InvalidArgument, match="no adapter_config"):
        client.put_adapter(AdapterManifest(hashlib.sha256(garbage).hexdigest(), len(garbage), fingerprint, "float32",
                                           "LORA", 4, 8.0, ("q_proj",)), "agents/admin/adapters")


class _Marker:
    """Unpickling this creates a file: the test shows it never happens."""

    path = ""

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickled_weights_are_refused_unless_asked_for_and_then_run_no_code(client, tmp_path):
    from peft import PeftModel

    directory = save_adapter(tmp_path / "a")
    reference = PeftModel.from_pretrained(tiny_model("llama"), directory)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(directory / "adapter_config.json", pickled)
    from safetensors.torch import load_file

    torch.save(load_file(directory / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    with pytest.raises(InvalidArgument, match="is a pickle, which can run code.*allow_pickle"):
        client.push_adapter(pickled, tiny_model("llama"))
    cube_id = client.push_adapter(pickled, tiny_model("llama"), allow_pickle=True)
    ids = torch.randint(4, 128, (1, 16))
    torch.testing.assert_close(logits(client.load_adapter(cube_id, tiny_model("llama")), ids), logits(reference, ids),
                               atol=1e-6, rtol=0)
    marker = tmp_path / "pwned"
    _Marker.path = str(marker)
    evil = load_file(directory / "adapter_model.safetensors")
    evil["payload"] = _Marker()
    torch.save(evil, pickled / "adapter_model.bin")
    with pytest.raises(InvalidArgument, match="refused by the weights-only unpickler"):
        client.push_adapter(pickled, tiny_model("llama"), allow_pickle=True)
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps(_Marker()))  # a bare pickle, not torch's zip format
    with pytest.raises(InvalidArgument, match="refused by the weights-only unpickler"):
        client.push_adapter(pickled, tiny_model("llama"), allow_pickle=True)
    assert not marker.exists()


def test_a_corrupt_download_is_data_loss_and_a_directory_needs_its_files(client, tmp_path, monkeypatch):
    from memos_client import adapters

    with pytest.raises(InvalidArgument, match="has no adapter_config.json"):
        client.push_adapter(tmp_path, tiny_model("llama"))
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(save_adapter(tmp_path / "a") / "adapter_config.json", only_config)
    with pytest.raises(InvalidArgument, match="neither adapter_model.safetensors nor adapter_model.bin"):
        client.push_adapter(only_config, tiny_model("llama"))
    with pytest.raises(InvalidArgument, match="needs its base model"):
        client.push_adapter(tmp_path / "a")
    cube_id = client.push_adapter(tmp_path / "a", tiny_model("llama"))
    real = adapters.read_header

    def corrupt(data, size):  # the bytes arrived (digest checked) but do not parse: corruption at rest
        raise adapters.FormatError("bad header")

    monkeypatch.setattr(adapters, "read_header", corrupt)
    with pytest.raises(DataLoss, match="corrupt"):
        client.load_adapter(cube_id, tiny_model("llama"))
    monkeypatch.setattr(adapters, "read_header", real)
    with pytest.raises(InvalidArgument, match="not empty"):
        client.pull_adapter(cube_id, tmp_path / "a")
