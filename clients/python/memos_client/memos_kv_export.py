"""Activation cubes written as MemOS's activation_memory.pickle, without MemOS or its transformers installed here.

MemOS pickles {"kv_cache_memories": {id: KVCacheItem}}, a pydantic KVCacheItem holding a transformers
DynamicCache (since transformers 4.54 a list of DynamicLayer(keys, values)). The classes are named in
the pickle by module and name only, so this writes their state under those names with a pickler that
emits the references without importing anything; MemOS's transformers (4.x) builds the real objects.
The tensors are copied out of each cube's payload, so each pickles its own storage, never the buffer's.
"""

from __future__ import annotations

import datetime
import pickle
from pathlib import Path

MEMOS_ITEM = ("memos.memories.activation.item", "KVCacheItem")
MEMOS_RECORDS = ("memos.memories.activation.item", "KVCacheRecords")
CACHE = ("transformers.cache_utils", "DynamicCache")
LAYER = ("transformers.cache_utils", "DynamicLayer")


class _Ref:
    """A class named in the pickle by module and name, not imported here."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self):  # pickle wants a callable to reduce with; only the unpickler calls the real class
        raise TypeError(f"{self.module}.{self.name} is only named here")


class _Obj:
    """An instance of a _Ref class: made by calling the class without arguments, then given `state` (its
    __setstate__, or its __dict__ updated), as the unpickler does."""

    def __init__(self, cls: _Ref, state):
        self.cls, self.state = cls, state


class _Pickler(pickle._Pickler):  # the Python pickler: its save_global can be taught the references
    def reducer_override(self, obj):
        if isinstance(obj, _Ref):
            return obj.name  # a string: saved by save_global, below
        if isinstance(obj, _Obj):
            return (obj.cls, (), obj.state)
        return NotImplemented

    def save_global(self, obj, name=None):
        if not isinstance(obj, _Ref):
            return super().save_global(obj, name)
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def _pydantic(cls: _Ref, fields: dict) -> _Obj:
    return _Obj(cls, {"__dict__": fields, "__pydantic_extra__": None, "__pydantic_fields_set__": set(fields),
                      "__pydantic_private__": None})


def kv_item(memos_id: str, layers, metadata: dict) -> _Obj:
    """One KVCacheItem for (key, value) tensor pairs."""
    layer_cls = _Ref(*LAYER)
    cache = _Obj(_Ref(*CACHE), {
        "layers": [_Obj(layer_cls, {"keys": k.clone(), "values": v.clone(), "is_initialized": True, "dtype": k.dtype,
                                    "device": k.device}) for k, v in layers],
        "layer_class_to_replicate": layer_cls, "offloading": False})
    records = _pydantic(_Ref(*MEMOS_RECORDS), {"text_memories": [], "composed_text_memory": "",
                                                "timestamp": datetime.datetime.now(datetime.UTC)})
    return _pydantic(_Ref(*MEMOS_ITEM), {"id": memos_id, "memory": cache, "metadata": metadata, "records": records})


def write_kv_pickle(bundle: Path, records: list[dict], dest: Path, ids) -> int:
    """activation_memory.pickle at dest for the bundle's activation cube records; returns how many it holds."""
    import torch

    from memos_client.kv import decode_kv
    from memos_mip.tensor_format import parse_header

    items = {}
    for rec in records:
        manifest = rec["manifest"]
        data = (bundle / "tensors" / f"{manifest['blob']['sha256']}.safetensors").read_bytes()
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        header = parse_header(memoryview(data), len(data))
        layers = decode_kv(buffer, header, int(manifest["num_layers"]))
        meta = dict(rec.get("metadata") or {})
        meta.pop("memos_id", None)
        meta.update({"memosd_id": rec["id"], "token_ids": list(manifest["token_ids"]),
                     "model_fingerprint": manifest["model"]["model_fingerprint"]})
        memos_id = ids(rec)
        items[memos_id] = kv_item(memos_id, layers, meta)
    with open(dest, "wb") as f:
        _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump({"kv_cache_memories": items})
    return len(items)
