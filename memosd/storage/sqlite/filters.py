"""CubeFilter conditions as SQLite SQL (a WHERE clause and its parameters), for every query that filters cubes."""

from __future__ import annotations

from memosd.cube import CubeFilter
from memosd.storage import filter_sql as _shared


def _kinds(a: str, kinds: list[int], params: list) -> str:
    params += kinds
    return f"{a}.kind IN ({','.join('?' * len(kinds))})"


def _json_scope(a: str) -> str:
    ns = "json_extract(r.value, '$[0]')"
    return (f"EXISTS (SELECT 1 FROM json_each(?) r WHERE ({a}.namespace = {ns} OR (json_extract(r.value, '$[1]')"
            f" AND substr({a}.namespace, 1, length({ns}) + 1) = {ns} || '/')) AND (json_extract(r.value, '$[2]') = 0"
            f" OR (json_extract(r.value, '$[2]') >> {a}.kind) & 1))")


DIALECT = _shared.Dialect(mark="?", false="0", kinds=_kinds, json_scope=_json_scope)


def filter_sql(f: CubeFilter, now: float, alias: str = "c") -> tuple[str, list]:
    """WHERE conditions (joined by AND) and their parameters for a filter over cubes AS alias."""
    return _shared.filter_sql(f, now, alias, DIALECT)


def sized_sql(f: CubeFilter, alias: str = "s") -> tuple[str, list]:
    """The filter's read scope, viewer and namespace prefix as conditions over search_sizes AS alias."""
    return _shared.sized_sql(f, alias, DIALECT)


def readable_sql(f: CubeFilter, alias: str = "c") -> tuple[str, list]:
    """The filter's read scope and viewer alone as conditions over cubes AS alias (see the shared readable_sql)."""
    return _shared.readable_sql(f, alias, DIALECT)
