"""Hypothesis strategies that build any MIP request as wire bytes from its descriptor: random, extreme and malformed."""

from __future__ import annotations

import importlib
import math
import pkgutil
import struct

from google.protobuf import descriptor as _d
from hypothesis import strategies as st

import memos_mip.v1

F = _d.FieldDescriptor
INT32 = (0, 1, -1, 2**31 - 1, -2**31, 7, 100, 10_000)
INT64 = (0, 1, -1, 2**63 - 1, -2**63, 2**53 + 1, 300_000_000_000, 10**12, 86_400)
UINT32 = (0, 1, 2**32 - 1)
UINT64 = (0, 1, 2**64 - 1)
FLOATS = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 3.4e38)
ENUM_JUNK = (-1, 99, 2**31 - 1, -2**31)
# JSON a parser would recurse into (tokens, policy documents, bundle manifests, safetensors headers).
DEEP_JSON = ("[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000)
WEIRD = ("", " ", "\x00", "é", "\u202e", "agents/**", "**", "*", "../../etc/passwd", "%s%n", "'; DROP TABLE cubes; --",
         "a" * 1025, "NaN", "-1", "null", "{}", "[]", "\ud7ff\ue000", "\U0001f600" * 10)
# Sizes for huge values: one draw each, so Hypothesis's own buffer stays small.
HUGE = (17 * 1024, 70_000, 1_100_000)
MANY = (1_000, 5_000)
MAX_REPEAT_BYTES = 1 << 20  # thousands of items, but not thousands of huge ones
RECURSIVE = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
# Field names whose values the daemon looks up: drawn mostly from a pool of real targets, so fuzzing gets
# past NOT_FOUND into the code behind it.
POOL_FIELDS = {
    "namespace": "namespaces", "namespace_prefix": "namespaces", "prefix": "namespaces",
    "id": "ids", "cube_id": "ids", "source_ids": "ids", "cube_ids": "ids", "derived_from": "ids",
    "sha256": "digests", "topic": "topics", "durable_name": "names", "subject": "subjects",
    "model_fingerprint": "fingerprints", "name": "agents", "publish_id": "names", "page_token": "names",
}


def request_services():
    """Every service declared in the MIP file descriptors (every *_pb2 module of memos_mip.v1)."""
    services = []
    for info in sorted(pkgutil.iter_modules(memos_mip.v1.__path__), key=lambda i: i.name):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"memos_mip.v1.{info.name}")
            services.extend(module.DESCRIPTOR.services_by_name[n] for n in sorted(module.DESCRIPTOR.services_by_name))
    return services


def all_methods():
    """(path, method descriptor) for every method of every service."""
    return [(f"/{s.full_name}/{m.name}", m) for s in request_services() for m in s.methods]


# ---- wire encoding --------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers are ten-byte two's complement, as protobuf writes them
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def scalar_bytes(field: F, value) -> bytes:
    t, n = field.type, field.number
    if t in (F.TYPE_STRING, F.TYPE_BYTES):
        return length_delimited(n, value)
    if t in (F.TYPE_DOUBLE,):
        return key(n, 1) + struct.pack("<d", value)
    if t in (F.TYPE_FLOAT,):
        return key(n, 5) + struct.pack("<f", value if math.isnan(value) or abs(value) <= 3.4e38 else math.copysign(math.inf, value))
    if t in (F.TYPE_FIXED64, F.TYPE_SFIXED64):
        return key(n, 1) + struct.pack("<Q", value & (2**64 - 1))
    if t in (F.TYPE_FIXED32, F.TYPE_SFIXED32):
        return key(n, 5) + struct.pack("<I", value & (2**32 - 1))
    if t in (F.TYPE_SINT32, F.TYPE_SINT64):
        return key(n, 0) + varint(_zigzag(value))
    return key(n, 0) + varint(int(value))


def deep_value(depth: int) -> bytes:
    """A google.protobuf.Value that is a list in a list ... `depth` times (3 message levels per step)."""
    value = key(4, 0) + varint(1)  # bool_value = true at the bottom
    for _ in range(depth):
        value = length_delimited(6, length_delimited(1, value))  # Value.list_value { values: value }
    return value


def deep_struct(depth: int) -> bytes:
    """A google.protobuf.Struct {"k": deep_value(depth)}."""
    return length_delimited(1, length_delimited(1, b"k") + length_delimited(2, deep_value(depth)))


def _repeat(item_and_count) -> bytes:
    item, count = item_and_count
    return item * max(1, min(count, MAX_REPEAT_BYTES // max(len(item), 1)))


# ---- strategies ----------------------------------------------------------------------------------------


class Fuzz:
    """Builds request strategies from descriptors; `pool` maps pool names (POOL_FIELDS) to real values."""

    def __init__(self, pool: dict[str, list[str]], protected: set[str] = frozenset()):
        self.pool = pool
        self.protected = set(protected)

    def text(self, field_name: str = "") -> st.SearchStrategy[bytes]:
        pooled = self.pool.get(POOL_FIELDS.get(field_name, ""), [])
        options = [
            st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
            st.sampled_from(WEIRD).map(lambda s: s.encode("utf-8", "surrogatepass")),
            st.sampled_from(HUGE).map(lambda n: b"x" * n),
            st.sampled_from(DEEP_JSON).map(str.encode),
            # Not UTF-8: protobuf's own parser refuses it, which must still come back as INVALID_ARGUMENT.
            st.sampled_from((b"\xff\xfe", b"ok\xc3(", b"\xed\xa0\x80", b"\x80" * 10)),
        ]
        if pooled:
            options = [st.sampled_from(pooled).map(str.encode)] * 4 + options
        return st.one_of(options).filter(lambda b: b.decode("utf-8", "replace") not in self.protected)

    def binary(self) -> st.SearchStrategy[bytes]:
        return st.one_of(st.binary(max_size=64), st.sampled_from(HUGE).map(lambda n: b"\x00" * n),
                         st.sampled_from(DEEP_JSON).map(str.encode), st.just(b"{}"),
                         st.just(b'{"version": 1, "id": "pol_x", "issuer": "admin", "subject": "agent:x"}'))

    def scalar(self, field: F) -> st.SearchStrategy:
        t = field.type
        if t == F.TYPE_STRING:
            return self.text(field.name)
        if t == F.TYPE_BYTES:
            return self.binary()
        if t == F.TYPE_BOOL:
            return st.sampled_from((0, 1))
        if t == F.TYPE_ENUM:
            return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.sampled_from(ENUM_JUNK))
        if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return st.one_of(st.sampled_from(FLOATS), st.floats(allow_nan=True, allow_infinity=True))
        if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
            return st.one_of(st.sampled_from(INT32), st.integers(-2**31, 2**31 - 1))
        if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
            return st.one_of(st.sampled_from(UINT32), st.integers(0, 2**32 - 1))
        if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
            return st.one_of(st.sampled_from(UINT64), st.integers(0, 2**64 - 1))
        return st.one_of(st.sampled_from(INT64), st.integers(-2**63, 2**63 - 1))

    def field(self, field: F, depth: int) -> st.SearchStrategy[bytes]:
        """The encoding of one field: absent, one value, a few values, or (repeated) thousands of them."""
        if field.type == F.TYPE_MESSAGE:
            one = self.message(field.message_type, depth + 1).map(lambda b: length_delimited(field.number, b))
        else:
            one = self.scalar(field).map(lambda v: scalar_bytes(field, v))
        if field.is_repeated:
            return st.one_of(st.just(b""), st.lists(one, max_size=4).map(b"".join),
                             st.tuples(one, st.sampled_from(MANY)).map(_repeat))
        return st.one_of(st.just(b""), one)

    def message(self, descriptor, depth: int = 0) -> st.SearchStrategy[bytes]:
        """The wire bytes of a `descriptor` message, fields drawn independently (oneof members may clash)."""
        if descriptor.full_name in RECURSIVE and descriptor.full_name != "google.protobuf.ListValue":
            deep = st.sampled_from((30, 120, 2000))
            build = deep_struct if descriptor.full_name == "google.protobuf.Struct" else deep_value
            if depth > 3:
                return st.one_of(st.just(b""), deep.map(build))
        elif depth > 4:
            return st.just(b"")
        fields = [self.field(f, depth) for f in descriptor.fields]
        body = st.tuples(*fields).map(b"".join) if fields else st.just(b"")
        if descriptor.full_name in RECURSIVE and descriptor.full_name != "google.protobuf.ListValue":
            return st.one_of(body, deep.map(build))
        return body

    def request(self, descriptor) -> st.SearchStrategy[bytes]:
        """A whole request: mostly a drawn message, sometimes random bytes, truncated or with an unknown field."""
        body = self.message(descriptor)
        return st.one_of(
            body, body, body, body,
            st.binary(max_size=256),
            body.flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda n: b[:n])),
            body.map(lambda b: b + length_delimited(999, b"unknown field")),
        )
