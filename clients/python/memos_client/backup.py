"""Writes a Backup stream into a directory: each file checked against its digest, manifest.json last."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from memos_client.errors import AlreadyExists, DataLoss

FORMAT = "memosd-backup"
VERSION = 1
SYNC_EVERY = 8 << 20
_SAFE_PATH = re.compile(r"(memos\.db|admin\.key|audit\.key|audit-checkpoints\.jsonl|blobs(/[A-Za-z0-9._-]+)+)")


class BackupWriter:
    """Feed it the BackupChunk messages in order; the directory is complete once manifest.json exists."""

    def __init__(self, dest: str | Path):
        self.dest = Path(dest)
        if self.dest.exists() and (not self.dest.is_dir() or any(self.dest.iterdir())):
            raise AlreadyExists(f"{self.dest} exists and is not an empty directory; choose a new DEST")
        self.dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.files: list[dict] = []
        self.summary = None
        self._out = None
        self._entry: dict | None = None
        self._hash = None
        self._written = 0

    def feed(self, chunk) -> None:
        which = chunk.WhichOneof("item")
        if which == "file":
            self._finish_file()
            f = chunk.file
            if not _SAFE_PATH.fullmatch(f.path) or ".." in f.path.split("/"):
                raise DataLoss(f"the daemon sent a backup file named {f.path!r}, which is not allowed")
            path = self.dest / f.path
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._out = os.fdopen(fd, "wb")
            self._entry = {"path": f.path, "size": f.size, "sha256": f.sha256, "mode": f.mode & 0o700}
            self._hash, self._written = hashlib.sha256(), 0
        elif which == "data":
            if self._out is None:
                raise DataLoss("the backup stream sent bytes before naming their file")
            self._out.write(chunk.data)
            self._hash.update(chunk.data)
            self._written += len(chunk.data)
            if self._written % SYNC_EVERY < len(chunk.data):
                # Flush as it goes, so that no large fsync at the end floods the disk the daemon
                # (often the same one) needs for its own commits.
                self._out.flush()
                os.fdatasync(self._out.fileno())
        elif which == "done":
            self._finish_file()
            self.summary = chunk.done
            if chunk.done.files != len(self.files):
                raise DataLoss(f"the backup ended after {len(self.files)} files, but the daemon sent {chunk.done.files}")

    def _finish_file(self) -> None:
        if self._out is None:
            return
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        self._out = None
        entry = self._entry
        if self._written != entry["size"] or self._hash.hexdigest() != entry["sha256"]:
            raise DataLoss(f"backup file {entry['path']} arrived damaged: {self._written} bytes, digest"
                           f" {self._hash.hexdigest()[:12]}..., expected {entry['size']} bytes, {entry['sha256'][:12]}...")
        self.files.append(entry)

    def finish(self) -> dict:
        """Write manifest.json (only a complete, verified backup gets one); returns it."""
        if self.summary is None:
            raise DataLoss("the backup stream ended before it was complete; the directory is unfinished")
        s = self.summary
        manifest = {"format": FORMAT, "version": VERSION, "memosd_version": s.memosd_version,
                    "daemon_id": s.daemon_id, "snapshot_at": s.snapshot_at.seconds + s.snapshot_at.nanos / 1e9,
                    "files": self.files}
        tmp = self.dest / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, self.dest / "manifest.json")
        return manifest

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

