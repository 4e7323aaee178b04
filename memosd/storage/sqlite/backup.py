"""Online backup of a data directory: a consistent database snapshot plus the blobs it references.

The snapshot is taken with SQLite's backup API in small steps, inside one read transaction: in WAL
mode a reader never blocks the writer, so writes go on while it runs, and the copy is the database
as of the moment the transaction began (a step-wise backup without it would restart whenever another
connection commits). Referenced blobs are hard-linked into the snapshot's staging directory at once,
so a blob deleted later still reaches the backup.

A backup directory holds manifest.json ({"format": "memosd-backup", "version": 1, "files": [...]}
with each file's path, size, sha256 and mode) next to the files; `restore` checks every digest.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memos_mip.bounds import loads, quote
from memos_mip.bundle_format import sha256_file
from memosd.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from memosd.storage.objects.copies import RemoteCopies
from memosd.storage.sqlite.db import connect

FORMAT = "memosd-backup"
VERSION = 1
MANIFEST = "manifest.json"
DB_NAME = "memos.db"
ADMIN_KEY = "admin.key"
# The audit key and its checkpoint file, when they live in the data directory (audit_key's default).
AUDIT_KEY = "audit.key"
CHECKPOINTS = "audit-checkpoints.jsonl"
BLOB_DIR = "blobs"
PAGES_PER_STEP = 256
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SAFE_PATH = re.compile(r"(memos\.db|admin\.key|audit\.key|audit-checkpoints\.jsonl|blobs(/[A-Za-z0-9._-]+)+)")


@dataclass
class BackupFile:
    """One file of a backup: where it goes, and what its bytes must be."""

    path: str
    size: int
    sha256: str
    mode: int = 0o600
    source: Path | None = field(default=None, repr=False, compare=False)


@dataclass
class Snapshot:
    """A consistent copy of a data directory, staged for streaming; close() removes the staging."""

    staging: Path
    files: list[BackupFile]
    snapshot_at: float
    pages: int
    daemon_id: str

    def manifest(self, memosd_version: str) -> dict:
        return manifest_dict(self.files, self.snapshot_at, self.daemon_id, memosd_version)

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def manifest_dict(files: list[BackupFile], snapshot_at: float, daemon_id: str, memosd_version: str) -> dict:
    return {"format": FORMAT, "version": VERSION, "memosd_version": memosd_version, "daemon_id": daemon_id,
            "snapshot_at": snapshot_at,
            "files": [{k: v for k, v in asdict(f).items() if k != "source"} for f in files]}


def take_snapshot(data_dir: Path, *, pages_per_step: int = PAGES_PER_STEP, on_step=None,
                  copies: RemoteCopies | None = None) -> Snapshot:
    """Copy the database as of now (writes continue meanwhile) and pin the blobs it references (copies: the
    remote object store they are fetched from, verified, into the backup's blobs/). Blocking: run it on a thread."""
    data_dir = Path(data_dir)
    staging = data_dir / f".backup-{secrets.token_hex(6)}"
    staging.mkdir(mode=0o700)
    try:
        return _snapshot(data_dir, staging, pages_per_step, on_step, copies)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _snapshot(data_dir: Path, staging: Path, pages_per_step: int, on_step, copies: RemoteCopies | None) -> Snapshot:
    source = connect(data_dir / DB_NAME, readonly=True)
    target_path = staging / DB_NAME
    target = sqlite3.connect(target_path)
    # A staging copy, checked by its digest: no fsync of it, which would compete with the writer's.
    target.execute("PRAGMA synchronous=OFF")
    pages = 0
    try:
        source.execute("BEGIN")
        # The first read fixes the snapshot every later step copies from.
        (daemon_id,) = source.execute("SELECT coalesce((SELECT value FROM settings WHERE key = 'daemon_id'), '')"
                                      ).fetchone()
        snapshot_at = time.time()
        required, recorded = referenced_blobs(source)
        signed = _checkpoints_in(source)

        def progress(status, remaining, total):
            nonlocal pages
            pages = total
            if on_step is not None:
                on_step(total - remaining, total)

        source.backup(target, pages=pages_per_step, progress=progress, sleep=0)
        source.execute("COMMIT")
    finally:
        source.close()
        target.close()
    files = [_file(DB_NAME, target_path)]
    key = data_dir / ADMIN_KEY
    if key.exists():
        shutil.copyfile(key, staging / ADMIN_KEY)
        files.append(_file(ADMIN_KEY, staging / ADMIN_KEY))
    files += _audit_files(data_dir, staging, signed)
    if copies is None:
        files += _pin_blobs(data_dir, staging, required, recorded)
    else:
        files += _fetch_blobs(copies, staging, required, recorded)
    return Snapshot(staging, files, snapshot_at, pages, daemon_id)


def _checkpoints_in(conn: sqlite3.Connection) -> int:
    """The newest audit checkpoint the snapshot holds (0: none)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_checkpoints'").fetchone():
        return 0
    return conn.execute("SELECT coalesce(max(n), 0) FROM audit_checkpoints").fetchone()[0]


def _audit_files(data_dir: Path, staging: Path, signed: int) -> list[BackupFile]:
    """The audit key, and the checkpoint file up to the snapshot's newest checkpoint: the ones signed since
    name entries the snapshot lacks, and would make the restored log look truncated."""
    if not (data_dir / AUDIT_KEY).exists():
        return []  # kept elsewhere (audit_key): the admin backs it up apart, as it is kept
    shutil.copyfile(data_dir / AUDIT_KEY, staging / AUDIT_KEY)
    files = [_file(AUDIT_KEY, staging / AUDIT_KEY)]
    try:
        lines = (data_dir / CHECKPOINTS).read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return files
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["n"]) > signed:
                break
        except (ValueError, KeyError, TypeError):
            pass  # copied as it is, for the restored daemon's verify to report
        kept.append(line)
    (staging / CHECKPOINTS).write_text("".join(kept))
    return files + [_file(CHECKPOINTS, staging / CHECKPOINTS)]


def referenced_blobs(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
    """Digests of the blobs the database refers to: (required: each "sha256" in a cube manifest, current
    or earlier version; also recorded: rows of the blob store's `blobs` table, which may include blobs
    no cube holds any more and that may be collected at any moment)."""
    found: set[str] = set()
    for (text,) in conn.execute("SELECT manifest FROM cubes WHERE manifest IS NOT NULL"):
        _digests(json.loads(text), found)
    for (text,) in conn.execute("SELECT snapshot FROM cube_versions WHERE snapshot LIKE '%sha256%'"):
        manifest = json.loads(text).get("manifest")
        _digests(json.loads(manifest) if isinstance(manifest, str) else manifest, found)
    recorded: set[str] = set()
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blobs'").fetchone():
        recorded = {d for (d,) in conn.execute("SELECT sha256 FROM blobs") if isinstance(d, str)}
    required = {d for d in found if _SHA256.fullmatch(d)}
    return required, {d for d in recorded if _SHA256.fullmatch(d)} - required


def _digests(value, found: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "sha256" and isinstance(v, str):
                found.add(v)
            else:
                _digests(v, found)
    elif isinstance(value, list):
        for v in value:
            _digests(v, found)


def blob_index(data_dir: Path) -> dict[str, Path]:
    """Every stored blob under DATA_DIR/blobs by digest: content-addressed files are named by their
    sha256 (with or without an extension), whatever the fan-out of directories."""
    index = {}
    root = Path(data_dir) / BLOB_DIR
    if root.is_dir():
        for path in root.rglob("*"):
            stem = path.name.split(".")[0]
            if "tmp" in path.relative_to(root).parts[:-1]:
                continue  # uploads in progress, never part of the store
            if _SHA256.fullmatch(stem) and path.is_file() and not path.is_symlink():
                index[stem] = path
    return index


def _pin_blobs(data_dir: Path, staging: Path, required: set[str], recorded: set[str]) -> list[BackupFile]:
    index = blob_index(data_dir)
    files = []
    for digest in sorted(required | recorded):
        path = index.get(digest)
        if path is None and digest in recorded:
            continue  # collected since the snapshot: nothing in it needs the blob
        if path is None:
            raise FailedPrecondition(f"blob {digest} is referenced by the database but not in {data_dir / BLOB_DIR};"
                                     " the data directory is damaged")
        rel = path.relative_to(data_dir).as_posix()
        pinned = staging / rel
        pinned.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, pinned)  # immutable and content-addressed: a link is a copy that costs nothing
        except FileNotFoundError:
            if digest in recorded:
                continue
            raise FailedPrecondition(f"blob {digest} vanished while the backup was taken; retry") from None
        except OSError:
            shutil.copyfile(path, pinned)
        files.append(BackupFile(rel, pinned.stat().st_size, digest, 0o600, pinned))
    return files


def _fetch_blobs(copies: RemoteCopies, staging: Path, required: set[str], recorded: set[str]) -> list[BackupFile]:
    """The referenced blobs fetched from the remote store, laid out as the data directory's own store holds them
    (blobs/sha256/xx/DIGEST), so a restore into a `file:` data directory is complete."""
    files = []
    for digest in sorted(required | recorded):
        rel = f"{BLOB_DIR}/sha256/{digest[:2]}/{digest}"
        try:
            pinned = copies.copy(digest, staging / rel)
        except NotFound:
            if digest in recorded:
                continue  # collected since the snapshot: nothing in it needs the blob
            raise FailedPrecondition(f"blob {digest} is referenced by the database but not in the object store"
                                     ) from None
        files.append(BackupFile(rel, pinned.stat().st_size, digest, 0o600, pinned))
    return files


def _file(rel: str, path: Path, mode: int = 0o600) -> BackupFile:
    return BackupFile(rel, path.stat().st_size, sha256_file(path), mode, path)


def check_backup_path(path: str) -> str:
    """A file name a backup may hold: memos.db, the keys, the audit checkpoints or blobs/...; never a way out."""
    if not isinstance(path, str) or not _SAFE_PATH.fullmatch(path) or any(p in (".", "..") for p in path.split("/")):
        raise InvalidArgument(f"backup file name {quote(path)} is not allowed (only memos.db, admin.key, audit.key,"
                              f" {CHECKPOINTS} and blobs/...)")
    return path


def read_manifest(src: Path) -> dict:
    try:
        # It lists every blob file; a backup is a directory the admin names, but may come from anywhere.
        manifest = loads((Path(src) / MANIFEST).read_bytes(), what=MANIFEST, max_bytes=1 << 30)
    except FileNotFoundError:
        raise InvalidArgument(f"{src} has no {MANIFEST}: not a memosd backup, or an unfinished one") from None
    except ValueError as exc:
        raise DataLoss(f"{src / MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidArgument(f"{src} is not a memosd backup (manifest format is not {FORMAT!r})")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise FailedPrecondition(f"{src} was written by a newer memosd (backup version {manifest.get('version')},"
                                 f" this one reads up to {VERSION}); restore it with that version")
    return manifest


def verify_backup(src: Path) -> list[BackupFile]:
    """Every file the manifest lists, present with its size and digest; DataLoss names the first that is not."""
    src = Path(src)
    manifest = read_manifest(src)
    files = []
    for entry in manifest.get("files", []):
        f = BackupFile(check_backup_path(entry["path"]), int(entry["size"]), str(entry["sha256"]),
                       int(entry.get("mode", 0o600)) & 0o700)
        path = src / f.path
        if path.is_symlink() or not path.is_file():
            raise DataLoss(f"backup file {f.path} is missing (or not a regular file)")
        if path.stat().st_size != f.size or sha256_file(path) != f.sha256:
            raise DataLoss(f"backup file {f.path} does not match its digest in {MANIFEST}: it was changed or damaged")
        f.source = path
        files.append(f)
    if not any(f.path == DB_NAME for f in files):
        raise DataLoss(f"backup lists no {DB_NAME}")
    return files


def restore(src: Path, data_dir: Path, *, force: bool = False) -> dict:
    """Put a verified backup in place as data_dir (stop the daemon first). Refuses to replace an
    existing database unless force is set."""
    src, data_dir = Path(src), Path(data_dir)
    files = verify_backup(src)
    if (data_dir / DB_NAME).exists() and not force:
        raise AlreadyExists(f"{data_dir} already holds a database; stop its daemon and pass --force to replace it")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = data_dir / f".restore-{secrets.token_hex(6)}"
    staging.mkdir(mode=0o700)
    try:
        for f in files:
            out = staging / f.path
            out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            assert f.source is not None, "verify_backup sets every file's source"
            shutil.copyfile(f.source, out)
            os.chmod(out, f.mode)
        conn = sqlite3.connect(staging / DB_NAME)
        try:
            (result,) = conn.execute("PRAGMA integrity_check").fetchone()
        finally:
            conn.close()
        if result != "ok":
            raise DataLoss(f"the restored database fails its integrity check: {result}")
        # Blobs and key first, the database last: once it is in place, everything it refers to is too.
        for f in sorted(files, key=lambda f: f.path == DB_NAME):
            target = data_dir / f.path
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if f.path == DB_NAME:
                for name in (DB_NAME + "-wal", DB_NAME + "-shm"):
                    (data_dir / name).unlink(missing_ok=True)
            os.replace(staging / f.path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"files": len(files), "bytes": sum(f.size for f in files), "data_dir": str(data_dir)}
