"""Failover between the daemons of a cluster: which calls are sent again to the next daemon, and the members.

A client given several addresses talks to one daemon at a time (the first, until it goes away). A call that
fails there with UNAVAILABLE goes on to the next daemon:
- whatever it is, when it never reached the daemon (gRPC could not connect: nothing was sent);
- when it broke mid-call, only if sending it again cannot do it twice: reads, and writes that are idempotent
  by construction (REPLAYABLE; Publish and Retract when they carry a publish_id). Any other write raises
  OutcomeUnknown: it may or may not have been carried out, and is never replayed behind the caller's back.
Each daemon is tried once per call; the client stays with the one that answered.
"""

from __future__ import annotations

import threading

import grpc

from memos_client.errors import (
    FailedPrecondition, MemosError, OutcomeUnknown, Unauthenticated, Unavailable, from_rpc_error,
)

READS = frozenset({
    "Get", "List", "Search", "History", "Status", "WhoAmI", "ListAgents", "ListPolicies", "GetPolicy", "ListAudit",
    "VerifyAudit", "ListTopics", "GetUploadStatus", "OpenLocal", "FindByPrefix", "GetJob", "ListJobs", "Plan",
})
# Writes that sending again cannot do twice: the second finds them done (Delete then answers NotFound, which
# the client settles from the cube's history; PutPolicy AlreadyExists for the document's own id), or sets
# what is already set (revocations, retention, an acknowledgement, a cancellation, a content-addressed upload).
IDEMPOTENT = frozenset({"Delete", "RevokeAgent", "RevokePolicy", "PutPolicy", "SetRetention", "Ack", "CancelJob",
                        "Upload"})
# Idempotent only when the caller gave a publish_id: the daemon records it with the event, in the vault.
BY_PUBLISH_ID = frozenset({"Publish", "Retract"})
# Writes with nothing to recognise a second attempt by (Put has no caller-given id; Update's expected_version
# would refuse the second as a Conflict; AddAgent's name would be taken by the first): OutcomeUnknown.
NOT_REPLAYABLE = frozenset({"Put", "Update", "AddAgent", "PutActivation", "BuildFromPlaintext", "PutAdapter", "Distill"})
# Streams: at the next daemon when none received them; Subscribe resumes there from what it saw, a broken
# PutStream or PublishStream raises OutcomeUnknown for what was in flight; the others are not moved once
# under way (Download resumes at the same daemon; Backup, Export, Import and WatchJob raise Unavailable).
STREAMS = frozenset({"Subscribe", "PutStream", "PublishStream", "Download", "WatchJob", "Backup", "Export", "Import"})

# How gRPC says a call found no connection to send it on (the daemon down, its socket gone, its name unknown).
_NOT_CONNECTED = ("failed to connect to all addresses", "errors resolving", "dns resolution failed",
                  "name resolution failure")


def replayable(name: str, request) -> bool:
    """True if the RPC `name` with this request may be sent again after breaking mid-call."""
    return name in READS or name in IDEMPOTENT or (name in BY_PUBLISH_ID and bool(request.publish_id))


def never_sent(exc: grpc.RpcError) -> bool:
    """True if the call failed for want of a connection: no daemon received it."""
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return exc.code() is grpc.StatusCode.UNAVAILABLE and details.lower().startswith(_NOT_CONNECTED)


def daemon_said(exc: grpc.RpcError) -> bool:
    """True if the daemon itself answered (its error class is in the trailers), rather than the connection failing."""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return any(k == "memos-error" for k, _ in trailers or ())


class Member:
    """One daemon of the client's: its target, and its channel and stubs, made when first used."""

    def __init__(self, target: str, members: Members):
        self.target, self._members = target, members
        self.channel = None
        self._stubs: dict = {}

    def connect(self):
        """The channel to this daemon (opened on first use; gRPC connects when a call needs it)."""
        if self.channel is None:
            with self._members.lock:
                if self.channel is None:
                    self.channel = self._members.open(self.target)
        return self.channel

    def stub(self, key, factory):
        """The stub (or callable) `factory(channel)` makes for this daemon, made once."""
        found = self._stubs.get(key)
        if found is None:
            found = self._stubs.setdefault(key, factory(self.connect()))
        return found


class Members:
    """The daemons a client may call, in order, and the one in use."""

    def __init__(self, targets: list[str], open_channel):
        self.open = open_channel
        self.lock = threading.Lock()
        self.all = [Member(t, self) for t in targets]
        self._at = 0
        self._services: dict = {}
        self.closed = False  # set by the client's close(): gRPC may crash the process on a closed channel's call

    def service(self, factory) -> Service:
        """The service of stub class `factory`, called at whichever daemon is in use."""
        found = self._services.get(factory)
        if found is None:
            found = self._services.setdefault(factory, Service(self, factory))
        return found

    @property
    def current(self) -> Member:
        return self.all[self._at]

    @property
    def targets(self) -> list[str]:
        return [m.target for m in self.all]

    def move_on(self, failed: Member) -> Member:
        """The daemon after `failed` becomes the one in use (unless another call moved on already)."""
        with self.lock:
            if self.all[self._at] is failed:
                self._at = (self._at + 1) % len(self.all)
            return self.all[self._at]

    def channels(self) -> list:
        return [m.channel for m in self.all if m.channel is not None]

    def close(self) -> list:
        """No call after this; the channels to close."""
        self.closed = True
        return self.channels()


class Service:
    """A gRPC service whose RPCs are called at the client's daemon in use (`stub.Get(...)`), or at a given
    one (`stub.Get.at(member)(...)`)."""

    def __init__(self, members: Members, factory):
        self._members, self._factory = members, factory

    def __getattr__(self, name: str) -> Rpc:
        if name.startswith("_"):
            raise AttributeError(name)
        return Rpc(self, name)


class Rpc:
    __slots__ = ("service", "name")

    def __init__(self, service: Service, name: str):
        self.service, self.name = service, name

    def at(self, member: Member):
        if self.service._members.closed:
            raise FailedPrecondition(f"this client was closed; {self.name} needs a new one (or the call inside"
                                     " its `with` block)")
        return getattr(member.stub(self.service._factory, self.service._factory), self.name)

    def __call__(self, *args, **kwargs):
        return self.at(self.service._members.current)(*args, **kwargs)


class FailoverMethods:
    """The call path of MemosClient and AsyncMemosClient (memos_client.steps), with the members it fails over to."""

    _members: Members

    @property
    def target(self) -> str:
        """The address of the daemon in use."""
        return self._members.current.target

    @property
    def targets(self) -> list[str]:
        """Every address this client may call, in order."""
        return self._members.targets

    @property
    def _channel(self):
        return self._members.current.connect()

    def _service(self, factory) -> Service:
        return self._members.service(factory)

    def _call(self, rpc: Rpc, request):
        """One unary call: its response (asyncio: an awaitable of it)."""
        return self._run(self._calling(rpc, request))

    def _calling(self, rpc: Rpc, request):
        member = self._members.current
        failed: list[MemosError] = []
        renewed = replay = False
        while True:
            try:
                return (yield rpc.at(member)(request, timeout=self.timeout))
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, member.target)
                if not renewed and isinstance(error, Unauthenticated) and self.tokens and self.tokens.learn_epoch(exc):
                    renewed = True  # once more with a token for the daemon's current policy epoch
                    continue
                if not isinstance(error, Unavailable):
                    error.replayed = replay
                    raise error from None
                reached = not never_sent(exc)
                failed.append(error)
                following = self._members.move_on(member)
                if reached and not daemon_said(exc) and not replayable(rpc.name, request):
                    raise OutcomeUnknown(f"{error.message}; the {rpc.name} was under way and may or may not have"
                                         f" been carried out (it is not sent again: {unsure(rpc.name)})") from None
                if (daemon_said(exc) and not replayable(rpc.name, request)) or len(failed) >= len(self._members.all):
                    raise (error if len(failed) == 1 else none_answered(failed)) from None
                replay = replay or reached
                member, renewed = following, False

    def _unsent(self, member: Member, exc: grpc.RpcError, moves: int) -> bool:
        """True (and the next daemon in use) if a call no daemon received may go to the next one, `moves`
        daemons having been tried already."""
        return never_sent(exc) and moves + 1 < len(self._members.all) and self._move_on(member, exc)

    def _broken(self, exc: grpc.RpcError, member: Member, what: str) -> MemosError:
        """The error of a write stream that failed at `member`: OutcomeUnknown when its connection broke
        mid-call (what was in flight may or may not be stored), else the typed error. The next daemon (of
        several) is in use after it for the next calls."""
        error = from_rpc_error(exc, member.target)
        if not isinstance(error, Unavailable):
            return error
        self._move_on(member, exc)
        if never_sent(exc) or daemon_said(exc):
            return error
        return OutcomeUnknown(f"{error.message}; {what} was under way and may or may not have been carried out"
                              " (it is not sent again: check what was stored before sending it again)")

    def _move_on(self, member: Member, exc: grpc.RpcError) -> bool:
        """After a call at `member` failed: True (and the next daemon in use) if the client has several and
        the daemon is unavailable, for a caller that may send its call again."""
        if len(self._members.all) == 1 or exc.code() is not grpc.StatusCode.UNAVAILABLE:
            return False
        self._members.move_on(member)
        return True


def unsure(name: str) -> str:
    """What to do about a write that may or may not have happened."""
    if name in ("Publish", "Retract"):
        return "give a publish_id to make it safe to retry"
    return "check whether it was done before doing it again"


def none_answered(errors: list[MemosError]) -> Unavailable:
    return Unavailable(f"none of the {len(errors)} daemons answered: " + " | ".join(e.message for e in errors))
