"""Import of a MemTensor/MemOS general MemCube dump directory (what GeneralMemCube.dump writes).

    config.json                 the cube's config: cube_id, user_id, the backends and their models
    textual_memory.json         textual memories: a list of items ({"id", "memory", "metadata"}, or
                                general_text's {"id", "vector", "payload": item}), or tree_text's
                                {"nodes": [item, ...], "edges": [...]}
    activation_memory.pickle    KV caches, pickled: read only when asked, with the restricted unpickler
    parametric_memory.adapter   a LoRA adapter: not imported (noted)

Each textual item becomes a plaintext cube: "memory" is the text; its metadata maps onto the header
(tags, status -> state, visibility "private" -> owner-only, created_at/updated_at, source), and the
rest (type, memory_time, confidence, entities, user_id, session_id, key, memory_type, ...) is kept in
the cube's metadata with the MemOS id as "memos_id". Embeddings are dropped: they belong to another
embedder, and memosd embeds the text again when it has one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from memos_mip.bounds import JSONLimitError, loads, quote
from memos_mip.bundle_format import BundleError, from_rfc3339
from memosd.bundle.loader import BATCH, ImportReport
from memosd.cube import LifecycleState, MemCube, MemoryKind, Visibility
from memosd.errors import InvalidArgument
from memosd.ids import ULID_RE
from memosd.limits import Limits, check_metadata, check_namespace, check_text
from memosd.vault.imported import import_cubes

CONFIG, TEXTUAL, ACTIVATION, PARAMETRIC = ("config.json", "textual_memory.json", "activation_memory.pickle",
                                           "parametric_memory.adapter")
STATES = {"activated": LifecycleState.ACTIVE, "resolving": LifecycleState.ACTIVE,
          "archived": LifecycleState.ARCHIVED}
# Bulky or embedder-specific metadata that is not carried over.
DROPPED = {"embedding", "vector", "history", "usage", "internal_info", "evolve_to", "covered_history", "file_ids"}
# Header fields, mapped rather than kept in metadata.
MAPPED = {"tags", "status", "visibility", "created_at", "updated_at", "source"}
# What is kept when the rest would overflow max_metadata_bytes.
CORE = ("memos_id", "type", "memory_type", "memory_time", "key", "confidence", "user_id", "session_id")
_TAG_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")
# textual_memory.json holds every memory with its embedding (a few KiB of floats each); parsed whole.
MAX_JSON_BYTES = 1 << 30


@dataclass
class MemosKV:
    """One KV cache from activation_memory.pickle, as tensors (torch, from the restricted unpickler)."""

    memos_id: str
    keys: list
    values: list
    metadata: dict


@dataclass
class MemosDump:
    cube_id: str
    cubes: list[MemCube]
    kv: list[MemosKV] = field(default_factory=list)
    model: str = ""
    notes: list[str] = field(default_factory=list)


def read_memos_dump(files: dict[str, Path], namespace: str, limits: Limits, *, allow_pickle: bool,
                    now: float) -> MemosDump:
    """Map a dump's files to cubes under `namespace` (blocking; run it on a thread)."""
    check_namespace(namespace)
    config = _json(files, CONFIG)
    if not isinstance(config, dict) or not ("text_mem" in config or "MemCube" in str(config.get("model_schema", ""))):
        raise BundleError("InvalidArgument", "config.json is not a MemOS MemCube config (no text_mem, no MemCube"
                          " model_schema)")
    dump = MemosDump(cube_id=str(config.get("cube_id") or ""), cubes=[], model=_model(config))
    if TEXTUAL in files:
        deleted = 0
        for number, item in enumerate(_items(_json(files, TEXTUAL)), 1):
            cube = memos_item_cube(item, namespace, limits, now, number)
            if cube is None:
                deleted += 1
            else:
                dump.cubes.append(cube)
        if deleted:
            dump.notes.append(f"{deleted} textual memories marked deleted in MemOS were not imported")
    else:
        dump.notes.append("the dump has no textual_memory.json")
    if ACTIVATION in files:
        if allow_pickle:
            from memosd.runtime.pickle_guard import PickleRefused, load_tensors_pickle

            try:
                dump.kv = kv_caches(load_tensors_pickle(files[ACTIVATION].read_bytes()))
            except PickleRefused as exc:
                raise BundleError("InvalidArgument", f"activation_memory.pickle refused: {exc}") from None
        else:
            dump.notes.append("activation_memory.pickle was not read: pickles can run code; pass --allow-pickle to"
                              " read it with the restricted unpickler (tensors only)")
    if PARAMETRIC in files:
        dump.notes.append("parametric_memory.adapter was not imported: adapters are not supported yet")
    return dump


def memos_item_cube(item, namespace: str, limits: Limits, now: float, number: int = 0) -> MemCube | None:
    """The plaintext cube for one MemOS textual memory item; None if MemOS marked it deleted."""
    where = f"textual_memory.json item {number}: "
    if not isinstance(item, dict):
        raise BundleError("InvalidArgument", f"{where}not an object")
    if isinstance(item.get("payload"), dict):  # general_text stores the item as a vector-db payload
        item = {"id": item.get("id"), **item["payload"]}
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
    created = _time(meta.get("created_at")) or _time(meta.get("updated_at")) or now
    updated = _time(meta.get("updated_at")) or created
    source = meta.get("source") if isinstance(meta.get("source"), str) else ""
    memos_id = str(item.get("id") or "")
    kept = {"memos_id": memos_id}
    kept.update({k: v for k, v in meta.items() if k not in DROPPED | MAPPED and v not in (None, [], {}, "")})
    return MemCube(
        id=stable_id(created, f"{namespace}\n{memos_id or text}"), namespace=namespace, kind=MemoryKind.PLAINTEXT, created_at=created, updated_at=updated,
        owner="", text=text, tags=_tags(meta.get("tags"), limits), metadata=_fit(kept, limits),
        source=f"memos:{source}"[:limits.max_source_chars] if source else "memos",
        visibility=Visibility.OWNER if meta.get("visibility") == "private" else Visibility.NAMESPACE,
        state=STATES[status],
    )


def stable_id(created: float, key: str) -> str:
    """A cube id (ULID) made from the memory's time and its MemOS id, so importing a dump again finds the
    cubes it stored the first time instead of storing them twice."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    ms = max(0, min(int(created * 1000), 2**48 - 1))
    value = (ms << 80) | int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big")
    text = "".join(alphabet[(value >> (5 * i)) & 31] for i in reversed(range(26)))
    assert ULID_RE.fullmatch(text)
    return text


def kv_caches(obj) -> list[MemosKV]:
    """The KV caches in an unpickled activation_memory.pickle ({"kv_cache_memories": {id: KVCacheItem}})."""
    from memosd.runtime.pickle_guard import Record

    items = obj.get("kv_cache_memories", obj) if isinstance(obj, dict) else obj
    items = items.items() if isinstance(items, dict) else enumerate(items if isinstance(items, list) else [])
    found = []
    for key, item in items:
        fields = item.fields() if isinstance(item, Record) else (item if isinstance(item, dict) else {})
        cache = fields.get("kv_cache", fields.get("memory"))
        if not isinstance(cache, Record):
            raise BundleError("InvalidArgument", f"KV cache {key}: no DynamicCache in the item")
        c = cache.fields()
        if "layers" in c:  # newer transformers: a list of DynamicLayer(keys, values)
            keys = [layer.fields().get("keys") for layer in c["layers"]]
            values = [layer.fields().get("values") for layer in c["layers"]]
        else:
            keys, values = list(c.get("key_cache") or []), list(c.get("value_cache") or [])
        if not keys or len(keys) != len(values) or any(_not_tensor(t) for t in keys + values):
            raise BundleError("InvalidArgument", f"KV cache {key}: its layers are not pairs of tensors")
        meta = fields.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        found.append(MemosKV(str(fields.get("id") or fields.get("kv_cache_id") or key), keys, values,
                             {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}))
    return found


def _not_tensor(value) -> bool:
    from memosd.runtime.pickle_guard import is_tensor

    return not is_tensor(value)


def _json(files: dict[str, Path], name: str):
    if name not in files:
        raise BundleError("InvalidArgument", f"the MemOS dump has no {name}")
    if files[name].stat().st_size > MAX_JSON_BYTES:
        raise BundleError("InvalidArgument", f"{name} is over its limit of {MAX_JSON_BYTES >> 30} GiB")
    try:
        return loads(files[name].read_bytes(), what=name, max_bytes=MAX_JSON_BYTES)
    except JSONLimitError as exc:
        raise BundleError("InvalidArgument", str(exc)) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise BundleError("InvalidArgument", f"{name} is not JSON: {exc}") from None


def _items(doc) -> list:
    if isinstance(doc, dict) and isinstance(doc.get("nodes"), list):
        return doc["nodes"]
    if isinstance(doc, list):
        return doc
    raise BundleError("InvalidArgument", "textual_memory.json is neither a list of memories nor a tree of nodes")


def _model(config: dict) -> str:
    for key in ("act_mem", "text_mem"):
        try:
            return str(config[key]["config"]["extractor_llm"]["config"]["model_name_or_path"])
        except (KeyError, TypeError):
            continue
    return ""


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


def default_namespace(agent: str, cube_id: str) -> str:
    """agents/AGENT/memos/CUBE: a MemOS cube id ("Ki-Seki/mem_cube_2") made a namespace segment."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", cube_id.lower()).strip("-._")[:64] or "cube"
    return f"agents/{agent}/memos/{slug}"


async def load_memos_dump(files: dict[str, Path], *, vault, governance, principal, options) -> ImportReport:
    """Read a MemOS dump and store its textual memories (and report what was left out)."""
    config = await asyncio.to_thread(_json, files, CONFIG)
    cube_id = str(config.get("cube_id") or "") if isinstance(config, dict) else ""
    namespace = options.namespace or default_namespace(principal.name, cube_id)
    governance.check(principal, "write", namespace, MemoryKind.PLAINTEXT)
    dump = await asyncio.to_thread(read_memos_dump, files, namespace, vault.limits,
                                   allow_pickle=options.allow_pickle, now=vault.clock())
    report = ImportReport(format="memos-dump", notes=list(dump.notes))
    for start in range(0, len(dump.cubes), BATCH):
        stored, skipped, renamed = await import_cubes(vault, dump.cubes[start:start + BATCH], principal.name,
                                                      f"memos:{cube_id}")
        report.cubes += stored
        report.skipped += skipped
        report.renamed += renamed
    if dump.kv:
        report.notes.append(
            f"{len(dump.kv)} KV caches (for {dump.model or 'an unnamed model'}) were read with the restricted"
            " unpickler and checked, but not stored: a MemOS dump carries no model fingerprint or token ids,"
            " which memosd needs to bind a cache to its model")
    return report
