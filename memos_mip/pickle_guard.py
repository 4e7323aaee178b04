"""A restricted unpickler for MemOS's activation_memory.pickle: it builds tensors and nothing else.

An ordinary unpickler imports and calls whatever the file names, so a pickle can run any code. This
one resolves only the few names a pickled KV cache needs: torch's tensor rebuild (given storages
decoded by torch's own weights-only loader, never by a nested full unpickle), torch dtypes and
devices, OrderedDict, and datetime values. The classes MemOS pickles its cache in (its pydantic KVCacheItem, transformers'
DynamicCache) are replaced by inert records that keep the state they are given and run nothing.
Every other name is refused with the name in the message.
"""

from __future__ import annotations

import collections
import datetime
import io
import pickle
import warnings
from typing import Any

MAX_PICKLE_BYTES = 16 << 30


class PickleRefused(pickle.UnpicklingError):
    """The pickle names something other than tensor storage (or is malformed)."""


class Record:
    """Stand-in for a class of the pickle's: records constructor arguments and state, runs no code."""

    pickle_name = ""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def fields(self) -> dict:
        """The object's attributes as pickled: pydantic's {"__dict__": {...}} or a plain state dict."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) from objects with __slots__
        if isinstance(state, dict) and isinstance(state.get("__dict__"), dict):
            return state["__dict__"]
        return state if isinstance(state, dict) else {}


# Classes MemOS pickles a KV cache in, kept only as records.
STAND_INS = {
    ("memos.memories.activation.item", "KVCacheItem"),
    ("memos.memories.activation.item", "ActivationMemoryItem"),
    ("memos.memories.activation.item", "KVCacheRecords"),
    ("transformers.cache_utils", "DynamicCache"),
    ("transformers.cache_utils", "DynamicLayer"),
}
_SAFE_VALUES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
}
_stand_in_classes: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _stand_in_classes:
        _stand_in_classes[key] = type(name, (Record,), {"pickle_name": f"{module}.{name}"})
    return _stand_in_classes[key]


def _storage_from_bytes(data: bytes):
    """torch.storage._load_from_bytes, but through torch's weights-only loader."""
    import torch

    if not isinstance(data, (bytes, bytearray)):
        raise PickleRefused("a tensor storage is not given as bytes")
    try:
        with warnings.catch_warnings():  # torch notes any protocol but 2; the loader is weights-only either way
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many kinds; all mean "not a storage we accept"
        raise PickleRefused(f"a tensor storage does not load as plain weights: {exc}") from None


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    import torch
    from torch._utils import _rebuild_tensor_v2

    if not isinstance(storage, (torch.UntypedStorage, torch.TypedStorage)):
        raise PickleRefused("a tensor is built from something that is not a storage")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(n, int) and n >= 0 for n in ints) or len(size) != len(stride):
        raise PickleRefused("a tensor has a malformed shape, stride or offset")
    if backward_hooks:
        raise PickleRefused("a tensor carries backward hooks")
    try:
        return _rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False, collections.OrderedDict())
    except RuntimeError as exc:
        raise PickleRefused(f"a tensor does not fit its storage: {exc}") from None


def _device(kind, index=None):
    import torch

    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise PickleRefused("a torch.device is given something other than its name")
    return torch.device(kind) if index is None else torch.device(kind, index)


class TensorOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) in _SAFE_VALUES:
            return _SAFE_VALUES[(module, name)]
        if (module, name) in STAND_INS:
            return _stand_in(module, name)
        if module == "torch":  # what a newer DynamicLayer keeps beside its tensors: their dtype and device
            import torch

            if name == "device":
                return _device
            if isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
        raise PickleRefused(f"the pickle wants {module}.{name}; only tensor storage may be unpickled here")

    def persistent_load(self, pid):
        raise PickleRefused("the pickle refers to persistent objects; only self-contained tensors are accepted")


def is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def load_tensors_pickle(data: bytes):
    """Unpickle `data` allowing tensors (and the stand-in records) only; PickleRefused otherwise."""
    if len(data) > MAX_PICKLE_BYTES:
        raise PickleRefused(f"the pickle is over {MAX_PICKLE_BYTES} bytes")
    try:
        return TensorOnlyUnpickler(io.BytesIO(data)).load()
    except PickleRefused:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError) as exc:
        raise PickleRefused(f"the pickle is malformed: {type(exc).__name__}: {exc}") from None
