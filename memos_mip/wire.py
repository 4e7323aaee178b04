"""Protobuf wire encoding of blob chunks without copying their data more than once, shared by the client
and the daemon.

A 1 MiB chunk built as a protobuf message is copied three or four times (into the message, out of it
when serialized, out of the parsed message); these functions write and read the same bytes, field for
field, with one copy or none, so that other clients speaking plain protobuf see no difference. Parsing
takes only the canonical layout protobuf serializers write (fields in number order, nothing else) and
returns None for anything else, so that the caller falls back to the protobuf parser.

    UploadRequest   = { 2: Chunk }  (or { 1: UploadStart }, left to protobuf)
    DownloadResponse = { 1: Chunk, 2: BlobRef }
    Chunk = { 1: offset (varint), 2: data (bytes) }     BlobRef = { 1: sha256 (string), 2: size (varint) }
"""

from __future__ import annotations

from typing import NamedTuple

_VARINT, _LEN = 0, 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _chunk_head(offset: int, size: int) -> bytes:
    """Everything of a Chunk message before its data."""
    head = _key(1, _VARINT) + _varint(offset) if offset else b""
    return head + _key(2, _LEN) + _varint(size) if size else head


def _chunk_length(offset: int, size: int) -> int:
    return len(_chunk_head(offset, size)) + size


def encode_upload_chunk(offset: int, data) -> bytes:
    """UploadRequest{chunk: Chunk{offset, data}} in one copy of data."""
    view = memoryview(data).cast("B")
    head = _chunk_head(offset, len(view))
    return b"".join((_key(2, _LEN), _varint(len(head) + len(view)), head, view))


def encode_download(offset: int, data, blob: tuple[str, int] | None = None) -> bytes:
    """DownloadResponse{chunk: Chunk{offset, data}, blob: BlobRef{sha256, size}} in one copy of data."""
    view = memoryview(data).cast("B")
    head = _chunk_head(offset, len(view))
    parts: list[bytes | memoryview] = [_key(1, _LEN), _varint(len(head) + len(view)), head, view]
    if blob is not None:
        sha, size = blob[0].encode(), blob[1]
        ref = (_key(1, _LEN) + _varint(len(sha)) + sha if sha else b"") + (_key(2, _VARINT) + _varint(size) if size else b"")
        parts += [_key(2, _LEN), _varint(len(ref)), ref]
    return b"".join(parts)


class ChunkView(NamedTuple):
    """A chunk parsed without copying: data is a view of the received message."""

    offset: int
    data: memoryview


def _parse_chunk(view: memoryview, pos: int, end: int) -> ChunkView | None:
    offset, data = 0, view[0:0]
    if pos < end and view[pos] == 0x08:
        offset, pos = _read_varint(view, pos + 1)
    if pos < end and view[pos] == 0x12:
        size, pos = _read_varint(view, pos + 1)
        if pos + size != end:
            return None
        data, pos = view[pos:end], end
    return ChunkView(offset, data) if pos == end else None


def _outer(data, field: int) -> tuple[memoryview, int, int] | None:
    """The one embedded message of `field` filling the whole of `data`, as (view, start, end)."""
    view = memoryview(data).cast("B")
    if len(view) < 2 or view[0] != (field << 3 | _LEN):
        return None
    size, pos = _read_varint(view, 1)
    return (view, pos, pos + size) if pos + size == len(view) else None


def parse_upload_chunk(data) -> ChunkView | None:
    """The chunk of an UploadRequest holding exactly one chunk in canonical layout; None otherwise."""
    try:
        found = _outer(data, 2)
        return _parse_chunk(*found) if found else None
    except ValueError:
        return None


def parse_download_chunk(data) -> ChunkView | None:
    """The chunk of a DownloadResponse holding only a chunk (not the first message, which names the
    blob) in canonical layout; None otherwise."""
    try:
        found = _outer(data, 1)
        return _parse_chunk(*found) if found else None
    except ValueError:
        return None
