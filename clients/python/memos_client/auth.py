"""The client's side of agent keys and tokens: renewing tokens, and finding the caller's key.

The formats (key files, tokens, signed policy documents) are the protocol's, in memos_mip.auth, which both
client and daemon use; its names are importable from here too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from memos_client.errors import InvalidArgument
from memos_mip import auth as _formats
from memos_mip.auth import (
    CLOCK_SKEW, EPOCH_TRAILER, ERROR_TRAILER, MAX_TOKEN_LIFETIME, METADATA_KEY, TOKEN_LIFETIME, WHOAMI, KeyFileError,
    b64url, canonical, encode_token, fingerprint, mint_token, read_token, sign_policy, unb64url, verify_signature,
)

# The formats' names stay importable from here, where callers of the client have always found them.
__all__ = [
    "AgentKey", "CLOCK_SKEW", "EPOCH_TRAILER", "ERROR_TRAILER", "MAX_TOKEN_LIFETIME", "METADATA_KEY", "TOKEN_LIFETIME",
    "WHOAMI", "KeyFileError", "TokenSource", "b64url", "canonical", "encode_token", "fingerprint", "mint_token",
    "read_token", "resolve_key", "sign_policy", "unb64url", "verify_signature",
]


class AgentKey(_formats.AgentKey):
    """An agent's key (memos_mip.auth.AgentKey) whose load raises the client's InvalidArgument."""

    @classmethod
    def load(cls, path: str | Path) -> AgentKey:
        try:
            return super().load(path)
        except KeyFileError as exc:
            raise InvalidArgument(str(exc)) from None


class TokenSource:
    """Mints and renews the caller's tokens; remembers the daemon's policy epoch.

    A new source does not know the epoch (`known` is False): the channel asks WhoAmI first, which
    accepts any epoch, so that the first real call carries a current token and is never refused."""

    def __init__(self, key: AgentKey, *, lifetime: int = TOKEN_LIFETIME):
        self.key = key
        self.lifetime = lifetime
        self.epoch = 1  # every daemon starts at 1: the guess until the daemon says
        self.known = False
        self._token = ""
        self._renew_at = 0.0

    def token(self) -> str:
        now = time.time()
        if now >= self._renew_at:
            self._token = mint_token(self.key, self.epoch, lifetime=self.lifetime, now=now)
            self._renew_at = now + self.lifetime / 2
        return self._token

    def metadata(self) -> tuple[str, str]:
        return (METADATA_KEY, f"Bearer {self.token()}")

    def adopt_epoch(self, epoch: int) -> None:
        self.known = True
        if epoch != self.epoch:
            self.epoch, self._renew_at = epoch, 0.0

    def learn_epoch(self, rpc_error) -> bool:
        """After a refused call: True if the daemon refused the token only for its stale epoch (the
        StaleToken error, with the current epoch in a trailer), which is then adopted so a retry
        succeeds. Any other refusal is final: retrying it would be a second denial."""
        trailers = dict(rpc_error.trailing_metadata() or ()) if hasattr(rpc_error, "trailing_metadata") else {}
        epoch = trailers.get(EPOCH_TRAILER, "")
        if trailers.get(ERROR_TRAILER) != "StaleToken" or not epoch.isdigit() or int(epoch) == self.epoch:
            return False
        self.adopt_epoch(int(epoch))
        return True


def resolve_key(key: str | Path | AgentKey | None = None, target: str | None = None) -> AgentKey | None:
    """The caller's key: the argument, else $MEMOS_KEY, else the admin key of the daemon at `target`
    (the system daemon's /var/lib/memosd/admin.key for its socket, else the default data directory's)
    if this user can read it; None if there is none (calls then fail with Unauthenticated)."""
    if isinstance(key, AgentKey):
        return key
    path = key or os.environ.get("MEMOS_KEY")
    if path:
        return AgentKey.load(path)
    from memos_mip.defaults import admin_key_path

    admin = admin_key_path(target)
    if os.access(admin, os.R_OK):
        return AgentKey.load(admin)
    return None
