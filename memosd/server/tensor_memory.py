"""Tensor memory in the daemon: the blob store, activation and parametric cubes, jobs, the plaintext ->
activation and plaintext -> parametric promoters and the query planner, built from the config and served by
BlobService, ActivationService, JobService and ParametricService."""

from __future__ import annotations

from memos_mip.v1 import activation_pb2, blob_pb2, job_pb2, parametric_pb2
from memosd.config import Config
from memosd.scheduler.distill import ParametricPromoter
from memosd.scheduler.jobs import JobManager
from memosd.scheduler.plan import MemPlanner
from memosd.scheduler.promote import ActivationPromoter
from memosd.server.activation_service import ActivationService
from memosd.server.blob_service import BlobService
from memosd.server.job_service import JobService
from memosd.server.parametric_service import ParametricService
from memosd.vault.activation import ActivationVault
from memosd.vault.blobs import BlobStore
from memosd.vault.parametric import ParametricVault

SERVICES = (
    blob_pb2.DESCRIPTOR.services_by_name["BlobService"],
    activation_pb2.DESCRIPTOR.services_by_name["ActivationService"],
    job_pb2.DESCRIPTOR.services_by_name["JobService"],
    parametric_pb2.DESCRIPTOR.services_by_name["ParametricService"],
)


class TensorMemory:
    """Owns the parts of the daemon that deal in tensors; started after the vault, stopped before it closes."""

    def __init__(self, config: Config, vault, governance, exchange=None):
        self.blobs = BlobStore(config.data_dir, vault.db, max_blob_bytes=config.limits.max_blob_bytes,
                               max_pending_uploads=config.limits.max_pending_uploads)
        self.activations = ActivationVault(vault, self.blobs, audit=governance.audit_write)
        self.jobs = JobManager(db=vault.db)
        model = None
        if config.activation_model:
            from memosd.runtime.causal_lm import CausalLM  # checks the path only; torch loads on the first build

            model = CausalLM(config.activation_model, config.activation_dtype)
        self.promoter = ActivationPromoter(self.activations, self.blobs, self.jobs, model)
        self.parametric = ParametricVault(vault, self.blobs, audit=governance.audit_write)
        trainer = None
        base = config.parametric_model or config.activation_model
        if base:
            from memosd.runtime.lora import LoraTrainer  # checks the path only; torch loads on the first job

            trainer = LoraTrainer(base, config.parametric_dtype if config.parametric_model else config.activation_dtype)
        self.distiller = ParametricPromoter(vault, self.parametric, self.blobs, self.jobs, trainer)
        self.planner = MemPlanner(vault, self.activations, self.parametric)
        self._servicers = (BlobService(vault, self.blobs, governance, exchange),
                           ActivationService(vault, self.activations, self.promoter, governance),
                           JobService(self.jobs),
                           ParametricService(vault, self.parametric, self.distiller, self.planner, governance))

    def servicers(self) -> tuple:
        """One servicer per descriptor of SERVICES, in that order."""
        return self._servicers

    async def start(self) -> None:
        await self.blobs.start()
        await self.jobs.start()

    async def stop(self) -> None:
        await self.jobs.stop()
        await self.blobs.stop()
