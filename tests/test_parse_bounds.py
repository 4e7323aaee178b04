"""Deeply nested or oversized JSON from outside (tokens, bundles, safetensors headers, policies) is refused with
the right status before it is parsed, never a RecursionError answered INTERNAL."""

import hashlib
import json

import grpc
import pytest

from memos_client import InvalidArgument
from memos_client.auth import b64url
from memos_mip.adapter_format import AdapterManifest
from memos_mip.bounds import JSONLimitError, MAX_DEPTH, depth, loads
from memos_mip.tensor_format import TensorSpec, encode_header
from memos_mip.v1 import cube_pb2, vault_pb2, vault_pb2_grpc
from tests.bundle_helpers import write_bundle
from tests.daemon import admin_channel
from tests.kv_helpers import FINGERPRINT, kv_payload, manifest_for

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_SMALL = "[" * 2_000 + "]" * 2_000  # under every size limit, and still beyond the recursion limit


def _relist(path) -> None:
    """Make the manifest agree with the files again, as a forger would."""
    manifest = json.loads((path / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (path / entry["path"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def _safetensors(header: bytes) -> bytes:
    header += b" " * (-(8 + len(header)) % 8)
    return len(header).to_bytes(8, "little") + header


def test_a_token_of_deeply_nested_claims_is_unauthenticated(daemon):
    claims = "[" * 1400  # never closed: the parser recurses before it sees the end
    token = f"{b64url(claims.encode())}.{b64url(bytes(64))}"
    assert len(token) < 2048
    with grpc.insecure_channel(daemon.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            vault_pb2_grpc.VaultServiceStub(channel).Get(vault_pb2.GetRequest(id="01JAAAAAAAAAAAAAAAAAAAAAAA"),
                                                         metadata=[("authorization", f"Bearer {token}")], timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"deeper than {MAX_DEPTH} levels" in info.value.details()


@pytest.mark.parametrize("where", ["manifest", "records", "policies", "policy document"])
def test_a_bundle_with_deeply_nested_json_is_invalid_argument(client, tmp_path, where):
    bundle = tmp_path / "b"
    write_bundle(bundle, cubes=2, namespace="agents/admin/b")
    if where == "manifest":
        manifest = json.loads((bundle / "manifest.json").read_text())
        text = json.dumps(manifest)
        (bundle / "manifest.json").write_text(text[:-1] + f', "extra": {DEEP}}}')
    else:
        name = "cubes.jsonl" if where == "records" else "policies.jsonl"
        line = DEEP if where != "policy document" else json.dumps({"document": DEEP_SMALL, "signature": ""})
        with open(bundle / name, "a") as f:
            f.write(line + "\n")
        _relist(bundle)
    with pytest.raises(InvalidArgument, match=f"deeper than {MAX_DEPTH} levels"):
        client.import_bundle(bundle, "agents/admin/imported")
    assert list(client.list("agents/admin/imported")) == []


def test_a_memos_dump_with_deeply_nested_json_is_invalid_argument(client, tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "config.json").write_text(json.dumps({"cube_id": "x", "text_mem": {}}))
    (dump / "textual_memory.json").write_text(DEEP)
    with pytest.raises(InvalidArgument, match=f"textual_memory.json nests .* deeper than {MAX_DEPTH}"):
        client.import_bundle(dump, "agents/admin/memos")


def test_a_kv_payload_with_a_deeply_nested_header_is_invalid_argument(client):
    _, specs = kv_payload(tokens=4)
    payload = _safetensors(f'{{"x": {DEEP}}}'.encode())
    client.upload_blob(payload, "agents/admin/kv")
    with pytest.raises(InvalidArgument, match=f"safetensors header nests .* deeper than {MAX_DEPTH}"):
        client.put_activation(manifest_for(payload, specs, range(4)), "agents/admin/kv")


def test_an_adapter_with_a_deeply_nested_header_or_config_is_invalid_argument(client):
    deep_header = _safetensors(f'{{"x": {DEEP}}}'.encode())
    # A flat header whose adapter_config.json (a string in it) nests deeply.
    deep_config = encode_header([("x", TensorSpec("float32", (1,)))],
                                {"format": "memos-adapter/1", "adapter_config": DEEP_SMALL})
    deep_config += bytes(4)
    for payload, what in ((deep_header, "safetensors header"), (deep_config, "adapter_config.json")):
        client.upload_blob(payload, "agents/admin/adapters", kind=3)
        manifest = AdapterManifest(hashlib.sha256(payload).hexdigest(), len(payload), FINGERPRINT, "float32", "LORA",
                                   4, 8.0, ("q_proj",))
        with pytest.raises(InvalidArgument, match=f"{what} nests .* deeper than {MAX_DEPTH}"):
            client.put_adapter(manifest, "agents/admin/adapters")


def test_a_deeply_nested_or_huge_policy_document_is_invalid_argument(client):
    with pytest.raises(InvalidArgument, match=f"policy document nests .* deeper than {MAX_DEPTH}"):
        client.put_policy(DEEP_SMALL.encode(), b"")
    with pytest.raises(InvalidArgument, match="policy document is .* MiB; the limit is 64.0 KiB"):
        client.put_policy(b'{"version": 1, "id": "' + b"a" * (2 << 20) + b'"}', b"")
    odd = {"version": 1, "id": "pol_0123456789abcdef", "issuer": ["admin"], "subject": "agent:bob",
           "actions": ["read"], "namespaces": ["agents/admin/**"], "issued_at": 1}
    with pytest.raises(InvalidArgument, match="policy issuer"):  # a list where a name belongs: no TypeError
        client.put_policy(json.dumps(odd).encode(), b"")


def test_a_long_page_token_is_invalid_argument_with_a_short_message(client):
    with pytest.raises(InvalidArgument) as info:
        client.list_page("agents/admin", page_token="A" * (1 << 20))
    assert "page_token" in str(info.value) and len(str(info.value)) < 1024


def _ld(field: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (lengths under 2**14 here)."""
    n = len(data)
    size = bytes([n]) if n < 128 else bytes([n & 0x7F | 0x80, n >> 7])
    return bytes([field << 3 | 2]) + size + data


def test_metadata_nested_past_protobuf_limits_is_invalid_argument_on_either_side(client, daemon):
    deep = "x"
    for _ in range(2000):
        deep = {"a": deep}
    with pytest.raises(InvalidArgument, match="metadata nests too deeply"):  # the client refuses to build it
        client.put("hello", "agents/admin/n", metadata=deep)
    # The daemon, sent the bytes anyway: Struct {fields: {"a": Value {struct_value: Struct ...}}}.
    fields = {f.name: f.number for f in cube_pb2.CubeDraft.DESCRIPTOR.fields}

    def put_request(levels: int) -> bytes:
        struct = _ld(1, _ld(1, b"a") + _ld(2, _ld(3, b"x")))
        for _ in range(levels):
            struct = _ld(1, _ld(1, b"a") + _ld(2, _ld(5, struct)))
        return _ld(1, _ld(fields["namespace"], b"agents/admin/n") + _ld(fields["text"], b"hi")
                   + _ld(fields["metadata"], struct))

    with admin_channel(daemon.address, daemon.config.data_dir) as channel:
        put = channel.unary_unary("/memos.v1.VaultService/Put", request_serializer=bytes,
                                  response_deserializer=bytes)
        put(put_request(10), timeout=10)  # the encoding is right
        with pytest.raises(grpc.RpcError) as info:
            put(put_request(150), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_depth_counts_brackets_outside_strings_only():
    assert depth(b'{"a": [1, {"b": "[[[[\\"[[{{"}]}') == 3
    assert depth(b"42") == 0 and depth(b"[]") == 1
    assert loads('{"a": [[1]]}', what="x", max_bytes=100) == {"a": [[1]]}
    assert loads(json.dumps({"s": "[" * 1000}).encode(), what="x", max_bytes=10_000) == {"s": "[" * 1000}
    with pytest.raises(JSONLimitError, match="x nests arrays or objects deeper than 3 levels"):
        loads("[[[[]]]]", what="x", max_bytes=100, max_depth=3)
    with pytest.raises(JSONLimitError, match="x is 101 bytes; the limit is 100 bytes"):
        loads(b" " * 101, what="x", max_bytes=100)
    with pytest.raises(json.JSONDecodeError):
        loads("[1,", what="x", max_bytes=100)
