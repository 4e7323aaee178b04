"""CubeFilter conditions as PostgreSQL SQL (a WHERE clause and its parameters), for every query that filters cubes."""

from __future__ import annotations

import json

from memosd.cube import CubeFilter, LifecycleState, Visibility
# The rule simplification is engine-neutral: both engines write the same rules into their queries.
from memosd.storage.sqlite.filters import MAX_INLINE_RULES, _simplified

# Conditions OR-ed at one level, as in SQLite (PostgreSQL has no depth limit as low, but a flat OR of
# thousands of terms plans slowly too).
_FANOUT = 32


def filter_sql(f: CubeFilter, now: float, alias: str = "c") -> tuple[str, list]:
    """WHERE conditions (joined by AND) and their parameters for a filter over cubes AS alias."""
    a = alias
    conds: list[str] = []
    params: list = []
    if f.namespace_prefix:
        conds.append(_namespace_sql(f.namespace_prefix, True, a, params))
    if f.kinds:
        conds.append(f"{a}.kind = ANY(%s)")
        params.append(sorted(int(k) for k in f.kinds))
    for tag in f.tags:
        conds.append(f"{a}.seq IN (SELECT seq FROM cube_tags WHERE tag = %s)")
        params.append(tag)
    if f.created_after is not None:
        conds.append(f"{a}.created_at >= %s")
        params.append(f.created_after)
    if f.created_before is not None:
        conds.append(f"{a}.created_at < %s")
        params.append(f.created_before)
    conds.append(_states_sql(f.states, now, a, params))
    if f.scope is not None:
        conds.append(_scope_sql(f.scope, a, params))
    if f.viewer is not None:
        conds.append(f"({a}.visibility = {Visibility.NAMESPACE:d} OR {a}.owner = %s)")
        params.append(f.viewer)
    return " AND ".join(conds), params


def _namespace_sql(namespace: str, subtree: bool, a: str, params: list) -> str:
    # "p" itself or anything under "p/": '/' sorts just before '0' (namespace is COLLATE "C"), so the range
    # is index-friendly.
    if not subtree:
        params.append(namespace)
        return f"{a}.namespace = %s"
    params += [namespace, namespace + "/", namespace + "0"]
    return f"({a}.namespace = %s OR ({a}.namespace >= %s AND {a}.namespace < %s))"


def _scope_sql(scope, a: str, params: list) -> str:
    """Rules (namespace, subtree, kinds) the caller may read, OR-ed: filtering happens in the query."""
    rules = _simplified(scope)
    if len(rules) > MAX_INLINE_RULES:
        # One jsonb parameter of [namespace, subtree, kinds bitmask] rules (PostgreSQL takes 65535 parameters).
        params.append(json.dumps([[r.namespace, int(r.subtree), sum(1 << int(k) for k in r.kinds)] for r in rules]))
        ns = "(r.value ->> 0)"
        return (f"EXISTS (SELECT 1 FROM jsonb_array_elements(%s::jsonb) r(value) WHERE ({a}.namespace = {ns}"
                f" OR ((r.value ->> 1)::int = 1 AND left({a}.namespace, length({ns}) + 1) = {ns} || '/'))"
                f" AND ((r.value ->> 2)::bigint = 0 OR (((r.value ->> 2)::bigint >> {a}.kind) & 1) = 1))")
    parts = []
    for rule in rules:
        cond = _namespace_sql(rule.namespace, rule.subtree, a, params)
        if rule.kinds:
            cond += f" AND {a}.kind IN ({','.join(str(int(k)) for k in sorted(rule.kinds))})"
        parts.append(f"({cond})")
    return _any_of(parts) if parts else "false"


def _any_of(parts: list[str]) -> str:
    while len(parts) > _FANOUT:
        parts = ["(" + " OR ".join(parts[i:i + _FANOUT]) + ")" for i in range(0, len(parts), _FANOUT)]
    return "(" + " OR ".join(parts) + ")"


def _states_sql(states, now: float, a: str, params: list) -> str:
    # A cube past its expiry counts as expired even before the sweeper has marked it.
    parts = []
    active, archived, expired = (f"{s:d}" for s in (LifecycleState.ACTIVE, LifecycleState.ARCHIVED, LifecycleState.EXPIRED))
    if LifecycleState.ACTIVE in states:
        parts.append(f"({a}.state = {active} AND ({a}.expires_at IS NULL OR {a}.expires_at > %s))")
        params.append(now)
    if LifecycleState.ARCHIVED in states:
        parts.append(f"{a}.state = {archived}")
    if LifecycleState.EXPIRED in states:
        parts.append(f"({a}.state = {expired} OR ({a}.state = {active} AND {a}.expires_at <= %s))")
        params.append(now)
    return "(" + " OR ".join(parts) + ")" if parts else "false"
