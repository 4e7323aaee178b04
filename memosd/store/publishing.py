"""MemStore's publish path: one publish, or many over a stream committed together (no gRPC here)."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memos_mip.bounds import quote
from memosd.errors import Hidden, InvalidArgument, MemosError, NotFound, PermissionDenied
from memosd.governance import Principal
from memosd.ids import is_id
from memosd.limits import check_namespace
from memosd.storage import Conn
from memosd.store import shares

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


def commit_one(store: MemStore, conn: Conn, p: Principal, job: PublishJob):
    """Write one publish's event, share and audit entry in the caller's transaction: (seq, duplicate,
    EventRecord or None for a duplicate, Share or None). Every refusal is raised before anything is
    written, so a refused publish in a batch leaves the others' writes whole."""
    from memosd.store.memstore import EventKind, EventRecord

    sql, gov, topic, cube_id = store.sql, store.gov, job.topic, job.cube_id
    found = job.publish_id and sql.events.find_published(conn, topic, job.publish_id)
    if found and (job.may_publish or found[1] == p.name):
        return found[0], True, None, None
    cube = sql.cubes.current_cube(conn, cube_id, job.now)
    if cube is None:
        raise NotFound(f"no cube with id {cube_id} to publish")
    on_topic = sql.shares.publishers(conn, topic, cube_id)
    share = None
    if job.retract:
        if not (gov.owns_cube(p, cube) or p.name in on_topic):  # a publisher may end its own share
            # Asked first: to a non-reader, any other answer would tell the cube from an unknown id.
            if not gov.may_read_cube(p, cube):
                raise Hidden(f"no cube with id {cube_id} to publish")
            gov.check(p, "publish", topic)
            if not gov.grants_cube(p, "share", cube):
                raise PermissionDenied(f"agent {p.name} may not retract cube {cube_id}: it needs share on it")
        if not on_topic:
            raise NotFound(f"cube {cube_id} is not published on {topic}")
        sql.shares.drop(conn, topic, cube_id)
        kind = EventKind.RETRACTED
    else:
        share = gov.share_authority(p, cube, topic)
        kind = EventKind.UPDATED if on_topic else EventKind.PUBLISHED
        sql.shares.record(conn, cube_id, share, shares.authority(share))
    # Another publisher's publish_id on a topic p cannot publish to is not p's to reuse.
    seq = sql.events.append_event(conn, topic, int(kind), cube_id, cube.version, p.name, job.now,
                                  None if found else job.publish_id or None, max_age=store.default_max_age,
                                  max_events=store.default_max_events)
    gov.audit_write(conn, p.name, "store.retract" if job.retract else "store.publish", topic, seq=seq,
                    cube=cube_id, version=cube.version)
    return seq, False, EventRecord(topic, seq, kind, cube_id, cube.version, p.name, job.now,
                                   None if job.retract else cube), share


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
        done = []
        for job in jobs:
            try:
                done.append(commit_one(store, conn, p, job))
            except MemosError as exc:
                return done, exc
        return done, None

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
