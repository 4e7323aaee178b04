"""MemVault: the store of MemCubes (their records through the storage seam, full-text and vector search)."""

from __future__ import annotations

import asyncio
import builtins  # the class defines list(); annotations after it say builtins.list
import logging
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path

from memos_mip.bounds import quote
from memosd.cube import (
    CubeDraft, CubeFilter, CubePatch, LifecycleState, MemCube, MemoryKind, SearchHit, SearchMode,
)
from memosd.errors import Conflict, FailedPrecondition, Hidden, InvalidArgument, NotFound, PermissionDenied
from memosd.ids import is_id, new_id
from memosd.limits import (
    Limits, check_draft, check_filter, check_metadata, check_priority, check_source, check_tags, check_text,
    resolve_expiry,
)
from memosd.storage import Conn, Lane, open_database
from memosd.storage.records import CubeRow
from memosd.vault import lineage, rows
from memosd.vault.fulltext import FullText, words
from memosd.vault.query import PageTokens
from memosd.vault.search import DenseSearch, fuse

log = logging.getLogger("memosd.vault")
# Cubes expired (and audited) per transaction of a sweep: one commit never holds a large backlog at once.
_EXPIRE_BATCH = 500


@dataclass
class Page:
    cubes: list[MemCube]
    next_token: str
    total: int


class MemVault:
    """Stores, versions and searches MemCubes under one data directory."""

    def __init__(self, data_dir: Path, *, db=None, limits: Limits = Limits(), embedder=None, clock=time.time,
                 audit=None):
        self.data_dir = Path(data_dir)
        self.limits = limits
        self.clock = clock
        self.db = db or open_database(self.data_dir)
        self.sql = self.db.sql
        # audit(conn, agent, action, target, **fields) records a write inside its own transaction.
        self._audit = audit or (lambda conn, agent, action, target, **fields: None)
        self._tokens: PageTokens | None = None  # read (or made) by start() or the first List
        self.dense = DenseSearch(self.db, embedder, self.data_dir) if embedder is not None else None
        self.fulltext = FullText()
        # Access metrics are counted in memory and flushed in batches (MemLifecycle), never on a read's path.
        self._access: dict[str, list] = {}

    async def start(self) -> None:
        await self._page_tokens()
        if self.dense is not None:
            await self.dense.start()

    async def _page_tokens(self) -> PageTokens:
        if self._tokens is None:
            candidate = secrets.token_hex(32)  # kept only by the first start of a data directory
            key = await self.db.write(lambda conn: self.sql.cubes.setting(conn, "page_token_key", candidate))
            self._tokens = PageTokens(key.encode())
        return self._tokens

    async def close(self) -> None:
        if self.dense is not None:
            await self.dense.stop()
        await self.flush_access()
        await asyncio.to_thread(self.db.close)

    # -- writes --------------------------------------------------------------------------------

    async def put_many(self, drafts: list[CubeDraft], owner: str) -> list[MemCube]:
        """Store new plaintext cubes in one transaction; all or none."""
        if not drafts:
            raise InvalidArgument("no cubes given")
        if len(drafts) > self.limits.max_batch:
            raise InvalidArgument(f"{len(drafts)} cubes in one batch; at most {self.limits.max_batch}")
        now = self.clock()
        cubes, contexts = [], []
        for i, draft in enumerate(drafts):
            try:
                d = check_draft(draft, self.limits, now)
            except InvalidArgument as exc:
                raise InvalidArgument(f"cube {i} of the batch: {exc}" if len(drafts) > 1 else str(exc)) from None
            cubes.append(MemCube(
                id=new_id(now), namespace=d.namespace, kind=MemoryKind.PLAINTEXT, created_at=now,
                updated_at=now, owner=owner, text=d.text, tags=d.tags, metadata=d.metadata, source=d.source,
                visibility=d.visibility, priority=d.priority, expires_at=d.expires_at,
            ))
            contexts.append(d.context)

        def job(conn: Conn) -> None:
            self._audit(conn, owner, "vault.put", ",".join(sorted({c.namespace for c in cubes})),
                        ids=[c.id for c in cubes])
            self.sql.cubes.insert_cubes(conn, cubes, contexts if any(contexts) else None)

        await self.db.write(job)
        if self.dense is not None:
            self.dense.wake()
        return cubes

    async def update(self, cube_id: str, patch: CubePatch, actor: str = "", guard=None, reader=None) -> MemCube:
        """Write a new version of a cube with the patched fields; its lineage as reader (lineage.Reader) sees it."""
        self._check_id(cube_id)
        if not patch.fields and patch.state is None:
            raise InvalidArgument("nothing to update: name fields in update_mask, or give a state")
        unknown = patch.fields - {"text", "tags", "metadata", "source", "priority", "visibility", "expires_at", "ttl_seconds"}
        if unknown:
            raise InvalidArgument(f"cannot update {', '.join(sorted(unknown))}; updatable fields are text, tags,"
                                  " metadata, source, priority, visibility, expires_at, ttl_seconds")
        if patch.state not in (None, LifecycleState.ACTIVE, LifecycleState.ARCHIVED):
            raise InvalidArgument("state may only be set to ACTIVE or ARCHIVED; use Delete to delete")
        v, now = patch.values, self.clock()
        changes: dict = {}
        if "text" in patch.fields:
            changes["text"] = check_text(v.text, self.limits)
        if "tags" in patch.fields:
            changes["tags"] = check_tags(v.tags, self.limits)
        if "metadata" in patch.fields:
            changes["metadata"] = rows.dumps(check_metadata(v.metadata, self.limits))
        if "source" in patch.fields:
            changes["source"] = check_source(v.source, self.limits)
        if "priority" in patch.fields:
            changes["priority"] = check_priority(v.priority)
        if "visibility" in patch.fields:
            changes["visibility"] = int(v.visibility)
        if patch.fields & {"expires_at", "ttl_seconds"}:
            changes["expires_at"] = resolve_expiry(
                CubeDraft("", "", expires_at=v.expires_at if "expires_at" in patch.fields else None,
                          ttl_seconds=v.ttl_seconds if "ttl_seconds" in patch.fields else 0), now)

        def job(conn: Conn) -> tuple[MemCube, int]:
            row = self._current_row(conn, cube_id, guard)
            if row["state"] == LifecycleState.DELETED:
                raise FailedPrecondition(f"cube {cube_id} was deleted; deleted cubes cannot be updated")
            self._audit(conn, actor, "vault.update", cube_id, version=row["version"] + 1, fields=sorted(changes))
            if patch.expected_version and patch.expected_version != row["version"]:
                raise Conflict(f"cube {cube_id} is at version {row['version']}, not {patch.expected_version};"
                               " re-read it and retry")
            if row["kind"] != MemoryKind.PLAINTEXT and "text" in changes:
                raise InvalidArgument(f"cube {cube_id} is not plaintext; it has no text to update")
            new = dict(row, **changes, version=row["version"] + 1, parent_version=row["version"], updated_at=now)
            if "tags" in changes:
                new["tags"] = rows.dumps(list(changes["tags"]))
            if patch.state is not None:
                new["state"] = int(patch.state)
            elif row["state"] == LifecycleState.EXPIRED and "expires_at" in changes:
                new["state"] = int(LifecycleState.ACTIVE)
            if new["state"] == LifecycleState.ACTIVE and new["expires_at"] is not None and new["expires_at"] <= now:
                new["state"] = int(LifecycleState.EXPIRED)
            self.sql.cubes.write_version(conn, row, new, tags=changes.get("tags"), text_changed="text" in changes)
            return rows.to_cube(new, now), row["seq"]

        cube, seq = await self.db.write(job)
        if self.dense is not None and "text" in changes:
            self.dense.forget([seq])
            self.dense.wake()
        (cube,) = await lineage.shown(self.db, [cube], reader)
        return cube

    async def delete(self, cube_id: str, actor: str = "", guard=None) -> int:
        """Replace a cube by a tombstone; returns the tombstone's version."""
        self._check_id(cube_id)
        now = self.clock()
        seqs = []

        def job(conn: Conn) -> int:
            row = self._current_row(conn, cube_id, guard)
            if row["state"] == LifecycleState.DELETED:
                raise NotFound(f"cube {cube_id} is already deleted")
            self._audit(conn, actor, "vault.delete", cube_id, version=row["version"] + 1)
            seqs.append(row["seq"])
            return self.sql.cubes.tombstone(conn, row, now)

        version = await self.db.write(job)
        if self.dense is not None:
            self.dense.forget(seqs)
        return version

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, cube_id: str, version: int = 0, guard=None) -> MemCube:
        self._check_id(cube_id)
        if version < 0:
            raise InvalidArgument("version must be positive, or 0 for the current one")
        now = self.clock()

        def job(conn: Conn) -> MemCube:
            row = self._current_row(conn, cube_id)
            if version and version != row["version"]:
                older = self.sql.cubes.earlier_version(conn, cube_id, version)
                if older is None:
                    # Only a reader of the cube (of any version of it) learns which versions it has.
                    if guard is not None and not any(_allowed(guard, v) for v in self._versions(conn, row)):
                        guard(rows.to_cube(row))
                    raise NotFound(f"cube {cube_id} has no version {version} (current is {row['version']})")
                # Each version's visibility is its own: a version once owner-only stays so.
                if guard is not None:
                    self._guard_version(conn, guard, older, row)
                return lineage.narrow(self.sql, conn, [older], lineage.from_guard(guard))[0]
            if guard is not None:
                self._guard_version(conn, guard, rows.to_cube(row), row)
            if row["state"] == LifecycleState.DELETED:
                raise NotFound(f"cube {cube_id} was deleted; History still lists its versions")
            return lineage.narrow(self.sql, conn, [rows.to_cube(row, now)], lineage.from_guard(guard))[0]

        cube = await self.db.read(job, lane=Lane.POINT)
        self._count_access([cube], now)
        return cube

    async def list(self, f: CubeFilter, page_size: int, page_token: str = "") -> Page:
        check_filter(f, self.limits)
        tokens = await self._page_tokens()
        after, total = tokens.read(page_token, f) if page_token else (0, None)
        now = self.clock()

        def job(conn: Conn) -> Page:
            # Counted for the first page only; later pages carry it in their token.
            found, counted = self.sql.cubes.list_page(conn, f, now, after, page_size + 1, count=total is None)
            count = total if total is not None else counted
            page = found[:page_size]
            token = tokens.make(page[-1]["seq"], f, count) if len(found) > page_size else ""
            return Page(lineage.narrow(self.sql, conn, [rows.to_cube(r, now) for r in page], f.reader), token, count)

        return await self.db.read(job)

    async def history(self, cube_id: str, guard=None) -> builtins.list[MemCube]:
        self._check_id(cube_id)

        def job(conn: Conn) -> builtins.list[MemCube]:
            row = self._current_row(conn, cube_id)
            versions = self._versions(conn, row)
            if guard is None:
                return versions
            # Decided per version: the caller gets the versions it may read, nothing of the others
            # (their numbers show they exist, as parent_version does), and guard's Hidden if none.
            readable = [v for v in versions if _allowed(guard, v)]
            if not readable:
                guard(versions[-1])
            return lineage.narrow(self.sql, conn, readable, lineage.from_guard(guard))

        return await self.db.read(job, lane=Lane.POINT)

    async def search(self, query: str, f: CubeFilter, limit: int, mode: SearchMode = SearchMode.AUTO,
                     fts_syntax: bool = False) -> tuple[builtins.list[SearchHit], SearchMode]:
        """Rank plaintext cubes against a query; returns hits (best first) and the mode used."""
        check_filter(f, self.limits)
        if not query.strip():
            raise InvalidArgument("query is empty")
        size = len(query.encode("utf-8", "replace"))
        if size > self.limits.max_query_bytes:
            raise InvalidArgument(f"query is {size} bytes; the limit is {self.limits.max_query_bytes}: search for"
                                  " fewer words")
        if not 0 <= limit <= self.limits.max_page_size:
            raise InvalidArgument(f"limit must be between 1 and {self.limits.max_page_size} (0 for 10)")
        limit = limit or 10
        if mode is SearchMode.AUTO:
            mode = SearchMode.HYBRID if self.dense is not None else SearchMode.BM25
        if mode is not SearchMode.BM25 and self.dense is None:
            raise FailedPrecondition("dense search needs an embedding model: set embedding_model in the"
                                     " daemon's config, or search with mode BM25")
        now = self.clock()
        lexical = fts_syntax or bool(words(query))
        if not lexical and mode is SearchMode.BM25:
            raise InvalidArgument("query has no words to search for")
        depth = max(limit, 50) if mode is SearchMode.HYBRID else limit
        # BM25 (on a reader thread) and dense (the encoder, then the index) run side by side.
        rankings = {}
        if lexical and mode is not SearchMode.DENSE:
            # Fused, only the best `limit` must be BM25's own; the rest are candidates (FullText.search's top).
            rankings["lexical"] = self.fulltext.search(self.db, query, fts_syntax, f, now, depth, top=limit)
        if mode is not SearchMode.BM25:
            assert self.dense is not None  # refused above: every mode but BM25 needs it
            rankings["semantic"] = self.dense.search(query, f, now, depth)
        found = dict(zip(rankings, await asyncio.gather(*rankings.values())))
        hits = fuse(found.get("lexical", []), found.get("semantic", []), limit, now)
        shown = await lineage.shown(self.db, [h.cube for h in hits], f.reader)
        hits = [h if h.cube is c else replace(h, cube=c) for h, c in zip(hits, shown)]
        self._count_access([h.cube for h in hits], now)
        return hits, mode

    async def stats(self) -> dict:
        def job(conn: Conn) -> dict:
            counts = self.sql.cubes.counts(conn)
            return {"counts": [(MemoryKind(k), LifecycleState(s), n) for k, s, n in counts]}

        stats = await self.db.read(job)
        stats["data_bytes"] = sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())
        stats["embedding_model"] = self.dense.model_name if self.dense else ""
        stats["embedding_backlog"] = await self.dense.backlog() if self.dense else 0
        return stats

    # -- behaviour metrics ---------------------------------------------------------------------

    def _count_access(self, cubes: builtins.list[MemCube], now: float) -> None:
        for cube in cubes:
            entry = self._access.setdefault(cube.id, [0, now])
            entry[0] += 1
            entry[1] = now
            cube.access_count += entry[0]
            cube.last_accessed_at = now

    async def flush_access(self) -> int:
        """Write the access counts gathered since the last flush; returns how many cubes."""
        pending, self._access = self._access, {}
        if not pending:
            return 0

        access = [(cube_id, n, last) for cube_id, (n, last) in pending.items()]
        await self.db.write(lambda conn: self.sql.usage.record_access(conn, access))
        return len(pending)

    async def expire_due(self, member: str = "") -> int:
        """Mark active cubes whose expiry has passed as expired, each audited (lifecycle.expire, by the daemon
        `member`) in the transaction that marks it; returns how many."""
        now = self.clock()

        def batch(conn: Conn) -> int:
            expired = self.sql.cubes.expire_batch(conn, now, _EXPIRE_BATCH)
            for cube_id in expired:
                self._audit(conn, "memosd", "lifecycle.expire", cube_id, member=member)
            return len(expired)

        total = 0
        while True:
            count = await self.db.write(batch)
            total += count
            if count < _EXPIRE_BATCH:
                return total

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _check_id(cube_id: str) -> None:
        if not is_id(cube_id):
            raise InvalidArgument(f"{quote(cube_id)} is not a cube id (26 characters, like 01J9Z3K5Q8W2E4R6T8Y0V2X4N6)")

    def _current_row(self, conn: Conn, cube_id: str, guard=None) -> CubeRow:
        """The cube's row; guard(cube) (from governance) raises if the caller may not act on it."""
        row = self.sql.cubes.current_row(conn, cube_id)
        if row is None:
            raise NotFound(f"no cube with id {cube_id}")
        if guard is not None:
            guard(rows.to_cube(row))
        return row

    def _versions(self, conn: Conn, row: CubeRow) -> builtins.list[MemCube]:
        """Every version of a cube, oldest first, the current one (row) last."""
        return self.sql.cubes.earlier_versions(conn, row["id"]) + [rows.to_cube(row)]

    def _guard_version(self, conn: Conn, guard, cube: MemCube, row: CubeRow) -> None:
        """guard(cube) for one version. Whoever may read no version is told what an unknown id tells (guard's
        Hidden); a reader of other versions already knows the cube, and is told it may not read this one."""
        try:
            guard(cube)
            return
        except Hidden as exc:
            hidden = exc
        # Decided again for every version together: a grant may have landed since the first decision (guards run
        # here, in a reader thread, while governance changes in the event loop), and a verdict on this version
        # must not be set against verdicts on the others made under other grants.
        readable = {v.version for v in self._versions(conn, row) if _allowed(guard, v)}
        if cube.version in readable:
            return
        if not readable:
            raise hidden
        raise PermissionDenied(f"version {cube.version} of cube {cube.id} is not readable by you;"
                               " History lists the versions you may read") from None


def _allowed(guard, cube: MemCube) -> bool:
    try:
        guard(cube)
    except PermissionDenied:
        return False
    return True
