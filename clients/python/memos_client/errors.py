"""Typed errors of the memos client, mirroring the daemon's error tree; no raw grpc.RpcError escapes.

    MemosError
    ├── InvalidArgument
    ├── NotFound
    ├── AlreadyExists
    ├── Conflict
    ├── FailedPrecondition
    │   ├── ModelMismatch
    │   └── Compacted        a subscription's resume point was removed by retention
    ├── Unauthenticated
    │   └── StaleToken       (renewed and retried by the client itself)
    ├── PermissionDenied
    ├── ResourceExhausted
    ├── DataLoss
    ├── Unavailable          the daemon is not running or not reachable
    │   └── OutcomeUnknown   the connection broke during a write that cannot be sent again safely
    ├── DeadlineExceeded
    ├── Cancelled
    └── InternalError        a bug in memosd; its log has the details
"""

from __future__ import annotations

import grpc


class MemosError(Exception):
    """Base of every error the client raises. `code` is the gRPC status code name."""

    code = "UNKNOWN"
    # True when the call that raised this was sent again at another daemon after its connection broke
    # mid-call: the first attempt may have been carried out (a retried delete then finds the cube gone).
    replayed = False

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(MemosError):
    code = "INVALID_ARGUMENT"


class NotFound(MemosError):
    code = "NOT_FOUND"


class AlreadyExists(MemosError):
    code = "ALREADY_EXISTS"


class Conflict(MemosError):
    code = "ABORTED"


class FailedPrecondition(MemosError):
    code = "FAILED_PRECONDITION"


class ModelMismatch(FailedPrecondition):
    """A tensor cube was offered to a model it was not made for."""


class Compacted(FailedPrecondition):
    """Events after the resume point were removed by the topic's retention."""


class Unauthenticated(MemosError):
    code = "UNAUTHENTICATED"


class StaleToken(Unauthenticated):
    """The token predates the daemon's latest revocation; the client mints a new one and retries."""


class PermissionDenied(MemosError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(MemosError):
    code = "RESOURCE_EXHAUSTED"


class DataLoss(MemosError):
    code = "DATA_LOSS"


class Unavailable(MemosError):
    code = "UNAVAILABLE"


class OutcomeUnknown(Unavailable):
    """The daemon went away during a write that is not sent again by itself (it has no id to be recognised
    by): it may or may not have been carried out. Check, then write again if it was not."""


class DeadlineExceeded(MemosError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(MemosError):
    code = "CANCELLED"


class InternalError(MemosError):
    code = "INTERNAL"


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: InternalError,
}


def from_rpc_error(exc: grpc.RpcError, target: str = "") -> MemosError:
    """The typed error for a failed call."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    if code is grpc.StatusCode.UNAVAILABLE and target:
        from memos_client.unreachable import explain

        details = explain(target, details)
    base = _BY_CODE.get(code, MemosError)
    # The daemon names its exact error class in a trailer; use it when it refines the code's class.
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    named = next((v for k, v in trailers or () if k == "memos-error"), None)
    exact = globals().get(named) if isinstance(named, str) else None
    if isinstance(exact, type) and issubclass(exact, base):
        return exact(details)
    return base(details)
