"""Client objects as MCP results: concise text for the model and structured JSON beside it."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from mcp_types import CallToolResult, TextContent

from memos_client.errors import InvalidArgument, MemosError
from memos_client.models import Cube, Event, Hit, Topic

# A model reads the text block; a whole 64 KiB cube in every search hit would crowd its context, so hits and
# listings show the start of each text (memory_get and the structured content carry it whole).
SNIPPET_CHARS = 500


def result(text: str, structured: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=text)], structured_content=structured)


def error(message: str) -> CallToolResult:
    """A tool error: the call failed and the model can read why and what to do instead."""
    return CallToolResult(content=[TextContent(text=message)], structured_content={"error": message}, is_error=True)


def memos_error(exc: MemosError) -> CallToolResult:
    what = {"NOT_FOUND": "not found", "PERMISSION_DENIED": "permission denied", "INVALID_ARGUMENT": "invalid argument",
            "UNAVAILABLE": "daemon unavailable", "UNAUTHENTICATED": "not authenticated",
            "RESOURCE_EXHAUSTED": "limit reached", "ABORTED": "conflict", "ALREADY_EXISTS": "already exists",
            "FAILED_PRECONDITION": "failed precondition", "DEADLINE_EXCEEDED": "timed out"}.get(exc.code, "error")
    return error(f"{what}: {' '.join(exc.message.split())}")


def _when(value) -> str | None:
    return value.isoformat() if value else None


def cube(c: Cube) -> dict[str, Any]:
    out = {"id": c.id, "namespace": c.namespace, "kind": c.kind.name.lower(), "text": c.text, "tags": c.tags,
           "metadata": c.metadata, "owner": c.owner, "state": c.state.name.lower(), "version": c.version,
           "created_at": _when(c.created_at), "updated_at": _when(c.updated_at)}
    if c.expires_at:
        out["expires_at"] = _when(c.expires_at)
    return out


def snippet(text: str | None) -> str:
    if text is None:
        return "(no text: not a plaintext cube)"
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS] + f"... ({len(text)} chars; memory_get for all)"


def cube_line(c: Cube) -> str:
    tags = f" tags: {', '.join(c.tags)};" if c.tags else ""
    return f"[{c.id}] {c.namespace} v{c.version};{tags} {_when(c.updated_at) or ''}\n  {snippet(c.text)}"


def cube_text(c: Cube) -> str:
    head = f"id {c.id} in {c.namespace}, version {c.version}, {c.kind.name.lower()}, owner {c.owner}"
    if c.tags:
        head += f", tags: {', '.join(c.tags)}"
    if c.metadata:
        head += f", metadata: {json.dumps(c.metadata, ensure_ascii=False)}"
    return f"{head}\n{c.text if c.text is not None else '(no text: not a plaintext cube)'}"


def hit(h: Hit) -> dict[str, Any]:
    c = h.cube
    return {"id": c.id, "score": h.score, "text": c.text, "namespace": c.namespace, "tags": c.tags,
            "when": _when(c.updated_at or c.created_at)}


def hits_text(hits: list[Hit], query: str) -> str:
    if not hits:
        return f"no memories match {query[:80]!r} among those you may read"
    lines = [f"{len(hits)} {'memory' if len(hits) == 1 else 'memories'}, best first:"]
    for i, h in enumerate(hits, 1):
        lines.append(f"{i}. (score {h.score:.3g}) {cube_line(h.cube)}")
    return "\n".join(lines)


def event(e: Event) -> dict[str, Any]:
    return {"topic": e.topic, "seq": e.seq, "kind": e.kind.name.lower(), "cube_id": e.cube_id,
            "cube_version": e.cube_version, "publisher": e.publisher, "time": _when(e.time),
            "text": e.cube.text if e.cube else None}


def event_line(e: Event) -> str:
    text = f"\n  {snippet(e.cube.text)}" if e.cube else ""
    return f"{e.topic}#{e.seq} {e.kind.name.lower()} by {e.publisher}: [{e.cube_id}] v{e.cube_version}{text}"


def topic(t: Topic) -> dict[str, Any]:
    return {"name": t.name, "owner": t.owner, "last_seq": t.last_seq, "first_seq": t.first_seq}


# ---- memory_feed's cursor: where a reader has got to on each topic -----------------------------------------------


def encode_cursor(positions: dict[str, int]) -> str:
    raw = json.dumps(positions, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, int]:
    if not cursor:
        return {}
    try:
        positions = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        positions = None
    if not isinstance(positions, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in positions.items()):
        raise InvalidArgument("cursor is not one memory_feed returned; pass the last next_cursor, or omit it to"
                              " read from the start")
    return positions
