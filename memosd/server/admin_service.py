"""AdminService: the online backup, streamed file by file."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from memos_mip.v1 import admin_pb2
from memosd import __version__
from memosd.errors import InvalidArgument, PermissionDenied
from memosd.server.auth import principal
from memosd.server.convert import to_timestamp

log = logging.getLogger("memosd.backup")
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 4 << 20


class AdminService:
    def __init__(self, data_dir: Path, governance, snapshot):
        self.data_dir = Path(data_dir)
        self.gov = governance
        self.snapshot = snapshot  # () -> a Snapshot of the data directory, blocking (Daemon.snapshot)

    async def Backup(self, request, context):
        p = principal()
        if not p.admin:
            raise PermissionDenied(f"agent {p.name} may not back up the daemon: only the admin may")
        if not 0 <= request.chunk_bytes <= MAX_CHUNK:
            raise InvalidArgument(f"chunk_bytes must be between 1 and {MAX_CHUNK} (0 for {DEFAULT_CHUNK})")
        chunk = request.chunk_bytes or DEFAULT_CHUNK
        snapshot = await asyncio.to_thread(self.snapshot)
        try:
            sent = sum(f.size for f in snapshot.files)
            await self.gov.audit(p.name, "daemon.backup", str(self.data_dir), files=len(snapshot.files), bytes=sent)
            for f in snapshot.files:
                yield admin_pb2.BackupChunk(file=admin_pb2.BackupFile(path=f.path, size=f.size, sha256=f.sha256,
                                                                      mode=f.mode))
                with open(f.source, "rb") as source:  # noqa: ASYNC230 (opening is quick; reads go to a thread)
                    while data := await asyncio.to_thread(source.read, chunk):
                        yield admin_pb2.BackupChunk(data=data)
            yield admin_pb2.BackupChunk(done=admin_pb2.BackupSummary(
                snapshot_at=to_timestamp(snapshot.snapshot_at), files=len(snapshot.files), bytes=sent,
                memosd_version=__version__, daemon_id=snapshot.daemon_id, database_pages=snapshot.pages))
            log.info("backup of %d files (%d bytes) sent to %s", len(snapshot.files), sent, p.name)
        finally:
            await asyncio.to_thread(snapshot.close)
