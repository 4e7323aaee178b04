"""What MemOS (2.0.33) makes of a textual memory's metadata when it loads it, so an export writes only what it keeps.

MemOS validates an item's metadata with pydantic models (memos.memories.textual.item:
TextualMemoryMetadata and TreeNodeTextualMemoryMetadata, extra fields allowed): a value of the wrong type
under one of their field names fails the whole cube's load, and some values it accepts it stores
rewritten (sources become SourceMessage objects, numbers floats). memos_form says, for one field, what
MemOS would hold; the export writes that, and keeps the cube's own value aside when it differs.
"""

from __future__ import annotations

import json

REFUSED = object()  # MemOS's loader would raise on this value: the export leaves it out
_STR = {"user_id", "session_id", "working_binding", "type", "key", "background", "created_at", "updated_at"}
_FLOAT = {"confidence", "relativity"}
_STR_LISTS = {"evolve_to": False, "usage": False, "file_ids": True, "tags": True}  # name: may be None
_DICTS = {"info", "internal_info"}
_LITERALS = {
    "status": {"activated", "resolving", "archived", "deleted"},
    "source": {"conversation", "retrieved", "web", "file", "system"},
    "visibility": {"private", "public", "session"},
    "memory_type": {"WorkingMemory", "LongTermMemory", "UserMemory", "OuterMemory", "ToolSchemaMemory",
                    "ToolTrajectoryMemory", "RawFileMemory", "SkillMemory", "PreferenceMemory", "Context"},
}
# MemOS takes "id" and "memory" out of the metadata it reads, and reads a nested "metadata" dict instead of
# the item's: under these names nothing of the cube's reaches MemOS intact.
_TAKEN = {"id", "memory", "metadata"}
_ROLES = {"user", "assistant", "system", "tool"}
_SOURCE_STR = ("type", "chat_time", "message_id", "content", "doc_path")


def memos_form(name: str, value):
    """The value MemOS holds after loading `value` under metadata `name`, or REFUSED."""
    if name in _TAKEN:
        return REFUSED
    if name in _STR:
        return value if value is None or isinstance(value, str) else REFUSED
    if name in _FLOAT:
        return value if value is None else float(value) if _number(value) else REFUSED
    if name == "version":
        return int(value) if _number(value) and float(value).is_integer() else REFUSED
    if name == "is_fast":
        return value if value is None or isinstance(value, bool) else REFUSED
    if name in _STR_LISTS:
        if value is None:
            return value if _STR_LISTS[name] else REFUSED
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else REFUSED
    if name == "embedding":
        return [float(v) for v in value] if isinstance(value, list) and all(map(_number, value)) else REFUSED
    if name in _DICTS:
        return value if value is None or isinstance(value, dict) else REFUSED
    if name in _LITERALS:
        return value if value is None or value in _LITERALS[name] else REFUSED
    if name == "history":
        return value if value == [] else REFUSED
    if name == "sources":
        return _sources(value)
    return value  # an extra field: MemOS keeps it as it is


def same_json(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sources(value):
    """TreeNodeTextualMemoryMetadata.coerce_sources: a list whose strings are JSON objects or a doc's content."""
    if value is None:
        return None
    if not isinstance(value, list):
        return REFUSED
    out = []
    for item in value:
        if isinstance(item, str):
            try:
                parsed = json.loads(item)
            except ValueError:
                parsed = None
            item = parsed if isinstance(parsed, dict) else {"type": "doc", "content": item}
        if not isinstance(item, dict):
            return REFUSED
        source = {"type": None, "role": None, "chat_time": None, "message_id": None, "content": None,
                  "doc_path": None, "file_info": None, "image_info": None, **item}
        if source["type"] is None:
            source["type"] = "chat" if source["role"] in _ROLES else "doc"
        if (source["role"] is not None and source["role"] not in _ROLES
                or any(not isinstance(source[k], str | None) for k in _SOURCE_STR)
                or any(not isinstance(source[k], dict | None) for k in ("file_info", "image_info"))):
            return REFUSED
        out.append(source)
    return out
