"""MemScheduler's first promotion path, plaintext -> activation: prefill the daemon's model with plaintext
cubes and store the KV cache as an activation cube derived from them, as a background job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from collections.abc import Callable

from memosd.cube import MemCube, MemoryKind
from memosd.errors import FailedPrecondition, InvalidArgument
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


class ActivationPromoter:
    """Builds activation cubes from plaintext with one configured local model (or refuses without one)."""

    def __init__(self, activations, blobs, jobs: JobManager, model=None):
        self.activations = activations
        self.blobs = blobs
        self.jobs = jobs
        self.model = model

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
        text = spec.compose(sources)

        async def work(progress: Progress) -> list[str]:
            return [await self._build(owner, text, [c.id for c in sources], spec, target, progress)]

        return self.jobs.submit(KIND, owner, work, message="waiting for the model")

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
