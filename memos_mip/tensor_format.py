"""How a KV cache is stored and sent: safetensors bytes, tensor names, manifests and prefix hashes.

This is the one implementation of the format: the client (memos_client.kv) writes and reads it, the daemon
(memosd.vault, memosd.runtime) checks and writes it. Pure Python: no torch, so the daemon can validate a
payload without loading a tensor library.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}), then the data,
with offsets relative to its start.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from array import array
from dataclasses import dataclass, field
from collections.abc import Iterable, Sequence

from memos_mip.bounds import JSONLimitError, loads, quote

# Torch dtype name -> (safetensors code, bytes per element).
DTYPES = {
    "float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2), "float64": ("F64", 8),
    "float8_e4m3fn": ("F8_E4M3", 1), "float8_e5m2": ("F8_E5M2", 1),
}
_BY_CODE = {code: (name, size) for name, (code, size) in DTYPES.items()}
# A KV header names two tensors per layer; 16 MiB is far more than any real model needs, and keeps a
# hostile header from making the reader allocate without bound.
MAX_HEADER_BYTES = 16 * 1024 * 1024
ALIGNMENT = 8
FORMAT = "memos-kv/1"
LAYOUT_DYNAMIC_CACHE = "dynamic_cache"
# FindByPrefix hashes prompts in blocks of this many tokens (as paged KV caches do).
BLOCK_TOKENS = 16
PREFIX_KEY_BYTES = 16


class FormatError(ValueError):
    """Bytes or a manifest that do not follow the format; each side reports it as its InvalidArgument."""


@dataclass(frozen=True)
class TensorSpec:
    """Dtype (torch name) and shape of one tensor."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj) -> TensorSpec:
        return cls(str(obj["dtype"]), tuple(int(n) for n in obj["shape"]))


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: its spec and where its bytes are, relative to the data start."""

    name: str
    spec: TensorSpec
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A validated safetensors header."""

    entries: tuple[TensorEntry, ...]
    metadata: dict[str, str]
    data_start: int
    total_size: int

    def entry(self, name: str) -> TensorEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise FormatError(f"the payload has no tensor {quote(name)}")


@dataclass(frozen=True)
class KVManifest:
    """What an activation cube's payload holds, and the model it belongs to."""

    blob_sha256: str
    blob_size: int
    token_ids: tuple[int, ...]
    layers: tuple[tuple[TensorSpec, TensorSpec], ...]
    model_fingerprint: str
    dtype: str
    tokenizer_fingerprint: str = ""
    prefix_hash: str = ""
    layout: str = LAYOUT_DYNAMIC_CACHE
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_json(self) -> dict:
        return {
            "blob": {"sha256": self.blob_sha256, "size": self.blob_size},
            "token_ids": list(self.token_ids),
            "prefix_hash": self.prefix_hash or prefix_hash(self.token_ids),
            "num_layers": self.num_layers,
            "layers": [{"key": k.to_json(), "value": v.to_json()} for k, v in self.layers],
            "layout": self.layout,
            "model": {"model_fingerprint": self.model_fingerprint,
                      "tokenizer_fingerprint": self.tokenizer_fingerprint, "dtype": self.dtype},
        }

    @classmethod
    def from_json(cls, obj: dict) -> KVManifest:
        model = obj.get("model") or {}
        return cls(
            blob_sha256=obj["blob"]["sha256"], blob_size=int(obj["blob"]["size"]),
            token_ids=tuple(obj["token_ids"]),
            layers=tuple((TensorSpec.from_json(layer["key"]), TensorSpec.from_json(layer["value"]))
                         for layer in obj["layers"]),
            model_fingerprint=model.get("model_fingerprint", ""), dtype=model.get("dtype", ""),
            tokenizer_fingerprint=model.get("tokenizer_fingerprint", ""),
            prefix_hash=obj.get("prefix_hash", ""), layout=obj.get("layout", LAYOUT_DYNAMIC_CACHE),
        )


# ---- safetensors -----------------------------------------------------------------------------------------


def kv_names(num_layers: int) -> list[str]:
    """Tensor names of a KV payload, in the order they are stored."""
    return [f"layers.{i}.{part}" for i in range(num_layers) for part in ("key", "value")]


def encode_header(tensors: Sequence[tuple[str, TensorSpec]], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length and JSON header for tensors stored back to back in the given order, padded with
    spaces so that the data starts on an 8-byte boundary."""
    doc: dict = {}
    if metadata:
        doc["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, spec in tensors:
        if spec.dtype not in DTYPES:
            raise FormatError(f"dtype {spec.dtype} cannot be stored; supported: {', '.join(DTYPES)}")
        if offset % DTYPES[spec.dtype][1]:
            raise FormatError(f"tensor {name} would not be aligned to its element size")
        doc[name] = {"dtype": DTYPES[spec.dtype][0], "shape": list(spec.shape),
                     "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    body = json.dumps(doc, separators=(",", ":")).encode()
    body += b" " * (-(8 + len(body)) % ALIGNMENT)
    return len(body).to_bytes(8, "little") + body


def header_length(first8: bytes | memoryview, total_size: int) -> int:
    """The size of the whole header (8 + N) from the first 8 bytes of a payload of total_size bytes."""
    if len(first8) < 8 or total_size < 8:
        raise FormatError("the payload is shorter than a safetensors header")
    n = int.from_bytes(first8[:8], "little")
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > total_size:
        raise FormatError(f"the safetensors header claims {n} bytes, which does not fit a {total_size}-byte payload")
    return 8 + n


def parse_header(data: bytes | memoryview, total_size: int) -> Header:
    """Validate and parse a safetensors header. `data` starts at byte 0 of the payload and holds at least
    the whole header. Every tensor must have a known dtype, a size that matches its shape, an offset aligned
    to its element size, and the tensors must tile the data exactly: no gap, no overlap, nothing past the end."""
    start = header_length(data, total_size)
    if len(data) < start:
        raise FormatError("the safetensors header is cut short")
    try:
        doc = loads(data[8:start], what="the safetensors header", max_bytes=MAX_HEADER_BYTES)
    except JSONLimitError as exc:
        raise FormatError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"the safetensors header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError("the safetensors header is not a JSON object")
    if start % ALIGNMENT:
        raise FormatError("the safetensors header is not padded to an 8-byte boundary")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError("__metadata__ must map strings to strings")
    entries = [_entry(name, info) for name, info in doc.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    position = 0
    for e in entries:
        if e.begin != position:
            what = "overlaps the previous tensor" if e.begin < position else f"leaves a gap after byte {position}"
            raise FormatError(f"tensor {e.name}: data_offsets [{e.begin}, {e.end}] {what}")
        position = e.end
    if start + position != total_size:
        raise FormatError(f"the header's tensors end at byte {start + position} but the payload has {total_size}")
    return Header(tuple(entries), dict(metadata), start, total_size)


def _entry(name: str, info) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"tensor {quote(name)}: expected exactly dtype, shape and data_offsets")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in _BY_CODE:
        raise FormatError(f"tensor {quote(name)}: dtype {quote(code)} is not supported")
    if not (isinstance(shape, list) and all(type(n) is int and 0 <= n < 2**40 for n in shape)):
        raise FormatError(f"tensor {quote(name)}: shape must be a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise FormatError(f"tensor {quote(name)}: data_offsets must be [begin, end] with 0 <= begin <= end")
    dtype, size = _BY_CODE[code]
    spec = TensorSpec(dtype, tuple(shape))
    if offsets[1] - offsets[0] != spec.nbytes:
        raise FormatError(f"tensor {quote(name)}: data_offsets span {offsets[1] - offsets[0]} bytes but a {code} "
                          f"tensor of shape {shape} has {spec.nbytes}")
    if offsets[0] % size:
        raise FormatError(f"tensor {quote(name)}: data starts at byte {offsets[0]}, not aligned to {size}")
    return TensorEntry(name, spec, offsets[0], offsets[1])


# ---- KV manifests ----------------------------------------------------------------------------------------


def check_manifest(m: KVManifest, max_tokens: int = 1 << 24) -> None:
    """What a manifest must say about itself, whatever its payload."""
    if not _is_sha256(m.blob_sha256):
        raise FormatError("blob sha256 must be 64 lowercase hex characters")
    if m.blob_size <= 0:
        raise FormatError("blob size must be positive")
    if m.layout != LAYOUT_DYNAMIC_CACHE:
        raise FormatError(f"layout {quote(m.layout)} is not supported; only {LAYOUT_DYNAMIC_CACHE}")
    if not _is_sha256(m.model_fingerprint):
        raise FormatError("model_fingerprint must be a hex sha256 (64 lowercase characters)")
    if m.tokenizer_fingerprint and not _is_sha256(m.tokenizer_fingerprint):
        raise FormatError("tokenizer_fingerprint must be empty or a hex sha256")
    if m.dtype not in DTYPES:
        raise FormatError(f"dtype {quote(m.dtype)} is not supported; supported: {', '.join(DTYPES)}")
    if not m.token_ids:
        raise FormatError("token_ids is empty; a KV cache covers at least one token")
    if len(m.token_ids) > max_tokens:
        raise FormatError(f"{len(m.token_ids)} tokens; at most {max_tokens}")
    if any(not (0 <= t < 2**63) for t in m.token_ids):
        raise FormatError("token ids must be non-negative")
    if m.prefix_hash and m.prefix_hash != prefix_hash(m.token_ids):
        raise FormatError("prefix_hash is not the sha256 of token_ids")
    if not m.layers:
        raise FormatError("num_layers is 0; a KV cache has at least one layer")
    for i, (k, v) in enumerate(m.layers):
        for part, spec in (("key", k), ("value", v)):
            if spec.dtype != m.dtype:
                raise FormatError(f"layer {i} {part} is {spec.dtype} but the cache is declared {m.dtype}")
            if len(spec.shape) != 4 or spec.shape[0] != 1 or min(spec.shape) <= 0:
                raise FormatError(f"layer {i} {part} has shape {list(spec.shape)}; expected "
                                  "[1, kv_heads, tokens, head_dim]")
            if spec.shape[2] != len(m.token_ids):
                raise FormatError(f"layer {i} {part} covers {spec.shape[2]} tokens but token_ids has {len(m.token_ids)}")
        if k.shape[1] != v.shape[1]:
            raise FormatError(f"layer {i}: key and value have different numbers of heads")


def check_payload(m: KVManifest, header: Header) -> None:
    """The manifest and the payload's header must describe the same tensors."""
    if header.total_size != m.blob_size:
        raise FormatError(f"the payload has {header.total_size} bytes, the manifest says {m.blob_size}")
    names = kv_names(m.num_layers)
    found = [e.name for e in header.entries]
    if sorted(found) != sorted(names):
        extra, missing = sorted(set(found) - set(names)), sorted(set(names) - set(found))
        raise FormatError(f"the payload's tensors do not match {m.num_layers} layers"
                          + (f"; missing {missing[:4]}" if missing else "") + (f"; unexpected {extra[:4]}" if extra else ""))
    for i, (k, v) in enumerate(m.layers):
        for part, spec in (("key", k), ("value", v)):
            actual = header.entry(f"layers.{i}.{part}").spec
            if actual != spec:
                raise FormatError(f"layer {i} {part}: the manifest says {spec.dtype} {list(spec.shape)}, the payload "
                                  f"holds {actual.dtype} {list(actual.shape)}")


def manifest_layers(header: Header) -> tuple[tuple[TensorSpec, TensorSpec], ...]:
    """The layer specs a header holds, in layer order."""
    count = len(header.entries) // 2
    return tuple((header.entry(f"layers.{i}.key").spec, header.entry(f"layers.{i}.value").spec) for i in range(count))


def _is_sha256(text: str) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


# ---- prefix hashing --------------------------------------------------------------------------------------


def token_bytes(token_ids: Iterable[int]) -> bytes:
    """Token ids as consecutive 8-byte little-endian integers."""
    packed = array("q", token_ids)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def prefix_hash(token_ids: Iterable[int]) -> str:
    """Hex sha256 of a token prefix."""
    return hashlib.sha256(token_bytes(token_ids)).hexdigest()


def block_keys(model_fingerprint: str, token_ids: Sequence[int], block: int = BLOCK_TOKENS) -> list[bytes]:
    """One key per complete block of `block` tokens: key i covers tokens [0, (i+1)*block) of this model, so
    two prompts share key i exactly when they share that whole prefix (chained, as paged KV caches do)."""
    state = hashlib.sha256(b"memos-kv-prefix/1\0" + model_fingerprint.encode()).digest()
    keys = []
    for start in range(0, len(token_ids) - block + 1, block):
        state = hashlib.sha256(state + token_bytes(token_ids[start:start + block])).digest()
        keys.append(state[:PREFIX_KEY_BYTES])
    return keys


def root_key(model_fingerprint: str) -> bytes:
    """The key under which cubes shorter than one block are indexed."""
    return hashlib.sha256(b"memos-kv-prefix/1\0" + model_fingerprint.encode()).digest()[:PREFIX_KEY_BYTES]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
