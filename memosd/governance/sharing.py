"""Topic shares for MemGovernance: the authority a share is made under, and whether it still holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from memosd.cube import MemoryKind, Visibility
from memosd.errors import Hidden, PermissionDenied
from memosd.governance.policy import Policy, Share, owned_pattern

if TYPE_CHECKING:
    from memosd.governance.core import AgentRecord, PolicyRecord, Principal

SHARE_CACHE_SECONDS = 1.0  # the longest a decision is reused; revocations clear it at once


class Sharing:
    """Mixed into MemGovernance (it needs its agents, grants and clock). Every event a subscriber is sent
    asks share_holds, so decisions are cached until the next governance change, the first expiry among the
    policies they rest on, or a second, whichever comes first."""

    if TYPE_CHECKING:  # what the mixin uses of MemGovernance, declared for the type checker
        clock: Callable[[], float]
        _agents: dict[str, AgentRecord]
        _policies: dict[str, PolicyRecord]
        _generation: int

        @staticmethod
        def _principal(agent: AgentRecord) -> Principal: ...
        def can(self, p: Principal, action: str, namespace: str, kind: MemoryKind | None = None) -> bool: ...
        def may_read_cube(self, p: Principal, cube) -> bool: ...
        def grants_cube(self, p: Principal, action: str, cube) -> bool: ...
        def _effective(self, p: Principal) -> list[Policy]: ...

    def _init_sharing(self) -> None:
        self._share_cache: dict[tuple, tuple[bool, float]] = {}
        self._next_turn = (-1, math.inf, math.inf)  # (generation, from when, the next start or end of a policy)

    def decided_until(self, now: float) -> float:
        """Until when a decision made now may be reused while governance is unchanged (its generation): a second
        on (SHARE_CACHE_SECONDS), the next half-minute (when _effective looks again at who may grant what), or
        the next moment any policy starts or ends (one of the decision's or its publishers' grants), if sooner."""
        generation, since, turn = self._next_turn
        if generation != self._generation or not since <= now < turn:
            turn = min((t for r in self._policies.values() if r.revoked_at is None
                        for t in (r.policy.not_before, r.policy.expires_at) if t is not None and t > now),
                       default=math.inf)
            self._next_turn = (self._generation, now, turn)
        return min(now + SHARE_CACHE_SECONDS, (now // 30 + 1) * 30, turn)

    def share_authority(self, p, cube, topic: str) -> Share:
        """The authority under which p may make the cube readable on a topic: p's own, or the policies
        granting it read and share (both: publishing lets the topic's subscribers read it)."""
        if not self.may_read_cube(p, cube):
            raise Hidden(f"no cube with id {cube.id} to publish")
        if not (self.grants_cube(p, "share", cube) and self.grants_cube(p, "read", cube)):
            raise PermissionDenied(f"agent {p.name} may not share cube {cube.id}: publishing it needs read and share")
        if p.admin or owned_pattern(p.name).matches(cube.namespace):
            return Share(topic, p.name, own=True)
        now = self.clock()
        used = frozenset(pol.id for pol in self._effective(p) if pol.active(now) and (
            pol.grants("read", cube.namespace, cube.kind) or pol.grants("share", cube.namespace, cube.kind)))
        return Share(topic, p.name, policies=used)

    def share_holds(self, share: Share, cube) -> bool:
        """Does the authority a share was made under still hold? It ends with the publisher, with the
        publisher's right to publish on the topic, or with the policies it was made under (revoked, expired,
        or their issuer's authority gone); a later grant is not the same authority, the publisher has to
        publish again."""
        visibility = int(getattr(cube, "visibility", Visibility.NAMESPACE))
        if visibility == Visibility.OWNER:
            # An owner-only version is its owner's and the admin's alone (they read it by their own grants), shared
            # or not: a share would otherwise hand its subscribers every owner-only version, older and later ones too.
            return False
        # The generation: a decision made in a reader thread from the state of before a change is never reused.
        key = (self._generation, share, cube.id, cube.namespace, cube.kind, cube.owner, visibility)
        now = self.clock()
        found = self._share_cache.get(key)
        if found is not None and now < found[1]:
            return found[0]
        holds, until = self._decide_share(share, cube, now)
        if len(self._share_cache) > 10_000:
            self._share_cache.clear()
        self._share_cache[key] = (holds, min(until, now + SHARE_CACHE_SECONDS))
        return holds

    def _decide_share(self, share: Share, cube, now: float) -> tuple[bool, float]:
        """(holds, until when that answer may be reused at the latest)."""
        agent = self._agents.get(share.publisher)
        if agent is None or agent.revoked_at is not None:
            return False, math.inf
        publisher = self._principal(agent)
        if not (self.grants_cube(publisher, "read", cube) and self.grants_cube(publisher, "share", cube)):
            return False, math.inf
        if not self.can(publisher, "publish", share.topic, cube.kind):
            return False, math.inf  # the grant that let it publish there ended: so does what it published
        if share.own:
            return publisher.admin or owned_pattern(publisher.name).matches(cube.namespace), math.inf
        held = [pol for pol in self._effective(publisher)
                if pol.active(now) and (share.policies is None or pol.id in share.policies)]
        holds = all(any(pol.grants(a, cube.namespace, cube.kind) for pol in held) for a in ("read", "share"))
        return holds, min((pol.expires_at for pol in held if pol.expires_at is not None), default=math.inf)

    def _forget_shares(self) -> None:
        self._share_cache = {}
