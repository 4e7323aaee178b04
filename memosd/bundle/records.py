"""One cube as a line of cubes.jsonl, and back: every header field, checked like a client's write."""

from __future__ import annotations

import math

from memos_mip.bounds import quote
from memos_mip.bundle_format import BundleError, from_rfc3339, rfc3339
from memosd.cube import LifecycleState, MemCube, MemoryKind, Visibility
from memosd.errors import InvalidArgument
from memosd.ids import is_id
from memosd.limits import Limits, check_metadata, check_namespace, check_source, check_tags, check_text

KINDS = {k.name.lower(): k for k in MemoryKind}
STATES = {s.name.lower(): s for s in LifecycleState if s is not LifecycleState.DELETED}
VISIBILITIES = {v.name.lower(): v for v in Visibility}
MAX_DERIVED_FROM = 64


def cube_record(cube: MemCube) -> dict:
    """The JSON object for a cube; tensor cubes carry their manifest (whose "blob" names the payload)."""
    rec = {
        "id": cube.id, "namespace": cube.namespace, "kind": cube.kind.name.lower(), "state": cube.state.name.lower(),
        "version": cube.version, "created_at": rfc3339(cube.created_at), "updated_at": rfc3339(cube.updated_at),
        "expires_at": rfc3339(cube.expires_at), "owner": cube.owner, "visibility": cube.visibility.name.lower(),
        "priority": cube.priority, "tags": list(cube.tags), "metadata": cube.metadata, "source": cube.source,
        "derived_from": list(cube.derived_from), "access_count": cube.access_count,
        "last_accessed_at": rfc3339(cube.last_accessed_at),
    }
    if cube.kind is MemoryKind.PLAINTEXT:
        rec["text"] = cube.text
    else:
        rec["manifest"] = cube.manifest
    return rec


def cube_from_record(rec, limits: Limits, line: int = 0) -> MemCube:
    """A validated MemCube from a cubes.jsonl object; BundleError(InvalidArgument) says what is wrong."""
    where = f"cubes.jsonl line {line}: " if line else ""
    try:
        if not isinstance(rec, dict):
            raise InvalidArgument("not a JSON object")
        cube_id = rec.get("id")
        if not isinstance(cube_id, str) or not is_id(cube_id):
            raise InvalidArgument(f"id {quote(cube_id)} is not a cube id")
        kind = _choice(rec, "kind", KINDS)
        namespace = check_namespace(_typed(rec, "namespace", str))
        created = from_rfc3339(_typed(rec, "created_at", str))
        updated = from_rfc3339(rec.get("updated_at") or rec["created_at"])
        expires = from_rfc3339(rec.get("expires_at"))
        for t in (created, updated, expires):
            if t is not None and not math.isfinite(t):
                raise InvalidArgument("a time is not finite")
        derived = rec.get("derived_from") or []
        if not isinstance(derived, list) or len(derived) > MAX_DERIVED_FROM or not all(
                isinstance(i, str) and is_id(i) for i in derived):
            raise InvalidArgument(f"derived_from must be a list of at most {MAX_DERIVED_FROM} cube ids")
        source = check_source(rec.get("source") or "", limits)
        priority = rec.get("priority") or 0
        if not isinstance(priority, int) or isinstance(priority, bool) or not -2**31 <= priority < 2**31:
            raise InvalidArgument("priority must be a 32-bit integer")
        cube = MemCube(
            id=cube_id, namespace=namespace, kind=kind, created_at=created, updated_at=updated,
            owner=str(rec.get("owner") or ""), state=_choice(rec, "state", STATES, "active"),
            tags=check_tags(_typed(rec, "tags", list, []), limits),
            metadata=check_metadata(_typed(rec, "metadata", dict, None), limits), source=source,
            visibility=_choice(rec, "visibility", VISIBILITIES, "namespace"), priority=priority, expires_at=expires,
            derived_from=tuple(derived),
        )
        if kind is MemoryKind.PLAINTEXT:
            cube.text = check_text(_typed(rec, "text", str), limits)
        else:
            manifest = _typed(rec, "manifest", dict)
            blob = manifest.get("blob")
            if not isinstance(blob, dict) or not _is_sha256(blob.get("sha256")) or not isinstance(blob.get("size"), int):
                raise InvalidArgument("manifest.blob must name the payload's sha256 and size")
            cube.manifest = manifest
        return cube
    except (InvalidArgument, BundleError) as exc:
        raise BundleError("InvalidArgument", f"{where}{exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError("InvalidArgument", f"{where}bad or missing field {exc}") from None


def _typed(rec: dict, key: str, kind, *default):
    value = rec.get(key, *default) if default else rec[key]
    if value is None and default:
        return default[0]
    if not isinstance(value, kind):
        raise InvalidArgument(f"{key} must be a {kind.__name__}")
    return value


def _choice(rec: dict, key: str, choices: dict, default: str | None = None):
    value = rec.get(key, default)
    if value not in choices:
        raise InvalidArgument(f"{key} must be one of {', '.join(choices)}")
    return choices[value]


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
