"""GovernanceService: agents, policies and the audit log over gRPC."""

from __future__ import annotations

from memos_mip.v1 import governance_pb2 as pb
from memosd.governance import MemGovernance
from memosd.server.auth import principal
from memosd.server.convert import to_timestamp


def _agent(a) -> pb.Agent:
    return pb.Agent(name=a.name, public_key=a.public_key, groups=list(a.groups), created_at=to_timestamp(a.created_at),
                    revoked_at=to_timestamp(a.revoked_at), admin=a.admin)


def _policy(r) -> pb.SignedPolicy:
    return pb.SignedPolicy(document=r.document, signature=r.signature, revoked_at=to_timestamp(r.revoked_at))


class GovernanceService:
    # WhoAmI only describes the caller to itself (and names the epoch): a new client asks it first
    # to learn the current epoch, so that its first real call is not refused as stale.
    any_epoch = frozenset({"WhoAmI"})

    def __init__(self, governance: MemGovernance):
        self.gov = governance

    async def WhoAmI(self, request, context):
        agent = self.gov.agent(principal().name)
        return pb.WhoAmIResponse(agent=_agent(agent), daemon_id=self.gov.daemon_id, policy_epoch=self.gov.epoch)

    async def AddAgent(self, request, context):
        agent = await self.gov.add_agent(principal(), request.name, request.public_key, request.groups)
        return pb.AddAgentResponse(agent=_agent(agent), daemon_id=self.gov.daemon_id)

    async def ListAgents(self, request, context):
        return pb.ListAgentsResponse(agents=[_agent(a) for a in self.gov.list_agents(principal(), request.include_revoked)])

    async def RevokeAgent(self, request, context):
        return pb.RevokeAgentResponse(agent=_agent(await self.gov.revoke_agent(principal(), request.name)))

    async def PutPolicy(self, request, context):
        policy = await self.gov.put_policy(principal(), request.policy.document, request.policy.signature)
        return pb.PutPolicyResponse(id=policy.id)

    async def ListPolicies(self, request, context):
        found = self.gov.list_policies(principal(), request.subject, request.include_inactive)
        return pb.ListPoliciesResponse(policies=[_policy(r) for r in found])

    async def GetPolicy(self, request, context):
        return pb.GetPolicyResponse(policy=_policy(self.gov.get_policy(principal(), request.id)))

    async def RevokePolicy(self, request, context):
        return pb.RevokePolicyResponse(policy_epoch=await self.gov.revoke_policy(principal(), request.id))

    async def ListAudit(self, request, context):
        limit = request.limit or 100
        entries = await self.gov.audit_list(principal(), request.after_seq, min(max(limit, 1), 1000))
        return pb.ListAuditResponse(entries=[
            pb.AuditEntry(seq=e.seq, time=to_timestamp(e.ts), agent=e.agent, action=e.action, target=e.target,
                          decision=e.decision, detail=e.detail, prev_hash=e.prev_hash, hash=e.hash)
            for e in entries])

    async def VerifyAudit(self, request, context):
        r = await self.gov.audit_verify(principal())
        return pb.VerifyAuditResponse(ok=r.ok, entries=r.entries, first_bad_seq=r.first_bad_seq, reason=r.reason,
                                      checkpoints=r.checkpoints, last_checkpoint_seq=r.last_checkpoint_seq,
                                      unsigned_tail=r.unsigned_tail, audit_key_fingerprint=r.key_fingerprint)
