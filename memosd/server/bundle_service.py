"""BundleService: export bundles streamed out, bundles and MemOS dumps streamed in."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from memos_mip.bundle_format import MANIFEST, MEMOS_NAME, NAME, BundleError, safe_extract
from memos_mip.v1 import bundle_pb2
from memosd import __version__, errors
from memosd.bundle.dumper import ChunkPipe, ExportedPolicy, write_bundle
from memosd.bundle.loader import BundleReader, ImportOptions, ImportReport, load_bundle
from memosd.bundle.memos_dump import load_memos_dump
from memosd.bundle.staging import ImportStaging
from memosd.cube import CubeFilter, LifecycleState, MemoryKind
from memosd.errors import InvalidArgument, ResourceExhausted
from memosd.governance.policy import Pattern
from memosd.limits import check_namespace_prefix
from memosd.server.auth import principal
from memosd.server.status import error_named
from memosd.storage.objects.copies import remote_copies

log = logging.getLogger("memosd.bundles")
EXPORTED_STATES = frozenset({LifecycleState.ACTIVE, LifecycleState.ARCHIVED, LifecycleState.EXPIRED})
_ANY_NAME = re.compile(f"(?:{NAME.pattern})|(?:{MEMOS_NAME.pattern})")
_PATTERNS = {bundle_pb2.BUNDLE_FORMAT_UNSPECIFIED: _ANY_NAME, bundle_pb2.BUNDLE_FORMAT_MEMOSD: NAME,
             bundle_pb2.BUNDLE_FORMAT_MEMOS_DUMP: MEMOS_NAME}


class BundleService:
    def __init__(self, vault, governance, data_dir: Path, tensors=None, objects=None):
        self.vault = vault
        self.objects = objects  # the blob store an export's payloads come from (remote: fetched, verified)
        self.gov = governance
        self.data_dir = Path(data_dir)
        self.tensors = tensors
        limits = vault.limits
        self.staging = ImportStaging(self.data_dir, max_per_agent=limits.max_imports_per_agent,
                                     max_bytes_per_agent=limits.max_import_staging_bytes,
                                     min_free=limits.min_free_disk_bytes)
        self.staging.sweep()  # built before the daemon serves: no import of this run is staged yet

    async def Export(self, request, context):
        p = principal()
        prefix = check_namespace_prefix(request.namespace_prefix)
        try:
            kinds = frozenset(MemoryKind(k) for k in request.kinds)
        except ValueError:
            raise InvalidArgument("kinds must be PLAINTEXT, ACTIVATION or PARAMETRIC") from None
        f = self.gov.readable(p, CubeFilter(namespace_prefix=prefix, kinds=kinds, states=EXPORTED_STATES))
        policies = [] if request.omit_policies else self._policies(p, prefix)
        pipe = ChunkPipe()
        producer = {"software": "memosd", "version": __version__, "daemon_id": self.gov.daemon_id}

        copies = remote_copies(self.objects)

        def run():
            try:
                summary = write_bundle(pipe, vault=self.vault, data_dir=self.data_dir, root=prefix, cube_filter=f,
                                       policies=policies, producer=producer, copies=copies)
            except BaseException as exc:
                pipe.finish(exc if isinstance(exc, errors.MemosError) else RuntimeError(f"export failed: {exc!r}"))
                raise
            pipe.finish()
            return summary

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            async for chunk in pipe.chunks():
                yield bundle_pb2.ExportChunk(data=chunk)
            summary = await task
        finally:
            pipe.cancel()
            if not task.done():
                await asyncio.gather(task, return_exceptions=True)
            elif not task.cancelled():
                task.exception()  # retrieved: the reader has re-raised it already
        await self.gov.audit(p.name, "bundle.export", prefix or "*", cubes=summary.cubes, policies=summary.policies,
                             bytes=summary.bytes)
        log.info("exported %d cubes under %r to %s", summary.cubes, prefix or "*", p.name)

    def _policies(self, p, prefix: str) -> list[ExportedPolicy]:
        """Active policies the caller may see that grant on the exported namespaces."""
        found = []
        for record in self.gov.list_policies(p):
            pol = record.policy
            if prefix and not any(_overlaps(pattern, prefix) for pattern in pol.patterns):
                continue
            issuer = self.gov.agent(pol.issuer)
            found.append(ExportedPolicy(pol.id, bytes(record.document), bytes(record.signature), pol.issuer,
                                        bytes(issuer.public_key), record.revoked_at))
        return found

    async def Import(self, requests, context):
        p = principal()
        start = None
        try:
            async with self.staging.stage(p.name) as stage:
                tar_path = stage.path / "bundle.tar"
                limit = self.vault.limits.max_bundle_bytes
                received = 0
                with open(tar_path, "wb") as out:  # noqa: ASYNC230 (opening is quick; writes go to stage.run)
                    async for message in requests:
                        part = message.WhichOneof("part")
                        if start is None:
                            if part != "start":
                                raise InvalidArgument("the first message of Import must be `start`")
                            start = message.start
                            continue
                        if part != "data":
                            raise InvalidArgument("only the first message of Import may be `start`")
                        received += len(message.data)
                        if received > limit:
                            raise ResourceExhausted(f"the bundle is over {limit} bytes (max_bundle_bytes)")
                        stage.add(len(message.data))
                        await stage.run(out.write, message.data)
                if start is None:
                    raise InvalidArgument("Import received no messages; send `start` and then the bundle's bytes")
                if start.namespace:
                    check_namespace_prefix(start.namespace)
                options = ImportOptions(namespace=start.namespace, apply_policies=not start.skip_policies,
                                        allow_pickle=start.allow_pickle)
                stage.add(received)  # unpacked, a bundle is at least as big as its tar (more if compressed)
                files = await stage.run(safe_extract, tar_path, stage.path / "bundle", max_bytes=limit,
                                        pattern=_PATTERNS.get(start.format, _ANY_NAME))
                tar_path.unlink()
                stage.release(2 * received)
                stage.add(sum(path.stat().st_size for path in files.values()))
                report = await self._load(files, start.format, options, p)
        except BundleError as exc:
            raise error_named(exc.kind)(str(exc)) from None
        log.info("imported %d cubes (%s) for %s", report.cubes, report.format, p.name)
        return bundle_pb2.ImportResponse(
            format=report.format, cubes=report.cubes, skipped=report.skipped, renamed=report.renamed,
            tensors=report.tensors, policies_applied=report.policies_applied,
            policies_skipped=report.policies_skipped, notes=report.notes)

    async def _load(self, files: dict, fmt: int, options: ImportOptions, p) -> ImportReport:
        # Decided from the content: a memosd bundle has its manifest; anything else is read as a MemOS dump,
        # whose reader says so when it finds no MemOS memory file either.
        if fmt == bundle_pb2.BUNDLE_FORMAT_MEMOS_DUMP or (fmt == bundle_pb2.BUNDLE_FORMAT_UNSPECIFIED
                                                          and MANIFEST not in files):
            return await load_memos_dump(files, vault=self.vault, governance=self.gov, principal=p, options=options)
        if MANIFEST not in files:
            raise InvalidArgument("the bundle has no manifest.json: it is not a memosd bundle (import it without"
                                  " --format memosd if it is a MemOS dump)")
        reader = BundleReader(files, self.vault.limits, options)
        return await load_bundle(reader, vault=self.vault, governance=self.gov, principal=p, options=options,
                                 tensors=self.tensors)


def _overlaps(pattern: Pattern, prefix: str) -> bool:
    """Does a policy pattern grant on anything under the exported prefix (or on the prefix itself)?"""
    below = Pattern(prefix, True)
    return below.matches(pattern.namespace) or (pattern.subtree and pattern.matches(prefix))
