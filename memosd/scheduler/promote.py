"""MemScheduler's first promotion path, plaintext -> activation: prefill the daemon's model with plaintext
cubes and store the KV cache as an activation cube derived from them, as a background job."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from collections.abc import Callable

from memosd.cube import MemCube, MemoryKind
from memosd.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from memosd.scheduler.jobs import Job, JobManager, Progress
from memosd.vault.activation import ActivationDraft

KIND = "kv.build"
MAX_SOURCES = 256
MAX_TEMPLATE_CHARS = 65536


@dataclass(frozen=True)
class BuildSpec:
    """How plaintext cubes become one prompt: prefix, each cube through template (joined by separator), suffix."""

    template: str = "{text}"
    separator: str = "\n\n"
    prefix: str = ""
    suffix: str = ""
    special_tokens: bool = True

    def check(self) -> BuildSpec:
        if "{text}" not in self.template:
            raise InvalidArgument('template must contain "{text}", where each cube\'s text goes')
        if sum(len(s) for s in (self.template, self.separator, self.prefix, self.suffix)) > MAX_TEMPLATE_CHARS:
            raise InvalidArgument(f"template, separator, prefix and suffix are over {MAX_TEMPLATE_CHARS} characters")
        return self

    def compose(self, sources: list[MemCube]) -> str:
        # Plain replacement, not str.format: a cube's text may hold braces, and templates are not code.
        parts = [self.template.replace("{id}", c.id).replace("{text}", c.text or "") for c in sources]
        return self.prefix + self.separator.join(parts) + self.suffix


@dataclass(frozen=True)
class BuildTarget:
    """Where the built cube goes."""

    namespace: str
    tags: tuple[str, ...] = ()
    metadata: dict | None = None
    # Re-checks the caller's right to write there just before the cube is stored (a grant may have gone).
    authorize: Callable[[], None] = lambda: None

    def spec(self) -> dict:
        """What a job records of its target, for a member that runs it again (resumed)."""
        return {"namespace": self.namespace, "tags": list(self.tags), "metadata": self.metadata}

    @classmethod
    def resumed(cls, spec: dict, governance, owner: str, kind: MemoryKind) -> BuildTarget:
        """The target of a job taken over from another member: owner's right to write there is checked again,
        from the shared vault's governance, when the cube is stored (the grant it was submitted with may be gone)."""
        namespace = spec["namespace"]

        def authorize() -> None:
            if governance is None:
                raise FailedPrecondition("this daemon cannot check the job owner's grants; submit the job again")
            agent = governance.agent(owner)
            if agent.revoked_at is not None:
                raise PermissionDenied(f"agent {owner} has been revoked; its job stores nothing")
            from memosd.governance.core import Principal

            governance.check(Principal(agent.name, frozenset(agent.groups), agent.admin), "write", namespace, kind)

        return cls(namespace, tuple(spec["tags"]), spec["metadata"], authorize)


class ActivationPromoter:
    """Builds activation cubes from plaintext with one configured local model (or refuses without one)."""

    def __init__(self, activations, blobs, jobs: JobManager, model=None, governance=None):
        self.activations = activations
        self.blobs = blobs
        self.jobs = jobs
        self.model = model
        if model is not None:  # a member with a model can take over another's builds
            jobs.register(KIND, lambda owner, spec: self._work(
                owner, spec["text"], spec["source_ids"], BuildSpec(**spec["spec"]),
                BuildTarget.resumed(spec["target"], governance, owner, MemoryKind.ACTIVATION)))

    def submit(self, owner: str, sources: list[MemCube], spec: BuildSpec, target: BuildTarget) -> Job:
        """Queue the build of sources (already read with the caller's rights) into target; returns the job."""
        if self.model is None:
            raise FailedPrecondition("this daemon has no model to build KV caches with: set activation_model in its"
                                     " config to a local Hugging Face causal LM directory")
        if not sources:
            raise InvalidArgument("source_ids is empty; name the plaintext cubes to prefill")
        if len(sources) > MAX_SOURCES:
            raise InvalidArgument(f"{len(sources)} source cubes; at most {MAX_SOURCES}")
        for cube in sources:
            if cube.kind is not MemoryKind.PLAINTEXT:
                raise InvalidArgument(f"cube {cube.id} is a {cube.kind.name.lower()} cube; only plaintext can be prefilled")
        spec.check()
        text, source_ids = spec.compose(sources), [c.id for c in sources]
        record = {"text": text, "source_ids": source_ids, "spec": asdict(spec), "target": target.spec()}
        return self.jobs.submit(KIND, owner, self._work(owner, text, source_ids, spec, target),
                                message="waiting for the model", spec=record)

    def _work(self, owner: str, text: str, source_ids: list[str], spec: BuildSpec, target: BuildTarget):
        async def work(progress: Progress) -> list[str]:
            return [await self._build(owner, text, source_ids, spec, target, progress)]

        return work

    async def _build(self, owner: str, text: str, source_ids: list[str], spec: BuildSpec, target: BuildTarget,
                     progress: Progress) -> str:
        from memosd.runtime.kv import encode_prefill

        model = self.model
        progress.update(message=f"loading {model.name}")
        await asyncio.to_thread(model.load)
        progress.check()
        ids = await asyncio.to_thread(model.tokenize, text, special_tokens=spec.special_tokens)
        progress.update(done=0, total=len(ids), message=f"prefilling {len(ids)} tokens")
        layers = await asyncio.to_thread(model.prefill, ids, lambda done: progress.update(done=done), progress.check)
        progress.update(message="storing the cache")
        manifest, parts = await asyncio.to_thread(encode_prefill, model, ids, layers)
        progress.check()
        target.authorize()
        sha256, size = await self.blobs.put_parts(parts, owner)
        if (sha256, size) != (manifest.blob_sha256, manifest.blob_size):
            raise FailedPrecondition("the KV payload changed while it was stored; build it again")
        cube = await self.activations.put(ActivationDraft(
            namespace=target.namespace, manifest=manifest, tags=target.tags, metadata=target.metadata,
            source=f"kv.build:{model.name}", derived_from=tuple(source_ids)), owner)
        return cube.id
