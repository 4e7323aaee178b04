"""Lineage as a caller may see and claim it: a cube's derived_from names only source cubes the caller may read."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from memosd.cube import MemCube
from memosd.errors import NotFound, PermissionDenied
from memosd.storage import Conn
from memosd.vault import rows

# may_read(source) -> bool, from governance (None: the caller reads everything, the admin).
Reader = Callable[[MemCube], bool] | None


def from_guard(guard) -> Reader:
    """A read guard (raising PermissionDenied, or its Hidden, for a cube the caller may not read) as a Reader."""
    if guard is None:
        return None

    def may_read(cube: MemCube) -> bool:
        try:
            guard(cube)
        except PermissionDenied:
            return False
        return True

    return may_read


def sources(sql, conn: Conn, ids: Iterable[str]) -> dict[str, MemCube]:
    """The current rows (tombstones included: History still shows them to their readers) of these ids."""
    wanted = list(dict.fromkeys(ids))
    found = sql.cubes.current_cubes(conn, wanted)  # few queries for the live ones; then one each for the rest
    for cube_id in wanted:
        if cube_id not in found:
            row = sql.cubes.current_row(conn, cube_id)
            if row is not None:
                found[cube_id] = rows.to_cube(row)
    return found


def narrow(sql, conn: Conn, cubes: list[MemCube], may_read: Reader) -> list[MemCube]:
    """The cubes with derived_from narrowed to the sources may_read allows: an id (and the creation time its
    ULID carries) of a cube the caller may not read, or of none at all, is not the caller's to learn."""
    if may_read is None:
        return cubes
    wanted = sorted({i for c in cubes for i in c.derived_from})
    if not wanted:
        return cubes
    known = sources(sql, conn, wanted)
    return [narrow_known(c, known, may_read) for c in cubes]


def with_sources(sql, conn: Conn, records: list) -> list:
    """The records (MemStore's events: .cube and .sources), each cube's sources looked up in conn, so that each
    subscriber is shown those it may read (narrow_known) without a read of its own."""
    wanted = sorted({i for r in records if r.cube is not None for i in r.cube.derived_from})
    if wanted:
        known = sources(sql, conn, wanted)
        for r in records:
            if r.cube is not None and r.cube.derived_from:
                r.sources = {i: known[i] for i in r.cube.derived_from if i in known}
    return records


def narrow_known(cube: MemCube, known: dict[str, MemCube] | None, may_read: Reader) -> MemCube:
    """narrow() of one cube with its sources looked up already (known: sources() of its derived_from; None,
    or an id missing from it, shows no source); the cube itself when nothing is narrowed away."""
    if may_read is None or not cube.derived_from:
        return cube
    known = known or {}
    shown = tuple(i for i in cube.derived_from if i in known and may_read(known[i]))
    return cube if len(shown) == len(cube.derived_from) else replace(cube, derived_from=shown)


async def shown(db, cubes: list[MemCube], may_read: Reader) -> list[MemCube]:
    """narrow() in a read of its own (none when no cube has lineage)."""
    if may_read is None or not any(c.derived_from for c in cubes):
        return cubes
    return await db.read(lambda conn: narrow(db.sql, conn, cubes, may_read))


def _each(sql, conn: Conn, ids: Iterable[str]) -> dict[str, MemCube]:
    """sources() for ids a caller chose (claimed lineage): one lookup per id, whatever it names (a live cube, a
    tombstone, nothing), so the time taken says nothing of which (derived_from holds a bounded number of ids)."""
    found = {}
    for cube_id in dict.fromkeys(ids):
        row = sql.cubes.current_row(conn, cube_id)
        if row is not None:
            found[cube_id] = rows.to_cube(row)
    return found


async def claimable(db, cubes: list[MemCube], may_read: Reader) -> list[MemCube]:
    """Imported cubes with derived_from narrowed to the sources their importer may read: a bundle's lineage may
    point outside it, and is kept as far as it names cubes here that the importer reads, never further."""
    if may_read is None or not any(c.derived_from for c in cubes):
        return cubes
    known = await db.read(lambda conn: _each(db.sql, conn, [i for c in cubes for i in c.derived_from]))
    return [narrow_known(c, known, may_read) for c in cubes]


async def check_claimed(db, derived_from: tuple[str, ...], guard) -> None:
    """A writer may name as sources only cubes it may read: an id of any other, or of none, is refused with the
    same words and in the same time (so the refusal tells nothing), and never credited to its cube (MemScheduler's
    plans count it)."""
    may_read = from_guard(guard)
    if may_read is None or not derived_from:
        return
    found = await db.read(lambda conn: _each(db.sql, conn, derived_from))
    for cube_id in derived_from:
        source = found.get(cube_id)
        if source is None or not may_read(source):
            raise NotFound(f"derived_from: no cube with id {cube_id}")
