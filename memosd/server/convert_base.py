"""The low-level conversions every converter shares: times, Structs and enums; it imports no other converter."""

from __future__ import annotations

import logging
import math

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from memosd.errors import InvalidArgument

log = logging.getLogger("memosd.server")


# What a Timestamp holds: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799


def to_timestamp(seconds: float | None) -> Timestamp | None:
    """A reply's time; one a Timestamp cannot hold (a row from an older daemon or edited by hand) is
    clamped, so that one stored value never fails every read that returns it."""
    if seconds is None:
        return None
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        log.warning("a stored time %r is not a number; answered as unset", seconds)
        return None
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        log.warning("a stored time %r is out of range; answered clamped", seconds)
        seconds = min(max(seconds, _MIN_SECONDS), _MAX_SECONDS)
    ts = Timestamp()
    ts.FromNanoseconds(int(round(seconds * 1e9)))
    return ts


def timestamp_seconds(msg, field: str) -> float | None:
    """A request's Timestamp field as seconds (None when unset); one a Timestamp cannot hold is the caller's
    mistake."""
    if not msg.HasField(field):
        return None
    ts = getattr(msg, field)
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument(f"{field} is not a valid Timestamp (years 1 to 9999, nanos 0 to 999999999)")
    return ts.seconds + ts.nanos / 1e9


def struct_to_dict(msg) -> dict:
    """A Struct field as a dict; NaN and infinity (which JSON cannot carry) are the caller's mistake."""
    try:
        return json_format.MessageToDict(msg)
    except ValueError:
        raise InvalidArgument("metadata numbers must be finite (no NaN or infinity)") from None


def enum_value(cls, value: int, what: str):
    """A request's enum number as the domain enum; an unknown number is the caller's mistake."""
    try:
        return cls(value)
    except ValueError:
        raise InvalidArgument(f"{what} {value} is not a known value") from None
