"""The daemon's side of the KV codec: a prefilled cache as the same safetensors payload clients write."""

from __future__ import annotations

from memos_mip.tensor_format import KVManifest, prefix_hash


def encode_prefill(model, token_ids: list[int], layers) -> tuple[KVManifest, list]:
    """The manifest and payload buffers (header, then each tensor's memory) of a cache `model` (a CausalLM,
    loaded) computed for token_ids. Hashes the payload: call it off the event loop."""
    from memos_mip.tensors import dtype_name, encode_kv, model_dtype

    specs, payload = encode_kv(layers)
    manifest = KVManifest(
        blob_sha256=payload.sha256, blob_size=payload.size, token_ids=tuple(token_ids), layers=specs,
        model_fingerprint=model.fingerprint, dtype=dtype_name(model_dtype(model.model)),
        tokenizer_fingerprint=model.tokenizer_fingerprint, prefix_hash=prefix_hash(token_ids),
    )
    return manifest, payload.parts
