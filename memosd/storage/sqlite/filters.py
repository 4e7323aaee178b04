"""CubeFilter conditions as SQLite SQL (a WHERE clause and its parameters), for every query that filters cubes."""

from __future__ import annotations

import json

from memosd.cube import CubeFilter, LifecycleState, Visibility


def filter_sql(f: CubeFilter, now: float, alias: str = "c") -> tuple[str, list]:
    """WHERE conditions (joined by AND) and their parameters for a filter over cubes AS alias."""
    a = alias
    conds: list[str] = []
    params: list = []
    if f.namespace_prefix:
        conds.append(_namespace_sql(f.namespace_prefix, True, a, params))
    if f.kinds:
        conds.append(f"{a}.kind IN ({','.join('?' * len(f.kinds))})")
        params += sorted(int(k) for k in f.kinds)
    for tag in f.tags:
        conds.append(f"{a}.seq IN (SELECT seq FROM cube_tags WHERE tag = ?)")
        params.append(tag)
    if f.created_after is not None:
        conds.append(f"{a}.created_at >= ?")
        params.append(f.created_after)
    if f.created_before is not None:
        conds.append(f"{a}.created_at < ?")
        params.append(f.created_before)
    conds.append(_states_sql(f.states, now, a, params))
    if f.scope is not None:
        conds.append(_scope_sql(f.scope, a, params))
    if f.viewer is not None:
        conds.append(f"({a}.visibility = {Visibility.NAMESPACE:d} OR {a}.owner = ?)")
        params.append(f.viewer)
    return " AND ".join(conds), params


def _namespace_sql(namespace: str, subtree: bool, a: str, params: list) -> str:
    # "p" itself or anything under "p/": '/' sorts just before '0', so the range is index-friendly.
    if not subtree:
        params.append(namespace)
        return f"{a}.namespace = ?"
    params += [namespace, namespace + "/", namespace + "0"]
    return f"({a}.namespace = ? OR ({a}.namespace >= ? AND {a}.namespace < ?))"


# Read-scope rules written into the query as index-friendly conditions (3 variables each, well under
# SQLite's default limit of 32766); a caller granted more is filtered through one JSON parameter.
MAX_INLINE_RULES = 8000
# Conditions OR-ed at one level: SQLite nests "a OR b OR c" one level per term and stops at depth 1000.
_FANOUT = 32


def _scope_sql(scope, a: str, params: list) -> str:
    """Rules (namespace, subtree, kinds) the caller may read, OR-ed: filtering happens in the query."""
    rules = _simplified(scope)
    if len(rules) > MAX_INLINE_RULES:
        params.append(json.dumps([[r.namespace, int(r.subtree), sum(1 << int(k) for k in r.kinds)] for r in rules]))
        ns = "json_extract(r.value, '$[0]')"
        return (f"EXISTS (SELECT 1 FROM json_each(?) r WHERE ({a}.namespace = {ns} OR (json_extract(r.value, '$[1]')"
                f" AND substr({a}.namespace, 1, length({ns}) + 1) = {ns} || '/')) AND (json_extract(r.value, '$[2]') = 0"
                f" OR (json_extract(r.value, '$[2]') >> {a}.kind) & 1))")
    parts = []
    for rule in rules:
        cond = _namespace_sql(rule.namespace, rule.subtree, a, params)
        if rule.kinds:
            cond += f" AND {a}.kind IN ({','.join(str(int(k)) for k in sorted(rule.kinds))})"
        parts.append(f"({cond})")
    return _any_of(parts) if parts else "0"


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
    # A balanced tree of ORs, so that thousands of rules stay far from SQLite's expression depth limit.
    while len(parts) > _FANOUT:
        parts = ["(" + " OR ".join(parts[i:i + _FANOUT]) + ")" for i in range(0, len(parts), _FANOUT)]
    return "(" + " OR ".join(parts) + ")"


def _states_sql(states, now: float, a: str, params: list) -> str:
    # A cube past its expiry counts as expired even before the sweeper has marked it.
    parts = []
    active, archived, expired = (f"{s:d}" for s in (LifecycleState.ACTIVE, LifecycleState.ARCHIVED, LifecycleState.EXPIRED))
    if LifecycleState.ACTIVE in states:
        parts.append(f"({a}.state = {active} AND ({a}.expires_at IS NULL OR {a}.expires_at > ?))")
        params.append(now)
    if LifecycleState.ARCHIVED in states:
        parts.append(f"{a}.state = {archived}")
    if LifecycleState.EXPIRED in states:
        parts.append(f"({a}.state = {expired} OR ({a}.state = {active} AND {a}.expires_at <= ?))")
        params.append(now)
    return "(" + " OR ".join(parts) + ")" if parts else "0"
