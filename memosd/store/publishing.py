"""MemStore's publish path: one publish checked, or many over a stream committed together (no gRPC here)."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memos_mip.bounds import quote
from memosd.errors import InvalidArgument, MemosError
from memosd.governance import Principal
from memosd.ids import is_id
from memosd.limits import check_namespace
from memosd.storage import Conn
from memosd.store import commit

if TYPE_CHECKING:
    from memosd.store.memstore import MemStore

_PUBLISH_ID = re.compile(r"[\x21-\x7e]{1,128}")
# The most publishes of one stream committed in one job: enough to take a burst in a few commits, few
# enough that one stream's job does not hold up other writers for long.
MAX_STREAM_BATCH = 512


@dataclass(frozen=True)
class PublishJob:
    """One publish, checked against the caller's grants on the topic; the cube is looked at when committing."""

    topic: str
    cube_id: str
    publish_id: str
    retract: bool
    may_publish: bool
    sees: bool  # whether the caller may learn the event's seq
    now: float


def prepare(store: MemStore, p: Principal, topic: str, cube_id: str, publish_id: str, retract: bool) -> PublishJob:
    """Validate a publish and check the topic's grants (before anything is looked up)."""
    check_namespace(topic, what="topic")
    if not is_id(cube_id):
        raise InvalidArgument(f"{quote(cube_id)} is not a cube id")
    if publish_id and not _PUBLISH_ID.fullmatch(publish_id):
        raise InvalidArgument("publish_id must be 1-128 printable ASCII characters without spaces")
    may_publish = store.gov.can(p, "publish", topic)
    if not retract:
        store.gov.check(p, "publish", topic)
    sees = may_publish or store.gov.can(p, "subscribe", topic)
    return PublishJob(topic, cube_id, publish_id, retract, may_publish, sees, store.clock())


async def publish_many(store: MemStore, p: Principal, items: list[tuple[str, str, str]]
                       ) -> tuple[list[tuple[int, bool]], MemosError | None]:
    """Publish (topic, cube_id, publish_id) items in order, in one transaction: the (seq, duplicate) of
    each committed, and the error of the first refused (none after it is published)."""
    store.gov.still_valid(p)
    jobs: list[PublishJob] = []
    error: MemosError | None = None
    for topic, cube_id, publish_id in items:
        try:
            jobs.append(prepare(store, p, topic, cube_id, publish_id, False))
        except MemosError as exc:
            error = exc
            break

    def write(conn: Conn):
        outcomes = commit.commit(store, conn, [(p, job) for job in jobs], stop_at_refusal=True)
        if outcomes and isinstance(outcomes[-1], MemosError):
            return outcomes[:-1], outcomes[-1]
        return outcomes, None

    done, refused = await store.db.write(write) if jobs else ([], None)
    store.published([(record, share) for _, _, record, share in done])
    return [(seq if job.sees else 0, duplicate) for job, (seq, duplicate, _, _) in zip(jobs, done)], refused or error


async def publish_stream(store: MemStore, p: Principal, batches: AsyncIterable[list[tuple[str, str, str]]]
                         ) -> AsyncIterator[list[tuple[int, bool]]]:
    """Acknowledgements, in order, for the publishes arriving on `batches`. Whatever arrives while a
    commit is under way goes into the next one, so a busy stream commits many publishes at a time and
    an idle one each publish at once; the first refusal is raised after the acknowledgements before it."""
    pending: deque = deque()
    arrived = asyncio.Event()
    ended: list[BaseException | None] = []  # set once the requests are over: None, or how they failed

    async def read() -> None:
        try:
            async for batch in batches:
                pending.extend(batch)
                arrived.set()
            ended.append(None)
        except Exception as exc:  # noqa: BLE001 - raised again by the stream below
            ended.append(exc)
        arrived.set()

    reader = asyncio.ensure_future(read())
    try:
        while True:
            await arrived.wait()
            if not pending:
                if ended:
                    if ended[0] is not None:
                        raise ended[0]
                    return
                arrived.clear()
                continue
            items = [pending.popleft() for _ in range(min(len(pending), MAX_STREAM_BATCH))]
            if not pending and not ended:
                arrived.clear()
            acks, error = await publish_many(store, p, items)
            if acks:
                yield acks
            if error is not None:
                raise error
    finally:
        reader.cancel()
