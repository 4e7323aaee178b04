"""The adapter blob format on its own (no daemon, no torch): round trips of blobs, manifests and PEFT's two files,
and the checks of configs and tensor shapes, including PEFT's rules for which modules a config targets."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from memos_mip.adapter_format import (
    FORMAT, AdapterManifest, FormatError, check_adapter, check_matches, encode, from_peft_files, is_target,
    manifest_of, module_rank, parse_config, peft_files, read_adapter, read_header,
)
from memos_mip.tensor_format import DTYPES, TensorSpec, encode_header, parse_header

NAMES = st.sampled_from(["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "c_attn"])


def _config(**changes) -> dict:
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
              "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny"}
    config.update(changes)
    return config


def _blob(config: dict, modules: dict[str, tuple[int, int, int]], dtype: str = "float32") -> bytes:
    """An adapter blob with lora_A [r, in] and lora_B [out, r] (zeros) for each module name -> (r, in, out)."""
    tensors = []
    for name, (rank, fan_in, fan_out) in modules.items():
        tensors.append((f"base_model.model.{name}.lora_A.weight", TensorSpec(dtype, (rank, fan_in))))
        tensors.append((f"base_model.model.{name}.lora_B.weight", TensorSpec(dtype, (fan_out, rank))))
    header, _ = encode(json.dumps(config), tensors)
    return header + b"\0" * sum(spec.nbytes for _, spec in tensors)


def _read(blob: bytes):
    return read_adapter(read_header(blob, len(blob)))


@given(st.dictionaries(st.tuples(st.integers(0, 3), NAMES), st.tuples(st.integers(1, 8), st.integers(1, 8)),
                       min_size=1, max_size=6),
       st.integers(1, 6), st.sampled_from(sorted(DTYPES)))
@settings(max_examples=100, deadline=None)
def test_blob_and_peft_files_round_trip(shapes, rank, dtype):
    modules = {f"model.layers.{layer}.{name}": (rank, fan_in, fan_out) for (layer, name), (fan_in, fan_out) in shapes.items()}
    targets = sorted({name for _, name in shapes})
    config = _config(r=rank, target_modules=targets)
    blob = _blob(config, modules, dtype)
    adapter = _read(blob)
    check_adapter(adapter, {name: (fan_in, fan_out) for name, (_, fan_in, fan_out) in modules.items()})
    assert set(adapter.modules) == set(modules) and adapter.dtype == dtype and adapter.config == config
    manifest = manifest_of(adapter, "ab" * 32, len(blob), "cd" * 32)
    assert manifest.target_modules == tuple(targets) and manifest.num_modules == len(modules)
    assert manifest.num_parameters == sum(r * (i + o) for r, i, o in modules.values())
    assert AdapterManifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    config_bytes, weights = peft_files(blob)
    assert json.loads(config_bytes) == config
    safetensors = b"".join(bytes(p) for p in weights)
    assert parse_header(safetensors, len(safetensors)).metadata == {"format": "pt"}
    header, parts = from_peft_files(config_bytes, safetensors)
    assert header + b"".join(bytes(p) for p in parts) == blob


def test_config_checks():
    assert parse_config(json.dumps(_config()).encode())["r"] == 4
    for text, message in (("{", "not valid JSON"), ("[]", "not a JSON object"), (b"\xff", "not UTF-8"),
                          (json.dumps(_config(peft_type="IA3")), "only LORA"),
                          (json.dumps(_config(r=True)), "r must be"), (json.dumps(_config(lora_alpha=-1)), "lora_alpha"),
                          (json.dumps(_config(target_modules=[])), "target_modules"),
                          (json.dumps(_config(target_modules="(")), "not a regular expression"),
                          (json.dumps(_config(modules_to_save=["lm_head"])), "saves whole modules"),
                          (json.dumps(_config(layer_replication=[[0, 1]])), "restructures"),
                          (json.dumps(_config(rank_pattern={"q_proj": 0})), "rank_pattern")):
        with pytest.raises(FormatError, match=message):
            parse_config(text)


def test_targets_follow_peft_rules():
    config = _config(target_modules=["q_proj"], exclude_modules=["layers.1.self_attn.q_proj"])
    assert is_target(config, "model.layers.0.self_attn.q_proj") and is_target(config, "q_proj")
    assert not is_target(config, "model.layers.0.self_attn.xq_proj")
    assert not is_target(config, "model.layers.1.self_attn.q_proj")  # excluded
    regex = _config(target_modules=r".*layers\.0.*\.(q|v)_proj")
    assert is_target(regex, "model.layers.0.self_attn.v_proj") and not is_target(regex, "model.layers.1.self_attn.v_proj")
    ranks = _config(rank_pattern={r"layers\.1\.self_attn\.q_proj": 2})
    assert module_rank(ranks, "model.layers.1.self_attn.q_proj") == 2
    assert module_rank(ranks, "model.layers.11.self_attn.q_proj") == 4


def test_shape_checks():
    good = {"model.layers.0.self_attn.q_proj": (4, 64, 64)}
    check_adapter(_read(_blob(_config(), good)))
    for modules, known, message in (
        ({"model.layers.0.self_attn.q_proj": (5, 64, 64)}, None, r"rank 4"),
        ({"model.layers.0.mlp.up_proj": (4, 64, 128)}, None, "not among the config's target_modules"),
        (good, {"model.layers.0.self_attn.q_proj": (32, 64)}, "maps 64 -> 64 features, the base model's module maps 32"),
        (good, {"model.layers.1.self_attn.q_proj": (64, 64)}, "not a module of the base model"),
        (good, {"model.layers.0.self_attn.q_proj": (64, 64)}, "target module 'v_proj' names no module"),
    ):
        with pytest.raises(FormatError, match=message):
            check_adapter(_read(_blob(_config(), modules)), known)
    ranked = _config(rank_pattern={"q_proj": 2})
    check_adapter(_read(_blob(ranked, {"model.layers.0.self_attn.q_proj": (2, 64, 64),
                                       "model.layers.0.self_attn.v_proj": (4, 64, 32)})))


def test_blobs_that_are_not_lora_adapters():
    tensors = [("base_model.model.lm_head.weight", TensorSpec("float32", (4, 4)))]
    header, _ = encode(json.dumps(_config()), tensors)
    with pytest.raises(FormatError, match="not a LoRA weight"):
        _read(header + b"\0" * 64)
    plain = encode_header([("x", TensorSpec("float32", (1,)))]) + b"\0" * 4
    with pytest.raises(FormatError, match=f"not a {FORMAT} adapter"):
        read_header(plain, len(plain))
    mixed = [("base_model.model.q_proj.lora_A.weight", TensorSpec("float32", (4, 8))),
             ("base_model.model.q_proj.lora_B.weight", TensorSpec("float16", (8, 4)))]
    header, _ = encode(json.dumps(_config()), mixed)
    with pytest.raises(FormatError, match="mix dtypes"):
        _read(header + b"\0" * (128 + 64))
    blob = _blob(_config(), {"q_proj": (4, 8, 8)})
    actual = manifest_of(_read(blob), "ab" * 32, len(blob), "cd" * 32)
    with pytest.raises(FormatError, match="the manifest says lora_alpha 9.0, the blob holds 8.0"):
        check_matches(AdapterManifest(**{**actual.__dict__, "lora_alpha": 9.0}), actual)
