"""The tensor-memory services (blobs, activation and parametric cubes, jobs) over the core's TensorMemory."""

from __future__ import annotations

from memos_mip.v1 import activation_pb2, blob_pb2, job_pb2, parametric_pb2
from memosd.daemon import TensorMemory
from memosd.server.activation_service import ActivationService
from memosd.server.blob_service import BlobService
from memosd.server.job_service import JobService
from memosd.server.parametric_service import ParametricService

SERVICES = (
    blob_pb2.DESCRIPTOR.services_by_name["BlobService"],
    activation_pb2.DESCRIPTOR.services_by_name["ActivationService"],
    job_pb2.DESCRIPTOR.services_by_name["JobService"],
    parametric_pb2.DESCRIPTOR.services_by_name["ParametricService"],
)


def servicers(tensors: TensorMemory, vault, governance, exchange=None) -> tuple:
    """One servicer per descriptor of SERVICES, in that order."""
    return (BlobService(vault, tensors.blobs, governance, exchange),
            ActivationService(vault, tensors.activations, tensors.promoter, governance),
            JobService(tensors.jobs),
            ParametricService(vault, tensors.parametric, tensors.distiller, tensors.planner, governance))
