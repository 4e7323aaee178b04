"""Blob garbage collection at one member never deletes an object another member is recording: two blob stores
(as two daemons have) on one PostgreSQL vault and one S3 bucket, the interleaving forced step by step."""

from __future__ import annotations

import asyncio
import hashlib
import time

from memosd.storage.objects.s3 import S3ObjectStore
from memosd.storage.postgres.db import Database
from memosd.vault.blobs import BlobStore
from tests.timing import until

_WAITING = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"


def _member(tmp_path, name: str, url: str, bucket: str, endpoint: str) -> tuple[BlobStore, Database]:
    db = Database(url)
    objects = S3ObjectStore(bucket, "p", tmp_path / name / "blobs", endpoint_url=endpoint)
    (tmp_path / name).mkdir()
    return BlobStore(tmp_path / name, db, objects=objects, max_blob_bytes=1 << 20), db


def test_a_sweep_at_one_member_waits_for_nothing_it_then_breaks_an_upload_at_another(tmp_path, postgres_url,
                                                                                      s3_server):
    bucket = s3_server.new_bucket()
    sweeper, sweeper_db = _member(tmp_path, "a", postgres_url, bucket, s3_server.endpoint)
    uploader, uploader_db = _member(tmp_path, "b", postgres_url, bucket, s3_server.endpoint)
    data = b"re-recorded bytes " * 100
    sha = hashlib.sha256(data).hexdigest()

    async def main():
        await sweeper.start()
        await uploader.start()
        try:
            assert (await sweeper.put_parts([data], "agent-a"))[0] == sha
            # Unreferenced for two hours: past the hour's grace, so the next sweep dooms it.
            old = time.time() - 7200
            await sweeper_db.write(lambda c: c.execute("UPDATE blobs SET unreferenced_since = %s", (old,)))
            # The sweep stops between deleting the rows and deleting the objects...
            entered, go = asyncio.Event(), asyncio.Event()
            delete = sweeper.objects.delete

            async def held_delete(digest: str) -> None:
                entered.set()
                await go.wait()
                await delete(digest)

            sweeper.objects.delete = held_delete  # type: ignore[method-assign]
            sweep = asyncio.ensure_future(sweeper.sweep())
            await entered.wait()
            # ...while the other member stores the same bytes again for another agent.
            upload = asyncio.ensure_future(uploader.put_parts([data], "agent-b"))

            async def upload_waits_or_ended() -> bool:
                waiting = await uploader_db.read(lambda c: c.execute(_WAITING).fetchone()[0])
                return upload.done() or waiting > 0

            # Either it recorded the blob meanwhile (the bug: the sweep then deletes its object) or it waits for the
            # sweep to end, in PostgreSQL, for the vault-wide lock.
            await until(upload_waits_or_ended, "the upload neither finished nor waited for the sweep")
            go.set()
            assert await sweep == 1
            assert await upload == (sha, len(data))
            # Recorded, so stored: the object is whole in the bucket.
            known = await uploader_db.read(uploader.sql.blobs.known)
            assert sha in known
            assert await uploader.objects.size(sha) == len(data)
            assert await uploader.read_header(sha, len(data), len(data)) == data
        finally:
            await sweeper.stop()
            await uploader.stop()

    try:
        asyncio.run(main())
    finally:
        sweeper_db.close()
        uploader_db.close()
