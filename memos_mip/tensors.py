"""The torch side of the KV and adapter formats, which client and daemon both write (torch is imported inside
the functions, so that importing this module stays light)."""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections.abc import Mapping, Sequence

from memos_mip.adapter_format import encode as encode_adapter_header
from memos_mip.payload import Payload
from memos_mip.tensor_format import DTYPES, FORMAT, LAYOUT_DYNAMIC_CACHE, FormatError, TensorSpec, encode_header, kv_names


@functools.cache
def torch_dtypes() -> dict:
    """{format dtype name: torch dtype} of the dtypes this torch has."""
    import torch

    return {name: getattr(torch, name) for name in DTYPES if hasattr(torch, name)}


def dtype_name(dtype, what: str = "tensors") -> str:
    """The format's name of a torch dtype; FormatError for one the format cannot store."""
    name = str(dtype).removeprefix("torch.")
    if name not in torch_dtypes():
        raise FormatError(f"{what} of dtype {name} cannot be stored; supported: {', '.join(torch_dtypes())}")
    return name


def raw(t) -> memoryview:
    """A tensor's bytes as they lie in (CPU) memory, without a copy where it is contiguous on the CPU already."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def model_dtype(model):
    return getattr(model, "dtype", None) or next(model.parameters()).dtype


def cache_keyword(model) -> str:
    """The keyword forward() and generate() take a cache under: `cache` from transformers 5 on (which warns
    that `past_key_values` is deprecated), `past_key_values` before."""
    import inspect

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model  # a PeftModel
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def encode_kv(layers: Sequence[tuple]) -> tuple[tuple, Payload]:
    """The layer specs and the safetensors payload (header, then each layer's key and value, without
    copying them into one buffer) of a cache; FormatError if the format cannot hold it."""
    specs = tuple((TensorSpec(dtype_name(k.dtype), tuple(k.shape)), TensorSpec(dtype_name(v.dtype), tuple(v.shape)))
                  for k, v in layers)
    names = kv_names(len(layers))
    flat = [spec for pair in specs for spec in pair]
    header = encode_header(list(zip(names, flat)), {"format": FORMAT, "layout": LAYOUT_DYNAMIC_CACHE,
                                                    "num_layers": str(len(layers))})
    return specs, Payload([header, *(raw(t) for pair in layers for t in pair)])


@contextlib.contextmanager
def quiet_peft():
    """Wrapping a model, peft still reads transformers' deprecated `is_gradient_checkpointing`: a warning about
    peft's code that no caller of ours can act on, silenced around our peft calls and nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def module_shapes(model) -> dict[str, tuple[int, int]]:
    """{module name: (input size, output size)} of the modules of a (base) model that LoRA can adapt: linear
    layers, transformers' Conv1D and embeddings, seen through the wrappers PEFT puts around them."""
    from torch import nn

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    shapes = {}
    for name, module in base.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        name = ".".join(p for p in parts if p != "base_layer")
        if isinstance(module, nn.Linear):
            shapes[name] = (module.in_features, module.out_features)
        elif isinstance(module, nn.Embedding):
            shapes[name] = (module.num_embeddings, module.embedding_dim)
        elif type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
            shapes[name] = tuple(module.weight.shape)  # transformers' Conv1D stores [in, out]
    return shapes


def peft_config_text(config) -> str:
    """adapter_config.json's text for a PEFT config, as PeftModel.save_pretrained writes it (sets as lists,
    inference mode on)."""
    data = config.to_dict()
    data.pop("runtime_config", None)
    data["inference_mode"] = True
    for key, value in list(data.items()):
        if isinstance(value, set):
            data[key] = sorted(value)
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def encode_adapter(config_text: str, tensors: Mapping) -> Payload:
    """The adapter blob of a config and a PEFT state dict (without the adapter name), its tensors' memory
    referenced, not copied; FormatError if the format cannot hold it."""
    specs = [(name, TensorSpec(dtype_name(t.dtype, "adapter tensors"), tuple(t.shape))) for name, t in tensors.items()]
    header, order = encode_adapter_header(config_text, specs)
    return Payload([header, *(raw(tensors[name]) for name in order)])
