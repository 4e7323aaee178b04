"""The KV caches in a MemOS activation_memory.pickle, read with the tensors-only unpickler (shared by daemon and client)."""

from __future__ import annotations

from dataclasses import dataclass

from memos_mip.bundle_format import BundleError
from memos_mip.pickle_guard import PickleRefused, Record, is_tensor, load_tensors_pickle

# Where MemOS (or a script writing its layout) may keep the prompt's token ids in a cache item's metadata.
TOKEN_KEYS = ("token_ids", "input_ids")


@dataclass
class MemosKV:
    """One KV cache from activation_memory.pickle, as tensors (torch, from the restricted unpickler)."""

    memos_id: str
    keys: list
    values: list
    metadata: dict
    token_ids: list[int] | None = None

    @property
    def text(self) -> str:
        """The text MemOS made the cache from (its `source_text`), "" if it kept none."""
        text = self.metadata.get("source_text")
        return text if isinstance(text, str) else ""


def read_kv_pickle(data: bytes, name: str = "activation_memory.pickle") -> list[MemosKV]:
    """The caches of a MemOS activation pickle; BundleError(InvalidArgument) for a pickle that is refused
    or that holds no KV cache."""
    try:
        obj = load_tensors_pickle(data)
    except PickleRefused as exc:
        raise BundleError("InvalidArgument", f"{name} refused: {exc}") from None
    caches = kv_caches(obj)
    if not caches:
        raise BundleError("InvalidArgument", f"{name} holds no KV caches (MemOS writes"
                          " {\"kv_cache_memories\": {id: KVCacheItem}})")
    return caches


def kv_caches(obj) -> list[MemosKV]:
    """The KV caches in an unpickled activation_memory.pickle ({"kv_cache_memories": {id: KVCacheItem}})."""
    items = obj.get("kv_cache_memories", obj) if isinstance(obj, dict) else obj
    items = items.items() if isinstance(items, dict) else enumerate(items if isinstance(items, list) else [])
    found = []
    for key, item in items:
        fields = item.fields() if isinstance(item, Record) else (item if isinstance(item, dict) else {})
        cache = fields.get("kv_cache", fields.get("memory"))
        if not isinstance(cache, Record):
            raise BundleError("InvalidArgument", f"KV cache {key}: no DynamicCache in the item")
        c = cache.fields()
        if "layers" in c:  # newer transformers: a list of DynamicLayer(keys, values)
            layers = [layer.fields() if isinstance(layer, Record) else {} for layer in c["layers"] or []]
            keys = [layer.get("keys") for layer in layers]
            values = [layer.get("values") for layer in layers]
        else:
            keys, values = list(c.get("key_cache") or []), list(c.get("value_cache") or [])
        if not keys or len(keys) != len(values) or not all(is_tensor(t) for t in keys + values):
            raise BundleError("InvalidArgument", f"KV cache {key}: its layers are not pairs of tensors")
        meta = fields.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        found.append(MemosKV(str(fields.get("id") or fields.get("kv_cache_id") or key), keys, values,
                             {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))},
                             _token_ids(meta)))
    return found


def _token_ids(meta: dict) -> list[int] | None:
    for key in TOKEN_KEYS:
        ids = meta.get(key)
        if ids is not None and is_tensor(ids):
            ids = ids.flatten().tolist()
        if isinstance(ids, (list, tuple)) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return list(ids)
    return None
