"""MemGovernance's audit log: decisions appended to the hash chain, read, and verified with their checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memosd.governance import audit
from memosd.governance.audit import AuditEntry
from memosd.governance.signing import AuditReport, AuditSigner
from memosd.storage import Conn

if TYPE_CHECKING:
    from memosd.governance.core import Principal

DENIALS_AUDITED_PER_SECOND = 50


@dataclass
class DenialBudget:
    second: int = 0
    used: int = 0
    suppressed: int = 0


class Auditing:
    """Mixed into MemGovernance (it needs its database, clock, signer and admin check)."""

    if TYPE_CHECKING:  # what the mixin uses of MemGovernance, declared for the type checker
        db: Any
        sql: Any
        clock: Callable[[], float]
        signer: AuditSigner
        _denials: DenialBudget

        def _require_admin(self, p: Principal, what: str) -> None: ...

    async def record_denial(self, p: Principal | None, action: str, target: str, reason: str) -> None:
        """Audit a denial; past a per-second budget, denials are counted and summarised instead."""
        now = self.clock()
        budget = self._denials
        if int(now) != budget.second:
            budget.second, budget.used = int(now), 0
        if budget.used >= DENIALS_AUDITED_PER_SECOND:
            budget.suppressed += 1
            return
        budget.used += 1
        suppressed, budget.suppressed = budget.suppressed, 0
        detail = audit.detail(reason=reason, **({"suppressed_before": suppressed} if suppressed else {}))
        agent = p.name if p else "-"

        def job(conn: Conn) -> None:
            self.sql.audit.append(conn, now, agent, action, target, "deny", detail)
            self.signer.note_entry()

        await self.db.write(job)

    def audit_write(self, conn: Conn, agent: str, action: str, target: str, **fields) -> None:
        """Audit an allowed write inside the transaction that makes it."""
        self.sql.audit.append(conn, self.clock(), agent, action, target, "allow", audit.detail(**fields))
        self.signer.note_entry()

    def audit_write_many(self, conn: Conn, writes: list[tuple[str, str, str, dict]]) -> None:
        """Audit allowed writes (agent, action, target, fields), in order, inside the transaction that makes them:
        the entries audit_write would append one by one."""
        self.sql.audit.append_many(conn, [(self.clock(), agent, action, target, "allow", audit.detail(**fields))
                                          for agent, action, target, fields in writes])
        for _ in writes:
            self.signer.note_entry()

    async def audit(self, agent: str, action: str, target: str, **fields) -> None:
        """Audit an allowed action that writes nothing else, in a transaction of its own."""
        await self.db.write(lambda conn: self.audit_write(conn, agent, action, target, **fields))

    async def audit_list(self, p: Principal, after_seq: int, limit: int) -> list[AuditEntry]:  # (the method `audit` hides the module here)
        self._require_admin(p, "read the audit log")
        return await self.db.read(lambda conn: self.sql.audit.read(conn, after_seq, limit))

    async def audit_verify(self, p: Principal) -> AuditReport:
        """The chain's links, and every signed checkpoint against the audit key and the chain."""
        self._require_admin(p, "verify the audit log")
        return await self.signer.verify()
