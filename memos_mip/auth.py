"""Agent keys, request tokens and signed policy documents: the formats both client and daemon use.

docs/protocol.md ("Authentication", from protos/authentication.md) specifies them for any language.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from memos_mip.bounds import loads

TOKEN_LIFETIME = 300
MAX_TOKEN_LIFETIME = 3600  # exp - iat; the daemon refuses longer-lived tokens
CLOCK_SKEW = 60  # how far in the future the daemon accepts an iat
METADATA_KEY = "authorization"
EPOCH_TRAILER = "memos-policy-epoch"
ERROR_TRAILER = "memos-error"
WHOAMI = "/memos.v1.GovernanceService/WhoAmI"  # the one call that accepts a token of any epoch


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, or not a key file (the client raises it as InvalidArgument)."""


def canonical(obj) -> bytes:
    """The one JSON encoding that is signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(public_key: bytes) -> str:
    """A short, loggable name for a key (never log the key itself)."""
    import hashlib

    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass
class AgentKey:
    """An agent's Ed25519 private key and the daemon it is registered with."""

    agent: str
    private_key: Ed25519PrivateKey
    audience: str

    @classmethod
    def generate(cls, agent: str, audience: str) -> AgentKey:
        return cls(agent, Ed25519PrivateKey.generate(), audience)

    @property
    def public_bytes(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def save(self, path: str | Path) -> Path:
        """Write the key file with mode 0600; refuses to overwrite an existing file."""
        from cryptography.hazmat.primitives import serialization

        raw = self.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
        body = {"version": 1, "agent": self.agent, "audience": self.audience,
                "private_key": base64.b64encode(raw).decode()}
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
            f.write("\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AgentKey:
        path = Path(path).expanduser()
        try:
            body = json.loads(path.read_text())
            raw = base64.b64decode(body["private_key"])
            return cls(body["agent"], Ed25519PrivateKey.from_private_bytes(raw), body.get("audience", ""))
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} does not exist") from None
        except PermissionError:
            raise KeyFileError(f"cannot read key file {path}: permission denied") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{path} is not a memosd key file ({exc})") from None


def mint_token(key: AgentKey, epoch: int, *, lifetime: int = TOKEN_LIFETIME, now: float | None = None) -> str:
    now = int(time.time() if now is None else now)
    return encode_token(key, {"sub": key.agent, "aud": key.audience, "iat": now, "exp": now + lifetime,
                              "jti": secrets.token_hex(12), "epoch": epoch})


def encode_token(key: AgentKey, claims: dict) -> str:
    """BASE64URL(canonical claims) "." BASE64URL(Ed25519 signature of the first part's ASCII bytes)."""
    body = b64url(canonical(claims))
    return f"{body}.{b64url(key.sign(body.encode()))}"


def read_token(token: str) -> tuple[dict, bytes, bytes]:
    """Claims, signed bytes and signature of a token; ValueError if it is not well formed."""
    body, sep, sig = token.partition(".")
    if not sep or not body or not sig or len(token) > 2048:
        raise ValueError("not a memosd token")
    claims = loads(unb64url(body), what="the token's claim set", max_bytes=2048)
    if not isinstance(claims, dict):
        raise ValueError("token claims are not an object")
    return claims, body.encode(), unb64url(sig)


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
        return True
    except (InvalidSignature, ValueError):
        return False


def sign_policy(key: AgentKey, *, subject: str, actions, namespaces, kinds=(), not_before: float | None = None,
                expires_at: float | None = None, now: float | None = None) -> tuple[bytes, bytes]:
    """A policy document signed by `key`: (document bytes, signature)."""
    now = int(time.time() if now is None else now)
    doc = {"version": 1, "id": "pol_" + secrets.token_hex(8), "issuer": key.agent, "subject": subject,
           "actions": sorted(set(actions)), "namespaces": sorted(set(namespaces)), "kinds": sorted(set(kinds)),
           "issued_at": now, "not_before": int(not_before) if not_before else now,
           "expires_at": int(expires_at) if expires_at else None}
    document = canonical(doc)
    return document, key.sign(document)
