"""KV caches of transformers models as activation cubes: push a DynamicCache, pull a fresh one back, generate.

    with MemosClient() as memos:
        cube_id = memos.push_kv(out.cache, input_ids, model)        # one agent, once
        cache = memos.pull_kv(cube_id, model)                                # any agent, same model
        text_ids = memos.generate_with_kv(model, prompt_ids, max_new_tokens=64)  # or: find, pull, generate

Imported only when used (it imports torch): `import memos_client` stays light. The payload layout is
memos_mip.tensor_format's; encode_kv() is memos_mip.tensors', which the daemon uses too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memos_client.errors import DataLoss, FailedPrecondition, InvalidArgument, ModelMismatch
from memos_client.models import Kind
from memos_mip import tensors
from memos_mip.fingerprint import model_fingerprint, tokenizer_fingerprint
from memos_mip.payload import Payload
from memos_mip.tensor_format import FormatError, Header, KVManifest, check_payload, parse_header, prefix_hash
from memos_mip.tensors import model_dtype

_TORCH_DTYPES = tensors.torch_dtypes()
cache_keyword = tensors.cache_keyword  # the client's callers (kv_client, kv_aio) find it here


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return tensors.dtype_name(dtype)
    except FormatError as exc:
        raise InvalidArgument(str(exc)) from None


def token_list(input_ids) -> list[int]:
    """Token ids from a list, a 1-d tensor, or a [1, n] tensor (one sequence)."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise InvalidArgument(f"input_ids holds {input_ids.shape[0]} sequences; a KV cube holds one")
            input_ids = input_ids[0]
        if input_ids.dim() != 1:
            raise InvalidArgument("input_ids must be 1-d, or [1, n]")
        return [int(t) for t in input_ids.tolist()]
    ids = [int(t) for t in input_ids]
    if not ids:
        raise InvalidArgument("input_ids is empty")
    return ids


def kv_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(key, value) per layer of a DynamicCache of full-attention layers, or of the legacy tuple form."""
    if isinstance(cache, (tuple, list)):
        layers = []
        for i, item in enumerate(cache):
            if not (isinstance(item, (tuple, list)) and len(item) >= 2 and all(isinstance(t, torch.Tensor) for t in item[:2])):
                raise InvalidArgument(f"legacy cache entry {i} is not a (key, value) pair of tensors")
            layers.append((item[0], item[1]))
        return layers
    if not hasattr(cache, "layers"):
        raise InvalidArgument("expected a transformers DynamicCache or a tuple of (key, value) pairs per layer, "
                              f"not {type(cache).__name__}")
    layers = []
    for i, layer in enumerate(cache.layers):
        kind = type(layer).__name__
        if kind != "DynamicLayer":
            raise InvalidArgument(f"layer {i} of the cache is a {kind}; only full-attention DynamicCache layers can be"
                                  " stored (sliding-window, quantized and linear-attention caches are not supported)")
        if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
            raise InvalidArgument(f"layer {i} of the cache is empty: run the model on the prefix first")
        layers.append((layer.keys, layer.values))
    return layers


def _text_config(model):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def model_layers(model) -> int:
    return int(_text_config(model).num_hidden_layers)


def check_for_model(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], model, num_tokens: int) -> None:
    """A cache must fit the model it is stored for: its layer count, dtype, heads and prefix length."""
    expected = model_layers(model)
    if len(layers) != expected:
        raise InvalidArgument(f"the cache has {len(layers)} layers; the model has {expected}")
    dtype = model_dtype(model)
    config = _text_config(model)
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
    for i, (k, v) in enumerate(layers):
        for part, t in (("key", k), ("value", v)):
            if t.dim() != 4 or t.shape[0] != 1:
                raise InvalidArgument(f"layer {i} {part} has shape {list(t.shape)}; expected [1, kv_heads, tokens, head_dim]")
            if t.shape[2] != num_tokens:
                raise InvalidArgument(f"layer {i} {part} covers {t.shape[2]} tokens but input_ids has {num_tokens}")
            if t.dtype != dtype:
                raise InvalidArgument(f"layer {i} {part} is {dtype_name(t.dtype)} but the model computes in "
                                      f"{dtype_name(dtype)}: a cache in a dtype the model does not use is refused")
            if heads and t.shape[1] != heads:
                raise InvalidArgument(f"layer {i} {part} has {t.shape[1]} heads; the model has {heads} key/value heads")


def encode_kv(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[tuple, Payload]:
    """memos_mip.tensors.encode_kv, raising InvalidArgument for a cache the format cannot hold."""
    try:
        return tensors.encode_kv(layers)
    except FormatError as exc:
        raise InvalidArgument(str(exc)) from None


def decode_kv(buffer: torch.Tensor, header: Header, num_layers: int, *, device=None,
              num_tokens: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (key, value) tensors over a payload held in a uint8 tensor (views, no copy, unless they
    must move to another device), cut to the first num_tokens tokens if given."""
    layers = []
    for i in range(num_layers):
        pair = []
        for part in ("key", "value"):
            e = header.entry(f"layers.{i}.{part}")
            start = header.data_start + e.begin
            t = buffer[start:header.data_start + e.end].view(_TORCH_DTYPES[e.spec.dtype]).view(e.spec.shape)
            if num_tokens is not None:
                t = t[:, :, :num_tokens, :]
            if device is not None and t.device != torch.device(device):
                t = t.to(device)
            pair.append(t)
        layers.append(tuple(pair))
    return layers


def to_dynamic_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], model):
    """A new DynamicCache for `model` holding these tensors (taken as they are, without concatenation)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if not cache.layers:
        cache.layers = [DynamicLayer() for _ in layers]
        cache.layer_class_to_replicate = None
    if len(cache.layers) != len(layers):
        raise ModelMismatch(f"the cache has {len(layers)} layers; the model's cache has {len(cache.layers)}")
    for i, (layer, (k, v)) in enumerate(zip(cache.layers, layers)):
        if type(layer) is not DynamicLayer:
            raise ModelMismatch(f"layer {i} of this model keeps a {type(layer).__name__}; only full-attention"
                                " layers can take a stored cache")
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


# ---- with a client --------------------------------------------------------------------------------------


def default_namespace(client) -> str:
    """agents/AGENT/kv for the client's agent."""
    return client.default_namespace.rsplit("/", 1)[0] + "/kv"


def prepare_push(cache, input_ids, model, tokenizer=None) -> tuple[list[int], tuple, Payload, str, str]:
    """Token ids, layer specs, payload and fingerprints of a cache to push (the CPU-heavy part)."""
    ids = token_list(input_ids)
    layers = kv_layers(cache)
    check_for_model(layers, model, len(ids))
    specs, payload = encode_kv(layers)
    return ids, specs, payload, model_fingerprint(model), tokenizer_fingerprint(tokenizer) if tokenizer else ""


def make_manifest(ids, specs, payload: Payload, fingerprint: str, tokenizer_fp: str, model) -> KVManifest:
    return KVManifest(blob_sha256=payload.sha256, blob_size=payload.size, token_ids=tuple(ids), layers=specs,
                      model_fingerprint=fingerprint, dtype=dtype_name(model_dtype(model)),
                      tokenizer_fingerprint=tokenizer_fp, prefix_hash=prefix_hash(ids))


def check_binding(cube, model, tokenizer=None):
    """The activation manifest of `cube` if it may be injected into `model`; ModelMismatch otherwise."""
    if cube.kind is not Kind.ACTIVATION or cube.activation is None:
        raise FailedPrecondition(f"cube {cube.id} is a {cube.kind.name.lower()} cube, not a KV cache")
    act = cube.activation
    mine = model_fingerprint(model)
    if act.model_fingerprint != mine:
        raise ModelMismatch(f"cube {cube.id} was made by the model with fingerprint {act.model_fingerprint[:16]}…;"
                            f" this model's fingerprint is {mine[:16]}…: its cache would be silently wrong here")
    if tokenizer is not None and act.tokenizer_fingerprint:
        theirs = tokenizer_fingerprint(tokenizer)
        if theirs != act.tokenizer_fingerprint:
            raise ModelMismatch(f"cube {cube.id} was made with the tokenizer fingerprint "
                                f"{act.tokenizer_fingerprint[:16]}…, not this one's ({theirs[:16]}…)")
    if act.dtype != dtype_name(model_dtype(model)):
        raise ModelMismatch(f"cube {cube.id} holds {act.dtype} tensors; the model fingerprint matches but the model "
                            f"computes in {dtype_name(model_dtype(model))}")
    if act.num_layers != model_layers(model):
        raise ModelMismatch(f"cube {cube.id} has {act.num_layers} layers; the model has {model_layers(model)}")
    heads, head_dim = _kv_geometry(model)
    for i, (k, _v) in enumerate(act.layers):
        if (heads and k.shape[1] != heads) or (head_dim and k.shape[3] != head_dim):
            raise ModelMismatch(f"cube {cube.id} layer {i} holds keys of shape {list(k.shape)}; this model's are "
                                f"[1, {heads}, tokens, {head_dim}]")
    return act


def _kv_geometry(model) -> tuple[int | None, int | None]:
    """(key/value heads, key head size) the model's config implies, None where it does not say."""
    config = _text_config(model)
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None and getattr(config, "hidden_size", None) and getattr(config, "num_attention_heads", None):
        head_dim = config.hidden_size // config.num_attention_heads
    return heads, head_dim


def finish_pull(buffer: torch.Tensor, act, model, num_tokens: int | None):
    """A DynamicCache from a verified payload, checked against its manifest again (a payload that does not
    match what the daemon checked at upload is corrupt: DataLoss)."""
    if num_tokens is not None and not 0 < num_tokens <= act.num_tokens:
        raise InvalidArgument(f"num_tokens must be between 1 and the cube's {act.num_tokens}")
    try:
        header = parse_header(memoryview(buffer.numpy()), act.blob.size)
        check_payload(act.manifest(), header)
    except FormatError as exc:
        raise DataLoss(f"the payload of sha256 {act.blob.sha256} is corrupt: {exc}") from None
    device = next(model.parameters()).device
    return to_dynamic_cache(decode_kv(buffer, header, act.num_layers, device=device, num_tokens=num_tokens), model)


def generation_inputs(model, ids: list[int]):
    device = next(model.parameters()).device
    return torch.tensor([ids], device=device), torch.ones((1, len(ids)), dtype=torch.long, device=device)


def push_kv(client, cache, input_ids, model, **fields) -> str:
    return client.push_kv(cache, input_ids, model, **fields)


def pull_kv(client, cube_id: str, model, **fields):
    return client.pull_kv(cube_id, model, **fields)


def generate(client, model, input_ids, **fields):
    """model.generate() on input_ids, prefilled from the daemon's longest matching cached prefix if any."""
    return client.generate_with_kv(model, input_ids, **fields)
