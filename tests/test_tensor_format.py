"""The KV payload format (safetensors header codec, manifests, prefix keys) and chunked payloads, without a daemon."""

import hashlib
import json
import struct
import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from memos_mip.payload import CHUNK_BYTES, Payload
from memos_mip.tensor_format import (
    DTYPES, BLOCK_TOKENS, FormatError, TensorSpec, block_keys, check_manifest, check_payload, common_prefix,
    encode_header, kv_names, parse_header, prefix_hash,
)
from tests.kv_helpers import FINGERPRINT, kv_payload, manifest_for

specs = st.lists(
    st.tuples(st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 5), min_size=0, max_size=4)),
    min_size=1, max_size=6,
)


@given(specs, st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
@settings(max_examples=200, deadline=None)
def test_header_round_trip(tensors, metadata):
    named = [(f"t{i}", TensorSpec(dtype, tuple(shape))) for i, (dtype, shape) in enumerate(tensors)]
    # Back to back they must stay aligned to each element size: put the widest first.
    named.sort(key=lambda item: -DTYPES[item[1].dtype][1])
    header = encode_header(named, metadata)
    assert len(header) % 8 == 0
    total = len(header) + sum(spec.nbytes for _, spec in named)
    parsed = parse_header(header, total)
    assert parsed.data_start == len(header)
    assert parsed.metadata == metadata
    assert {e.name: e.spec for e in parsed.entries} == dict(named)


def _raw_header(doc: dict, pad: bool = True) -> bytes:
    body = json.dumps(doc).encode()
    if pad:
        body += b" " * (-(8 + len(body)) % 8)
    return len(body).to_bytes(8, "little") + body


@pytest.mark.parametrize("doc, data, problem", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
     12, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}},
     24, "gap"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 16, "end at byte"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, 8, "span 8 bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 4, "end at byte"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, 8, "not supported"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, 8, "shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "data_offsets"),
    ({"a": {"dtype": "F16", "shape": [1], "data_offsets": [1, 3]}, "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
     3, "not aligned"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}}, 8, "exactly"),
    ({"__metadata__": {"k": 1}}, 0, "__metadata__"),
])
def test_headers_that_lie_are_refused(doc, data, problem):
    header = _raw_header(doc)
    with pytest.raises(FormatError, match=problem):
        parse_header(header + b"\0" * data, len(header) + data)


def test_header_length_beyond_the_payload_and_garbage_are_refused():
    with pytest.raises(FormatError, match="does not fit"):
        parse_header((10**6).to_bytes(8, "little") + b"{}", 100)
    with pytest.raises(FormatError, match="not valid JSON"):
        parse_header((8).to_bytes(8, "little") + b"not json", 16)
    with pytest.raises(FormatError, match="shorter"):
        parse_header(b"abc", 3)
    with pytest.raises(FormatError, match="8-byte boundary"):
        header = (2).to_bytes(8, "little") + b"{}"
        parse_header(header, len(header))


def test_manifest_checks_itself():
    payload, layer_specs = kv_payload(tokens=3)
    good = manifest_for(payload, layer_specs, [5, 6, 7])
    check_manifest(good)
    bad = {
        "prefix_hash": dict(prefix_hash="00" * 32),
        "covers 3 tokens": dict(token_ids=(5, 6)),
        "declared float16": dict(dtype="float16"),
        "empty": dict(token_ids=()),
        "model_fingerprint": dict(model_fingerprint="nope"),
        "num_layers is 0": dict(layers=(), token_ids=(5, 6, 7)),
        "layout": dict(layout="paged"),
    }
    for problem, changes in bad.items():
        m = replace(good, **changes)
        if "token_ids" in changes:
            m = replace(m, prefix_hash=prefix_hash(m.token_ids))
        with pytest.raises(FormatError, match=problem):
            check_manifest(m)


def test_manifest_and_payload_must_agree():
    payload, layer_specs = kv_payload(tokens=3)
    header = parse_header(payload, len(payload))
    check_payload(manifest_for(payload, layer_specs, [1, 2, 3]), header)
    other, other_specs = kv_payload(tokens=3, head_dim=8)
    with pytest.raises(FormatError, match="layer 0 key"):
        check_payload(manifest_for(payload, other_specs, [1, 2, 3]), header)
    three, three_specs = kv_payload(num_layers=3, tokens=3)
    with pytest.raises(FormatError, match="do not match 3 layers"):
        check_payload(manifest_for(payload, three_specs, [1, 2, 3]), header)


def test_kv_names_are_in_layer_order():
    assert kv_names(2) == ["layers.0.key", "layers.0.value", "layers.1.key", "layers.1.value"]


@given(st.lists(st.integers(0, 2**31), min_size=0, max_size=80), st.lists(st.integers(0, 2**31), max_size=80))
@settings(max_examples=200, deadline=None)
def test_block_keys_match_exactly_on_shared_whole_blocks(a, b):
    ka, kb = block_keys(FINGERPRINT, a), block_keys(FINGERPRINT, b)
    shared_blocks = common_prefix(a, b) // BLOCK_TOKENS
    assert len(ka) == len(a) // BLOCK_TOKENS
    for i in range(min(len(ka), len(kb))):
        assert (ka[i] == kb[i]) == (i < shared_blocks)


def test_block_keys_depend_on_the_model_and_prefix_hash_is_stable():
    ids = list(range(40))
    assert block_keys(FINGERPRINT, ids) != block_keys("cd" * 32, ids)
    # sha256 of the ids as little-endian int64s, so that clients in other languages agree.
    assert prefix_hash([1, 2]) == hashlib.sha256(struct.pack("<2q", 1, 2)).hexdigest()


@given(st.lists(st.binary(min_size=0, max_size=3 * CHUNK_BYTES // 2), min_size=1, max_size=4), st.data())
@settings(max_examples=30, deadline=None)
def test_payload_chunks_cover_the_bytes_in_order(parts, data):
    payload = Payload(parts)
    joined = b"".join(parts)
    offset = data.draw(st.integers(0, len(joined)))
    pieces = list(payload.chunks(offset))
    assert all(0 < len(p) <= CHUNK_BYTES for _, p in pieces)
    position = offset
    for at, piece in pieces:
        assert at == position
        position += len(piece)
    assert b"".join(p for _, p in pieces) == joined[offset:]
    assert payload.size == len(joined)


def test_importing_the_client_does_not_import_torch():
    code = "import memos_client, memos_mip.tensor_format, memos_client.blobs, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@given(st.integers(0, 2**62), st.binary(max_size=300), st.one_of(st.none(), st.tuples(st.text(max_size=70), st.integers(0, 2**62))))
@settings(max_examples=300, deadline=None)
def test_chunk_wire_codec_is_exactly_protobuf(offset, data, blob):
    from memos_mip.wire import encode_download, encode_upload_chunk, parse_download_chunk, parse_upload_chunk
    from memos_mip.v1 import blob_pb2, cube_pb2

    upload = blob_pb2.UploadRequest(chunk=blob_pb2.Chunk(offset=offset, data=data))
    assert encode_upload_chunk(offset, data) == upload.SerializeToString()
    parsed = parse_upload_chunk(upload.SerializeToString())
    assert (parsed.offset, bytes(parsed.data)) == (offset, data)
    download = blob_pb2.DownloadResponse(chunk=blob_pb2.Chunk(offset=offset, data=data))
    if blob is not None:
        download.blob.CopyFrom(cube_pb2.BlobRef(sha256=blob[0], size=blob[1]))
    encoded = encode_download(offset, data, blob)
    assert blob_pb2.DownloadResponse.FromString(encoded) == download
    assert encoded == download.SerializeToString()
    fast = parse_download_chunk(encoded)
    if blob is None:
        assert (fast.offset, bytes(fast.data)) == (offset, data)
    else:
        assert fast is None  # the first message, naming the blob, goes through protobuf


@given(st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_chunk_parser_never_misreads_other_bytes(raw):
    """Whatever the bytes, the fast parser either agrees with protobuf or declines."""
    from google.protobuf.message import DecodeError

    from memos_mip.wire import parse_download_chunk, parse_upload_chunk
    from memos_mip.v1 import blob_pb2

    for parse, cls, _field in ((parse_upload_chunk, blob_pb2.UploadRequest, "chunk"),
                              (parse_download_chunk, blob_pb2.DownloadResponse, "chunk")):
        fast = parse(raw)
        if fast is None:
            continue
        message = cls.FromString(raw)  # the fast parser only takes what protobuf parses
        assert (message.chunk.offset, message.chunk.data) == (fast.offset, bytes(fast.data))
        assert not (cls is blob_pb2.DownloadResponse and message.HasField("blob"))
        assert not (cls is blob_pb2.UploadRequest and message.HasField("start"))
    try:
        blob_pb2.UploadRequest.FromString(raw)
    except DecodeError:
        assert parse_upload_chunk(raw) is None


@given(st.integers(0, 2**40), st.binary(max_size=40), st.data())
@settings(max_examples=500, deadline=None)
def test_chunk_parser_on_damaged_encodings(offset, data, draw):
    from google.protobuf.message import DecodeError

    from memos_mip.wire import encode_upload_chunk, parse_upload_chunk
    from memos_mip.v1 import blob_pb2

    raw = bytearray(encode_upload_chunk(offset, data))
    action = draw.draw(st.sampled_from(["flip", "cut", "append"]))
    where = draw.draw(st.integers(0, len(raw) - 1))
    if action == "flip":
        raw[where] = draw.draw(st.integers(0, 255))
    elif action == "cut":
        del raw[where:]
    else:
        raw += draw.draw(st.binary(min_size=1, max_size=4))
    fast = parse_upload_chunk(bytes(raw))
    if fast is not None:
        try:
            message = blob_pb2.UploadRequest.FromString(bytes(raw))
        except DecodeError:
            raise AssertionError(f"fast parser took bytes protobuf refuses: {bytes(raw)!r}") from None
        assert (message.chunk.offset, message.chunk.data) == (fast.offset, bytes(fast.data))
        assert not message.HasField("start")


hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
tensor_specs = st.builds(lambda d, s: TensorSpec(d, tuple(s)), st.sampled_from(sorted(DTYPES)),
                         st.lists(st.integers(1, 64), min_size=4, max_size=4))


@given(hex64, st.integers(1, 2**40), st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=50),
       st.lists(st.tuples(tensor_specs, tensor_specs), min_size=1, max_size=6), hex64,
       st.one_of(st.just(""), hex64), st.sampled_from(sorted(DTYPES)))
@settings(max_examples=200, deadline=None)
def test_manifest_round_trips_through_json_and_the_protocol(sha, size, ids, layers, model_fp, tokenizer_fp, dtype):
    from memos_client.kv_models import Activation, manifest_to_proto
    from memos_mip.tensor_format import KVManifest
    from memosd.server.convert_tensor import manifest_from_proto

    m = KVManifest(blob_sha256=sha, blob_size=size, token_ids=tuple(ids), layers=tuple(layers),
                   model_fingerprint=model_fp, dtype=dtype, tokenizer_fingerprint=tokenizer_fp,
                   prefix_hash=prefix_hash(ids))
    assert KVManifest.from_json(json.loads(json.dumps(m.to_json()))) == m
    binding, msg = manifest_to_proto(m)
    assert manifest_from_proto(binding, msg) == m  # what the daemon reads from a client
    assert Activation.from_proto(msg, binding).manifest() == m  # what a client reads back
