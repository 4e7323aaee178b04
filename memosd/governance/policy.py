"""Policy documents: parsing, namespace patterns, and what a grant covers (pure functions)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from memos_mip.bounds import JSONLimitError, loads, quote
from memosd.cube import MemoryKind
from memosd.errors import InvalidArgument
from memosd.limits import check_namespace, check_time

ACTIONS = frozenset({"read", "write", "delete", "share", "publish", "subscribe", "admin"})
KINDS = {"plaintext": MemoryKind.PLAINTEXT, "activation": MemoryKind.ACTIVATION, "parametric": MemoryKind.PARAMETRIC}
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SUBJECT = re.compile(r"(agent|group):([a-z0-9][a-z0-9_-]{0,63})")
# A policy names a subject, a few actions and kinds, and its namespace patterns (100 bytes or so each).
MAX_DOCUMENT_BYTES = 64 << 10


def check_name(name: str, what: str = "agent name") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidArgument(f"{what} {quote(name)} must be 1-64 lowercase ASCII letters, digits, '_' or '-'")
    return name


POLICY_ID = re.compile(r"pol_[0-9a-f]{8,64}")


def check_policy_id(policy_id: str) -> str:
    if not isinstance(policy_id, str) or not POLICY_ID.fullmatch(policy_id):
        raise InvalidArgument(f"{quote(policy_id)} is not a policy id (pol_ and 8-64 lowercase hex digits)")
    return policy_id


@dataclass(frozen=True)
class Pattern:
    """A namespace, or with subtree=True that namespace and everything below it ("ns/**")."""

    namespace: str
    subtree: bool

    @classmethod
    def parse(cls, text: str, what: str = "policy namespace") -> Pattern:
        subtree = text.endswith("/**")
        base = text[:-3] if subtree else text
        check_namespace(base, what=what)
        return cls(base, subtree)

    def matches(self, namespace: str) -> bool:
        if namespace == self.namespace:
            return True
        return self.subtree and namespace.startswith(self.namespace + "/")

    def covers(self, other: Pattern) -> bool:
        """True if every namespace `other` matches is matched by this pattern."""
        if not self.subtree:
            return not other.subtree and other.namespace == self.namespace
        return self.matches(other.namespace)

    def __str__(self) -> str:
        return self.namespace + ("/**" if self.subtree else "")


@dataclass(frozen=True)
class Policy:
    """A parsed, validated policy document."""

    id: str
    issuer: str
    subject: str
    actions: frozenset[str]
    patterns: tuple[Pattern, ...]
    kinds: frozenset[MemoryKind]  # empty: every kind
    not_before: float
    expires_at: float | None
    issued_at: float

    def active(self, now: float) -> bool:
        return self.not_before <= now and (self.expires_at is None or now < self.expires_at)

    def grants(self, action: str, namespace: str, kind: MemoryKind | None) -> bool:
        if action not in self.actions and "admin" not in self.actions:
            return False
        if kind is not None and self.kinds and kind not in self.kinds:
            return False
        return any(p.matches(namespace) for p in self.patterns)


@dataclass(frozen=True)
class Share:
    """A cube published on a topic, and the authority it was published under: the publisher's own (`own`:
    it owns the cube's namespace, or is the admin) or the policies that let it read and share the cube
    (None: recorded before authorities were kept; the publisher's grants of the moment decide)."""

    topic: str
    publisher: str
    own: bool = False
    policies: frozenset[str] | None = None


def parse_policy(document: bytes, *, stored: bool = False) -> Policy:
    """Validate a policy document; InvalidArgument says what is wrong. A stored one (read back at start)
    is not held to the time range checked since, so that no grant made before is lost."""
    try:
        doc = loads(document, what="policy document", max_bytes=MAX_DOCUMENT_BYTES)
    except JSONLimitError as exc:
        raise InvalidArgument(str(exc)) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidArgument(f"policy document is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise InvalidArgument("policy document must be an object with \"version\": 1")
    try:
        pid, issuer, subject = doc["id"], doc["issuer"], doc["subject"]
        actions, namespaces, kinds = doc["actions"], doc["namespaces"], doc.get("kinds") or []
        issued_at, not_before, expires_at = doc["issued_at"], doc.get("not_before") or doc["issued_at"], doc.get("expires_at")
    except KeyError as exc:
        raise InvalidArgument(f"policy document lacks {exc}") from None
    if not (isinstance(pid, str) and POLICY_ID.fullmatch(pid)):
        raise InvalidArgument("policy id must look like pol_<hex>")
    check_name(issuer, "policy issuer")
    if not isinstance(subject, str) or not SUBJECT.fullmatch(subject):
        raise InvalidArgument(f"policy subject {quote(subject)} must be agent:<name> or group:<name>")
    if not isinstance(actions, list) or not actions or not set(actions) <= ACTIONS:
        raise InvalidArgument(f"policy actions must be a non-empty list of {', '.join(sorted(ACTIONS))}")
    if not isinstance(namespaces, list) or not namespaces:
        raise InvalidArgument("policy namespaces must be a non-empty list like [\"teams/research/**\"]")
    if not isinstance(kinds, list) or not set(kinds) <= set(KINDS):
        raise InvalidArgument(f"policy kinds must be a list of {', '.join(KINDS)}")
    for value, what in ((issued_at, "issued_at"), (not_before, "not_before")):
        if not isinstance(value, (int, float)):
            raise InvalidArgument(f"policy {what} must be unix seconds")
    if expires_at is not None and (not isinstance(expires_at, (int, float)) or expires_at <= not_before):
        raise InvalidArgument("policy expires_at must be unix seconds after not_before")
    if not stored:
        for value, what in ((issued_at, "issued_at"), (not_before, "not_before"), (expires_at, "expires_at")):
            if value is not None:
                check_time(value, f"policy {what}")
    return Policy(
        id=pid, issuer=issuer, subject=subject, actions=frozenset(actions),
        patterns=tuple(Pattern.parse(n) for n in namespaces if isinstance(n, str)) or _bad_namespaces(),
        kinds=frozenset(KINDS[k] for k in kinds), not_before=float(not_before),
        expires_at=float(expires_at) if expires_at is not None else None, issued_at=float(issued_at),
    )


def _bad_namespaces():
    raise InvalidArgument("policy namespaces must be strings")


def owned_pattern(agent: str) -> Pattern:
    """Every agent owns agents/<name>/ and everything below it."""
    return Pattern(f"agents/{agent}", True)
