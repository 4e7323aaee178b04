"""The content-addressed blob store: uploads staged in DATA_DIR/blobs/tmp/, their bytes kept in an object store.

The bytes live in a memosd.storage.objects store under their sha256 (files in the data directory, or an
S3-compatible bucket); uploads are staged on the local disk (emptied at start-up), so that a broken client
connection resumes from what the daemon holds. A blob becomes visible only after all its bytes are in, their
sha256 matches the declared one, the staged file is fsynced, the store holds it whole and its row is
committed. Rows (table `blobs`) count the cubes that reference each blob; a blob nothing references is
removed after a grace period. Each row also keeps the blob's XXH3-128, taken with the sha256, which same-host
clients check a mapped payload against. Deduplication never lets a digest stand in for the bytes: an agent
that neither holds a blob nor may read a cube naming it must send them all (see blob_access), and is told
nothing about the stored copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from collections.abc import AsyncIterator, Sequence

import xxhash

from memosd.errors import Conflict, DataLoss, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from memosd.errors import Unavailable
from memosd.storage import Conn, Lane
from memosd.storage.objects import ObjectStore
from memosd.storage.objects.files import FileObjectStore
from memosd.vault import blob_access
from memosd.vault.blob_access import Guard
from memosd.vault.uploads import CHUNK_BYTES, IO_BLOCK, Upload, UploadSession

log = logging.getLogger("memosd.blobs")
# Free space an upload must leave on the disk, so that SQLite and the log can still write.
DISK_RESERVE = 256 << 20
# How long a second stream for the same upload waits for the first to let go.
UPLOAD_LOCK_WAIT = 30.0


def check_sha256(text: str) -> str:
    if not (len(text) == 64 and all(c in "0123456789abcdef" for c in text)):
        raise InvalidArgument("sha256 must be 64 lowercase hex characters")
    return text


class BlobStore:
    """Stages, publishes, serves and garbage-collects blobs: their bytes in an object store (files under
    DATA_DIR/blobs by default), their rows in the shared database."""

    def __init__(self, data_dir: Path, db, *, max_blob_bytes: int, objects: ObjectStore | None = None,
                 max_pending_uploads: int = 8, upload_idle_seconds: float = 3600.0,
                 unreferenced_grace: float = 3600.0, sweep_interval: float = 600.0):
        self.root = Path(data_dir) / "blobs"
        self.objects = objects if objects is not None else FileObjectStore(self.root)
        self.tmp = self.objects.staging
        self.db = db
        self.sql = db.sql
        self.max_blob_bytes = max_blob_bytes
        self.max_pending_uploads = max_pending_uploads
        self.upload_idle_seconds = upload_idle_seconds
        self.unreferenced_grace = unreferenced_grace
        self.sweep_interval = sweep_interval
        self._uploads: dict[tuple[str, str], Upload] = {}
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="memosd-blob-io")
        # Uploads write a block here while their _io thread hashes it (a pool of its own: no thread waits on
        # work queued behind it).
        self._writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="memosd-blob-write")
        # Publishing a blob and collecting unreferenced ones never interleave: within this daemon by this lock,
        # among the daemons sharing a vault by the vault's (see _exclusive).
        self._publish_lock = asyncio.Lock()
        self._sweeper: asyncio.Task | None = None

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Drop what unfinished uploads left behind, remove objects no row acknowledges, start the sweeper."""
        for path in (self.root, self.tmp):
            path.mkdir(mode=0o700, exist_ok=True)
        await self.objects.start()
        await asyncio.to_thread(self._clear_tmp)
        known = await self.db.read(self.sql.blobs.known)
        orphans, missing = await self._reconcile(known)
        if orphans:
            log.info("removed %d blob objects that were never acknowledged", orphans)
        if missing:
            log.error("%d blobs recorded in the database are missing from the object store (restore them from"
                      " a backup)", len(missing))
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="memosd-blob-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for up in list(self._uploads.values()):
            if up.inflight is not None:
                await asyncio.gather(asyncio.wrap_future(up.inflight), return_exceptions=True)
            self._discard(up)
        self._io.shutdown(wait=True)
        self._writers.shutdown(wait=True)
        await self.objects.close()

    def _clear_tmp(self) -> None:
        for entry in self.tmp.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    async def _reconcile(self, known: set[str]) -> tuple[int, list[str]]:
        # An object without a row was stored, but the daemon stopped before its row was committed; in a store
        # other daemons share it may be one's upload in flight, so only an object older than that goes.
        cutoff = time.time() - self.objects.orphan_grace
        orphans, present = 0, set()
        async with self._exclusive():
            for sha, modified in await self.objects.keys():
                if sha in known:
                    present.add(sha)
                elif self.objects.orphan_grace <= 0 or modified <= cutoff:
                    await self.objects.delete(sha)
                    orphans += 1
        return orphans, sorted(known - present)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("blob sweep failed; will retry")

    async def sweep(self, *, grace: float | None = None) -> int:
        """Drop idle uploads and blobs no cube has referenced for `grace` seconds; returns blobs removed."""
        now = time.time()
        for up in list(self._uploads.values()):
            if not up.lock.locked() and now - up.touched > self.upload_idle_seconds:
                self._discard(up)
        cutoff = now - (self.unreferenced_grace if grace is None else grace)
        async with self._exclusive():
            doomed = await self.db.write(lambda conn: self.sql.blobs.collect(conn, cutoff))
            # Rows first, then objects, under the lock a publish takes too, at every daemon of the vault: a blob
            # published meanwhile either kept its row (and is not doomed) or, once this lets go, finds its object
            # gone and stores it again (see _commit).
            for sha in doomed:
                await self.objects.delete(sha)
        if doomed:
            log.info("removed %d unreferenced blobs", len(doomed))
        return len(doomed)

    # -- uploads -------------------------------------------------------------------------------

    async def referable_size(self, agent: str, sha256: str, guard: Guard | None = None) -> int | None:
        """The blob's size if `agent` may make a cube reference it (it holds the blob, or guard lets it read a
        live cube naming it); None, as for a blob not stored, otherwise."""
        return await self.db.read(lambda c: blob_access.referable_size(self.sql, c, sha256, agent, guard),
                                  lane=Lane.POINT)

    async def status(self, owner: str, sha256: str, size: int, guard: Guard | None = None) -> tuple[bool, int]:
        """(stored and referable by owner: nothing to send, bytes of owner's unfinished upload held)."""
        check_sha256(sha256)
        if await self.referable_size(owner, sha256, guard) is not None:
            return True, 0
        up = self._uploads.get((owner, sha256))
        # Not waiting for a stream still writing: a resume from a stale offset is refused and asked again.
        return False, (up.committed if up is not None and up.size == size else 0)

    @contextlib.asynccontextmanager
    async def upload(self, owner: str, sha256: str, size: int, offset: int,
                     guard: Guard | None = None) -> AsyncIterator[UploadSession | None]:
        """A session to write the blob from `offset` (0, or the committed size of an unfinished upload);
        None when owner may reference the stored blob already. Anyone else sends every byte, even of a
        blob stored already: its sha256 is checked and owner recorded as a holder."""
        check_sha256(sha256)
        if size <= 0:
            raise InvalidArgument("size must be at least 1 byte")
        if size > self.max_blob_bytes:
            raise ResourceExhausted(f"the blob is {size} bytes; this daemon takes at most {self.max_blob_bytes}"
                                    " (max_blob_bytes in its config)")
        if await self._referable(owner, sha256, size, guard):
            yield None
            return
        key = (owner, sha256)
        up = self._uploads.get(key)
        if up is None or up.size != size:
            if up is not None:
                self._discard(up)
            up = self._new_upload(owner, sha256, size)
        async with self._locked(up):
            if self._uploads.get(key) is not up:  # swept or discarded while we waited
                raise Conflict("the upload was discarded while waiting; start it again")
            if await self._referable(owner, sha256, size, guard):  # another stream of owner's finished first
                yield None
                return
            if offset not in (0, up.committed):
                raise FailedPrecondition(f"the daemon holds {up.committed} bytes of this upload; resume with"
                                         f" offset {up.committed}, or 0 to start over")
            if offset == 0 and up.committed:
                await asyncio.to_thread(os.ftruncate, up.fd, 0)
                up.hasher, up.checksum, up.committed = hashlib.sha256(), xxhash.xxh3_128(), 0
            up.accepted = up.committed
            self._check_space(size - up.committed)
            up.touched = time.time()
            yield UploadSession(self, up)

    async def _referable(self, owner: str, sha256: str, size: int, guard: Guard | None) -> bool:
        stored = await self.referable_size(owner, sha256, guard)
        if stored is not None and stored != size:  # owner may read it: the size is no secret to it
            raise InvalidArgument(f"blob {sha256} is {stored} bytes, not the {size} declared")
        return stored is not None

    @contextlib.asynccontextmanager
    async def _locked(self, up: Upload):
        try:
            await asyncio.wait_for(up.lock.acquire(), UPLOAD_LOCK_WAIT)
        except TimeoutError:
            raise Conflict("another stream is uploading the same blob for this agent; retry when it ends") from None
        try:
            yield
        finally:
            inflight = up.inflight
            up.inflight = None
            if inflight is not None and not inflight.done():
                # Cancelled mid-write: the upload is free again only once that write has landed.
                loop = asyncio.get_running_loop()
                inflight.add_done_callback(lambda f: loop.call_soon_threadsafe(self._after_write, up, f))
            else:
                self._after_write(up, inflight)

    def _after_write(self, up: Upload, inflight: Future | None) -> None:
        if inflight is not None and not inflight.cancelled() and inflight.exception() is not None:
            self._discard(up)  # a failed write leaves file and hash apart: the upload cannot resume
        up.lock.release()

    def _new_upload(self, owner: str, sha256: str, size: int) -> Upload:
        mine = sum(1 for (o, _) in self._uploads if o == owner)
        if mine >= self.max_pending_uploads:
            raise ResourceExhausted(f"agent {owner} has {mine} unfinished uploads; finish or abandon one first"
                                    f" (they are dropped after {self.upload_idle_seconds:.0f} s idle)")
        self._check_space(size)
        path = self.tmp / f"{owner}.{sha256}.{secrets.token_hex(4)}.part"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        up = Upload(owner, sha256, size, path, fd, time.time())
        self._uploads[(owner, sha256)] = up
        return up

    def _check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free - needed < DISK_RESERVE:
            raise ResourceExhausted(f"the daemon's disk has {free} bytes free; {needed} more would leave less than"
                                    f" {DISK_RESERVE} in reserve")

    def _discard(self, up: Upload) -> None:
        if self._uploads.get((up.owner, up.sha256)) is up:
            del self._uploads[(up.owner, up.sha256)]
        with contextlib.suppress(OSError):
            os.close(up.fd)
        up.path.unlink(missing_ok=True)

    async def _publish(self, up: Upload) -> None:
        keep = False
        try:
            await asyncio.to_thread(os.fsync, up.fd)
            await self._commit(up.path, up.sha256, up.size, up.checksum.hexdigest(), up.owner)
        except Unavailable:
            # The staged bytes are whole and verified: the client's retry (an upload from the last byte)
            # publishes them once the object store is back.
            keep = True
            raise
        finally:  # published, or failed for good after verification: either way this upload is over
            if not keep:
                self._discard(up)

    async def _commit(self, staged: Path, sha256: str, size: int, xxh3_128: str, holder: str) -> None:
        """Store a verified, fsynced staging file and record it and its holder (the stored object and the row
        are what make it visible); a copy stored already wins and the staging file goes."""
        await self.objects.push(staged, sha256, size)  # a remote store's slow part, outside the lock
        async with self._exclusive():
            await self.objects.put(staged, sha256, size)
            now = time.time()

            def job(conn: Conn) -> None:
                self.sql.blobs.record(conn, sha256, size, xxh3_128, now)
                self.sql.holders.record(conn, sha256, holder, now)  # the uploader proved it has the bytes

            await self.db.write(job)

    @contextlib.asynccontextmanager
    async def _exclusive(self):
        """Collecting and publishing blobs, one at a time here and in the whole vault: a sweep at another daemon
        between its rows and its objects never meets an upload here recording a blob it is about to delete."""
        async with self._publish_lock, self.db.exclusive("blobs"):
            yield

    async def put_parts(self, parts: Sequence, holder: str) -> tuple[str, int]:
        """Store bytes the daemon has in hand (a KV cache it built, an imported payload) for `holder`, who
        may then reference them: (sha256, size)."""
        views = [memoryview(p).cast("B") for p in parts]
        size = sum(len(v) for v in views)
        if size > self.max_blob_bytes:
            raise ResourceExhausted(f"the blob would be {size} bytes; this daemon takes at most {self.max_blob_bytes}")
        self._check_space(size)
        staged = self.tmp / f"daemon.{secrets.token_hex(8)}.part"
        try:
            sha256, checksum = await asyncio.get_running_loop().run_in_executor(self._io, _write_all, staged, views)
            await self._commit(staged, sha256, size, checksum, holder)
        finally:
            staged.unlink(missing_ok=True)
        return sha256, size

    # -- reads ---------------------------------------------------------------------------------

    async def open_local(self, sha256: str, size: int) -> tuple[int, str]:
        """A read-only descriptor of a stored blob for a same-host client, and its XXH3-128 (computed now
        and recorded for a blob stored before checksums were kept)."""
        fd = await self.objects.open_local(sha256, size)
        try:
            row = await self.db.read(lambda c: self.sql.blobs.checksum(c, sha256), lane=Lane.POINT)
            if row is None:
                raise NotFound(f"the payload {sha256} is not stored on this daemon")
            checksum = row[0]
            if checksum is None:
                checksum = await asyncio.get_running_loop().run_in_executor(self._io, _checksum_of, fd, size)
                await self.db.write(lambda c: self.sql.blobs.set_checksum(c, sha256, checksum))
        except BaseException:
            os.close(fd)
            raise
        return fd, checksum

    async def read_header(self, sha256: str, size: int, limit: int) -> bytes:
        """The first bytes of a blob: at most `limit`, fewer if it is shorter."""
        return await self.objects.read_all(sha256, size, limit)

    async def chunks(self, sha256: str, size: int, offset: int, length: int) -> AsyncIterator[tuple[int, memoryview]]:
        """(offset, data) pieces of at most CHUNK_BYTES of a stored blob, read IO_BLOCK at a time, one
        block ahead."""
        if offset < 0 or offset > size:
            raise InvalidArgument(f"offset {offset} is outside the blob's {size} bytes")
        if length < 0:
            raise InvalidArgument("length must be positive, or 0 for the rest of the blob")
        end = min(size, offset + length) if length else size
        reader = await self.objects.open(sha256, size)
        read = lambda at: asyncio.ensure_future(reader.read(at, min(IO_BLOCK, end - at)))  # noqa: E731
        ahead = read(offset) if offset < end else None
        try:
            while ahead is not None:
                block = await ahead
                at, offset = offset, offset + len(block)
                if not block:
                    ahead = None
                    raise DataLoss(f"blob {sha256} is shorter in the object store than recorded ({at} of {size}"
                                   " bytes)")
                ahead = read(offset) if offset < end else None
                view = memoryview(block)
                for start in range(0, len(block), CHUNK_BYTES):
                    yield at + start, view[start:start + CHUNK_BYTES]
        finally:
            if ahead is not None:  # not cancelled: a read in flight on a thread must land before the close
                await asyncio.gather(ahead, return_exceptions=True)
            await reader.close()


def _write_all(path: Path, views) -> tuple[str, str]:
    h, checksum = hashlib.sha256(), xxhash.xxh3_128()
    with open(path, "xb") as f:
        for view in views:
            for start in range(0, len(view), 16 << 20):
                piece = view[start:start + (16 << 20)]
                f.write(piece)
                h.update(piece)
                checksum.update(piece)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest(), checksum.hexdigest()


def _checksum_of(fd: int, size: int) -> str:
    if size == 0:
        return xxhash.xxh3_128().hexdigest()
    import mmap

    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
        return xxhash.xxh3_128(mapped).hexdigest()
