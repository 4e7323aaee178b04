"""The authenticated caller of the current RPC, set once per call by the handler wrapper."""

from __future__ import annotations

import contextvars

from memosd.governance import Principal

_CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("memosd_caller")
BEARER = "bearer "


def token_from(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.lower().startswith(BEARER):
            return value[len(BEARER):].strip()
    return None


def principal() -> Principal:
    """The caller of the RPC being served."""
    return _CALLER.get()


def set_principal(p: Principal) -> contextvars.Token:
    return _CALLER.set(p)
