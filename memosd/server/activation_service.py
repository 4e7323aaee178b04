"""ActivationService: storing KV-cache cubes, finding them by token prefix, building them from plaintext."""

from __future__ import annotations

from memos_mip.v1 import activation_pb2
from memosd.cube import CubeFilter, MemoryKind
from memosd.limits import check_metadata, check_tags
from memosd.scheduler.promote import BuildSpec, BuildTarget
from memosd.server import convert, convert_tensor
from memosd.server.auth import principal


class ActivationService:
    def __init__(self, vault, activations, promoter, governance):
        self.vault = vault
        self.activations = activations
        self.promoter = promoter
        self.gov = governance

    async def PutActivation(self, request, context):
        draft = convert_tensor.activation_draft_from_proto(request)
        p = principal()
        self.gov.check(p, "write", draft.namespace, MemoryKind.ACTIVATION)
        cube = await self.activations.put(draft, p.name, guard=lambda c: self.gov.check_cube(p, "read", c))
        return activation_pb2.PutActivationResponse(cube=convert.cube_to_proto(cube))

    async def FindByPrefix(self, request, context):
        p = principal()
        f = self.gov.readable(p, CubeFilter(namespace_prefix=request.namespace_prefix))
        cube, matched = await self.activations.find_by_prefix(request.model_fingerprint, list(request.token_ids), f)
        response = activation_pb2.FindByPrefixResponse(matched_tokens=matched)
        if cube is not None:
            response.cube.CopyFrom(convert.cube_to_proto(cube))
        return response

    async def BuildFromPlaintext(self, request, context):
        p = principal()
        namespace = request.namespace
        self.gov.check(p, "write", namespace, MemoryKind.ACTIVATION)
        metadata = convert.struct_to_dict(request.metadata) if request.HasField("metadata") else None
        target = BuildTarget(namespace, check_tags(request.tags, self.vault.limits),
                             check_metadata(metadata, self.vault.limits),
                             authorize=lambda: self.gov.check(p, "write", namespace, MemoryKind.ACTIVATION))
        spec = BuildSpec(template=request.template or "{text}", separator=request.separator or "\n\n",
                         prefix=request.prefix, suffix=request.suffix, special_tokens=not request.no_special_tokens)
        guard = lambda cube: self.gov.check_cube(p, "read", cube)  # noqa: E731
        sources = [await self.vault.get(cube_id, guard=guard) for cube_id in request.source_ids]
        job = self.promoter.submit(p.name, sources, spec, target)
        await self.promoter.jobs.written()
        return activation_pb2.BuildFromPlaintextResponse(job=convert_tensor.job_to_proto(job))
