"""Validation of what clients send: every rule answers InvalidArgument with a fix-it message."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from memos_mip.bounds import quote
from memosd.cube import CubeDraft, CubeFilter, LifecycleState
from memosd.errors import InvalidArgument

_SEGMENT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_TAG = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}")
MAX_NAMESPACE_DEPTH = 8
# The times a cube may carry: from the epoch to the last second a protobuf Timestamp (and a Python
# datetime) can hold, 9999-12-31T23:59:59Z. A time beyond it could be stored but never answered.
MAX_TIME = 253402300799.0
# Metadata nests at most this deep (protobuf's own parser stops at 100; JSON encoders recurse).
MAX_METADATA_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """Size limits a daemon enforces; configurable."""

    max_text_bytes: int = 65536
    max_metadata_bytes: int = 16384
    # A cube's search context (indexed, never returned): a few neighbouring turns or a header, not a document.
    max_context_bytes: int = 16384
    max_tags: int = 32
    max_source_chars: int = 256
    max_batch: int = 1000
    max_query_bytes: int = 4096
    max_page_size: int = 1000
    # Tags one List or Search filter may require: each is a condition of the query, and SQLite's
    # expression depth (1000) and variable count bound how many one statement may hold.
    max_filter_tags: int = 64
    # An import bundle, as received and as unpacked (tar bombs stop here).
    max_bundle_bytes: int = 16 << 30
    # Largest blob (a KV cache or adapter payload) one upload may declare, and unfinished uploads per agent.
    max_blob_bytes: int = 8 << 30
    max_pending_uploads: int = 8
    # With blobs in a remote object store: bytes of the local read-through cache same-host pulls are served
    # from (least recently used blobs go first).
    blob_cache_bytes: int = 8 << 30
    # Imports one agent may have in progress, and the bytes they may stage on disk together (tar and
    # unpacked files); no import may leave the disk with less than min_free_disk_bytes.
    max_imports_per_agent: int = 2
    max_import_staging_bytes: int = 32 << 30
    min_free_disk_bytes: int = 256 << 20


def check_namespace(namespace: str, *, what: str = "namespace") -> str:
    """Return the namespace if it is well formed, else raise InvalidArgument."""
    if not namespace:
        raise InvalidArgument(f"{what} is required, e.g. 'agents/alice/notes'")
    segments = namespace.split("/")
    if len(segments) > MAX_NAMESPACE_DEPTH:
        raise InvalidArgument(f"{what} {quote(namespace)} has more than {MAX_NAMESPACE_DEPTH} segments")
    for seg in segments:
        if seg in ("", ".", ".."):
            raise InvalidArgument(
                f"{what} {quote(namespace)} has an empty, '.' or '..' segment; use names like 'agents/alice/notes'"
            )
        if not _SEGMENT.fullmatch(seg):
            raise InvalidArgument(
                f"{what} {quote(namespace)}: segment {quote(seg)} must be 1-64 lowercase ASCII letters, digits,"
                " '_', '.' or '-', starting with a letter or digit"
            )
    return namespace


def check_namespace_prefix(prefix: str) -> str:
    """A filter prefix is a namespace, or empty for every namespace; a trailing '/' is tolerated."""
    prefix = prefix.rstrip("/")
    return check_namespace(prefix, what="namespace prefix") if prefix else ""


def check_tags(tags, limits: Limits) -> tuple[str, ...]:
    tags = tuple(tags)
    if len(tags) > limits.max_tags:
        raise InvalidArgument(f"{len(tags)} tags given; at most {limits.max_tags} are allowed")
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f"tag {quote(tag)} must be 1-64 printable characters without spaces")
    return tuple(dict.fromkeys(tags))


def check_no_nul(value: str, what: str) -> str:
    """Refuse a NUL character: PostgreSQL's text and jsonb cannot hold one, so neither engine stores it."""
    at = value.find("\x00")
    if at >= 0:
        raise InvalidArgument(f"{what} holds a NUL character (\\x00) at character {at}; remove it")
    return value


def _utf8_size(value: str, what: str) -> int:
    """The UTF-8 size of a text field without NUL; InvalidArgument naming the field otherwise."""
    check_no_nul(value, what)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what} is not valid UTF-8 (at character {exc.start})") from None


def check_text(text: str, limits: Limits) -> str:
    if not text or not text.strip():
        raise InvalidArgument("text is empty; a plaintext cube needs some text")
    size = _utf8_size(text, "text")
    if size > limits.max_text_bytes:
        raise InvalidArgument(
            f"text is {size} bytes; the limit is {limits.max_text_bytes} (max_text_bytes in the config)."
            " Split it into several cubes"
        )
    return text


def check_context(context: str, limits: Limits) -> str:
    """A cube's search context: optional, valid UTF-8 without NUL, within max_context_bytes."""
    if not context:
        return ""
    size = _utf8_size(context, "context")
    if size > limits.max_context_bytes:
        raise InvalidArgument(f"context is {size} bytes; the limit is {limits.max_context_bytes}"
                              " (max_context_bytes in the config). Keep it to the few neighbouring turns or a header")
    return context


def check_source(source, limits: Limits) -> str:
    if not isinstance(source, str) or len(source) > limits.max_source_chars:
        raise InvalidArgument(f"source must be a string of at most {limits.max_source_chars} characters")
    return check_no_nul(source, "source")


def check_metadata(metadata, limits: Limits):
    if not metadata:
        return None
    _check_json(metadata, MAX_METADATA_DEPTH)
    encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if len(encoded.encode()) > limits.max_metadata_bytes:
        raise InvalidArgument(f"metadata is over {limits.max_metadata_bytes} bytes as JSON")
    return metadata


def check_metadata_strings(metadata: dict) -> None:
    """Refuse metadata holding a string (key or value) with a NUL, whatever its size (the check of an import
    that trims oversized or unusual metadata rather than refusing it)."""
    stack = [(metadata, "")]
    while stack:  # a loop, not recursion: the metadata is a client's JSON of any depth
        value, where = stack.pop()
        if isinstance(value, str):
            check_no_nul(value, where or "metadata")
        elif isinstance(value, dict):
            for key, item in value.items():
                named = where or f"metadata[{quote(key, 32)}]"
                if isinstance(key, str):
                    check_no_nul(key, f"a key in {named}" if where else "a metadata key")
                stack.append((item, named))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, where) for item in value)


def _check_json(value, depth: int, where: str = "") -> None:
    """Metadata is sent back as a protobuf Struct (doubles, bounded nesting): refuse what it cannot hold.
    `where` names the top-level key a value is under, for a message that says which field to fix."""
    if depth < 0:
        raise InvalidArgument(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument("metadata keys must be strings")
            named = where or f"metadata[{quote(key, 32)}]"
            check_no_nul(key, f"a key in {named}" if where else "a metadata key")
            _check_json(item, depth - 1, named)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_json(item, depth - 1, where)
    elif isinstance(value, str):
        check_no_nul(value, where or "metadata")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, (int, float)):
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            raise InvalidArgument("metadata numbers must be finite and fit a double (no NaN or infinity)")
    else:
        raise InvalidArgument(f"metadata holds a {type(value).__name__}; only JSON values are allowed")


def check_time(seconds: float, what: str) -> float:
    """A time a client gives (unix seconds): finite, from 1970 to the end of 9999."""
    # Compared before any conversion: float() of a JSON integer of 400 digits overflows.
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_TIME:
        raise InvalidArgument(f"{what} must be a time between 1970-01-01 and 9999-12-31")
    return float(seconds)


def check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not -2**31 <= priority < 2**31:
        raise InvalidArgument("priority must be a 32-bit integer")
    return priority


def check_draft(draft: CubeDraft, limits: Limits, now: float) -> CubeDraft:
    """Validate a new cube and resolve its TTL into an absolute expiry."""
    check_namespace(draft.namespace)
    check_text(draft.text, limits)
    tags = check_tags(draft.tags, limits)
    check_metadata(draft.metadata, limits)
    check_source(draft.source, limits)
    check_priority(draft.priority)
    context = check_context(draft.context, limits)
    expires_at = resolve_expiry(draft, now)
    return CubeDraft(
        namespace=draft.namespace, text=draft.text, tags=tags, metadata=draft.metadata or None,
        source=draft.source, priority=draft.priority, visibility=draft.visibility,
        expires_at=expires_at, ttl_seconds=0, context=context,
    )


def resolve_expiry(draft: CubeDraft, now: float) -> float | None:
    """The absolute expiry of a draft, checked before anything is stored: a time no reply can carry
    would fail every later read of the cube."""
    ttl = draft.ttl_seconds
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl >= 0:  # NaN fails >= too
        raise InvalidArgument("ttl_seconds must be positive, or 0 for no expiry")
    if ttl and draft.expires_at is not None:
        raise InvalidArgument("give expires_at or ttl_seconds, not both")
    if ttl:
        if ttl > MAX_TIME - now:
            raise InvalidArgument(f"ttl_seconds is too large: at most {int(MAX_TIME - now)}"
                                  " (the expiry must be before 9999-12-31)")
        return now + ttl
    if draft.expires_at is not None:
        return check_time(draft.expires_at, "expires_at")
    return None


def check_filter(f: CubeFilter, limits: Limits = Limits()) -> CubeFilter:
    check_namespace_prefix(f.namespace_prefix)
    if len(f.tags) > limits.max_filter_tags:
        raise InvalidArgument(f"{len(f.tags)} tags in the filter; at most {limits.max_filter_tags}"
                              " (max_filter_tags in the config)")
    for value, what in ((f.created_after, "created_after"), (f.created_before, "created_before")):
        if value is not None:
            check_time(value, what)
    if LifecycleState.DELETED in f.states:
        raise InvalidArgument("deleted cubes are tombstones and cannot be listed; use History on an id")
    if f.created_after is not None and f.created_before is not None and f.created_after >= f.created_before:
        raise InvalidArgument("created_after must be before created_before")
    return f


def check_page_size(size: int, limits: Limits, default: int = 100) -> int:
    if size < 0 or size > limits.max_page_size:
        raise InvalidArgument(f"page_size must be between 1 and {limits.max_page_size} (0 for {default})")
    return size or default
