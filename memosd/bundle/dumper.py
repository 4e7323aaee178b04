"""MemDumper: a namespace (or the whole vault) written as an export bundle tar, as of one instant.

Cubes are read inside one read transaction (a consistent snapshot while writes go on), spooled to a
temporary file to learn cubes.jsonl's size and digest, then the tar is written in order: manifest.json
first (so a reader learns the format version before anything else), the JSON Lines files, then the
payload files, streamed from the blob store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import queue
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos_mip.bundle_format import AGENTS, CUBES, FORMAT, MANIFEST, POLICIES, VERSION, rfc3339, sha256_file
from memosd.bundle.payloads import CODECS, PayloadFile
from memosd.bundle.records import cube_record
from memosd.cube import CubeFilter, MemoryKind
from memosd.errors import FailedPrecondition, NotFound
from memosd.storage.objects.copies import RemoteCopies
from memosd.storage.sqlite.backup import blob_index  # the file blob store's index, as backups read it
from memosd.vault import lineage, rows

CHUNK_BYTES = 1 << 20


@dataclass
class ExportedPolicy:
    """A signed policy as the bundle carries it, with its issuer's public key."""

    id: str
    document: bytes
    signature: bytes
    issuer: str
    issuer_key: bytes
    revoked_at: float | None = None


@dataclass
class ExportSummary:
    cubes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    policies: int = 0
    payload_files: int = 0
    bytes: int = 0


def write_bundle(out, *, vault, data_dir: Path, root: str, cube_filter: CubeFilter, policies: list[ExportedPolicy],
                 producer: dict, clock=time.time, copies: RemoteCopies | None = None) -> ExportSummary:
    """Write the bundle tar to `out` (anything with write()); blocking, run it on a thread. copies: the remote
    object store the payloads are fetched from (verified), when they are not files in the data directory."""
    summary = ExportSummary(by_kind={k.name.lower(): 0 for k in MemoryKind})
    payloads: dict[str, PayloadFile] = {}
    with tempfile.TemporaryFile(dir=data_dir) as spool, tempfile.TemporaryDirectory(dir=data_dir) as scratch:
        digest = _dump_cubes(spool, vault.db, data_dir, cube_filter, summary, payloads, clock, Path(scratch), copies)
        cubes_size = spool.tell()
        spool.seek(0)
        policy_lines = b"".join(_line({
            "id": p.id, "issuer": p.issuer, "document": p.document.decode("utf-8"),
            "signature": base64.b64encode(p.signature).decode(), "revoked_at": rfc3339(p.revoked_at)})
            for p in policies)
        keys = {p.issuer: p.issuer_key for p in policies}
        agent_lines = b"".join(_line({"name": name, "public_key": base64.b64encode(key).decode()})
                               for name, key in sorted(keys.items()))
        summary.policies = len(policies)
        files: list[dict[str, Any]] = [{"path": CUBES, "size": cubes_size, "sha256": digest},
                 {"path": POLICIES, "size": len(policy_lines), "sha256": hashlib.sha256(policy_lines).hexdigest()},
                 {"path": AGENTS, "size": len(agent_lines), "sha256": hashlib.sha256(agent_lines).hexdigest()}]
        for name, pf in sorted(payloads.items()):
            # Content-addressed: the name is the digest the store verified when the blob arrived.
            files.append({"path": name, "size": pf.path.stat().st_size, "sha256": name.split("/")[1].split(".")[0]
                          if name.startswith("tensors/") else sha256_file(pf.path)})
        manifest = {"format": FORMAT, "version": VERSION, "created_at": rfc3339(clock()), "producer": producer,
                    "root": root, "counts": {"cubes": summary.cubes, **summary.by_kind, "policies": len(policies),
                                             "agents": len(keys)}, "files": files}
        manifest_bytes = json.dumps(manifest, indent=1, ensure_ascii=False).encode() + b"\n"
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, io.BytesIO(manifest_bytes), len(manifest_bytes), clock)
            _add(tar, CUBES, spool, cubes_size, clock)
            _add(tar, POLICIES, io.BytesIO(policy_lines), len(policy_lines), clock)
            _add(tar, AGENTS, io.BytesIO(agent_lines), len(agent_lines), clock)
            for entry in files[3:]:
                with open(payloads[entry["path"]].path, "rb") as f:
                    _add(tar, entry["path"], f, entry["size"], clock)
        summary.payload_files = len(payloads)
        summary.bytes = sum(f["size"] for f in files) + len(manifest_bytes)
    return summary


def _dump_cubes(spool, db, data_dir: Path, f: CubeFilter, summary: ExportSummary, payloads: dict, clock,
                scratch: Path, copies: RemoteCopies | None) -> str:
    h = hashlib.sha256()
    blobs: dict[str, Path] | None = None
    with db.snapshot() as conn:
        for row in db.sql.export.cube_rows(conn, f, clock()):
            # Its lineage as the exporter may see it (f.reader): the bundle is the exporter's to read.
            (cube,) = lineage.narrow(db.sql, conn, [rows.to_cube(rows.row_dict(row), clock())], f.reader)
            if cube.kind is not MemoryKind.PLAINTEXT:
                blob = (cube.manifest or {}).get("blob", {})
                sha = blob.get("sha256", "")
                if blobs is None:  # a remote store's payloads are fetched as met, once each
                    blobs = {} if copies is not None else blob_index(data_dir)
                if copies is not None and sha not in blobs:
                    blobs[sha] = _fetched(copies, cube.id, sha, blob.get("size"), scratch / "blobs" / sha)
                if sha not in blobs:
                    raise FailedPrecondition(f"cube {cube.id}'s payload {sha} is not in the blob store")
                for pf in CODECS[cube.kind].files(cube, blobs[sha], scratch):
                    payloads[pf.name] = pf
            line = _line(cube_record(cube))
            spool.write(line)
            h.update(line)
            summary.cubes += 1
            summary.by_kind[cube.kind.name.lower()] += 1
    return h.hexdigest()


def _fetched(copies: RemoteCopies, cube_id: str, sha256: str, size, dest: Path) -> Path:
    try:
        return copies.copy(sha256, dest, size if isinstance(size, int) else None)
    except NotFound:
        raise FailedPrecondition(f"cube {cube_id}'s payload {sha256} is not in the object store") from None


def _line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _add(tar: tarfile.TarFile, name: str, fileobj, size: int, clock) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(clock())
    tar.addfile(info, fileobj)


_END, _EMPTY = object(), object()


class ChunkPipe:
    """A write-only file for a thread that produces bytes, read as chunks by a coroutine; the bounded
    queue between them makes a slow reader slow the writer down instead of filling memory."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, depth: int = 8):
        self.chunk_bytes = chunk_bytes
        self._queue: queue.Queue = queue.Queue(depth)
        self._buffer = bytearray()
        self._cancelled = threading.Event()

    def write(self, data) -> int:
        self._buffer += data
        while len(self._buffer) >= self.chunk_bytes:
            self._put(bytes(self._buffer[:self.chunk_bytes]))
            del self._buffer[:self.chunk_bytes]
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self, error: BaseException | None = None) -> None:
        """End the stream: with the bytes still buffered, or with an error the reader re-raises."""
        try:
            if error is None and self._buffer:
                self._put(bytes(self._buffer))
            self._put(_END if error is None else error)
        except BrokenPipeError:
            pass

    def _put(self, item) -> None:
        while True:
            if self._cancelled.is_set():
                raise BrokenPipeError("the reader went away")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def cancel(self) -> None:
        self._cancelled.set()

    async def chunks(self):
        while True:
            item = await asyncio.to_thread(self._get)
            if item is _EMPTY:
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _get(self):
        # A bounded wait, so a reader cancelled mid-wait leaves no thread blocked for good.
        try:
            return self._queue.get(timeout=0.2)
        except queue.Empty:
            return _EMPTY
