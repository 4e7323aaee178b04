"""Bounds on untrusted input: JSON is parsed only within a size and nesting depth, values are quoted by a prefix."""

from __future__ import annotations

import json
import re
from itertools import accumulate

# Deeper than anything memosd writes (a cube record nests its metadata three levels down, and metadata
# arriving as a protobuf Struct cannot nest past protobuf's own limit of 100 messages, about 33 JSON
# levels), and far below the ~1000 frames at which json.loads raises RecursionError.
MAX_DEPTH = 64

# A JSON string, escapes included; what is inside one is not structure.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JSONLimitError(ValueError):
    """A JSON document over its size or nesting limit (a ValueError, as json.JSONDecodeError is)."""


def depth(data: bytes) -> int:
    """How deep arrays and objects nest in `data`, counting brackets outside strings only."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(_DELTA[b] for b in brackets), default=0)


def loads(data: bytes | bytearray | memoryview | str, *, what: str, max_bytes: int, max_depth: int = MAX_DEPTH):
    """json.loads, but JSONLimitError (naming `what` and the limit) before parsing a document over
    max_bytes (as UTF-8) or nested deeper than max_depth; json.JSONDecodeError, or UnicodeDecodeError
    for bytes that are not UTF-8 (the only encoding the scan, and memosd, read)."""
    if len(data) > max_bytes:  # a str's length in characters is a lower bound of its size in bytes
        raise JSONLimitError(f"{what} is {_size(len(data))}; the limit is {_size(max_bytes)}")
    if isinstance(data, str):
        text, raw = data, data.encode("utf-8", "surrogatepass")
        if len(raw) > max_bytes:
            raise JSONLimitError(f"{what} is {_size(len(raw))}; the limit is {_size(max_bytes)}")
    else:
        raw = bytes(data)
        text = raw.decode("utf-8")
    # In UTF-8 no byte of a multi-byte character is ASCII, so the brackets and quotes found in the bytes
    # are the document's own; counting first spares flat documents the scan.
    if raw.count(b"[") + raw.count(b"{") > max_depth and depth(raw) > max_depth:
        raise JSONLimitError(f"{what} nests arrays or objects deeper than {max_depth} levels")
    return json.loads(text)


def quote(value, limit: int = 64) -> str:
    """A value for an error message or log line: repr() of at most `limit` characters of it, and its
    size when it was cut, e.g. 'agents/aaaa...' (1.3 MiB)."""
    if not isinstance(value, (str, bytes, bytearray)):  # a number, a list from a JSON document, ...
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    if len(value) <= limit:
        return repr(value)
    size = len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) else len(value)
    head = repr(value[:limit])
    return f"{head[:-1]}...{head[-1]} ({_size(size)})"


def clip(text: str, max_bytes: int) -> str:
    """`text` cut to at most max_bytes of UTF-8, on a character boundary, marked with '...' if cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return text
    return raw[:max(0, max_bytes - 3)].decode("utf-8", "ignore") + "..."


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
