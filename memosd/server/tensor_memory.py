"""Tensor memory in the daemon: the blob store, activation cubes, jobs and the plaintext -> activation
promoter, built from the config and served by BlobService, ActivationService and JobService."""

from __future__ import annotations

from memos_mip.v1 import activation_pb2, blob_pb2, job_pb2
from memosd.config import Config
from memosd.scheduler.jobs import JobManager
from memosd.scheduler.promote import ActivationPromoter
from memosd.server.activation_service import ActivationService
from memosd.server.blob_service import BlobService
from memosd.server.job_service import JobService
from memosd.vault.activation import ActivationVault
from memosd.vault.blobs import BlobStore

SERVICES = (
    blob_pb2.DESCRIPTOR.services_by_name["BlobService"],
    activation_pb2.DESCRIPTOR.services_by_name["ActivationService"],
    job_pb2.DESCRIPTOR.services_by_name["JobService"],
)


class TensorMemory:
    """Owns the parts of the daemon that deal in tensors; started after the vault, stopped before it closes."""

    def __init__(self, config: Config, vault, governance):
        self.blobs = BlobStore(config.data_dir, vault.db, max_blob_bytes=config.limits.max_blob_bytes,
                               max_pending_uploads=config.limits.max_pending_uploads)
        self.activations = ActivationVault(vault, self.blobs, audit=governance.audit_write)
        self.jobs = JobManager()
        model = None
        if config.activation_model:
            from memosd.runtime.causal_lm import CausalLM  # checks the path only; torch loads on the first build

            model = CausalLM(config.activation_model, config.activation_dtype)
        self.promoter = ActivationPromoter(self.activations, self.blobs, self.jobs, model)
        self._servicers = (BlobService(vault, self.blobs, governance),
                           ActivationService(vault, self.activations, self.promoter, governance),
                           JobService(self.jobs))

    def servicers(self) -> tuple:
        """One servicer per descriptor of SERVICES, in that order."""
        return self._servicers

    async def start(self) -> None:
        await self.blobs.start()

    async def stop(self) -> None:
        await self.jobs.stop()
        await self.blobs.stop()
