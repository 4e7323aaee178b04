"""Request builders shared by the sync and async clients (pure: no I/O)."""

from __future__ import annotations

import collections
import threading
from datetime import datetime, UTC
from typing import Any
from collections.abc import Iterable, Iterator

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from memos_client.errors import InvalidArgument
from memos_client.models import Kind, State
from memos_mip.v1 import cube_pb2, store_pb2, vault_pb2

DEFAULT_NAMESPACE = "agents/local/notes"  # only when the client has no key
MODES = {"auto": vault_pb2.SEARCH_MODE_UNSPECIFIED, "bm25": vault_pb2.SEARCH_MODE_BM25,
         "dense": vault_pb2.SEARCH_MODE_DENSE, "hybrid": vault_pb2.SEARCH_MODE_HYBRID}
_UNSET: Any = object()


def timestamp(value: datetime | float | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    if isinstance(value, datetime):
        ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    else:
        ts.FromNanoseconds(int(value * 1e9))
    return ts


def draft(text: str, namespace: str = DEFAULT_NAMESPACE, *, tags: Iterable[str] = (), metadata: dict | None = None,
          source: str = "", priority: int = 0, ttl: float | None = None,
          expires_at: datetime | float | None = None, context: str = "") -> cube_pb2.CubeDraft:
    msg = cube_pb2.CubeDraft(namespace=namespace, tags=list(tags), source=source, priority=priority,
                             ttl_seconds=int(ttl or 0), expires_at=timestamp(expires_at))
    for field, value in (("text", text), ("context", context)):
        try:
            setattr(msg, field, value)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"{field} must be a str of valid UTF-8: {exc}") from None
    if metadata:
        try:
            msg.metadata.update(metadata)
        except (DecodeError, RecursionError) as exc:  # protobuf copies nested Structs by parsing them
            raise InvalidArgument(f"metadata nests too deeply for a request ({exc.__class__.__name__}); keep it"
                                  " under 30 levels") from None
    return msg


def draft_from_dict(item: dict) -> cube_pb2.CubeDraft:
    """A draft from a JSON Lines record {"text", "namespace", "tags", "metadata", ...}."""
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise InvalidArgument('each record needs a "text" string')
    known = {"text", "namespace", "tags", "metadata", "source", "priority", "ttl", "expires_at", "context"}
    extra = set(item) - known
    if extra:
        raise InvalidArgument(f"unknown fields {sorted(extra)}; records may have {sorted(known)}")
    return draft(**{k: v for k, v in item.items() if v is not None})


class BatchSource:
    """The request stream of put_many; keeps an error raised while reading the caller's drafts, so the
    client can raise it instead of gRPC's generic "Exception iterating requests!"."""

    def __init__(self, drafts: Iterable, size: int):
        self._batches = batches(drafts, size)
        self.error: BaseException | None = None

    @classmethod
    def of(cls, requests: Iterator) -> BatchSource:
        """The same for another call's requests, made (lazily) by `requests`."""
        source = cls.__new__(cls)
        source._batches, source.error = requests, None
        return source

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._batches)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return self.__next__()
        except StopIteration:
            raise StopAsyncIteration from None


class Replayable:
    """A request stream that can be sent again from its first item: what it handed out is kept until
    commit() (the daemon answered, so it accepted the call), so that a call refused before the daemon
    read anything (a stale token) can be retried whole although the caller's iterator is one-shot."""

    def __init__(self, items: Iterable):
        self._items = iter(items)
        self._kept: collections.deque = collections.deque()
        self._base = 0  # the index of _kept[0]
        self._attempt = 0
        self._lock = threading.Lock()
        self.committed = False

    def attempt(self) -> _Replay:
        """A new pass from the first item; the passes before it end (their calls are over)."""
        with self._lock:
            self._attempt += 1
            return _Replay(self, self._attempt)

    def commit(self) -> None:
        self.committed = True  # no lock: the sending thread may hold it while the caller's iterator blocks

    def _item(self, attempt: int, index: int):
        with self._lock:
            if attempt != self._attempt:
                raise StopIteration  # a superseded pass: gRPC's sender of a finished call
            if index < self._base + len(self._kept):
                item = self._kept[index - self._base]
            else:
                item = next(self._items)
                self._kept.append(item)
            while self.committed and self._base <= index:  # nothing will be sent again
                self._kept.popleft()
                self._base += 1
            return item


class _Replay:
    def __init__(self, source: Replayable, attempt: int):
        self._source, self._attempt, self._index = source, attempt, 0

    def __iter__(self):
        return self

    def __next__(self):
        item = self._source._item(self._attempt, self._index)
        self._index += 1
        return item

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return self.__next__()
        except StopIteration:
            raise StopAsyncIteration from None


def batches(drafts: Iterable, size: int) -> Iterator[vault_pb2.PutBatchRequest]:
    batch = []
    for d in drafts:
        batch.append(d if isinstance(d, cube_pb2.CubeDraft) else draft_from_dict(d))
        if len(batch) >= size:
            yield vault_pb2.PutBatchRequest(cubes=batch)
            batch = []
    if batch:
        yield vault_pb2.PutBatchRequest(cubes=batch)


# Publishes per PublishStream message when the caller hands over a list (all of them are there already).
PUBLISH_CHUNK = 128


def publishes(items: Iterable) -> Iterator[store_pb2.PublishStreamRequest]:
    """PublishStream's requests from (topic, cube_id) or (topic, cube_id, publish_id) tuples: a list's in
    chunks, another iterable's one each as it yields them (waiting for more would delay those at hand)."""
    chunk = PUBLISH_CHUNK if isinstance(items, (list, tuple)) else 1
    batch = []
    for item in items:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise InvalidArgument("each publish is a (topic, cube_id) or (topic, cube_id, publish_id) tuple")
        batch.append(store_pb2.PublishRequest(topic=item[0], cube_id=item[1], publish_id=item[2] if len(item) == 3 else ""))
        if len(batch) >= chunk:
            yield store_pb2.PublishStreamRequest(publishes=batch)
            batch = []
    if batch:
        yield store_pb2.PublishStreamRequest(publishes=batch)


def cube_filter(namespace: str | None = None, *, kinds: Iterable[Kind] = (), tags: Iterable[str] = (),
                created_after=None, created_before=None, states: Iterable[State] = ()) -> vault_pb2.CubeFilter:
    return vault_pb2.CubeFilter(
        namespace_prefix=namespace or "", kinds=[int(k) for k in kinds], tags=list(tags),
        created_after=timestamp(created_after), created_before=timestamp(created_before),
        states=[int(s) for s in states],
    )


def search(query: str, *, limit: int, mode: str, fts: bool, **filters) -> vault_pb2.SearchRequest:
    if mode not in MODES:
        raise InvalidArgument(f"mode must be one of {', '.join(MODES)}")
    return vault_pb2.SearchRequest(
        query=query, limit=limit, mode=MODES[mode], filter=cube_filter(**filters),
        syntax=vault_pb2.QUERY_SYNTAX_FTS if fts else vault_pb2.QUERY_SYNTAX_UNSPECIFIED,
    )


def update(cube_id: str, *, text=_UNSET, tags=_UNSET, metadata=_UNSET, source=_UNSET, priority=_UNSET,
           ttl=_UNSET, expires_at=_UNSET, state: State | None = None, expected_version: int = 0) -> vault_pb2.UpdateRequest:
    given = {k: v for k, v in dict(text=text, tags=tags, metadata=metadata, source=source, priority=priority,
                                    ttl=ttl, expires_at=expires_at).items() if v is not _UNSET}
    values = draft(given.get("text", ""), tags=given.get("tags") or (), metadata=given.get("metadata"),
                   source=given.get("source", ""), priority=given.get("priority", 0), ttl=given.get("ttl"),
                   expires_at=given.get("expires_at"))
    values.namespace = ""
    paths = ["ttl_seconds" if k == "ttl" else k for k in given]
    return vault_pb2.UpdateRequest(id=cube_id, cube=values, update_mask=FieldMask(paths=paths),
                                   expected_version=expected_version, state=int(state) if state else 0)
