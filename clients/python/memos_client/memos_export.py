"""An export bundle rewritten as a MemOS MemCube directory that MemOS's own GeneralMemCube.init_from_dir loads.

    config.json           a GeneralMemCubeConfig whose text memory is naive_text: it needs no vector or
                          graph database (its extractor LLM is configured but never called to load)
    textual_memory.json   naive_text's layout: [{"id": UUID, "memory": text, "metadata": {...}}]

Each plaintext cube becomes one item: its MemOS id is metadata.memos_id when it came from MemOS, else its
cube id as a UUID (a ULID and a UUID are both 128 bits); tags, state, visibility, times and source go to
MemOS's own metadata fields, its metadata beside them (MemOS keeps extra fields), and what MemOS has no
field for under memosd_* keys (memosd_keys lists the cube's own metadata keys), so importing the directory again,
or what MemOS dumps after loading it, restores every cube as it was.
Links (metadata.memos_links, a tree dump's edges) name their targets by MemOS id. KV caches are
written (activation_memory.pickle, MemOS's pickle) only when asked, naming the model MemOS is to load
for them; adapters and policies MemOS cannot hold: they are counted and noted.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from memos_client.errors import InvalidArgument
from memos_client.memos_schema import REFUSED, memos_form, same_json
from memos_mip.bundle_format import CUBES, MANIFEST, POLICIES

CONFIG, TEXTUAL, ACTIVATION = "config.json", "textual_memory.json", "activation_memory.pickle"
# MemOS's TextualMemoryMetadata.source and .visibility take only these values.
SOURCES = {"conversation", "retrieved", "web", "file", "system"}
# An expired cube goes as activated with its expiry, and comes back expired.
STATUS = {"active": "activated", "archived": "archived", "expired": "activated"}
# Fields the import maps back onto the header (memosd.bundle.memos_items) rather than into metadata.
IMPORTED_AS_HEADER = ("memos_id", "memos_tags", "memos_status", "memos_visibility")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_uuid(cube_id: str) -> str:
    """The UUID with the same 128 bits as a cube id (a ULID)."""
    value = 0
    for ch in cube_id.upper():
        value = (value << 5) | CROCKFORD.index(ch)
    return str(uuid.UUID(int=value))


def memos_config(cube_id: str, user_id: str, kv_model: str | None = None) -> dict:
    """A GeneralMemCubeConfig MemOS builds without any service: naive text memory, and with kv_model a
    kv_cache memory whose extractor is that model (MemOS loads it to build the cube)."""
    act_mem = {"backend": "uninitialized", "config": {}} if kv_model is None else {"backend": "kv_cache", "config": {
        "memory_filename": ACTIVATION,
        "extractor_llm": {"backend": "huggingface", "config": {"model_name_or_path": kv_model}}}}
    return {
        "model_schema": "memos.configs.mem_cube.GeneralMemCubeConfig", "user_id": user_id, "cube_id": cube_id,
        "config_filename": CONFIG,
        "text_mem": {"backend": "naive_text", "config": {
            "memory_filename": TEXTUAL,
            # naive_text needs an extractor LLM to add memories from messages, never to load or search them.
            "extractor_llm": {"backend": "openai", "config": {
                "model_name_or_path": "set-me", "api_key": "set-me", "api_base": "http://localhost:11434/v1"}}}},
        "act_mem": act_mem,
        "para_mem": {"backend": "uninitialized", "config": {}},
        "pref_mem": {"backend": "uninitialized", "config": {}},
    }


def write_memos_dump(bundle: Path, dest: Path, *, cube_id: str, user_id: str, kv_model: str | None = None) -> dict:
    """Write the MemOS directory for an unpacked, verified export bundle; returns what it wrote and left out.
    kv_model (the model MemOS should load, a name or a directory) writes the KV caches too, pickled in
    MemOS's layout (memos_kv_export)."""
    records = [json.loads(line) for line in (bundle / CUBES).read_text(encoding="utf-8").splitlines() if line.strip()]
    caches = [r for r in records if r.get("kind") == "activation" and r.get("state") in STATUS]
    if kv_model is not None:
        models = {r["manifest"]["model"]["model_fingerprint"] for r in caches}
        if len(models) > 1:
            raise InvalidArgument(f"the export holds KV caches of {len(models)} models, and a MemOS cube holds one"
                                  " model's: export one namespace of them at a time")
    plain = [r for r in records if r.get("kind") == "plaintext" and r.get("state") in STATUS]
    ids = {r["id"]: memos_item_id(r) for r in plain}
    dropped_links = 0
    items = []
    for rec in plain:
        item, dropped = memos_item(rec, ids)
        items.append(item)
        dropped_links += dropped
    policies = sum(1 for line in (bundle / POLICIES).read_text(encoding="utf-8").splitlines() if line.strip())
    counts = {"memories": len(items), "activation": sum(r.get("kind") == "activation" for r in records),
              "parametric": sum(r.get("kind") == "parametric" for r in records), "policies": policies}
    notes = []
    dest.mkdir(parents=True, exist_ok=True)
    if kv_model is not None:
        from memos_client.memos_kv_export import write_kv_pickle

        counts["kv_caches"] = write_kv_pickle(bundle, caches, dest / ACTIVATION, kv_item_id)
        counts["activation"] -= counts["kv_caches"]
    if counts["activation"]:
        notes.append(f"{counts['activation']} KV caches not written: MemOS keeps them pickled, for its"
                     " extractor model; pass --kv-model MODEL to write them")
    if counts["parametric"]:
        notes.append(f"{counts['parametric']} adapters not written: MemOS's parametric memory is a placeholder")
    if policies:
        notes.append(f"{policies} policies not written: MemOS has no access policies")
    if dropped_links:
        notes.append(f"{dropped_links} links to cubes outside the export were left out")
    _write_json(dest / CONFIG, memos_config(cube_id, user_id, kv_model))
    _write_json(dest / TEXTUAL, items)
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    return {"format": "memos", "root": manifest.get("root", ""), "counts": counts, "notes": notes}


def memos_item_id(rec: dict) -> str:
    given = (rec.get("metadata") or {}).get("memos_id")
    try:
        return str(uuid.UUID(given)) if isinstance(given, str) else ulid_uuid(rec["id"])
    except ValueError:  # a MemOS id MemOS itself would refuse now: the cube's own id instead
        return ulid_uuid(rec["id"])


def kv_item_id(rec: dict) -> str:
    """A KV cache's id in MemOS: the one it had there (MemOS does not check its form), else its cube id."""
    given = (rec.get("metadata") or {}).get("memos_id")
    return given if isinstance(given, str) and given else ulid_uuid(rec["id"])


def memos_item(rec: dict, ids: dict[str, str]) -> tuple[dict, int]:
    """One naive_text item for a cube record, and how many of its links name cubes outside the export."""
    own = dict(rec.get("metadata") or {})
    original = {k: own.pop(k) for k in IMPORTED_AS_HEADER if k in own}
    links, dropped = [], 0
    for link in own.pop("memos_links", None) or []:
        if isinstance(link, dict) and link.get("to") in ids:
            links.append({"type": link.get("type"), "to": link["to"], "memos_id": ids[link["to"]]})
        else:
            dropped += 1
    source = rec.get("source") or ""
    memos_source = source.removeprefix("memos:")
    written = {
        "tags": original.get("memos_tags", rec.get("tags") or []),
        "status": original.get("memos_status", STATUS[rec["state"]]),
        "visibility": "private" if rec.get("visibility") == "owner" else original.get("memos_visibility"),
        "created_at": _time(rec.get("created_at")), "updated_at": _time(rec.get("updated_at")),
        "source": memos_source if memos_source in SOURCES else None,
        "memosd_id": rec["id"], "memosd_source": source, "memosd_namespace": rec.get("namespace"),
        "memosd_expires_at": rec.get("expires_at") if rec.get("state") == "expired" or rec.get("expires_at")
        else None,
        "memosd_priority": rec.get("priority") or None,
        "memos_links": links or None,
    }
    # Which metadata keys are the cube's: MemOS adds its own defaults ("version": 1, ...) when it loads and
    # dumps the item, and the import keeps only these. What MemOS would refuse (its loader fails the whole
    # cube) or rewrite, or what a header field overwrites, also goes under memosd_metadata, as it was.
    meta: dict = {"memosd_keys": sorted(own)}
    kept_aside = {}
    for key, value in own.items():
        form = REFUSED if key in written or key in ("memosd_keys", "memosd_metadata") else memos_form(key, value)
        if form is not REFUSED:
            meta[key] = form
        if form is REFUSED or not same_json(form, value):
            kept_aside[key] = value
    if kept_aside:
        meta["memosd_metadata"] = kept_aside
    meta.update({k: v for k, v in written.items() if v is not None})
    return {"id": ids[rec["id"]], "memory": rec.get("text") or "", "metadata": meta}, dropped


def _time(text) -> str | None:
    """RFC 3339 as MemOS writes it (ISO 8601 with an offset)."""
    if not isinstance(text, str):
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).isoformat(timespec="microseconds")


def _write_json(path: Path, doc) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
