"""The "Authentication" section of docs/protocol.md: its test vector against the Python implementation,
and a token built from the text alone (no memos_client helper) against the real daemon."""

import base64
import json
import re
import time
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from memos_client.auth import (
    CLOCK_SKEW, MAX_TOKEN_LIFETIME, AgentKey, canonical, encode_token, read_token, verify_signature,
)
from memos_mip.v1 import governance_pb2, governance_pb2_grpc
from memosd.governance.policy import parse_policy

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end > 0 else None]


def _json_blocks(text: str) -> list:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", text, re.S)]


AUTH = _section("Authentication")
KEY_FILE, VECTOR = _json_blocks(AUTH)


def test_the_vector_is_what_the_python_implementation_makes():
    seed = base64.b64decode(VECTOR["seed_base64"])
    key = AgentKey(VECTOR["claims"]["sub"], Ed25519PrivateKey.from_private_bytes(seed), VECTOR["claims"]["aud"])
    assert key.public_bytes.hex() == VECTOR["public_key_hex"]
    assert canonical(VECTOR["claims"]).decode() == VECTOR["canonical_claims"]
    assert encode_token(key, VECTOR["claims"]) == VECTOR["token"]
    claims, signed, signature = read_token(VECTOR["token"])
    assert claims == VECTOR["claims"] and verify_signature(key.public_bytes, signed, signature)


def test_the_key_file_and_its_pkcs8_form(tmp_path):
    path = tmp_path / "alice.key"
    path.write_text(json.dumps(KEY_FILE))
    key = AgentKey.load(path)
    assert key.public_bytes.hex() == VECTOR["public_key_hex"] and key.audience == VECTOR["claims"]["aud"]
    prefix = "302e020100300506032b657004220420"
    assert f"`{prefix}`" in AUTH
    der = bytes.fromhex(prefix) + base64.b64decode(KEY_FILE["private_key"])
    assert der.hex() == VECTOR["pkcs8_der_hex"]
    loaded = serialization.load_der_private_key(der, password=None)
    assert loaded.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == key.public_bytes


def test_the_limits_in_the_text_are_the_daemons():
    assert f"`exp - iat` at most {MAX_TOKEN_LIFETIME}" in AUTH and f"lives longer than {MAX_TOKEN_LIFETIME} s" in AUTH
    assert f"more than {CLOCK_SKEW} s in the daemon's" in AUTH
    assert "memos-policy-epoch" in AUTH and "memos-error: StaleToken" in AUTH


def test_the_policy_example_is_valid_and_its_section_exists():
    document = VECTOR["policy_document"].encode()
    policy = parse_policy(document)
    assert (policy.issuer, policy.subject, sorted(policy.actions)) == ("alice", "group:research", ["read", "write"])
    assert canonical(json.loads(document)) == document
    assert verify_signature(bytes.fromhex(VECTOR["public_key_hex"]), document,
                            base64.b64decode(VECTOR["policy_signature_base64"]))
    for field in json.loads(document):
        assert f"| `{field}` |" in _section("Policy documents")
    assert 'README ("Policy documents")' not in DOC and "memos_client/auth.py" not in DOC


def _spec_token(seed: bytes, claims: dict) -> str:
    # Only what the section says: canonical JSON, unpadded base64url, Ed25519 over the first part.
    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    body = b64url(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    return body + "." + b64url(Ed25519PrivateKey.from_private_bytes(seed).sign(body.encode()))


def test_a_token_made_from_the_text_alone_works_on_the_daemon(daemon, client):
    seed = base64.b64decode(VECTOR["seed_base64"])
    _, daemon_id, _ = client.whoami()
    client.revoke_policy(client.grant("group:x", ["read"], ["teams/x/**"]))  # epoch 2 now
    client._call(client._gov.AddAgent, governance_pb2.AddAgentRequest(
        name="alice", public_key=bytes.fromhex(VECTOR["public_key_hex"])))
    now = int(time.time())
    claims = {"sub": "alice", "aud": daemon_id, "iat": now, "exp": now + 300, "jti": "00" * 12, "epoch": 1}
    with grpc.insecure_channel(daemon.address) as channel:
        stub = governance_pb2_grpc.GovernanceServiceStub(channel)
        who = stub.WhoAmI(governance_pb2.WhoAmIRequest(), timeout=10,
                          metadata=[("authorization", "Bearer " + _spec_token(seed, claims))])
        assert who.agent.name == "alice" and who.policy_epoch == 2 and who.daemon_id == daemon_id
        try:  # any other call with the old epoch: StaleToken and the epoch to mint for
            stub.ListPolicies(governance_pb2.ListPoliciesRequest(), timeout=10,
                              metadata=[("authorization", "Bearer " + _spec_token(seed, claims))])
            raise AssertionError("a stale epoch was accepted")
        except grpc.RpcError as err:
            trailers = dict(err.trailing_metadata())
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED and trailers["memos-error"] == "StaleToken"
            assert trailers["memos-policy-epoch"] == "2"
        current = {**claims, "jti": "01" * 12, "epoch": who.policy_epoch}
        stub.ListPolicies(governance_pb2.ListPoliciesRequest(), timeout=10,
                          metadata=[("authorization", "Bearer " + _spec_token(seed, current))])
