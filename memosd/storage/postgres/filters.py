"""CubeFilter conditions as PostgreSQL SQL (a WHERE clause and its parameters), for every query that filters cubes."""

from __future__ import annotations

from memosd.cube import CubeFilter
from memosd.storage import filter_sql as _shared


def _kinds(a: str, kinds: list[int], params: list) -> str:
    params.append(kinds)
    return f"{a}.kind = ANY(%s)"


def _json_scope(a: str) -> str:
    # One jsonb parameter of [namespace, subtree, kinds bitmask] rules (PostgreSQL takes 65535 parameters).
    ns = "(r.value ->> 0)"
    return (f"EXISTS (SELECT 1 FROM jsonb_array_elements(%s::jsonb) r(value) WHERE ({a}.namespace = {ns}"
            f" OR ((r.value ->> 1)::int = 1 AND left({a}.namespace, length({ns}) + 1) = {ns} || '/'))"
            f" AND ((r.value ->> 2)::bigint = 0 OR (((r.value ->> 2)::bigint >> {a}.kind) & 1) = 1))")


DIALECT = _shared.Dialect(mark="%s", false="false", kinds=_kinds, json_scope=_json_scope)


def filter_sql(f: CubeFilter, now: float, alias: str = "c") -> tuple[str, list]:
    """WHERE conditions (joined by AND) and their parameters for a filter over cubes AS alias."""
    return _shared.filter_sql(f, now, alias, DIALECT)


def readable_sql(f: CubeFilter, alias: str = "c") -> tuple[str, list]:
    """The filter's read scope and viewer alone as conditions over cubes AS alias (see the shared readable_sql)."""
    return _shared.readable_sql(f, alias, DIALECT)


def sized_sql(f: CubeFilter, alias: str = "s") -> tuple[str, list]:
    """The filter's read scope, viewer and namespace prefix over search_sizes AS alias (see the shared sized_sql)."""
    return _shared.sized_sql(f, alias, DIALECT)
