"""Blob bytes in an S3-compatible bucket (`blob_url = "s3://BUCKET/PREFIX"`): AWS S3, MinIO, Ceph RGW, ...

    PREFIX/sha256/ab/abcdef...   one object per distinct content, its sha256 also in its metadata

An object is sent whole (multipart above a threshold, so that it appears only once complete), then read back
and hashed before the BlobStore may record it. Reads check that the object is still the one stored (its size
and recorded digest); same-host descriptors come from a bounded local cache (cache.py) that verifies every
blob it takes in. Calls are retried with backoff (botocore's standard mode); what still fails is Unavailable
(unreachable, 5xx, refused) or DataLoss (the bytes are not what their digest says).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from memosd.errors import DataLoss, MemosError, NotFound, Unavailable
from memosd.storage.objects.base import ObjectReader, ObjectStore
from memosd.storage.objects.cache import ReadCache

MULTIPART_THRESHOLD = 64 << 20
PART_BYTES = 16 << 20
READ_PIECE = 1 << 20
_HEX = frozenset("0123456789abcdef")


class S3ObjectStore(ObjectStore):
    """Objects in one bucket under a prefix; uploads staged under root/tmp/, the read cache under root/cache/."""

    local = False

    def __init__(self, bucket: str, prefix: str, root: Path, *, endpoint_url: str = "", cache_bytes: int = 8 << 30,
                 orphan_grace: float = 3600.0, multipart_threshold: int = MULTIPART_THRESHOLD,
                 part_bytes: int = PART_BYTES, attempts: int = 4, timeout: float = 30.0):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.root = Path(root)
        self.endpoint_url = endpoint_url
        self.orphan_grace = orphan_grace
        self.multipart_threshold, self.part_bytes = multipart_threshold, part_bytes
        self.cache = ReadCache(self.root / "cache", cache_bytes)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="memosd-s3")
        session = boto3.session.Session()  # the standard chain: AWS_* variables, ~/.aws files, instance roles
        compatible = {}
        if endpoint_url:
            # Path-style keys, and no checksum headers unless an operation requires them: S3-compatible services
            # (MinIO, Ceph, ...) often refuse botocore's newer default ones; what was stored is read back anyway.
            compatible = {"s3": {"addressing_style": "path"}, "request_checksum_calculation": "when_required",
                          "response_checksum_validation": "when_required"}
        self._s3 = session.client(
            "s3", endpoint_url=endpoint_url or None, region_name=session.region_name or "us-east-1",
            config=BotoConfig(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=timeout,
                              read_timeout=timeout, **compatible))

    @property
    def staging(self) -> Path:
        return self.root / "tmp"

    def key(self, sha256: str) -> str:
        return f"{self.prefix}/sha256/{sha256[:2]}/{sha256}" if self.prefix else f"sha256/{sha256[:2]}/{sha256}"

    async def _call(self, what: str, fn, *args):
        """fn(*args) on a thread, its botocore errors mapped to the error tree."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except MemosError:
            raise
        except (ClientError, BotoCoreError, OSError) as exc:
            raise _mapped(exc, what, self.bucket) from None

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        for path in (self.root, self.staging):
            path.mkdir(mode=0o700, exist_ok=True)
        await asyncio.to_thread(self.cache.start)
        await self._call("check the bucket", lambda: self._s3.head_bucket(Bucket=self.bucket))

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)  # calls in flight end within their timeouts
        self._s3.close()

    # -- writes --------------------------------------------------------------------------------

    async def push(self, staged: Path, sha256: str, size: int) -> None:
        await self._call("store a blob", self._store, staged, sha256, size)

    async def put(self, staged: Path, sha256: str, size: int) -> None:
        # Under the publish lock: normally push() stored it already, but a sweep may have removed the same
        # content meanwhile (its row was doomed before this upload's was written).
        await self._call("store a blob", self._store, staged, sha256, size)

    def _store(self, staged: Path, sha256: str, size: int) -> None:
        if self._head(sha256) == size:  # stored already (content-addressed: the same bytes)
            return
        key, meta = self.key(sha256), {"sha256": sha256}
        if size < self.multipart_threshold:
            with open(staged, "rb") as f:
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=f, ContentLength=size, Metadata=meta)
        else:
            self._multipart(staged, key, meta, size)
        self._verify(sha256, size)

    def _multipart(self, staged: Path, key: str, meta: dict, size: int) -> None:
        upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=meta)["UploadId"]
        try:
            parts = []
            with open(staged, "rb") as f:
                for number, offset in enumerate(range(0, size, self.part_bytes), start=1):
                    data = os.pread(f.fileno(), min(self.part_bytes, size - offset), offset)
                    sent = self._s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                                Body=data)
                    parts.append({"ETag": sent["ETag"], "PartNumber": number})
            self._s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                               MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):  # parts left behind cost storage only
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def _verify(self, sha256: str, size: int) -> None:
        """Read the stored object back and hash it: only bytes the store really holds may be recorded."""
        body = self._s3.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        digest, seen = hashlib.sha256(), 0
        for piece in body.iter_chunks(READ_PIECE):
            digest.update(piece)
            seen += len(piece)
        if seen != size or digest.hexdigest() != sha256:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._s3.delete_object(Bucket=self.bucket, Key=self.key(sha256))
            raise DataLoss(f"the object store kept other bytes than were sent for blob {sha256[:16]}...;"
                           " nothing was recorded: upload it again")

    def _head(self, sha256: str) -> int | None:
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        if head.get("Metadata", {}).get("sha256") != sha256:
            return None  # not one this daemon stored: replaced by the next upload of the content
        return head["ContentLength"]

    async def delete(self, sha256: str) -> None:
        await self._call("delete a blob", lambda: self._s3.delete_object(Bucket=self.bucket, Key=self.key(sha256)))

    # -- reads ---------------------------------------------------------------------------------

    async def size(self, sha256: str) -> int | None:
        return await self._call("look up a blob", self._head, sha256)

    async def open(self, sha256: str, size: int) -> ObjectReader:
        return _S3Reader(self, sha256, size)

    def _get(self, sha256: str, size: int, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the object, refused unless it is still the one recorded."""
        try:
            got = self._s3.get_object(Bucket=self.bucket, Key=self.key(sha256),
                                      Range=f"bytes={offset}-{offset + length - 1}")
        except ClientError as exc:
            if _status(exc) == 404:
                raise NotFound(f"the payload {sha256} is not stored on this daemon") from None
            if _status(exc) == 416:  # the range starts past the object's end: it shrank
                raise DataLoss(f"blob {sha256} is shorter in the object store than recorded") from None
            raise
        total = got.get("ContentRange", "").rpartition("/")[2]
        if got.get("Metadata", {}).get("sha256") != sha256 or total != str(size):
            raise DataLoss(f"blob {sha256} was changed in the object store: it is not the one recorded")
        return got["Body"].read()

    async def open_local(self, sha256: str, size: int) -> int:
        return await self.cache.open(sha256, size, self._fetch)

    async def copy_to(self, sha256: str, dest: Path, size: int | None = None) -> None:
        if size is None:
            size = await self.size(sha256)
            if size is None:
                raise NotFound(f"the payload {sha256} is not in the object store")
        await self._fetch(sha256, size, dest)  # one streamed GET, hashed as it is written

    async def _fetch(self, sha256: str, size: int, path: Path) -> None:
        await self._call("fetch a blob", self._fetch_into, sha256, size, path)

    def _fetch_into(self, sha256: str, size: int, path: Path) -> None:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        except ClientError as exc:
            if _status(exc) == 404:
                raise NotFound(f"the payload {sha256} is not stored on this daemon") from None
            raise
        digest, seen = hashlib.sha256(), 0
        with open(path, "xb") as f:
            for piece in body.iter_chunks(READ_PIECE):
                f.write(piece)
                digest.update(piece)
                seen += len(piece)
        if seen != size or digest.hexdigest() != sha256:
            raise DataLoss(f"blob {sha256} in the object store does not match its sha256; nothing was served")

    async def keys(self) -> list[tuple[str, float]]:
        def scan() -> list[tuple[str, float]]:
            found = []
            start = f"{self.prefix}/sha256/" if self.prefix else "sha256/"
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", ()):
                    name = item["Key"].rpartition("/")[2]
                    if len(name) == 64 and set(name) <= _HEX:
                        found.append((name, item["LastModified"].timestamp()))
            return found
        return await self._call("list the blobs", scan)


class _S3Reader(ObjectReader):
    """Ranged GETs, each checked against the recorded object."""

    def __init__(self, store: S3ObjectStore, sha256: str, size: int):
        self._store, self._sha256, self._size = store, sha256, size

    async def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return await self._store._call("read a blob", self._store._get, self._sha256, self._size, offset, length)

    async def close(self) -> None:
        return None


def _status(exc: ClientError) -> int:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = exc.response.get("Error", {}).get("Code", "")
    return 404 if code in ("NoSuchKey", "404", "NotFound") else int(status or 0)


def _mapped(exc: Exception, what: str, bucket: str) -> MemosError:
    # Short and without the endpoint's details: the message reaches clients.
    if isinstance(exc, ClientError):
        status, code = _status(exc), exc.response.get("Error", {}).get("Code", "?")
        if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
            return DataLoss(f"the object store refused a blob's bytes as corrupt ({code}); upload it again")
        if status >= 500:
            return Unavailable(f"the object store answered {status} to {what}; retry later")
        return Unavailable(f"the object store refused to {what} in bucket {bucket} ({code}); check the"
                           " daemon's blob_url and credentials")
    return Unavailable(f"the object store cannot be reached to {what}; retry later")
