"""Tamper-evident page tokens: a List position bound to the filter (and the caller's view) it was issued for."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from memos_mip.bounds import loads
from memosd.cube import CubeFilter
from memosd.errors import InvalidArgument


def filter_digest(f: CubeFilter) -> str:
    # The caller's scope is part of it: a token (and the total it carries) is only good for the same view.
    scope = None if f.scope is None else sorted((r.namespace, r.subtree, sorted(map(int, r.kinds))) for r in f.scope)
    key = json.dumps(
        [f.namespace_prefix, sorted(map(int, f.kinds)), list(f.tags), f.created_after, f.created_before,
         sorted(map(int, f.states)), scope, f.viewer]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


MAX_PAGE_TOKEN = 512


class PageTokens:
    """Opaque page tokens: the position and the filter they belong to, signed with a daemon key."""

    def __init__(self, key: bytes):
        self._key = key

    def make(self, after_seq: int, f: CubeFilter, total: int) -> str:
        body = json.dumps({"a": after_seq, "f": filter_digest(f), "t": total}, separators=(",", ":")).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")

    def read(self, token: str, f: CubeFilter) -> tuple[int, int]:
        """The seq to continue after and the total counted for the first page; InvalidArgument if the
        token was altered or is for another filter."""
        try:
            # The tokens make() writes are about 100 characters; anything much longer is not one of them.
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)) if len(token) <= MAX_PAGE_TOKEN else b""
            body, mac = raw[:-16], raw[-16:]
            ok = hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()[:16])
            data = loads(body, what="page_token", max_bytes=MAX_PAGE_TOKEN) if ok else None
        except ValueError:  # binascii.Error, UnicodeDecodeError and JSONLimitError included
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("a"), int) or not isinstance(data.get("t"), int):
            raise InvalidArgument("page_token is not one this daemon issued; start again without a page_token")
        if data.get("f") != filter_digest(f):
            raise InvalidArgument("page_token belongs to a different filter; send the same filter as the first page")
        return data["a"], data["t"]
