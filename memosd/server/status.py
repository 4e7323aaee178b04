"""The one table from memosd's error tree to gRPC status codes."""

import grpc

from memosd import errors

STATUS_CODES: dict[type[errors.MemosError], grpc.StatusCode] = {
    errors.MemosError: grpc.StatusCode.UNKNOWN,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Compacted: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.StaleToken: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: errors.MemosError) -> grpc.StatusCode:
    return STATUS_CODES[type(exc)]
