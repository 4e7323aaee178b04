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
    errors.Hidden: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


_BY_NAME: dict[str, type[errors.MemosError]] = {cls.__name__: cls for cls in STATUS_CODES}


def status_for(exc: errors.MemosError) -> grpc.StatusCode:
    """The code of the nearest class in exc's hierarchy with a row: a subclass without one of its own
    reports as its parent does, never as an unmapped error."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN  # not a MemosError at all: the caller's bug, not the client's


def error_named(kind: str) -> type[errors.MemosError]:
    """The class of the table a shared format's error names by kind (BundleError.kind); MemosError if none."""
    return _BY_NAME.get(kind, errors.MemosError)
