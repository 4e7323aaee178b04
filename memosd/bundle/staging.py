"""Import staging: a private directory per import under the data dir, bounded per agent and by free disk,
removed however the import ends and swept at start-up after a daemon that was killed mid-import."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from collections.abc import AsyncIterator

from memosd.errors import ResourceExhausted

log = logging.getLogger("memosd.bundles")
PREFIX = ".import-"
# Receiving and unpacking bundles: one pool for the process (daemons in tests come and go).
_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="memosd-import")


class Stage:
    """One import's staging directory and the bytes it holds; blocking work on its files goes through run(),
    so that removal waits for a thread still writing there (a cancelled await does not stop the thread)."""

    def __init__(self, staging: ImportStaging, agent: str, path: Path):
        self._staging, self.agent, self.path = staging, agent, path
        self.bytes = 0
        self._inflight: set[Future] = set()

    def add(self, n: int) -> None:
        """Count n more bytes on disk for this import: ResourceExhausted past the agent's bound or the disk's."""
        self._staging._admit(self, n)
        self.bytes += n

    def release(self, n: int) -> None:
        self.bytes = max(0, self.bytes - n)

    async def run(self, fn, *args, **kwargs):
        future = _THREADS.submit(functools.partial(fn, *args, **kwargs))
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return await asyncio.wrap_future(future)

    async def _remove(self) -> None:
        for future in list(self._inflight):
            await asyncio.gather(asyncio.wrap_future(future), return_exceptions=True)
        await asyncio.to_thread(shutil.rmtree, self.path, True)


class ImportStaging:
    """Hands out staging directories: at most max_per_agent imports and max_bytes_per_agent staged bytes per
    agent at once, none that would leave the disk with less than min_free bytes."""

    def __init__(self, data_dir: Path, *, max_per_agent: int, max_bytes_per_agent: int, min_free: int):
        self.data_dir = Path(data_dir)
        self.max_per_agent = max_per_agent
        self.max_bytes_per_agent = max_bytes_per_agent
        self.min_free = min_free
        self._stages: dict[str, list[Stage]] = {}
        self._cleanups: set[asyncio.Task] = set()

    def sweep(self) -> int:
        """Remove what imports of an earlier run left (a kill -9 skips every finally); before serving."""
        removed = 0
        for entry in self.data_dir.glob(f"{PREFIX}*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d import staging directories left by an earlier run", removed)
        return removed

    @contextlib.asynccontextmanager
    async def stage(self, agent: str) -> AsyncIterator[Stage]:
        mine = self._stages.setdefault(agent, [])
        if len(mine) >= self.max_per_agent:
            raise ResourceExhausted(f"agent {agent} has {len(mine)} imports in progress; at most {self.max_per_agent}"
                                    " (max_imports_per_agent): wait for one to end")
        self._check_disk(0)
        stage = Stage(self, agent, self.data_dir / f"{PREFIX}{secrets.token_hex(6)}")
        stage.path.mkdir(mode=0o700)
        mine.append(stage)
        try:
            yield stage
        finally:
            # A task of its own: a second cancellation of the import cannot stop the removal half-way, and the
            # agent's share is given back only once the directory is gone.
            cleanup = asyncio.ensure_future(self._end(stage))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)

    async def _end(self, stage: Stage) -> None:
        try:
            await stage._remove()
        finally:
            mine = self._stages.get(stage.agent, [])
            if stage in mine:
                mine.remove(stage)
            if not mine:
                self._stages.pop(stage.agent, None)

    def _admit(self, stage: Stage, n: int) -> None:
        held = sum(s.bytes for s in self._stages.get(stage.agent, ()))
        if held + n > self.max_bytes_per_agent:
            raise ResourceExhausted(f"agent {stage.agent}'s imports would stage {held + n} bytes; at most"
                                    f" {self.max_bytes_per_agent} bytes (max_import_staging_bytes)")
        self._check_disk(n)

    def _check_disk(self, needed: int) -> None:
        free = shutil.disk_usage(self.data_dir).free
        if free - needed < self.min_free:
            raise ResourceExhausted(f"the daemon's disk has {free} bytes free; imports leave at least {self.min_free}"
                                    " (min_free_disk_bytes)")
