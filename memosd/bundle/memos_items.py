"""MemOS textual memories (general, naive, tree and preference layouts) as plaintext cubes, with the tree's edges as links.

    general_text   [{"id", "vector", "payload": {"id", "memory", "metadata"}}]
    naive_text     [{"id", "memory", "metadata"}]
    tree_text      {"nodes": [{"id", "memory", "metadata"}], "edges": [{"source", "target", "type"}]}
    preference     {COLLECTION: [{"id", "vector", "memory", "original_text", "payload": metadata}]}

An item's metadata maps onto the header where a field exists (tags, status, visibility, created_at,
updated_at, source) and is kept under `metadata` where none does, with the MemOS id as "memos_id".
What the header holds only approximately (a tag with spaces, status "resolving", visibility "public")
is kept under metadata too, so an export back to MemOS writes what was read.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from memos_mip.bounds import quote
from memos_mip.bundle_format import BundleError, from_rfc3339
from memosd.cube import LifecycleState, MemCube, MemoryKind, Visibility
from memosd.errors import InvalidArgument
from memosd.ids import ULID_RE
from memosd.limits import Limits, check_metadata, check_metadata_strings, check_no_nul, check_text

STATES = {"activated": LifecycleState.ACTIVE, "resolving": LifecycleState.ACTIVE,
          "archived": LifecycleState.ARCHIVED}
# Embeddings belong to another embedder (memosd embeds the text again when it has one), and are bulky.
DROPPED = {"embedding", "vector"}
# Header fields, mapped rather than kept in metadata (unless the header holds them only approximately).
MAPPED = {"tags", "status", "visibility", "created_at", "updated_at", "source", "memos_links",
          "memosd_id", "memosd_source", "memosd_namespace", "memosd_priority", "memosd_expires_at", "memosd_keys",
          "memosd_metadata"}
# What is kept when the rest would overflow max_metadata_bytes.
CORE = ("memos_id", "memos_links", "memos_collection", "type", "memory_type", "memory_time", "key", "confidence",
        "user_id", "session_id", "preference", "preference_type")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TAG_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")
MAX_LINKS = 256


@dataclass
class Layout:
    """A textual memory file read: its layout's name, items as {"id", "memory", "metadata"}, and edges."""

    name: str
    items: list[dict]
    edges: list[dict] = field(default_factory=list)


def layout_of(doc, name: str) -> Layout | None:
    """The layout of a parsed textual memory file, decided from its content; None if it is none of them."""
    if isinstance(doc, dict) and isinstance(doc.get("nodes"), list):
        edges = doc.get("edges") or []
        if not isinstance(edges, list):
            raise BundleError("InvalidArgument", f"{name}: edges must be a list")
        return Layout("tree", doc["nodes"], edges)
    if isinstance(doc, list):
        if doc and all(isinstance(i, dict) and isinstance(i.get("payload"), dict) for i in doc):
            return Layout("general", [_vector_item(i) for i in doc])
        if all(isinstance(i, dict) and "memory" in i for i in doc):
            return Layout("naive", doc)
        return Layout("general" if any(isinstance(i, dict) and "payload" in i for i in doc) else "naive", doc)
    if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        items = []
        for collection, entries in doc.items():
            for entry in entries:
                item = _vector_item(entry)
                if isinstance(item, dict) and isinstance(item.get("metadata"), dict):
                    item["metadata"] = {**item["metadata"], "memos_collection": str(collection)}
                items.append(item)
        return Layout("preference", items)
    return None


def _vector_item(entry):
    """A vector-db item ({"id", "vector", "payload"}) as a textual item: general_text keeps the whole item
    in the payload, preference memory keeps the text beside it and the metadata as the payload."""
    if not isinstance(entry, dict) or not isinstance(entry.get("payload"), dict):
        return entry
    payload = entry["payload"]
    if "memory" in payload and isinstance(payload.get("metadata"), dict):
        return {"id": entry.get("id"), **payload}
    meta = {k: v for k, v in payload.items() if k != "memory"}
    if entry.get("original_text"):
        meta.setdefault("original_text", entry["original_text"])
    return {"id": entry.get("id"), "memory": entry.get("memory", payload.get("memory")), "metadata": meta}


def memos_item_cube(item, namespace: str, limits: Limits, now: float, number: int = 0,
                    where: str = "textual_memory.json") -> MemCube | None:
    """The plaintext cube for one MemOS textual memory item; None if MemOS marked it deleted."""
    where = f"{where} item {number}: "
    if not isinstance(item, dict):
        raise BundleError("InvalidArgument", f"{where}not an object")
    if isinstance(item.get("payload"), dict):
        item = _vector_item(item)
    meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
    status = meta.get("status") or "activated"
    if status == "deleted":
        return None
    if status not in STATES:
        raise BundleError("InvalidArgument", f"{where}status {quote(status)} is not one MemOS writes")
    try:
        text = check_text(item.get("memory") if isinstance(item.get("memory"), str) else "", limits)
    except InvalidArgument as exc:
        raise BundleError("InvalidArgument", f"{where}memory: {exc}") from None
    memos_id = str(item.get("id") or "")
    try:  # refused, not dropped: _fit below would quietly leave out a field the vault cannot store
        check_no_nul(memos_id, "id")
        check_metadata_strings(meta)
    except InvalidArgument as exc:
        raise BundleError("InvalidArgument", f"{where}{exc}") from None
    dated = _time(meta.get("created_at")) or _time(meta.get("updated_at"))
    created = dated or now
    updated = _time(meta.get("updated_at")) or created
    # A memosd cube exported to MemOS (memos_client.memos_export) keeps its id, and the header fields MemOS
    # has no place for, under memosd_*; its MemOS id is then its cube id as a UUID, not worth keeping twice.
    given = meta.get("memosd_id")
    given = given if isinstance(given, str) and ULID_RE.fullmatch(given) else None
    kept = {} if given and _same_bits(memos_id, given) else {"memos_id": memos_id}
    own = meta.get("memosd_keys")  # an exported memosd cube's own metadata keys: not MemOS's defaults
    if isinstance(own, list):
        kept.update({k: v for k, v in meta.items() if k in own and k not in MAPPED})
        # What MemOS would have refused or rewritten, or a header field took the name of, as the cube had it.
        aside = meta.get("memosd_metadata")
        kept.update({k: v for k, v in aside.items() if k in own} if isinstance(aside, dict) else {})
    else:
        kept.update({k: v for k, v in meta.items() if k not in DROPPED | MAPPED and v not in (None, [], {}, "")})
    tags = _tags(meta.get("tags"), limits)
    if isinstance(meta.get("tags"), list) and list(tags) != meta["tags"]:
        kept["memos_tags"] = meta["tags"]
    if status not in ("activated", "archived"):
        kept["memos_status"] = status
    if meta.get("visibility") not in (None, "private"):
        kept["memos_visibility"] = meta["visibility"]
    if isinstance(meta.get("memosd_source"), str):
        source = meta["memosd_source"][:limits.max_source_chars]
    else:
        source = meta.get("source") if isinstance(meta.get("source"), str) else ""
        source = f"memos:{source}"[:limits.max_source_chars] if source else "memos"
    priority = meta.get("memosd_priority")
    return MemCube(
        id=given or stable_id(dated or 0.0, f"{namespace}\n{memos_id or text}"), namespace=namespace,
        kind=MemoryKind.PLAINTEXT, created_at=created, updated_at=updated, owner="", text=text, tags=tags,
        metadata=_fit(kept, limits) if kept else None, source=source,
        visibility=Visibility.OWNER if meta.get("visibility") == "private" else Visibility.NAMESPACE,
        state=STATES[status], expires_at=_time(meta.get("memosd_expires_at")),
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool)
        and -2**31 <= priority < 2**31 else 0,
    )


def _same_bits(memos_id: str, cube_id: str) -> bool:
    """Whether a MemOS id is the UUID with the same 128 bits as the cube id (a ULID)."""
    value = 0
    for ch in cube_id.upper():
        value = (value << 5) | _CROCKFORD.index(ch)
    return memos_id.replace("-", "").lower() == f"{value:032x}"


def item_links(item) -> list[dict]:
    """Links an item carries in its own metadata (what memosd's export writes for a tree's edges)."""
    if isinstance(item, dict) and isinstance(item.get("payload"), dict):
        item = _vector_item(item)
    meta = item.get("metadata") if isinstance(item, dict) else None
    links = meta.get("memos_links") if isinstance(meta, dict) else None
    return [link for link in links if isinstance(link, dict)] if isinstance(links, list) else []


def link_cubes(cubes: dict[str, MemCube | None], edges: list[tuple[str, dict]], limits: Limits) -> None:
    """Record each edge on its source cube as metadata.memos_links [{"type", "to": cube id, "memos_id"}];
    an edge naming a node the dump does not hold is refused (edges to deleted nodes are dropped)."""
    links: dict[str, list[dict]] = {}
    for where, edge in edges:
        if not isinstance(edge, dict):
            raise BundleError("InvalidArgument", f"{where}: not an object")
        source, target = edge.get("source"), edge.get("target", edge.get("memos_id"))
        kind = edge.get("type")
        if not isinstance(source, str) or not isinstance(target, str) or not isinstance(kind, str) or not kind:
            raise BundleError("InvalidArgument", f"{where}: an edge needs a source, a target and a type")
        if "\x00" in kind:
            raise BundleError("InvalidArgument", f"{where}: the edge's type holds a NUL character (\\x00)")
        for end in (source, target):
            if end not in cubes:
                raise BundleError("InvalidArgument", f"{where}: names the node {quote(end)}, which the dump does"
                                  " not hold")
        if cubes[source] is None or cubes[target] is None:
            continue  # an edge to or from a memory MemOS marked deleted
        to = cubes[target]
        assert to is not None
        entry = {"type": kind[:64], "to": to.id, "memos_id": target}
        if entry not in links.setdefault(source, []):
            links[source].append(entry)
    for source, found in links.items():
        cube = cubes[source]
        assert cube is not None  # links are only recorded between nodes that were imported
        if len(found) > MAX_LINKS:
            raise BundleError("InvalidArgument", f"node {quote(source)} has {len(found)} edges; at most {MAX_LINKS}"
                              " are kept on a cube")
        metadata = dict(cube.metadata or {})
        metadata["memos_links"] = found
        cube.metadata = _fit(metadata, limits)


def stable_id(created: float, key: str) -> str:
    """A cube id (ULID) made from the memory's time and its MemOS id, so importing a dump again finds the
    cubes it stored the first time instead of storing them twice. An undated memory's time is 0, never the
    time of the import, which would give it a new id each time."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    ms = max(0, min(int(created * 1000), 2**48 - 1))
    value = (ms << 80) | int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big")
    text = "".join(alphabet[(value >> (5 * i)) & 31] for i in reversed(range(26)))
    assert ULID_RE.fullmatch(text)
    return text


def _time(value) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        # MemOS writes nanosecond fractions ("...42.394870000+00:00"); Python reads microseconds.
        return from_rfc3339(re.sub(r"(\.\d{6})\d+", r"\1", value))
    except BundleError:
        return None


def _tags(tags, limits: Limits) -> tuple[str, ...]:
    if not isinstance(tags, list):
        return ()
    cleaned = [_TAG_SPACE.sub("-", t.strip())[:64] for t in tags if isinstance(t, str) and t.strip()]
    return tuple(dict.fromkeys(cleaned))[:limits.max_tags]


def _fit(metadata: dict, limits: Limits) -> dict:
    """The metadata, reduced to its core fields when the whole would be over the limit."""
    for fields in (metadata, {k: metadata[k] for k in CORE if k in metadata}):
        try:
            return check_metadata(json.loads(json.dumps(fields, default=str, allow_nan=False)), limits)
        except (InvalidArgument, ValueError):
            continue
    return {"memos_id": metadata.get("memos_id", "")}
