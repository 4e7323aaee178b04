"""`memosd migrate`: copy a stopped embedded vault into PostgreSQL and a blob store, resumably, leaving it untouched.

The source is the data directory DIR of an embedded vault (memos.db, blobs/, admin.key, audit.key and its
checkpoint file). The target is a PostgreSQL database (created schema, or an empty one) plus a new data
directory TARGET for the daemon that will serve it: the keys and the audit checkpoint file are copied there,
and the blobs go to the store blob_url names (`s3://...`, or `file:`: TARGET/blobs). DIR is never written: it
stays a working embedded vault as of the migration, so going back is serving it again. Order: blob bytes
first (a cube row is never in before its blob), then the tables, settings last (the daemon id), then identity
sequences, then verification (row counts, the audit chain and its signed checkpoints on the target), then the
migration is marked finished. A daemon refuses a database whose migration has not finished. It reads one
engine and writes the other, so it lives in the storage package, beside them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from memosd.config import Config, socket_path
from memosd.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from memosd.governance.signing import AUDIT_KEY_FILE, checkpoint_file
from memosd.storage.sqlite import copy as source_copy
from memosd.storage.urls import POSTGRESQL, check_blob_url, redact, vault_engine

ADMIN_KEY_FILE = "admin.key"
WORK_DIR = ".migrate"
BATCH = 1000
# Progress is reported as (what, done, total): "blobs" (bytes), then each table (rows), then "verify".
Progress = Callable[[str, int, int], None]


@dataclass
class Report:
    """What a migration did: rows and blobs copied by this run (a resumed one counts only its own part)."""

    source_id: str
    rows: dict[str, int] = field(default_factory=dict)
    blobs: int = 0
    blob_bytes: int = 0
    audit_entries: int = 0
    audit_checkpoints: int = 0
    already_done: bool = False
    resumed: bool = False


def migrate(source: Config, target_dir: Path, vault_url: str, *, blob_url: str = "file:", s3_endpoint_url: str = "",
            batch: int = BATCH, progress: Progress | None = None) -> Report:
    """Copy the embedded vault of source.data_dir into the PostgreSQL vault_url (and its blobs into blob_url,
    keys into target_dir). Run it again after an interruption: it continues where it stopped."""
    data_dir, target_dir = Path(source.data_dir).resolve(), Path(target_dir).expanduser().resolve()
    report_to = progress or (lambda what, done, total: None)
    _check_arguments(data_dir, target_dir, vault_url, blob_url, batch)
    _check_idle(source, data_dir)
    work = target_dir / WORK_DIR / source_copy.DB_NAME
    target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = source_copy.copy_database(data_dir, work)
    _check_idle(source, data_dir)  # a daemon that started while the copy was taken may have changed it
    src = source_copy.open_copy(work)
    try:
        return _migrate(source, src, digest, data_dir, target_dir, vault_url, blob_url, s3_endpoint_url, batch,
                        report_to)
    finally:
        src.close()
        source_copy.remove_copy(work)


def _check_arguments(data_dir: Path, target_dir: Path, vault_url: str, blob_url: str, batch: int) -> None:
    if vault_engine(vault_url) != POSTGRESQL:
        raise InvalidArgument("memosd migrate moves a vault into PostgreSQL: give --vault-url postgresql://...")
    check_blob_url(blob_url)
    if batch < 1:
        raise InvalidArgument("the batch size must be at least 1")
    if not (data_dir / source_copy.DB_NAME).is_file():
        raise NotFound(f"{data_dir} holds no embedded vault ({source_copy.DB_NAME}): give the data directory"
                       " of the vault to move with --data-dir")
    if target_dir == data_dir or data_dir in target_dir.parents or target_dir in data_dir.parents:
        raise InvalidArgument(f"the target data directory {target_dir} must be outside the source {data_dir}"
                              " (and not around it): the source is left exactly as it is")


def _check_idle(source: Config, data_dir: Path) -> None:
    """FailedPrecondition while a daemon serves the source: its socket answers, or it has the database open."""
    path = socket_path(source.listen)
    if path is not None and path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            try:
                probe.connect(str(path))
                answered = True
            except OSError:
                answered = False
        if answered:
            raise FailedPrecondition(f"a daemon is serving {data_dir} (its socket {path} answers): stop it first"
                                     " (systemctl stop memosd, or SIGTERM)")
    held = source_copy.holder_of(data_dir)
    if held:
        raise FailedPrecondition(f"{held}: stop the daemon serving {data_dir} first")


def _migrate(source, src, digest, data_dir, target_dir, vault_url, blob_url, s3_endpoint_url, batch,
             report_to) -> Report:
    from memosd.storage.postgres import copy as target_copy
    from memosd.storage.postgres.db import Database as PostgresDatabase

    source_id = source_copy.daemon_id(src)
    if not source_id:
        raise FailedPrecondition(f"the vault in {data_dir} has no daemon id: start it once (memosd serve) first")
    PostgresDatabase(vault_url, create=True).close()  # the schema, made or brought up to date
    shown = redact(vault_url)
    conn = target_copy.connect(vault_url)
    try:
        if not target_copy.lock(conn):
            raise FailedPrecondition(f"another memosd migrate is writing into {shown}: let it finish")
        target_copy.prepare(conn)
        report = Report(source_id)
        earlier = target_copy.migration(conn)
        if earlier is not None:
            report.resumed = True
            _check_same_migration(earlier, source_id, digest, shown)
            report.already_done = earlier[2] is not None
        else:
            held = target_copy.vault_daemon_id(conn)
            if held is not None:
                raise AlreadyExists(f"{shown} already holds a vault (daemon id {held or 'not set'}): migrate into"
                                    " an empty database")
            target_copy.begin(conn, source_id, digest)
        if report.already_done:
            # Nothing to compare with any more: a daemon may have served (and changed) the target since.
            return report
        _copy_files(source, data_dir, target_dir)
        asyncio.run(_copy_blobs(src, conn, data_dir, target_dir, blob_url, s3_endpoint_url, report, report_to))
        _copy_tables(src, conn, batch, report, report_to)
        report_to("verify", 0, 1)
        _check_counts(src, conn)
        asyncio.run(_verify_audit(vault_url, source, target_dir, source_id, report))
        target_copy.finish(conn)
        report_to("verify", 1, 1)
        return report
    finally:
        conn.close()


def _check_same_migration(earlier, source_id: str, digest: str, shown: str) -> None:
    their_id, their_digest, finished = earlier
    if their_id != source_id:
        raise AlreadyExists(f"{shown} holds a migration from another vault (daemon id {their_id}): migrate into"
                            " an empty database")
    if their_digest != digest:
        when = "the migration finished" if finished else "the interrupted migration started"
        raise FailedPrecondition(f"the source vault changed since {when} (a daemon ran on it): drop and recreate"
                                 f" the database {shown}, then migrate again")


def _copy_files(source: Config, data_dir: Path, target_dir: Path) -> None:
    """The admin key, and the audit key with its checkpoint file where they live in the data directory (with
    audit_key set elsewhere, the target's daemon is given the same audit_key)."""
    names = [ADMIN_KEY_FILE]
    if not source.audit_key:
        names += [AUDIT_KEY_FILE, checkpoint_file(data_dir / AUDIT_KEY_FILE).name]
    for name in names:
        _copy_file(data_dir / name, target_dir / name)


def _copy_file(src: Path, dst: Path) -> None:
    try:
        data = src.read_bytes()
    except FileNotFoundError:
        return
    if dst.exists():
        if dst.read_bytes() != data:
            raise AlreadyExists(f"{dst} exists and differs from {src}: give a new, empty target data directory")
        return
    staged = dst.with_name(f".{dst.name}.migrate")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, dst)


async def _copy_blobs(src, conn, data_dir, target_dir, blob_url, s3_endpoint_url, report: Report,
                      report_to: Progress) -> None:
    """Every recorded blob's bytes into the target store, each checked against its digest on the way."""
    from memosd.storage.objects import open_object_store
    from memosd.storage.postgres import copy as target_copy

    done, _, finished = target_copy.progress(conn).get("blob files", (None, 0, False))
    if finished:
        return
    after = done[0] if done else ""
    recorded = source_copy.blobs(src, "", 1 << 62)
    total = sum(size for _, size, _ in recorded)
    sent = sum(size for sha256, size, _ in recorded if sha256 <= after) if after else 0
    store = open_object_store(blob_url, target_dir, s3_endpoint_url=s3_endpoint_url)
    await store.start()
    try:
        for sha256, size, refcount in source_copy.blobs(src, after, 1 << 62):
            path = data_dir / "blobs" / "sha256" / sha256[:2] / sha256
            if path.exists():
                staged = await asyncio.to_thread(_stage, path, store.staging, sha256, size)
                await store.put(staged, sha256, size)
                staged.unlink(missing_ok=True)
                report.blobs, report.blob_bytes = report.blobs + 1, report.blob_bytes + size
            elif refcount > 0:
                raise DataLoss(f"blob {sha256[:16]}... is recorded, and named by a cube, but {path} is missing")
            sent += size
            target_copy.mark(conn, "blob files", (sha256,), False)
            report_to("blobs", sent, total)
        target_copy.mark(conn, "blob files", None, True)
    finally:
        await store.close()


def _stage(path: Path, staging: Path, sha256: str, size: int) -> Path:
    """A copy of the blob file in the store's staging directory, its size and sha256 checked as it is read."""
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = staging / f"migrate-{sha256}"
    digest, length = hashlib.sha256(), 0
    with open(path, "rb") as f, open(staged, "wb") as out:
        while piece := f.read(1 << 20):
            digest.update(piece)
            length += len(piece)
            out.write(piece)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256 or length != size:
        staged.unlink(missing_ok=True)
        raise DataLoss(f"blob {sha256[:16]}... in {path.parent.parent.parent} does not match its digest"
                       f" ({length} bytes hashing to {digest.hexdigest()[:16]}...): the source is damaged")
    return staged


def _copy_tables(src, conn, batch: int, report: Report, report_to: Progress) -> None:
    from memosd.storage.postgres import copy as target_copy

    done = target_copy.progress(conn)
    for table, key in source_copy.TABLES:
        after, copied, finished = done.get(table, (None, 0, False))
        total = source_copy.count(src, table)
        if finished:
            continue
        cols = source_copy.columns(src, table)
        types = target_copy.columns(conn, table)
        unknown = [c for c in cols if c not in types]
        if unknown:
            raise FailedPrecondition(f"the PostgreSQL vault's table {table} has no column {unknown[0]}: upgrade the"
                                     " memosd that made its schema")
        at = [cols.index(k) for k in key]
        while True:
            rows = source_copy.rows_after(src, table, cols, key, after, batch)
            if rows:
                after = tuple(rows[-1][i] for i in at)
            target_copy.write(conn, table, cols, types, rows, after or (), len(rows) < batch)
            copied += len(rows)
            report.rows[table] = report.rows.get(table, 0) + len(rows)
            report_to(table, copied, total)
            if len(rows) < batch:
                break


def _check_counts(src, conn) -> None:
    from memosd.storage.postgres import copy as target_copy

    for table, _ in source_copy.TABLES:
        have, want = target_copy.count(conn, table), source_copy.count(src, table)
        if have != want:
            raise DataLoss(f"the PostgreSQL vault's {table} holds {have} rows, the source {want}: the copy is"
                           " incomplete; drop the database and migrate again")


async def _verify_audit(vault_url: str, source: Config, target_dir: Path, source_id: str, report: Report) -> None:
    """The audit chain and its signed checkpoints, checked on the target as `memosctl audit verify` does."""
    from memosd.governance.signing import AuditSigner
    from memosd.storage.postgres.db import Database as PostgresDatabase

    key = Path(source.audit_key).expanduser() if source.audit_key else target_dir / AUDIT_KEY_FILE  # noqa: ASYNC240
    db = PostgresDatabase(vault_url, create=False, pool_size=1)
    try:
        signer = AuditSigner(db, key)
        await signer.open(source_id)
        found = await signer.verify()
    finally:
        db.close()
    if not found.ok:
        raise DataLoss(f"the audit chain does not verify on the PostgreSQL vault (entry {found.first_bad_seq}:"
                       f" {found.reason})")
    report.audit_entries, report.audit_checkpoints = found.entries, found.checkpoints

