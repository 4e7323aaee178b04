"""CubeFilter conditions as SQL, written once: each engine's filters module supplies only its dialect."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from memosd.cube import CubeFilter, LifecycleState, Visibility

# Read-scope rules written into the query as index-friendly conditions (3 parameters each, well under both
# engines' limits); a caller granted more is filtered through one JSON parameter.
MAX_INLINE_RULES = 8000
# Conditions OR-ed at one level: SQLite nests "a OR b OR c" one level per term and stops at depth 1000, and a
# flat OR of thousands of terms plans slowly on PostgreSQL too.
_FANOUT = 32


@dataclass(frozen=True)
class Dialect:
    """What differs between engines: the parameter marker, false, a kinds list, and the JSON scope condition."""

    mark: str
    false: str
    kinds: Callable[[str, list[int], list], str]  # (alias, kinds, params) -> condition
    json_scope: Callable[[str], str]  # alias -> EXISTS over one JSON parameter of [namespace, subtree, kinds mask]


def filter_sql(f: CubeFilter, now: float, alias: str, d: Dialect) -> tuple[str, list]:
    """WHERE conditions (joined by AND) and their parameters for a filter over cubes AS alias."""
    a, m = alias, d.mark
    conds: list[str] = []
    params: list = []
    if f.namespace_prefix:
        conds.append(_namespace_sql(f.namespace_prefix, True, a, params, m))
    if f.kinds:
        conds.append(d.kinds(a, sorted(int(k) for k in f.kinds), params))
    for tag in f.tags:
        conds.append(f"{a}.seq IN (SELECT seq FROM cube_tags WHERE tag = {m})")
        params.append(tag)
    if f.created_after is not None:
        conds.append(f"{a}.created_at >= {m}")
        params.append(f.created_after)
    if f.created_before is not None:
        conds.append(f"{a}.created_at < {m}")
        params.append(f.created_before)
    conds.append(_states_sql(f.states, now, a, params, d))
    if f.scope is not None:
        conds.append(_scope_sql(f.scope, a, params, d))
    if f.viewer is not None:
        conds.append(f"({a}.visibility = {Visibility.NAMESPACE:d} OR {a}.owner = {m})")
        params.append(f.viewer)
    return " AND ".join(conds), params


def readable_sql(f: CubeFilter, alias: str, d: Dialect) -> tuple[str, list]:
    """Only the filter's read scope and viewer as conditions (in any state): the cubes a caller may read, say to
    count them, with no column but namespace, kind, visibility and owner."""
    conds: list[str] = []
    params: list = []
    if f.scope is not None:
        conds.append(_scope_sql(f.scope, alias, params, d))
    if f.viewer is not None:
        conds.append(f"({alias}.visibility = {Visibility.NAMESPACE:d} OR {alias}.owner = {d.mark})")
        params.append(f.viewer)
    return " AND ".join(conds) or "1 = 1", params


def sized_sql(f: CubeFilter, alias: str, d: Dialect) -> tuple[str, list]:
    """The read scope, viewer and namespace prefix of the filter as conditions over a table with cubes'
    namespace, kind, visibility and owner columns only (a count per namespace, say): who may read, and where."""
    where, params = readable_sql(f, alias, d)
    if not f.namespace_prefix:
        return where, params
    return f"{where} AND {_namespace_sql(f.namespace_prefix, True, alias, params, d.mark)}", params


def _namespace_sql(namespace: str, subtree: bool, a: str, params: list, m: str) -> str:
    # "p" itself or anything under "p/": '/' sorts just before '0' (bytewise: PostgreSQL's names are
    # COLLATE "C"), so the range is index-friendly.
    if not subtree:
        params.append(namespace)
        return f"{a}.namespace = {m}"
    params += [namespace, namespace + "/", namespace + "0"]
    return f"({a}.namespace = {m} OR ({a}.namespace >= {m} AND {a}.namespace < {m}))"


def _scope_sql(scope, a: str, params: list, d: Dialect) -> str:
    """Rules (namespace, subtree, kinds) the caller may read, OR-ed: filtering happens in the query."""
    rules = _simplified(scope)
    if len(rules) > MAX_INLINE_RULES:
        params.append(json.dumps([[r.namespace, int(r.subtree), sum(1 << int(k) for k in r.kinds)] for r in rules]))
        return d.json_scope(a)
    parts = []
    for rule in rules:
        cond = _namespace_sql(rule.namespace, rule.subtree, a, params, d.mark)
        if rule.kinds:
            cond += f" AND {a}.kind IN ({','.join(str(int(k)) for k in sorted(rule.kinds))})"
        parts.append(f"({cond})")
    return _any_of(parts) if parts else d.false


def _simplified(scope) -> list:
    """The rules without repeats and without those a kind-unrestricted subtree rule already covers."""
    unique = {(r.namespace, r.subtree, frozenset(r.kinds)): r for r in scope}
    trees = {r.namespace for r in unique.values() if r.subtree and not r.kinds}

    def covered(r) -> bool:
        parts = r.namespace.split("/")
        ancestors = {"/".join(parts[:i]) for i in range(1, len(parts))}
        return bool(ancestors & trees) or (r.namespace in trees and (r.kinds or not r.subtree))

    return [r for r in unique.values() if not covered(r)]


def _any_of(parts: list[str]) -> str:
    # A balanced tree of ORs, so that thousands of rules stay far from the engines' expression depth limits.
    while len(parts) > _FANOUT:
        parts = ["(" + " OR ".join(parts[i:i + _FANOUT]) + ")" for i in range(0, len(parts), _FANOUT)]
    return "(" + " OR ".join(parts) + ")"


def _states_sql(states, now: float, a: str, params: list, d: Dialect) -> str:
    # A cube past its expiry counts as expired even before the sweeper has marked it.
    parts = []
    active, archived, expired = (f"{s:d}" for s in (LifecycleState.ACTIVE, LifecycleState.ARCHIVED, LifecycleState.EXPIRED))
    if LifecycleState.ACTIVE in states:
        parts.append(f"({a}.state = {active} AND ({a}.expires_at IS NULL OR {a}.expires_at > {d.mark}))")
        params.append(now)
    if LifecycleState.ARCHIVED in states:
        parts.append(f"{a}.state = {archived}")
    if LifecycleState.EXPIRED in states:
        parts.append(f"({a}.state = {expired} OR ({a}.state = {active} AND {a}.expires_at <= {d.mark}))")
        params.append(now)
    return "(" + " OR ".join(parts) + ")" if parts else d.false
