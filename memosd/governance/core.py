"""MemGovernance: authenticates tokens, decides access (deny by default), manages agents and policies."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path

from memos_mip.auth import (
    CLOCK_SKEW, MAX_TOKEN_LIFETIME, AgentKey, KeyFileError, fingerprint, read_token, verify_signature,
)
from memosd.cluster.members import member_id
from memos_mip.bounds import JSONLimitError, quote
from memosd.cube import CubeFilter, MemoryKind, Visibility
from memosd.errors import (
    AlreadyExists, Hidden, InvalidArgument, NotFound, PermissionDenied, StaleToken, Unauthenticated,
)
from memosd.governance.auditing import Auditing, DenialBudget
from memosd.governance.sharing import Sharing
from memosd.limits import check_namespace
from memosd.governance.policy import Pattern, Policy, check_name, check_policy_id, owned_pattern, parse_policy
from memosd.governance.signing import AUDIT_KEY_FILE, AuditSigner
from memosd.governance.sync import ClusterSync
from memosd.storage import Conn

log = logging.getLogger("memosd.governance")
ADMIN = "admin"
ADMIN_KEY_FILE = "admin.key"
MAX_CHAIN = 8
TOKEN_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False

    @property
    def subjects(self) -> frozenset[str]:
        return frozenset({f"agent:{self.name}", *(f"group:{g}" for g in self.groups)})


@dataclass
class AgentRecord:
    name: str
    public_key: bytes
    groups: tuple[str, ...]
    admin: bool
    created_at: float
    revoked_at: float | None = None


@dataclass
class PolicyRecord:
    policy: Policy
    document: bytes
    signature: bytes
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class ScopeRule:
    """Part of what a caller may read: a namespace pattern and the kinds (empty: all)."""

    namespace: str
    subtree: bool
    kinds: frozenset[MemoryKind] = frozenset()


class MemGovernance(Auditing, Sharing, ClusterSync):
    """Identities, policies and decisions. Takes the shared Database; keeps agents and policies in memory,
    reloaded when another member of the cluster changes them (ClusterSync)."""

    def __init__(self, db, data_dir: Path, *, clock=time.time, audit_key: Path | None = None):
        self.db = db
        self.sql = db.sql
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.daemon_id = ""
        self.created_admin = False  # whether start() made the vault's admin (a first start), or found one
        self.epoch = 1
        self._agents: dict[str, AgentRecord] = {}
        self._policies: dict[str, PolicyRecord] = {}
        self._tokens: dict[str, dict] = {}
        self._grants: dict[tuple, list[Policy]] = {}
        self._generation = 0  # moved whenever decisions are forgotten; part of every cached decision's key
        self._init_sharing()
        self._init_sync()
        self._changed = asyncio.Event()
        self._denials = DenialBudget()
        self._read_sources: list = []
        # The audit key lives apart from the database (by default beside it, in a file of its own).
        self.signer = AuditSigner(db, audit_key or self.data_dir / AUDIT_KEY_FILE, clock=clock)

    # -- start-up -----------------------------------------------------------------------------

    async def start(self) -> None:
        def load(conn: Conn):
            records = self.sql.governance
            return (records.load_settings(conn), records.governance_version(conn), records.load_agents(conn),
                    records.load_policies(conn))

        defaults = {"daemon_id": "memosd-" + secrets.token_hex(8), "policy_epoch": "1", "governance_version": "0"}
        await self.db.write(lambda conn: self.sql.governance.init_settings(conn, defaults))
        settings, self.version, agents, policies = await self.db.read(load)
        self._agents, self._policies = self._load_records(agents, policies)
        if ADMIN not in self._agents:
            # Members set up at the same moment on an empty vault: one creates the admin, the others find it.
            async with self.db.exclusive("admin"):
                settings, self.version, agents, policies = await self.db.read(load)
                self._agents, self._policies = self._load_records(agents, policies)
                self.daemon_id = settings["daemon_id"]
                if ADMIN not in self._agents:
                    await self._create_admin()
                    self.created_admin = True
        self.daemon_id, self.epoch = settings["daemon_id"], int(settings["policy_epoch"])
        if not self.created_admin and not (self.data_dir / ADMIN_KEY_FILE).exists():
            log.warning("admin key %s is missing; copy it from the member that created the vault (or restore it"
                        " from a backup) to administer this daemon", self.data_dir / ADMIN_KEY_FILE)
        # The admin key vouches for this member's audit key, so that the other members trust its checkpoints.
        await self.signer.open(self.daemon_id, member=member_id(self.data_dir), admin=await asyncio.to_thread(self._admin_key),
                               admin_public=self._agents[ADMIN].public_key)

    def _admin_key(self) -> AgentKey | None:
        try:
            return AgentKey.load(self.data_dir / ADMIN_KEY_FILE)
        except (OSError, KeyFileError):
            return None

    @staticmethod
    def _load_records(agents, policies) -> tuple[dict[str, AgentRecord], dict[str, PolicyRecord]]:
        """The stored rows as the records decisions are made from."""
        by_name = {name: AgentRecord(name, key, groups, admin, created, revoked)
                   for name, key, groups, admin, created, revoked in agents}
        by_id = {}
        for document, signature, created, revoked in policies:
            policy = parse_policy(document, stored=True)
            by_id[policy.id] = PolicyRecord(policy, document, signature, created, revoked)
        return by_name, by_id

    async def _create_admin(self) -> None:
        key = AgentKey.generate(ADMIN, self.daemon_id)
        path = self.data_dir / ADMIN_KEY_FILE
        path.unlink(missing_ok=True)
        key.save(path)
        try:
            await self._store_agent(AgentRecord(ADMIN, key.public_bytes, (), True, self.clock()), actor=ADMIN)
        except BaseException:
            path.unlink(missing_ok=True)  # not the vault's admin: no key file that would pass for it
            raise
        log.info("created the admin key %s (fingerprint %s)", path, fingerprint(key.public_bytes))

    # -- authentication -----------------------------------------------------------------------

    def authenticate(self, token: str | None, *, any_epoch: bool = False) -> Principal:
        """The caller a token proves; Unauthenticated with the reason otherwise. StaleToken (a valid
        token for an old policy epoch) is not a denial: it tells the client to mint a current one.
        any_epoch (WhoAmI only) accepts any epoch, so that a client can learn it before its first call."""
        if not token:
            raise Unauthenticated("no token: calls need an agent key (memosctl --key FILE, or MEMOS_KEY)")
        now = self.clock()
        claims = self._tokens.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens = {t: c for t, c in self._tokens.items() if c["exp"] > now}
                if len(self._tokens) >= TOKEN_CACHE_SIZE:
                    self._tokens.clear()
            self._tokens[token] = claims
        agent = self._agents.get(claims["sub"])
        if agent is None or agent.revoked_at is not None:
            raise Unauthenticated(f"agent {quote(claims['sub'])} has been revoked")
        if claims["aud"] != self.daemon_id:
            raise Unauthenticated("token is for another daemon (wrong audience); use a key registered here")
        if claims["iat"] > now + CLOCK_SKEW:
            raise Unauthenticated("token is issued in the future; check this machine's clock")
        if claims["exp"] <= now:
            raise Unauthenticated("token has expired; clients renew tokens themselves, check the clock")
        if claims["epoch"] != self.epoch and not any_epoch:
            raise StaleToken(f"token is for policy epoch {claims['epoch']}, current is {self.epoch}; mint a new one")
        return self._principal(agent)

    @staticmethod
    def _principal(agent: AgentRecord) -> Principal:
        return Principal(agent.name, frozenset(agent.groups), agent.admin)

    def still_valid(self, p: Principal) -> None:
        """For open streams after a revocation: Unauthenticated if p's agent is gone."""
        agent = self._agents.get(p.name)
        if agent is None or agent.revoked_at is not None:
            raise Unauthenticated(f"agent {quote(p.name)} has been revoked")

    def _verify(self, token: str) -> dict:
        try:
            claims, signed, signature = read_token(token)
        except JSONLimitError as exc:
            raise Unauthenticated(f"token is malformed: {exc}") from None
        except (ValueError, UnicodeDecodeError):
            raise Unauthenticated("token is malformed") from None
        types = {"sub": str, "aud": str, "iat": int, "exp": int, "jti": str, "epoch": int}
        if any(not isinstance(claims.get(k), t) for k, t in types.items()):
            raise Unauthenticated("token lacks required claims")
        if claims["exp"] - claims["iat"] > MAX_TOKEN_LIFETIME:
            raise Unauthenticated(f"token lifetime is over {MAX_TOKEN_LIFETIME} s")
        agent = self._agents.get(claims["sub"])
        if agent is None:
            raise Unauthenticated("token is signed by an unknown agent")
        if not verify_signature(agent.public_key, signed, signature):
            raise Unauthenticated("token signature does not match the agent's key")
        return claims

    # -- authorization ------------------------------------------------------------------------

    def can(self, p: Principal, action: str, namespace: str, kind: MemoryKind | None = None) -> bool:
        if p.admin or owned_pattern(p.name).matches(namespace):
            return True
        now = self.clock()
        return any(pol.active(now) and pol.grants(action, namespace, kind) for pol in self._effective(p))

    def check(self, p: Principal, action: str, namespace: str, kind: MemoryKind | None = None) -> None:
        check_namespace(namespace)  # never match patterns against a path-like trick
        if not self.can(p, action, namespace, kind):
            raise PermissionDenied(f"agent {p.name} may not {action} in {namespace}: no policy grants it")

    def check_cube(self, p: Principal, action: str, cube) -> None:
        """Decide on an existing cube: its namespace's grants and owner-only visibility, or, for reading,
        a topic it is published on that p may subscribe to, while the share's authority holds."""
        if self.grants_cube(p, action, cube):
            return
        readable = self.may_read_cube(p, cube) if action != "read" else self._reads_through_share(p, cube)
        if action == "read" and readable:
            return
        if readable:
            raise PermissionDenied(f"agent {p.name} may not {action} cube {cube.id}")
        # Whoever may not read a cube is told what an unknown id would tell it, word for word.
        raise Hidden(f"no cube with id {cube.id}")

    def may_read_cube(self, p: Principal, cube) -> bool:
        return self.grants_cube(p, "read", cube) or self._reads_through_share(p, cube)

    def _reads_through_share(self, p: Principal, cube) -> bool:
        return any(self.can(p, "subscribe", share.topic, cube.kind) and self.share_holds(share, cube)
                   for source in self._read_sources for share in source(cube.id))

    def grants_cube(self, p: Principal, action: str, cube) -> bool:
        """p's own grants on the cube (its namespace's, and owner-only visibility), shares aside."""
        owner_only = getattr(cube, "visibility", Visibility.NAMESPACE) == Visibility.OWNER
        return self.can(p, action, cube.namespace, cube.kind) and (not owner_only or p.admin or cube.owner == p.name)

    def owns_cube(self, p: Principal, cube) -> bool:
        """The admin, the cube's owner and its namespace's owner may always take it off a topic."""
        return p.admin or cube.owner == p.name or owned_pattern(p.name).matches(cube.namespace)

    def add_read_source(self, shares_of) -> None:
        """Register shares_of(cube_id) -> the Shares through which a cube is readable (MemStore)."""
        self._read_sources.append(shares_of)

    def check_covers(self, p: Principal, action: str, pattern: Pattern) -> None:
        """A pattern (`ns/**`) must lie within one grant: a wider one would name, or count, topics that
        p may not see. The error names the granted patterns inside the one asked for."""
        check_namespace(pattern.namespace)
        if self.covers(p, action, pattern):
            return
        inside = sorted({str(g) for pol in self._active(p, action) for g in pol.patterns if pattern.matches(g.namespace)})
        if inside:
            raise PermissionDenied(f"agent {p.name} may {action} to {', '.join(inside[:4])}, not to {pattern}:"
                                   " its grants do not cover the whole pattern")
        raise PermissionDenied(f"agent {p.name} may not {action} in {pattern}: no policy grants it")

    def covers(self, p: Principal, action: str, pattern: Pattern) -> bool:
        if p.admin or owned_pattern(p.name).covers(pattern):
            return True
        return any(g.covers(pattern) for pol in self._active(p, action) for g in pol.patterns)

    def grants_end(self, p: Principal, action: str) -> float | None:
        """When the first of p's active grants of `action` expires (None: none does); open streams judge p again then."""
        return min((pol.expires_at for pol in self._active(p, action) if pol.expires_at is not None), default=None)

    def _active(self, p: Principal, action: str) -> list[Policy]:
        now = self.clock()
        return [pol for pol in self._effective(p) if pol.active(now) and ({action, "admin"} & pol.actions)]

    def readable(self, p: Principal, f: CubeFilter = CubeFilter()) -> CubeFilter:
        """f narrowed to what p may read: every query of many cubes (List, Search, prefix lookups, plans,
        exports) asks this one question. The admin's filter stays as it is: everything, owner-only too."""
        if p.admin:
            return f
        return replace(f, scope=self._read_scope(p), viewer=p.name, reader=self.reader(p))

    def reader(self, p: Principal):
        """may_read(cube) for p, as lineage (memosd/vault/lineage.py) asks it of source cubes; None for the admin."""
        if p.admin:
            return None
        return lambda cube: self.may_read_cube(p, cube)

    def _read_scope(self, p: Principal) -> tuple[ScopeRule, ...]:
        """The rules the vault's query applies: p's own namespace and each active read grant."""
        now = self.clock()
        rules = [ScopeRule(f"agents/{p.name}", True)]
        for pol in self._effective(p):
            if pol.active(now) and ({"read", "admin"} & pol.actions):
                rules += [ScopeRule(pat.namespace, pat.subtree, pol.kinds) for pat in pol.patterns]
        return tuple(rules)

    def _effective(self, p: Principal) -> list[Policy]:
        # Cached per epoch and half-minute: a grant passed on lapses when its issuer's authority does. Guards also
        # run in reader threads: a list computed from the policies of before a change is filed under the old
        # generation, where no later decision looks.
        key = (p.subjects, self.epoch, self._generation, int(self.clock() // 30))
        found = self._grants.get(key)
        if found is None:
            if len(self._grants) > 10_000:
                self._grants.clear()
            found = self._grants[key] = [
                r.policy for r in self._policies.values()
                if r.revoked_at is None and r.policy.subject in p.subjects and self._issuer_holds(r.policy, 0)
            ]
        return found

    def _issuer_holds(self, policy: Policy, depth: int) -> bool:
        issuer = self._agents.get(policy.issuer)
        if issuer is None or issuer.revoked_at is not None:
            return False
        if issuer.admin:
            return True
        if depth >= MAX_CHAIN:
            return False
        return self._may_grant(issuer, policy, depth + 1)

    def _may_grant(self, issuer: AgentRecord, policy: Policy, depth: int) -> bool:
        """True if the issuer owns, or holds with `share`, everything the policy grants (never wider)."""
        subjects = {f"agent:{issuer.name}", *(f"group:{g}" for g in issuer.groups)}
        now = self.clock()
        held = [r.policy for r in self._policies.values()
                if r.revoked_at is None and r.policy.subject in subjects and r.policy.active(now)
                and r.policy.id != policy.id and self._issuer_holds(r.policy, depth)]
        for pattern in policy.patterns:
            if owned_pattern(issuer.name).covers(pattern):
                continue
            for action in policy.actions:
                if not any(_covers(g, action, pattern, policy) for g in held):
                    return False
        return True

    # -- agents -------------------------------------------------------------------------------

    async def add_agent(self, p: Principal, name: str, public_key: bytes, groups) -> AgentRecord:
        self._require_admin(p, "add agents")
        check_name(name)
        groups = tuple(dict.fromkeys(check_name(g, "group name") for g in groups))
        if len(public_key) != 32:
            raise InvalidArgument("public_key must be the 32 raw bytes of an Ed25519 public key")
        known = self._agents.get(name)
        if known is not None and known.revoked_at is not None:
            # Its audit entries and the policies it signed keep naming it: a new key under the name would
            # inherit that history.
            raise AlreadyExists(f"agent {name} was revoked, and a revoked agent's name cannot be reused;"
                                " pick another name")
        if known is not None:
            raise AlreadyExists(f"agent {name} exists already; revoke it or pick another name")
        record = AgentRecord(name, bytes(public_key), groups, False, self.clock())
        await self._store_agent(record, actor=p.name)
        return record

    async def _store_agent(self, record: AgentRecord, actor: str) -> None:
        def job(conn: Conn) -> int:
            self.sql.governance.insert_agent(conn, record.name, record.public_key, record.groups, record.admin,
                                             record.created_at)
            self.audit_write(conn, actor, "agent.add", record.name, key=fingerprint(record.public_key),
                             groups=list(record.groups))
            return self._bump_version(conn)

        async with self._sync_lock:
            version = await self.db.write(job)
            self._agents = {**self._agents, record.name: record}  # replaced, never changed: threads read it
            self._committed(version)

    def agent(self, name: str) -> AgentRecord:
        if name not in self._agents:
            raise NotFound(f"no agent named {quote(name)}")
        return self._agents[name]

    def list_agents(self, p: Principal, include_revoked: bool) -> list[AgentRecord]:
        self._require_admin(p, "list agents")
        return sorted((a for a in self._agents.values() if include_revoked or a.revoked_at is None),
                      key=lambda a: a.name)

    async def revoke_agent(self, p: Principal, name: str) -> AgentRecord:
        self._require_admin(p, "revoke agents")
        agent = self._agents.get(name)
        if agent is None:
            raise NotFound(f"no agent named {quote(name)}")
        if agent.admin:
            raise InvalidArgument("the admin identity cannot be revoked")
        if agent.revoked_at is None:
            now = self.clock()

            def job(conn: Conn) -> tuple[int, int]:
                self.sql.governance.revoke_agent(conn, name, now)
                self.audit_write(conn, p.name, "agent.revoke", name)
                return self.sql.governance.bump_epoch(conn), self._bump_version(conn)

            async with self._sync_lock:
                epoch, version = await self.db.write(job)
                agent.revoked_at = now
                self._after_change(epoch, version)
        return agent

    # -- policies -----------------------------------------------------------------------------

    async def put_policy(self, p: Principal, document: bytes, signature: bytes) -> Policy:
        """Verify and store a signed policy. The caller must be its issuer (or the admin)."""
        policy = parse_policy(document)
        issuer = self._agents.get(policy.issuer)
        if issuer is None or issuer.revoked_at is not None:
            raise PermissionDenied(f"policy issuer {quote(policy.issuer)} is not an active agent")
        if not verify_signature(issuer.public_key, document, signature):
            raise PermissionDenied(f"policy {policy.id} signature does not match the key of {policy.issuer}")
        if not p.admin and p.name != policy.issuer:
            raise PermissionDenied(f"agent {p.name} may only store policies it signed itself")
        if not issuer.admin and not self._may_grant(issuer, policy, 1):
            raise PermissionDenied(f"agent {policy.issuer} may not grant {', '.join(sorted(policy.actions))} on"
                                   f" {', '.join(map(str, policy.patterns))}: it neither owns it nor holds it with share")
        if policy.id in self._policies:
            raise AlreadyExists(f"policy {policy.id} exists already")
        record = PolicyRecord(policy, bytes(document), bytes(signature), self.clock())

        def job(conn: Conn) -> int:
            if not self.sql.governance.insert_policy(conn, policy.id, policy.issuer, policy.subject, record.document,
                                                     record.signature, record.created_at):
                raise AlreadyExists(f"policy {policy.id} exists already")  # recorded at another member
            self.audit_write(conn, p.name, "policy.put", policy.id, subject=policy.subject,
                             actions=sorted(policy.actions), namespaces=[str(x) for x in policy.patterns])
            return self._bump_version(conn)

        async with self._sync_lock:
            version = await self.db.write(job)
            self._policies = {**self._policies, policy.id: record}  # replaced, never changed: threads read it
            self._forget_decisions()
            self._committed(version)
        return policy

    def list_policies(self, p: Principal, subject: str = "", include_inactive: bool = False) -> list[PolicyRecord]:
        now = self.clock()
        found = [r for r in self._policies.values()
                 if (p.admin or r.policy.issuer == p.name or r.policy.subject in p.subjects)
                 and (not subject or r.policy.subject == subject)
                 and (include_inactive or (r.revoked_at is None and r.policy.active(now)))]
        return sorted(found, key=lambda r: r.created_at)

    def get_policy(self, p: Principal, policy_id: str) -> PolicyRecord:
        record = self._policies.get(check_policy_id(policy_id))
        if record is None or not (p.admin or record.policy.issuer == p.name or record.policy.subject in p.subjects):
            raise NotFound(f"no policy {policy_id} visible to agent {p.name}")
        return record

    async def revoke_policy(self, p: Principal, policy_id: str) -> int:
        record = self.get_policy(p, policy_id)
        if not (p.admin or record.policy.issuer == p.name):
            raise PermissionDenied(f"only the admin or {record.policy.issuer} may revoke policy {policy_id}")
        if record.revoked_at is None:
            now = self.clock()

            def job(conn: Conn) -> tuple[int, int]:
                self.sql.governance.revoke_policy(conn, policy_id, now)
                self.audit_write(conn, p.name, "policy.revoke", policy_id)
                return self.sql.governance.bump_epoch(conn), self._bump_version(conn)

            async with self._sync_lock:
                epoch, version = await self.db.write(job)
                record.revoked_at = now
                self._after_change(epoch, version)
        return self.epoch

    # -- changes ------------------------------------------------------------------------------

    def _after_change(self, epoch: int, version: int) -> None:
        # Called after a committed revocation: its epoch (another member's may have come between), fresh caches,
        # and wake streams to re-check.
        self.epoch = max(self.epoch, epoch)
        self._tokens.clear()
        self._fresh_caches()
        self._committed(version)

    def _fresh_caches(self) -> None:
        """Forget every decision made, and wake the open streams to re-check their callers."""
        self._forget_decisions()
        self._changed.set()
        self._changed = asyncio.Event()

    def _forget_decisions(self) -> None:
        self._generation += 1
        self._grants = {}
        self._forget_shares()

    @property
    def generation(self) -> int:
        """Moved whenever decisions are forgotten (every grant, revocation and reload): a decision kept under
        another is stale."""
        return self._generation

    def changed(self) -> asyncio.Event:
        """An event set at the next revocation; open streams wait on it to re-check their caller."""
        return self._changed

    def _require_admin(self, p: Principal, what: str) -> None:
        if not p.admin:
            raise PermissionDenied(f"only the admin may {what}")


def _covers(grant: Policy, action: str, pattern: Pattern, wanted: Policy) -> bool:
    """Does `grant` let its holder pass `action` on `pattern` on, within `wanted`'s kinds and time?"""
    if not ({"share", "admin"} & grant.actions) or not ({action, "admin"} & grant.actions):
        return False
    if not any(g.covers(pattern) for g in grant.patterns):
        return False
    if grant.kinds and (not wanted.kinds or not wanted.kinds <= grant.kinds):
        return False
    if grant.expires_at is not None and (wanted.expires_at is None or wanted.expires_at > grant.expires_at):
        return False
    return wanted.not_before >= grant.not_before
