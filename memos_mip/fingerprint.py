"""Fingerprints of a transformers model (config and weights) and of a tokenizer: what binds a KV cache to
the model that made it. One implementation, used by the client and by the daemon (memosd.runtime)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

# Config keys that say where or how a model was loaded, not what it computes: the same weights loaded
# from another path, with another attention kernel or another transformers version's bookkeeping get the
# same fingerprint. The weights' dtype is part of the fingerprint through the weights themselves.
IGNORED_CONFIG_KEYS = frozenset({
    "_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "_attn_implementation",
    "_attn_implementation_autoset", "_attn_implementation_internal", "attn_implementation",
    "_experts_implementation", "torch_dtype", "dtype", "use_cache", "output_attentions",
    "output_hidden_states", "return_dict", "architectures", "auto_map", "_auto_class",
    "pad_token_id", "bos_token_id", "eos_token_id", "id2label", "label2id", "problem_type",
    "tokenizer_class", "chunk_size_feed_forward", "is_encoder_decoder", "pruned_heads",
})
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def config_digest(config) -> bytes:
    """sha256 of the model config as canonical JSON, less the keys that do not change what it computes."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    text = json.dumps(_strip(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).digest()


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    return value


def model_fingerprint(model) -> str:
    """Hex sha256 over the config and every parameter (name, dtype, shape, bytes). Hashing the weights of a
    large model takes a while (about a second per 2 GB per core), so it is computed once per model object
    and reused until a parameter is replaced or changed in place."""
    return _fingerprint(model, list(model.named_parameters()))


def base_model_fingerprint(model) -> str:
    """model_fingerprint of the base model under the LoRA adapters PEFT put on it: a PeftModel, or a model
    PEFT injected adapters into, gets the fingerprint the same model has without them (their weights left
    out, PEFT's base_layer wrappers seen through). What binds an adapter to its base model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = []
    for name, p in base.named_parameters():
        parts = name.split(".")
        if any(part.startswith("lora_") for part in parts):
            continue
        params.append((".".join(part for part in parts if part != "base_layer"), p))
    return _fingerprint(base, params)


def _fingerprint(model, params: list) -> str:
    config = config_digest(model.config)
    state = (config, tuple((name, p.data_ptr(), getattr(p, "_version", 0)) for name, p in params))
    with _CACHE_LOCK:
        cached = _CACHE.get(model) or {}
    if state in cached:
        return cached[state]
    digest = hashlib.sha256(b"memos-model/1\0")
    digest.update(config)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="memos-fingerprint") as pool:
        for name, tensor_digest in zip((n for n, _ in params), pool.map(_tensor_digest, (p for _, p in params))):
            digest.update(name.encode() + b"\0" + tensor_digest)
    fingerprint = digest.hexdigest()
    with _CACHE_LOCK:
        # The last two states of a model: with and without the adapters PEFT put on it.
        kept = _CACHE.get(model) or {}
        _CACHE[model] = {**dict(list(kept.items())[-1:]), state: fingerprint}
    return fingerprint


def _tensor_digest(tensor) -> bytes:
    import torch

    t = tensor.detach()
    if t.device.type == "meta":
        raise ValueError("the model has parameters on the meta device (not loaded); load its weights first")
    if t.device.type != "cpu":
        t = t.cpu()
    head = f"{str(t.dtype).removeprefix('torch.')}:{list(t.shape)}\0".encode()
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
    h = hashlib.sha256(head)
    view = memoryview(raw)
    step = 16 << 20  # hashlib releases the GIL on large updates: tensors hash in parallel
    for start in range(0, len(view), step):
        h.update(view[start:start + step])
    return h.digest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hex sha256 of what decides how text becomes token ids: for a fast tokenizer its whole definition
    (vocabulary, merges, normalizer, pre-tokenizer, added tokens), less runtime padding and truncation."""
    if tokenizer is None:
        return ""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        doc = json.loads(backend.to_str())
        doc.pop("truncation", None)
        doc.pop("padding", None)
    else:
        doc = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items()),
               "special": sorted(getattr(tokenizer, "all_special_tokens", []))}
    doc = {"tokenizer": doc, "special_tokens": {k: str(v) for k, v in
                                                sorted((getattr(tokenizer, "special_tokens_map", {}) or {}).items())}}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(b"memos-tokenizer/1\0" + text.encode()).hexdigest()
