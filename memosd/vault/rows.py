"""Conversion between cubes rows (and version snapshots) and MemCube objects."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from memosd.cube import LifecycleState, MemCube, MemoryKind, Visibility
from memosd.limits import MAX_TIME

log = logging.getLogger("memosd.vault")
_INT64 = 2**63 - 1
_MIN_TIME = -62135596800.0  # 0001-01-01, the first second a Timestamp holds (imports may carry old times)

COLUMNS = (
    "seq, id, namespace, kind, state, version, parent_version, text, tags, metadata, source, owner,"
    " visibility, priority, created_at, updated_at, expires_at, access_count, last_accessed_at,"
    " derived_from, manifest"
)
NAMES = [c.strip() for c in COLUMNS.split(",")]


def row_dict(row: Sequence[Any]) -> dict:
    return dict(zip(NAMES, row))


def _time(row: dict, key: str) -> float | None:
    """A stored time as a reply can carry it. Values written by an older daemon or edited by hand may be
    anything: one such row must not fail every List, Search, Export or replay that meets it."""
    value = row.get(key)
    if value is None or (type(value) in (int, float) and _MIN_TIME <= value <= MAX_TIME):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    fixed = None if math.isnan(number) else min(max(number, _MIN_TIME), MAX_TIME)
    _warn(row, key, value, fixed)
    return fixed


def _int(row: dict, key: str, low: int, high: int) -> int:
    value: Any = row.get(key)
    if type(value) is int and low <= value <= high:
        return value
    try:
        fixed = min(max(int(value), low), high)
    except (TypeError, ValueError, OverflowError):
        fixed = 0 if low <= 0 else low
    _warn(row, key, value, fixed)
    return fixed


def _enum(row: dict, key: str, cls, fallback):
    try:
        return cls(row.get(key))
    except ValueError:
        _warn(row, key, row.get(key), fallback)
        return fallback


def _json(row: dict, key: str, kind: type, default):
    text = row.get(key)
    if not text:
        return default
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        value = None
    if isinstance(value, kind):
        return value
    _warn(row, key, text, default)
    return default


def _strings(row: dict, key: str) -> tuple[str, ...]:
    value = _json(row, key, list, [])
    kept = tuple(v for v in value if isinstance(v, str))
    if len(kept) != len(value):
        _warn(row, key, value, kept)
    return kept


_warned: set = set()


def _warn(row: dict, key: str, value, fixed) -> None:
    # Once per cube and field, not on every read that meets it.
    if (row.get("id"), key) not in _warned and len(_warned) < 10_000:
        _warned.add((row.get("id"), key))
        log.warning("cube %s: stored %s %.40r is out of range; answered as %r", row.get("id"), key, value, fixed)


def to_cube(row: dict, now: float | None = None) -> MemCube:
    # An unknown state or visibility reads as the more hidden one; an unknown kind as plaintext without text.
    state = _enum(row, "state", LifecycleState, LifecycleState.ARCHIVED)
    expires_at = _time(row, "expires_at")
    if now is not None and state is LifecycleState.ACTIVE and expires_at is not None and expires_at <= now:
        # Expired but not yet swept: report what it is.
        state = LifecycleState.EXPIRED
    return MemCube(
        id=row["id"],
        namespace=row["namespace"],
        kind=_enum(row, "kind", MemoryKind, MemoryKind.PLAINTEXT),
        state=state,
        version=_int(row, "version", 0, _INT64),
        parent_version=_int(row, "parent_version", 0, _INT64),
        text=row["text"] if isinstance(row["text"], str) else None,
        tags=_strings(row, "tags"),
        metadata=_json(row, "metadata", dict, None),
        source=row["source"],
        owner=row["owner"],
        visibility=_enum(row, "visibility", Visibility, Visibility.OWNER),
        priority=_int(row, "priority", -2**31, 2**31 - 1),
        created_at=_time(row, "created_at") or 0.0,
        updated_at=_time(row, "updated_at") or 0.0,
        expires_at=expires_at,
        access_count=_int(row, "access_count", 0, _INT64),
        last_accessed_at=_time(row, "last_accessed_at"),
        derived_from=_strings(row, "derived_from"),
        manifest=_json(row, "manifest", dict, None),
    )


def snapshot(row: dict) -> str:
    """The JSON kept in cube_versions for a version that is being replaced."""
    return json.dumps({k: v for k, v in row.items() if k != "seq"}, ensure_ascii=False)


def from_snapshot(text: str) -> MemCube:
    row = json.loads(text)
    row.setdefault("seq", None)
    return to_cube(row)


def dumps(value) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
