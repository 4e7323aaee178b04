"""The one error tree of memosd; server/ maps each class to a gRPC status code.

    MemosError
    ├── InvalidArgument      the request itself is malformed
    ├── NotFound             the named thing does not exist (or the caller may not know it does)
    ├── AlreadyExists        creating something that is already there
    ├── Conflict             a concurrent change won (expected version no longer current)
    ├── FailedPrecondition   the request is well formed but the system is not in a state for it
    │   ├── ModelMismatch    a tensor cube used with a model it was not made for
    │   └── Compacted        a subscription's resume point is older than what the topic retains
    ├── Unauthenticated      no, bad or expired credentials
    │   └── StaleToken       a valid token minted before the latest revocation: mint a new one
    ├── PermissionDenied     valid credentials, action not granted
    │   └── Hidden           the caller may not read what it named: answered as NotFound, audited as a denial
    ├── ResourceExhausted    a quota or limit was hit
    ├── DataLoss             bytes did not match their digest
    └── Unavailable          the daemon is shutting down or a dependency is not ready
"""


class MemosError(Exception):
    """Base of every error memosd reports to a caller."""

    wire_name: str | None = None  # the class name clients are told, when it is not this class's own


class InvalidArgument(MemosError):
    """The request is malformed: fix the input and retry."""


class NotFound(MemosError):
    """The named cube, version or object does not exist."""


class AlreadyExists(MemosError):
    """The object to create exists already."""


class Conflict(MemosError):
    """Another change came first; re-read and retry."""


class FailedPrecondition(MemosError):
    """The system is not in the state the request needs (e.g. updating a deleted cube)."""


class ModelMismatch(FailedPrecondition):
    """A KV cache or adapter was offered to a model it was not made for."""


class Compacted(FailedPrecondition):
    """Events after the resume point were removed by retention; resume from the oldest retained."""


class Unauthenticated(MemosError):
    """The caller did not prove who it is."""


class StaleToken(Unauthenticated):
    """The token names an old policy epoch; clients renew and retry without bothering anyone."""


class PermissionDenied(MemosError):
    """The caller is known but not allowed to do this."""


class Hidden(PermissionDenied):
    """The caller may not read the thing it named, so it may not learn that it exists either: the answer is
    exactly a NotFound's (status, class name and message), while the daemon audits it as a denial."""

    wire_name = "NotFound"


class ResourceExhausted(MemosError):
    """A limit or quota was reached."""


class DataLoss(MemosError):
    """Stored or received bytes do not match their digest."""


class Unavailable(MemosError):
    """The daemon cannot serve this right now; retrying later may succeed."""
