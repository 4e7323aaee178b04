"""MemScheduler's second promotion path, plaintext -> parametric: train a LoRA adapter on plaintext cubes with the
daemon's base model and store it as an adapter cube derived from them, as a background job."""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import asdict, dataclass

from memosd.cube import CubeFilter, MemCube, MemoryKind, SearchMode
from memosd.errors import FailedPrecondition, InvalidArgument
from memosd.scheduler.jobs import Job, JobManager, Progress
from memosd.scheduler.promote import BuildTarget
from memosd.vault.parametric import AdapterDraft

KIND = "adapter.distill"
MAX_SOURCES = 1024
DEFAULT_SOURCES = 256
MAX_TEMPLATE_CHARS = 65536
MAX_TARGET_MODULES = 64


@dataclass(frozen=True)
class SourceSpec:
    """Which plaintext cubes to train on: exactly cube_ids, or those a namespace, tags and a query select."""

    cube_ids: tuple[str, ...] = ()
    namespace_prefix: str = ""
    tags: tuple[str, ...] = ()
    query: str = ""
    limit: int = 0

    def check(self) -> SourceSpec:
        if self.cube_ids and (self.namespace_prefix or self.tags or self.query):
            raise InvalidArgument("source: cube_ids excludes namespace_prefix, tags and query; give one or the other")
        if not (self.cube_ids or self.namespace_prefix or self.tags or self.query.strip()):
            raise InvalidArgument("source is empty: name the plaintext to train on (cube_ids, or a namespace_prefix,"
                                  " tags or a query)")
        if not 0 <= self.limit <= MAX_SOURCES or len(self.cube_ids) > MAX_SOURCES:
            raise InvalidArgument(f"source: at most {MAX_SOURCES} cubes (limit 1 to {MAX_SOURCES}, 0 for"
                                  f" {DEFAULT_SOURCES})")
        return self


@dataclass(frozen=True)
class TrainSpec:
    """LoRA and training settings, with their bounds; 0 or empty fields take the defaults in resolved()."""

    rank: int = 8
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ()
    steps: int = 100
    learning_rate: float = 1e-3
    batch_size: int = 4
    max_tokens: int = 512
    seed: int = 0

    def resolved(self) -> TrainSpec:
        """The settings with defaults filled in, checked against their bounds (InvalidArgument)."""
        rank = self.rank or 8
        spec = TrainSpec(rank=rank, lora_alpha=self.lora_alpha or 2.0 * rank, lora_dropout=self.lora_dropout,
                         target_modules=tuple(self.target_modules), steps=self.steps or 100,
                         learning_rate=self.learning_rate or 1e-3, batch_size=self.batch_size or 4,
                         max_tokens=self.max_tokens or 512, seed=self.seed)
        for name, low, high in (("rank", 1, 256), ("steps", 1, 100_000), ("batch_size", 1, 256),
                                ("max_tokens", 8, 32768)):
            value = getattr(spec, name)
            if not low <= value <= high:
                raise InvalidArgument(f"params.{name} must be from {low} to {high}, not {value}")
        for name, lowest, highest, open_low in (("lora_alpha", 0.0, 4096.0, True), ("lora_dropout", 0.0, 0.9, False),
                                                ("learning_rate", 0.0, 1.0, True)):
            value = getattr(spec, name)
            if not math.isfinite(value) or value > highest or value < lowest or (open_low and value == lowest):
                raise InvalidArgument(f"params.{name} must be {'above' if open_low else 'from'} {lowest} and at most"
                                      f" {highest}, not {value}")
        if len(spec.target_modules) > MAX_TARGET_MODULES or not all(
                re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", name) for name in spec.target_modules):
            raise InvalidArgument(f"params.target_modules: at most {MAX_TARGET_MODULES} module names such as q_proj,"
                                  " or all-linear (letters, digits, '_', '.' and '-')")
        if not -2**63 <= spec.seed < 2**63:
            raise InvalidArgument("params.seed must fit in 64 bits")
        return spec


def _train_spec(recorded: dict) -> TrainSpec:
    return TrainSpec(**{**recorded, "target_modules": tuple(recorded["target_modules"])}).resolved()


def compose(template: str, cube: MemCube) -> str:
    """One training text: the template with "{text}" and "{id}" replaced (plain replacement, not format)."""
    return template.replace("{id}", cube.id).replace("{text}", cube.text or "")


class ParametricPromoter:
    """Trains adapters from plaintext with one configured local base model (or refuses without one)."""

    def __init__(self, vault, parametric, blobs, jobs: JobManager, trainer=None, governance=None):
        self.vault = vault
        self.parametric = parametric
        self.blobs = blobs
        self.jobs = jobs
        self.trainer = trainer
        if trainer is not None:  # a member with a base model can take over another's training
            jobs.register(KIND, lambda owner, spec: self._work(
                owner, spec["texts"], tuple(spec["source_ids"]), _train_spec(spec["spec"]),
                BuildTarget.resumed(spec["target"], governance, owner, MemoryKind.PARAMETRIC),
                spec["model_fingerprint"]))

    def require_model(self) -> None:
        if self.trainer is None:
            raise FailedPrecondition("this daemon has no base model to train adapters with: set parametric_model (or"
                                     " activation_model) in its config to a local Hugging Face causal LM directory")

    async def select(self, source: SourceSpec, f: CubeFilter, guard) -> list[MemCube]:
        """The plaintext cubes a source names, read with the caller's rights (f carries its read scope, guard
        checks one cube); FailedPrecondition when that is none."""
        source.check()
        if source.cube_ids:
            cubes = [await self.vault.get(cube_id, guard=guard) for cube_id in dict.fromkeys(source.cube_ids)]
            for cube in cubes:
                if cube.kind is not MemoryKind.PLAINTEXT:
                    raise InvalidArgument(f"cube {cube.id} is a {cube.kind.name.lower()} cube; adapters are trained"
                                          " on plaintext only")
        else:
            limit = source.limit or DEFAULT_SOURCES
            f = CubeFilter(namespace_prefix=source.namespace_prefix, kinds=frozenset({MemoryKind.PLAINTEXT}),
                           tags=source.tags, scope=f.scope, viewer=f.viewer)
            if source.query.strip():
                hits, _ = await self.vault.search(source.query, f, min(limit, self.vault.limits.max_page_size),
                                                  SearchMode.AUTO)
                cubes = [h.cube for h in hits]
            else:
                cubes, token = [], ""
                while len(cubes) < limit:
                    page = await self.vault.list(f, min(limit - len(cubes), self.vault.limits.max_page_size), token)
                    cubes += page.cubes
                    token = page.next_token
                    if not token:
                        break
        if not cubes:
            raise FailedPrecondition("the source selects no plaintext cube you may read: there is nothing to train on")
        return cubes

    def submit(self, owner: str, sources: list[MemCube], spec: TrainSpec, template: str, target: BuildTarget,
               model_fingerprint: str = "") -> Job:
        """Queue the training of an adapter on sources (already read with the caller's rights) into target."""
        self.require_model()
        if "{text}" not in template:
            raise InvalidArgument('template must contain "{text}", where each cube\'s text goes')
        if len(template) > MAX_TEMPLATE_CHARS:
            raise InvalidArgument(f"template is over {MAX_TEMPLATE_CHARS} characters")
        if model_fingerprint and len(model_fingerprint) != 64:
            raise InvalidArgument("model_fingerprint must be empty or a hex sha256 (64 characters)")
        spec = spec.resolved()
        texts = [compose(template, c) for c in sources]
        source_ids = tuple(c.id for c in sources)
        record = {"texts": texts, "source_ids": list(source_ids), "spec": asdict(spec), "target": target.spec(),
                  "model_fingerprint": model_fingerprint}
        return self.jobs.submit(KIND, owner, self._work(owner, texts, source_ids, spec, target, model_fingerprint),
                                total=spec.steps, message=f"waiting to train on {len(sources)} plaintext cubes",
                                spec=record)

    def _work(self, owner: str, texts: list[str], source_ids: tuple[str, ...], spec: TrainSpec, target: BuildTarget,
              model_fingerprint: str):
        async def work(progress: Progress) -> list[str]:
            return [await self._train(owner, texts, source_ids, spec, target, model_fingerprint, progress)]

        return work

    async def _train(self, owner: str, texts: list[str], source_ids: tuple[str, ...], spec: TrainSpec,
                     target: BuildTarget, model_fingerprint: str, progress: Progress) -> str:
        from memosd.runtime.lora import encode_trained

        trainer = self.trainer
        progress.update(message=f"loading {trainer.name}")

        def report(step: int, loss: float) -> None:
            progress.update(done=step, total=spec.steps, message=f"step {step}/{spec.steps}, loss {loss:.4f}",
                            metrics={"loss": loss})

        trained = await asyncio.to_thread(trainer.train, texts, spec, report, progress.check, model_fingerprint)
        self.parametric.learn_base(trained.fingerprint, trained.modules)
        progress.update(message="storing the adapter",
                        metrics={"loss_before": trained.loss_before, "loss_after": trained.loss_after})
        manifest, parts = await asyncio.to_thread(encode_trained, trained)
        progress.check()
        target.authorize()
        sha256, size = await self.blobs.put_parts(parts, owner)
        if (sha256, size) != (manifest.blob_sha256, manifest.blob_size):
            raise FailedPrecondition("the adapter blob changed while it was stored; train it again")
        cube = await self.parametric.put(AdapterDraft(
            namespace=target.namespace, manifest=manifest, tags=target.tags, metadata=target.metadata,
            source=f"distill:{trainer.name}", derived_from=source_ids), owner)
        return cube.id
