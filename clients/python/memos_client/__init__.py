"""memos_client: Python clients (sync and asyncio) for the memosd memory daemon."""

from memos_client.aio import AsyncMemosClient
from memos_client.client import MemosClient
from memos_client.errors import (
    AlreadyExists, Cancelled, Compacted, Conflict, DataLoss, DeadlineExceeded, FailedPrecondition, InternalError,
    InvalidArgument, MemosError, ModelMismatch, NotFound, OutcomeUnknown, PermissionDenied, ResourceExhausted, StaleToken,
    Unauthenticated, Unavailable,
)
from memos_client.models import Cube, Hit, Kind, Member, Page, State, Status

__all__ = [
    "AsyncMemosClient", "MemosClient", "Cube", "Hit", "Kind", "Member", "Page", "State", "Status",
    "MemosError", "Compacted", "InvalidArgument", "NotFound", "AlreadyExists", "Conflict", "FailedPrecondition",
    "ModelMismatch", "StaleToken", "Unauthenticated", "PermissionDenied", "ResourceExhausted", "DataLoss", "Unavailable",
    "OutcomeUnknown", "DeadlineExceeded", "Cancelled", "InternalError",
]
