"""LoRA adapters of transformers models as parametric cubes: push a PeftModel or a PEFT directory, load one back
onto its base model (a new PeftModel, another adapter of an existing one, or a hot swap in place).

    with MemosClient() as memos:
        cube_id = memos.push_adapter(peft_model)                       # or push_adapter("out/adapter", base)
        model = memos.load_adapter(cube_id, base_model)                # any agent with the same base model

Imported only when used (it imports torch and peft): `import memos_client` stays light. The blob format is
memos_mip.adapter_format's; encode_adapter() is memos_mip.tensors', which the daemon uses too.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

from memos_client.errors import DataLoss, FailedPrecondition, InvalidArgument, ModelMismatch
from memos_client.models import Kind
from memos_mip import tensors
from memos_mip.adapter_format import (
    AdapterManifest, FormatError, check_adapter, from_peft_files, manifest_of, parse_config, read_adapter, read_header,
)
from memos_mip.fingerprint import base_model_fingerprint
from memos_mip.payload import Payload
from memos_mip.tensors import module_shapes, peft_config_text, quiet_peft

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
_TORCH_DTYPES = tensors.torch_dtypes()


def encode_adapter(config_text: str, state: dict[str, torch.Tensor]) -> Payload:
    """memos_mip.tensors.encode_adapter, raising InvalidArgument for an adapter the format cannot hold."""
    try:
        return tensors.encode_adapter(config_text, state)
    except FormatError as exc:
        raise InvalidArgument(str(exc)) from None


def from_peft_model(model, adapter_name: str = "default") -> tuple[str, dict[str, torch.Tensor]]:
    """(config text, state dict) of one adapter of a PeftModel, as save_pretrained would write them."""
    from peft import get_peft_model_state_dict

    if adapter_name not in getattr(model, "peft_config", {}):
        raise InvalidArgument(f"the model has no adapter named {adapter_name!r}")
    config = model.peft_config[adapter_name]
    # The base model's own weights never travel: the fingerprint pins them.
    state = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    return peft_config_text(config), state


def read_directory(path: str | os.PathLike, *, allow_pickle: bool = False) -> Payload:
    """The adapter blob of a PEFT adapter directory. adapter_model.bin (a pickle, which can run code when
    loaded) is read only with allow_pickle, and then with torch's weights-only unpickler."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise InvalidArgument(f"{path} has no {CONFIG_FILE}: not a PEFT adapter directory")
    config = config_file.read_bytes()
    try:
        parse_config(config)
        text = config.decode("utf-8")
        if (path / WEIGHTS_FILE).is_file():
            header, parts = from_peft_files(text, (path / WEIGHTS_FILE).read_bytes())
            return Payload([header, *parts])
    except FormatError as exc:
        raise InvalidArgument(f"{path}: {exc}") from None
    if not (path / PICKLE_FILE).is_file():
        raise InvalidArgument(f"{path} has neither {WEIGHTS_FILE} nor {PICKLE_FILE}")
    if not allow_pickle:
        raise InvalidArgument(f"{path / PICKLE_FILE} is a pickle, which can run code when loaded: convert it to "
                              f"{WEIGHTS_FILE}, or pass allow_pickle=True (memosctl: --allow-pickle) to read its "
                              "tensors with torch's weights-only unpickler")
    try:
        with warnings.catch_warnings():  # torch notes any protocol but 2; the loader is weights-only either way
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path / PICKLE_FILE, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # torch raises many kinds; every one means "not plain tensors"
        raise InvalidArgument(f"{path / PICKLE_FILE} was refused by the weights-only unpickler: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InvalidArgument(f"{path / PICKLE_FILE} does not hold a dict of named tensors")
    return encode_adapter(text, state)


def _describe(payload: Payload):
    header = payload.parts[0]  # every adapter Payload starts with its whole safetensors header
    try:
        return read_adapter(read_header(header, payload.size))
    except FormatError as exc:
        raise InvalidArgument(str(exc)) from None


def prepare_push(adapter, base_model=None, *, adapter_name: str = "default", model_fingerprint: str | None = None,
                 allow_pickle: bool = False) -> tuple[Payload, AdapterManifest]:
    """The blob and manifest of an adapter to push: from a PeftModel (its base model is inside it), or from a
    PEFT directory with its base model (or only its fingerprint, then without the check of module shapes)."""
    if isinstance(adapter, (str, os.PathLike)):
        payload = read_directory(adapter, allow_pickle=allow_pickle)
        base = base_model
    elif hasattr(adapter, "peft_config"):
        payload = encode_adapter(*from_peft_model(adapter, adapter_name))
        base = adapter
    else:
        raise InvalidArgument(f"expected a PeftModel or a PEFT adapter directory, not {type(adapter).__name__}")
    if base is not None:
        fingerprint = base_model_fingerprint(base)
        if model_fingerprint and model_fingerprint != fingerprint:
            raise ModelMismatch(f"model_fingerprint {model_fingerprint[:16]}… is not the base model's {fingerprint[:16]}…")
        known = module_shapes(base)
    elif model_fingerprint:
        fingerprint, known = model_fingerprint, None
    else:
        raise InvalidArgument("pushing an adapter directory needs its base model (base_model=) or the base model's"
                              " fingerprint (model_fingerprint=)")
    info = _describe(payload)
    try:
        check_adapter(info, known)
    except FormatError as exc:
        raise InvalidArgument(f"the adapter does not fit its base model: {exc}") from None
    return payload, manifest_of(info, payload.sha256, payload.size, fingerprint)


# ---- loading -------------------------------------------------------------------------------------------------


def check_base(cube, base_model):
    """The adapter view of `cube` if it was made for `base_model`; ModelMismatch otherwise."""
    if cube.kind is not Kind.PARAMETRIC or cube.adapter is None:
        raise FailedPrecondition(f"cube {cube.id} is a {cube.kind.name.lower()} cube, not an adapter")
    mine = base_model_fingerprint(base_model)
    if cube.adapter.model_fingerprint != mine:
        raise ModelMismatch(f"adapter {cube.id} was made for the base model with fingerprint "
                            f"{cube.adapter.model_fingerprint[:16]}…; this model's is {mine[:16]}…: it would load"
                            " onto the wrong weights")
    return cube.adapter


def _state_dict(buffer: torch.Tensor, size: int, sha256: str):
    try:
        header = read_header(memoryview(buffer.numpy()), size)
        info = read_adapter(header)
    except FormatError as exc:
        raise DataLoss(f"the adapter blob of sha256 {sha256} is corrupt: {exc}") from None
    state = {}
    for e in header.entries:
        start = header.data_start + e.begin
        state[e.name] = buffer[start:header.data_start + e.end].view(_TORCH_DTYPES[e.spec.dtype]).view(e.spec.shape)
    return info, state


def _config_object(config: dict, is_trainable: bool):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    data = {k: v for k, v in config.items() if k != "runtime_config"}
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[data["peft_type"]]
    try:
        obj = cls.from_peft_type(**cls.check_kwargs(**data))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"this peft cannot read the adapter's config: {exc}") from None
    obj.inference_mode = not is_trainable
    return obj


def _remap(state: dict, model) -> dict:
    # As PeftModel.from_pretrained: models whose checkpoints were renamed map adapter keys the same way.
    mapping = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    if not mapping:
        return state
    out = {}
    for key, value in state.items():
        prefix = "base_model.model." if key.startswith("base_model.model.") else "base_model."
        rest = key.removeprefix(prefix)
        for pattern, replacement in mapping.items():
            rest, n = re.subn(pattern, replacement, rest)
            if n:
                break
        out[prefix + rest] = value
    return out


def _to_devices(state: dict, base) -> dict:
    devices = {}
    for key in state:
        module = key.removeprefix("base_model.model.").split(".lora_")[0]
        try:
            devices[key] = next(base.get_submodule(module).parameters()).device
        except (AttributeError, StopIteration):
            devices[key] = None
    return {k: v if devices[k] in (None, v.device) else v.to(devices[k]) for k, v in state.items()}


def finish_load(buffer: torch.Tensor, meta, base_model, *, adapter_name: str = "default", is_trainable: bool = False,
                hotswap: bool = False):
    """Load a downloaded (and digest-checked) adapter blob onto base_model: a new PeftModel around it, another
    adapter of it when it is a PeftModel already, or (hotswap) new weights for its adapter of that name, in
    place. Returns the PeftModel. As PeftModel.from_pretrained / load_adapter, without files."""
    from peft import PeftModel, set_peft_model_state_dict
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

    info, state = _state_dict(buffer, meta.blob.size, meta.blob.sha256)
    try:
        check_adapter(info, module_shapes(base_model))
    except FormatError as exc:
        raise ModelMismatch(f"the adapter does not fit this model: {exc}") from None
    config = _config_object(info.config, is_trainable)
    is_peft = isinstance(base_model, PeftModel)
    transformers_model = base_model.get_base_model() if is_peft else base_model
    state = _to_devices(_remap(state, transformers_model), transformers_model)
    if hotswap:
        return _hotswap(base_model, state, config, adapter_name)
    if is_peft:
        if adapter_name in base_model.peft_config:
            raise InvalidArgument(f"the model has an adapter named {adapter_name!r} already: pass another"
                                  " adapter_name, or hotswap=True to swap its weights in place")
        base_model.add_adapter(adapter_name, config, low_cpu_mem_usage=True)
        model = base_model
    else:
        cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)
        with quiet_peft():
            model = cls(base_model, config, adapter_name, autocast_adapter_dtype=True, low_cpu_mem_usage=True)
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name, low_cpu_mem_usage=True)
    missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_name}" in k]
    if missing:
        raise ModelMismatch(f"the adapter lacks weights this model expects, e.g. {missing[0]}")
    if is_trainable and hasattr(model, "set_requires_grad"):
        model.set_requires_grad(adapter_name)
    if hasattr(model.base_model, "_cast_adapter_dtype"):
        model.base_model._cast_adapter_dtype(adapter_name=adapter_name, autocast_adapter_dtype=True)
    if not is_trainable:
        model.eval()
    return model


def _hotswap(model, state: dict, config, adapter_name: str):
    from peft import PeftModel
    from peft.utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter_from_state_dict
    from peft.utils.save_and_load import _insert_adapter_name_into_state_dict

    if not isinstance(model, PeftModel) or adapter_name not in model.peft_config:
        raise InvalidArgument(f"hotswap replaces the weights of an adapter the model has: it has no {adapter_name!r}")
    try:
        check_hotswap_configs_compatible(model.peft_config[adapter_name], config)
        hotswap_adapter_from_state_dict(model, _insert_adapter_name_into_state_dict(state, adapter_name, "lora_"),
                                        adapter_name, config)
    except (RuntimeError, ValueError) as exc:
        raise InvalidArgument(f"cannot hot-swap adapter {adapter_name!r}: {' '.join(str(exc).split())}") from None
    return model
