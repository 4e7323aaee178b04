"""Client methods for moving memory between systems: backups, export bundles, imports.

Mixed into MemosClient and AsyncMemosClient, which provide `_channel` and `target`.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import tarfile
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from memos_client.backup import BackupWriter
from memos_mip.bundle_format import MANIFEST, MEMOS_NAME, NAME, BundleError, add_directory, safe_extract
from memos_client.errors import AlreadyExists, DataLoss, InvalidArgument, from_rpc_error
from memos_client.steps import END, Next, Offload, method
from memos_mip.v1 import admin_pb2, admin_pb2_grpc, bundle_pb2, bundle_pb2_grpc

CHUNK_BYTES = 1 << 20
# What a client unpacks from its own daemon: generous, but still bounded.
MAX_EXPORT_BYTES = 1 << 40
FORMATS = {"auto": bundle_pb2.BUNDLE_FORMAT_UNSPECIFIED, "memosd": bundle_pb2.BUNDLE_FORMAT_MEMOSD,
           "memos": bundle_pb2.BUNDLE_FORMAT_MEMOS_DUMP}
KINDS = {"plaintext": 1, "activation": 2, "parametric": 3}


@dataclass
class ImportResult:
    """What an import stored, and notes on what it left out."""

    format: str
    cubes: int
    skipped: int
    renamed: int
    tensors: int
    policies_applied: int
    policies_skipped: int
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_proto(cls, msg) -> ImportResult:
        return cls(msg.format, msg.cubes, msg.skipped, msg.renamed, msg.tensors, msg.policies_applied,
                   msg.policies_skipped, list(msg.notes))

    def to_json(self) -> dict:
        return asdict(self)


class PortabilityMethods:
    """Backup, export and import for MemosClient and AsyncMemosClient (memos_client.steps)."""

    def _streaming(self, attempt):
        """Run a streaming call (a function making its steps); once more with a fresh token if the daemon's
        policy epoch moved on, and at the next daemon (of several) when none could be reached."""
        renewed, moves = False, 0
        while True:
            member = self._members.current
            try:
                return (yield from attempt())
            except grpc.RpcError as exc:
                if self._unsent(member, exc, moves):  # no daemon received it: at the next one
                    moves += 1
                    continue
                if renewed or not (yield self._stale(exc)):
                    raise from_rpc_error(exc, member.target) from None
                renewed = True

    @method
    def backup(self, dest: str | Path, *, timeout: float | None = None) -> dict:
        """Write a consistent online backup of the whole daemon into the new directory `dest`
        (admin only); returns its manifest. Restore it with `memosd restore DEST --data-dir DIR`."""
        stub = self._service(admin_pb2_grpc.AdminServiceStub)  # at the daemon in use at each attempt

        def attempt():
            writer = BackupWriter(dest)
            try:
                receive = Next(stub.Backup(admin_pb2.BackupRequest(), timeout=timeout))
                while (chunk := (yield receive)) is not END:
                    writer.feed(chunk)
            finally:
                writer.abort()
            return writer.finish()

        return (yield from self._streaming(attempt))

    @method
    def export(self, dest: str | Path, namespace: str = "", *, kinds=(), omit_policies: bool = False,
               format: str = "memosd", kv_model: str | None = None, timeout: float | None = None) -> dict:
        """Export the cubes under `namespace` (every namespace when empty) that this agent may read, as a
        bundle: a directory, or a tar file when dest ends in .tar or .tar.gz. Returns the manifest.
        format="memos" writes a MemOS MemCube directory instead (memos_export), and returns what it
        wrote and left out; kv_model (the model MemOS is to load: a name or a directory) writes the KV
        caches too, in MemOS's pickle."""
        request = _export_request(namespace, kinds, omit_policies)
        if format == "memosd":
            return (yield from self._export_bundle(dest, request, timeout))
        if format != "memos":
            raise InvalidArgument("format must be memosd or memos")
        if kv_model is not None and kinds and "activation" not in kinds:
            raise InvalidArgument("kv_model writes the KV caches, and --kind leaves them out")
        from memos_client import memos_export

        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise AlreadyExists(f"{dest} exists already; export to a new directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".memosd-memos-export-", dir=dest.parent))
        try:
            yield from self._export_bundle(work / "bundle", request, timeout)
            agent = self.default_namespace.split("/")[1]
            summary = yield Offload(memos_export.write_memos_dump, work / "bundle", work / "memos",
                                    cube_id=namespace or f"agents/{agent}", user_id=agent, kv_model=kv_model)
            if dest.exists():
                dest.rmdir()
            os.replace(work / "memos", dest)
            return summary
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _export_bundle(self, dest, request, timeout):
        stub = self._service(bundle_pb2_grpc.BundleServiceStub)

        def attempt():
            out = _ExportTarget(dest)
            try:
                receive = Next(stub.Export(request, timeout=timeout))
                while (chunk := (yield receive)) is not END:
                    yield Offload(out.write, chunk.data)
            except BaseException:
                out.abort()
                raise
            return (yield Offload(out.finish))

        return (yield from self._streaming(attempt))

    @method
    def import_bundle(self, src: str | Path, namespace: str = "", *, format: str = "auto",
                      allow_pickle: bool = False, skip_policies: bool = False, model: str | Path | None = None,
                      timeout: float | None = None) -> ImportResult:
        """Import a bundle (directory, .tar or .tar.gz) or a MemOS MemCube dump directory under
        `namespace` (empty: the bundle's own namespaces; for a MemOS dump agents/AGENT/memos/CUBE).
        allow_pickle lets the daemon read a MemOS activation_memory.pickle with its tensors-only
        unpickler; model (a local model directory, with allow_pickle) binds the dump's KV caches to that
        model here and stores them as activation cubes."""
        from memos_client import memos_import

        path = Path(src)
        memos = memos_import.is_memos_dir(path, format)
        if memos and not namespace and path.is_dir():
            namespace = memos_import.dump_namespace(path, self.default_namespace.split("/")[1])
        bound = None
        if model is not None:
            if not (memos and path.is_dir()):
                raise InvalidArgument("--model binds the KV caches of a MemOS dump directory; this is not one")
            if not allow_pickle:
                raise InvalidArgument("--model binds the caches of the dump's activation_memory.pickle, which is"
                                      " read only with --allow-pickle: pass both")
            bound = yield Offload(memos_import.bind_caches, path, model)  # every cache checked before sending
        start = _import_start(namespace, format, allow_pickle and bound is None, skip_policies)
        stub = self._service(bundle_pb2_grpc.BundleServiceStub)
        skipped: list[str] = []

        def attempt():
            skipped.clear()
            source = _ImportSource(src, format, exclude=bound.files if bound else (),
                                   skipped=skipped if memos else None)

            def requests():
                yield start
                for data in source.chunks():
                    yield bundle_pb2.ImportRequest(data=data)

            try:
                return ImportResult.from_proto((yield stub.Import(self._requests(requests()), timeout=timeout)))
            except grpc.RpcError:
                if source.error is not None:
                    raise source.error from None
                raise
            finally:
                source.close()

        result = yield from self._streaming(attempt)
        if skipped:
            result.notes.append(f"ignored {', '.join(skipped)}: files in subdirectories or with names a MemOS"
                                " dump does not use were not sent")
        if bound is not None:
            yield from self._store_caches(bound, namespace, result)
        return result

    def _store_caches(self, bound, namespace: str, result: ImportResult):
        """Store the bound caches of a MemOS dump as activation cubes; one already here (the same model and
        tokens in the namespace) is skipped, so a second import adds nothing."""
        for cache in bound.caches:
            ids = list(cache.manifest.token_ids)
            found, matched = yield self.find_kv(bound.fingerprint, ids, namespace)
            if found is not None and matched == len(ids) and found.activation is not None \
                    and found.activation.num_tokens == len(ids):
                result.skipped += 1
                continue
            yield self.upload_blob(cache.payload, namespace)
            yield self.put_activation(cache.manifest, namespace, metadata=cache.metadata, source="memos:kv_cache",
                                      tags=["memos-kv"])
            result.cubes += 1
            result.tensors += 1
        result.notes = [n for n in result.notes if "pickle was not read" not in n]
        result.notes.append(f"{len(bound.caches)} KV caches bound to the model with fingerprint"
                            f" {bound.fingerprint[:16]}… ({', '.join(bound.files)})")


def _import_start(namespace: str, format: str, allow_pickle: bool, skip_policies: bool) -> bundle_pb2.ImportRequest:
    if format not in FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}")
    return bundle_pb2.ImportRequest(start=bundle_pb2.ImportStart(
        namespace=namespace or "", format=FORMATS[format], allow_pickle=allow_pickle, skip_policies=skip_policies))


def _export_request(namespace: str, kinds, omit_policies: bool) -> bundle_pb2.ExportRequest:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InvalidArgument(f"unknown kind {unknown[0]!r}; use {', '.join(KINDS)}")
    return bundle_pb2.ExportRequest(namespace_prefix=namespace or "", kinds=[KINDS[k] for k in kinds],
                                    omit_policies=omit_policies)


class _ExportTarget:
    """Where an export's tar bytes go: a .tar (or .tar.gz) file, or a directory it is unpacked into and
    checked against its manifest. Nothing appears at dest unless the export completes."""

    def __init__(self, dest: str | Path):
        self.dest = Path(dest)
        self.is_tar = self.dest.name.endswith((".tar", ".tar.gz", ".tgz"))
        if self.dest.exists() and (self.is_tar or not self.dest.is_dir() or any(self.dest.iterdir())):
            raise AlreadyExists(f"{self.dest} exists already; export to a new path")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=".memosd-export-", dir=self.dest.parent))
        self._tar = self._tmp / "bundle.tar"
        self._file = open(self._tar, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def finish(self) -> dict:
        self._file.close()
        try:
            if self.is_tar:
                with tarfile.open(self._tar, "r:") as tar:
                    manifest = json.load(tar.extractfile(MANIFEST))
                if self.dest.name.endswith((".gz", ".tgz")):
                    import gzip

                    with open(self._tar, "rb") as src, gzip.open(self._tmp / "bundle.tar.gz", "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK_BYTES)
                    os.replace(self._tmp / "bundle.tar.gz", self.dest)
                else:
                    os.replace(self._tar, self.dest)
                return manifest
            try:
                files = safe_extract(self._tar, self._tmp / "bundle", max_bytes=MAX_EXPORT_BYTES)
            except BundleError as exc:
                raise DataLoss(f"the daemon sent a damaged bundle: {exc}") from None
            manifest = json.loads(files[MANIFEST].read_bytes())
            for entry in manifest["files"]:
                path = files.get(entry["path"])
                if path is None or _sha256(path) != entry["sha256"]:
                    raise DataLoss(f"the exported {entry['path']} does not match its digest")
            if self.dest.exists():
                self.dest.rmdir()
            os.replace(self._tmp / "bundle", self.dest)
            return manifest
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def abort(self) -> None:
        self._file.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


class _ImportSource:
    """The bytes of a bundle to send: a tar file as it is, or a directory packed into a tar on a thread
    (links and names a bundle may not hold are refused before anything is sent)."""

    def __init__(self, src: str | Path, format: str, *, exclude=(), skipped: list[str] | None = None):
        if format not in FORMATS:
            raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}")
        self.src = Path(src)
        if not self.src.exists():
            raise InvalidArgument(f"{self.src} does not exist")
        self.pattern = MEMOS_NAME if format == "memos" or (
            format == "auto" and self.src.is_dir() and not (self.src / MANIFEST).exists()) else NAME
        if exclude:  # files the client has read itself (a MemOS dump's pickles, bound to a model)
            self.pattern = re.compile(f"(?!(?:{'|'.join(map(re.escape, exclude))})$)(?:{self.pattern.pattern})")
        self.skipped = skipped
        self.error: Exception | None = None
        self._stop = threading.Event()

    def chunks(self):
        if self.src.is_file():
            with open(self.src, "rb") as f:
                while data := f.read(CHUNK_BYTES):
                    yield data
            return
        pipe: queue.Queue = queue.Queue(8)
        thread = threading.Thread(target=self._pack, args=(pipe,), name="memosctl-pack", daemon=True)
        thread.start()
        while True:
            try:
                item = pipe.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():  # closed (the call ended, a retry may follow): the packer stopped too
                    return
                continue
            if item is None:
                break
            if isinstance(item, Exception):
                self.error = item
                raise item
            yield item
        thread.join()

    def _pack(self, pipe: queue.Queue) -> None:
        writer = _QueueWriter(pipe, self._stop)
        try:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                add_directory(tar, self.src, self.pattern, self.skipped)
            writer.flush_all()
            writer.put(None)
        except BundleError as exc:
            writer.put(InvalidArgument(str(exc)))
        except BrokenPipeError:
            pass
        except Exception as exc:  # reading the directory failed: say so instead of hanging the stream
            writer.put(InvalidArgument(f"cannot read {self.src}: {exc}"))

    def close(self) -> None:
        self._stop.set()


class _QueueWriter:
    def __init__(self, pipe: queue.Queue, stop: threading.Event):
        self.pipe, self.stop, self.buffer = pipe, stop, bytearray()

    def write(self, data) -> int:
        self.buffer += data
        while len(self.buffer) >= CHUNK_BYTES:
            self.put(bytes(self.buffer[:CHUNK_BYTES]))
            del self.buffer[:CHUNK_BYTES]
        return len(data)

    def flush_all(self) -> None:
        if self.buffer:
            self.put(bytes(self.buffer))
            self.buffer.clear()

    def put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.pipe.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise BrokenPipeError("the import was abandoned")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()
