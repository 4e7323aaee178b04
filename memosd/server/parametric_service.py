"""ParametricService: storing adapter cubes, distilling plaintext into adapters, and MemScheduler's query plan."""

from __future__ import annotations

from memos_mip.bounds import quote
from memos_mip.v1 import parametric_pb2
from memosd.cube import CubeFilter, MemoryKind
from memosd.errors import FailedPrecondition, PermissionDenied
from memosd.governance.core import Principal
from memosd.limits import check_metadata, check_tags
from memosd.scheduler.promote import BuildTarget
from memosd.server import convert, convert_parametric
from memosd.server.auth import principal
from memosd.server.convert_tensor import job_to_proto


class ParametricService:
    def __init__(self, vault, parametric, promoter, planner, governance):
        self.vault = vault
        self.parametric = parametric
        self.promoter = promoter
        self.planner = planner
        self.gov = governance

    async def PutAdapter(self, request, context):
        draft = convert_parametric.adapter_draft_from_proto(request)
        p = principal()
        self.gov.check(p, "write", draft.namespace, MemoryKind.PARAMETRIC)
        cube = await self.parametric.put(draft, p.name, guard=lambda c: self.gov.check_cube(p, "read", c))
        return parametric_pb2.PutAdapterResponse(cube=convert.cube_to_proto(cube))

    async def Distill(self, request, context):
        p = principal()
        namespace = request.namespace
        self.gov.check(p, "write", namespace, MemoryKind.PARAMETRIC)
        self.promoter.require_model()
        spec = convert_parametric.train_spec_from_proto(request.params)
        metadata = convert.struct_to_dict(request.metadata) if request.HasField("metadata") else None
        target = BuildTarget(namespace, check_tags(request.tags, self.vault.limits),
                             check_metadata(metadata, self.vault.limits),
                             authorize=lambda: self.gov.check(p, "write", namespace, MemoryKind.PARAMETRIC))
        sources = await self.promoter.select(convert_parametric.source_from_proto(request.source), self.gov.readable(p),
                                             lambda cube: self.gov.check_cube(p, "read", cube))
        job = self.promoter.submit(p.name, sources, spec, request.template or "{text}", target,
                                   request.model_fingerprint)
        await self.promoter.jobs.written()
        return parametric_pb2.DistillResponse(job=job_to_proto(job), source_ids=[c.id for c in sources])

    async def Plan(self, request, context):
        p = principal()
        if request.agent and request.agent != p.name:
            if not p.admin:
                raise PermissionDenied(f"agent {p.name} may plan only for itself; planning for {quote(request.agent)}"
                                       " takes the admin")
            agent = self.gov.agent(request.agent)
            if agent.revoked_at is not None:
                raise FailedPrecondition(f"agent {agent.name} has been revoked; it reads nothing")
            p = Principal(agent.name, frozenset(agent.groups), agent.admin)
        scope = self.gov.readable(p, CubeFilter(namespace_prefix=request.namespace_prefix))
        plan = await self.planner.plan(request.query, scope,
                                       model_fingerprint=request.model_fingerprint, token_ids=tuple(request.token_ids),
                                       limit=request.limit, max_adapters=request.max_adapters)
        return convert.plan_to_proto(plan)
