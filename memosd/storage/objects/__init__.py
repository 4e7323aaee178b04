"""Blob bytes behind one interface: files in the data directory (`file:`) or an S3-compatible bucket (`s3://`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from memosd.errors import InvalidArgument
from memosd.storage.objects.base import ObjectReader, ObjectStore

__all__ = ["ObjectReader", "ObjectStore", "open_object_store"]


def open_object_store(blob_url: str, data_dir: Path, *, s3_endpoint_url: str = "", cache_bytes: int = 8 << 30,
                      orphan_grace: float = 3600.0) -> ObjectStore:
    """The store `blob_url` names: `file:` (DATA_DIR/blobs) or `s3://BUCKET/PREFIX` (credentials from the standard
    AWS chain, a bounded read-through cache under DATA_DIR/blobs/cache for same-host descriptors)."""
    url = urlsplit(blob_url or "file:")
    if url.scheme == "file" and not url.netloc and url.path in ("", "/"):
        from memosd.storage.objects.files import FileObjectStore

        return FileObjectStore(Path(data_dir) / "blobs")
    if url.scheme == "s3" and url.netloc:
        from memosd.storage.objects.s3 import S3ObjectStore

        return S3ObjectStore(url.netloc, url.path.strip("/"), Path(data_dir) / "blobs",
                             endpoint_url=s3_endpoint_url, cache_bytes=cache_bytes, orphan_grace=orphan_grace)
    raise InvalidArgument("blob_url must be `file:` (the data directory) or `s3://BUCKET/PREFIX`")
