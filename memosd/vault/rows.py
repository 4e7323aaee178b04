"""Conversion between cubes rows (and version snapshots) and MemCube objects."""

from __future__ import annotations

import json
import sqlite3

from memosd.cube import LifecycleState, MemCube, MemoryKind, Visibility

COLUMNS = (
    "seq, id, namespace, kind, state, version, parent_version, text, tags, metadata, source, owner,"
    " visibility, priority, created_at, updated_at, expires_at, access_count, last_accessed_at,"
    " derived_from, manifest"
)
_NAMES = [c.strip() for c in COLUMNS.split(",")]


def row_dict(row: sqlite3.Row | tuple) -> dict:
    return dict(zip(_NAMES, row))


def to_cube(row: dict, now: float | None = None) -> MemCube:
    state = LifecycleState(row["state"])
    if now is not None and state is LifecycleState.ACTIVE and row["expires_at"] is not None and row["expires_at"] <= now:
        # Expired but not yet swept: report what it is.
        state = LifecycleState.EXPIRED
    return MemCube(
        id=row["id"],
        namespace=row["namespace"],
        kind=MemoryKind(row["kind"]),
        state=state,
        version=row["version"],
        parent_version=row["parent_version"],
        text=row["text"],
        tags=tuple(json.loads(row["tags"])),
        metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        source=row["source"],
        owner=row["owner"],
        visibility=Visibility(row["visibility"]),
        priority=row["priority"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        access_count=row["access_count"],
        last_accessed_at=row["last_accessed_at"],
        derived_from=tuple(json.loads(row["derived_from"])),
        manifest=json.loads(row["manifest"]) if row["manifest"] else None,
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
