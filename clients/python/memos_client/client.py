"""MemosClient: the synchronous Python client of memosd, and the methods it shares with AsyncMemosClient."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import grpc

from memos_client import requests as rq
from memos_client.adapter_client import ParametricMethods
from memos_client.auth import AgentKey, TokenSource, resolve_key, sign_policy
from memos_client.addresses import resolve_targets
from memos_client.channel import sync_channel
from memos_client.failover import FailoverMethods, Members
from memos_client.fdpass import unix_path
from memos_client.errors import AlreadyExists, NotFound, Unauthenticated
from memos_client.kv_client import TensorMethods
from memos_client.portability import PortabilityMethods
from memos_client.models import Agent, AuditEntry, AuditReport, Cube, Hit, Page, Policy, State, Status, Topic
from memos_client.steps import END, Item, Next, SyncSteps, iterating, method
from memos_client.subscription import Subscription, _Position
from memos_mip.v1 import daemon_pb2, daemon_pb2_grpc, governance_pb2 as gpb, governance_pb2_grpc, vault_pb2, vault_pb2_grpc
from memos_mip.v1 import store_pb2 as spb, store_pb2_grpc


class ClientMethods(FailoverMethods, PortabilityMethods, TensorMethods, ParametricMethods):
    """Every method of MemosClient and AsyncMemosClient, each written once (memos_client.steps); a client
    adds its channel factory, `_stale` and step driver."""

    _open_channel = None  # the client's channel factory (memos_client.channel)

    def __init__(self, addr: str | list[str] | None = None, *, key: str | AgentKey | None = None,
                 timeout: float = 30.0, tls_ca: str | None = None, local_transfers: bool = True):
        targets = resolve_targets(addr)
        self.timeout = timeout
        # Tensor payloads mapped from the daemon's files when it listens on a Unix socket on this host
        # (fetch_payload), and subscriptions' events over a socket of their own (memos_client.subscription);
        # turned off, or off by itself once that fails, both go over gRPC.
        self.local_transfers = local_transfers and unix_path(targets[0]) is not None
        agent_key = resolve_key(key, targets[0])
        # One token source for every member: a cluster has one identity (the tokens' audience) and one
        # policy epoch, so a token minted for one daemon is good at the next.
        self.tokens = TokenSource(agent_key) if agent_key else None
        # Where put() writes when no namespace is given: the caller's own notes.
        self.default_namespace = f"agents/{agent_key.agent}/notes" if agent_key else rq.DEFAULT_NAMESPACE
        self._members = Members(targets, lambda target: self._open_channel(target, self.tokens, tls_ca))
        self._vault = self._service(vault_pb2_grpc.VaultServiceStub)
        self._daemon = self._service(daemon_pb2_grpc.DaemonServiceStub)
        self._gov = self._service(governance_pb2_grpc.GovernanceServiceStub)
        self._store = self._service(store_pb2_grpc.StoreServiceStub)
        self._members.current.connect()  # as before: the first daemon's channel exists from the start

    @method
    def put(self, text: str, namespace: str | None = None, **fields) -> Cube:
        """Store one plaintext cube; fields: tags, metadata, source, priority, ttl, expires_at, context (text
        indexed for search with the cube, never returned: e.g. the neighbouring turns of a dialogue)."""
        request = vault_pb2.PutRequest(cube=rq.draft(text, self.default_namespace if namespace is None else namespace, **fields))
        return Cube.from_proto((yield self._call(self._vault.Put, request)).cube)

    @method
    def put_many(self, drafts: Iterable, *, batch_size: int = 500, on_batch=None) -> list[str]:
        """Store many cubes (dicts like {"text", "namespace", "tags", "metadata"} or CubeDrafts) over one
        stream; returns their ids. on_batch(acknowledged_so_far) is called after each durable batch. A stream
        whose daemon goes away mid-call raises OutcomeUnknown: the batch in flight may or may not be stored."""
        ids: list[str] = []
        source = rq.BatchSource(drafts, batch_size)
        requests = rq.Replayable(source)
        moves = 0
        while True:
            member = self._members.current
            try:
                receive = Next(self._vault.PutStream.at(member)(requests.attempt()))
                while (ack := (yield receive)) is not END:
                    requests.commit()
                    ids.extend(ack.ids)
                    if on_batch:
                        on_batch(ack.acknowledged)
                return ids
            except grpc.RpcError as exc:
                if source.error is not None:
                    raise source.error from None
                if self._unsent(member, exc, moves):  # no daemon received any: at the next one
                    moves += 1
                    continue
                # Refused for a stale token before the daemon read a batch: send them all again.
                if requests.committed or not (yield self._stale(exc)):
                    raise self._broken(exc, member, f"put_many (after {len(ids)} cubes stored)") from None

    @method
    def get(self, cube_id: str, version: int = 0) -> Cube:
        """A cube: its current version, or the given one."""
        return Cube.from_proto((yield self._call(self._vault.Get, vault_pb2.GetRequest(id=cube_id, version=version))).cube)

    @method
    def update(self, cube_id: str, **changes) -> Cube:
        """Write a new version; changes: text, tags, metadata, source, priority, ttl, expires_at, state,
        expected_version."""
        return Cube.from_proto((yield self._call(self._vault.Update, rq.update(cube_id, **changes))).cube)

    @method
    def delete(self, cube_id: str) -> int:
        """Delete a cube; returns the version number of the tombstone written."""
        try:
            return (yield self._call(self._vault.Delete, vault_pb2.DeleteRequest(id=cube_id))).version
        except NotFound as exc:
            if not exc.replayed:
                raise
            # Sent again at another daemon after the first broke mid-call: the first may have deleted it.
            last = (yield self.history(cube_id))[-1:]
            if not last or last[0].state is not State.DELETED:
                raise
            return last[0].version

    @method
    def list_page(self, namespace: str | None = None, *, page_size: int = 100, page_token: str = "", **filters) -> Page:
        """One page of matching cubes; filters: kinds, tags, created_after, created_before, states."""
        request = vault_pb2.ListRequest(filter=rq.cube_filter(namespace, **filters), page_size=page_size,
                                        page_token=page_token)
        resp = yield self._call(self._vault.List, request)
        return Page([Cube.from_proto(c) for c in resp.cubes], resp.next_page_token, resp.total_size)

    @iterating
    def list(self, namespace: str | None = None, *, page_size: int = 100, **filters) -> Iterator[Cube]:
        """Every matching cube, oldest first, fetching pages as the iteration goes."""
        token = ""
        while True:
            page = yield self.list_page(namespace, page_size=page_size, page_token=token, **filters)
            for cube in page.cubes:
                yield Item(cube)
            token = page.next_page_token
            if not token:
                return

    @method
    def search(self, query: str, namespace: str | None = None, *, limit: int = 10, mode: str = "auto",
               fts: bool = False, **filters) -> list[Hit]:
        """Ranked plaintext hits; mode is auto, bm25, dense or hybrid; fts=True reads FTS5 query syntax."""
        request = rq.search(query, limit=limit, mode=mode, fts=fts, namespace=namespace, **filters)
        return [Hit.from_proto(h) for h in (yield self._call(self._vault.Search, request)).hits]

    @method
    def history(self, cube_id: str) -> list[Cube]:
        """Every version of a cube, oldest first."""
        resp = yield self._call(self._vault.History, vault_pb2.HistoryRequest(id=cube_id))
        return [Cube.from_proto(c) for c in resp.versions]

    @method
    def status(self) -> Status:
        """The daemon's version, uptime, data size, cube counts and embedding backlog (metrics: admin only)."""
        return Status.from_proto((yield self._call(self._daemon.Status, daemon_pb2.StatusRequest())))

    # -- governance -----------------------------------------------------------------------------

    @method
    def whoami(self) -> tuple[Agent, str, int]:
        """(the caller as the daemon knows it, the daemon's id, the current policy epoch)."""
        resp = yield self._call(self._gov.WhoAmI, gpb.WhoAmIRequest())
        if self.tokens:
            self.tokens.adopt_epoch(resp.policy_epoch)
        return Agent.from_proto(resp.agent), resp.daemon_id, resp.policy_epoch

    @method
    def add_agent(self, name: str, *, groups=(), out: str | None = None) -> tuple[Agent, str]:
        """Create an agent's key pair here, register its public key, and save the key file (mode 0600,
        default ./NAME.key). Returns the agent and the key file's path. Admin only."""
        import os

        path = out or f"{name}.key"
        if os.path.exists(path):
            raise AlreadyExists(f"{path} exists already; choose another --out")
        key = AgentKey.generate(name, "")
        request = gpb.AddAgentRequest(name=name, public_key=key.public_bytes, groups=list(groups))
        resp = yield self._call(self._gov.AddAgent, request)
        key.audience = resp.daemon_id
        return Agent.from_proto(resp.agent), str(key.save(path))

    @method
    def list_agents(self, include_revoked: bool = False) -> list[Agent]:
        """The registered agents. Admin only."""
        resp = yield self._call(self._gov.ListAgents, gpb.ListAgentsRequest(include_revoked=include_revoked))
        return [Agent.from_proto(a) for a in resp.agents]

    @method
    def revoke_agent(self, name: str) -> Agent:
        """Revoke an agent: its tokens stop working at once. Admin only."""
        return Agent.from_proto((yield self._call(self._gov.RevokeAgent, gpb.RevokeAgentRequest(name=name))).agent)

    @method
    def grant(self, subject: str, actions, namespaces, *, kinds=(), not_before=None, expires_at=None) -> str:
        """Sign a policy with this client's key and store it; returns its id. subject is "agent:NAME" or
        "group:NAME"; namespaces are "ns" or "ns/**" patterns."""
        if self.tokens is None:
            raise Unauthenticated("no agent key: pass key= or set MEMOS_KEY to sign a policy")
        document, signature = sign_policy(self.tokens.key, subject=subject, actions=actions, namespaces=namespaces,
                                          kinds=kinds, not_before=not_before, expires_at=expires_at)
        return (yield self.put_policy(document, signature))

    @method
    def put_policy(self, document: bytes, signature: bytes) -> str:
        """Store a signed policy document; returns its id."""
        request = gpb.PutPolicyRequest(policy=gpb.SignedPolicy(document=document, signature=signature))
        try:
            return (yield self._call(self._gov.PutPolicy, request)).id
        except AlreadyExists as exc:
            if not exc.replayed:
                raise
            # Sent again after the first attempt broke mid-call: its own id (random, signed) is stored, by it.
            stored = _policy_id(document)
            if stored is None:
                raise
            return stored

    @method
    def list_policies(self, subject: str = "", include_inactive: bool = False) -> list[Policy]:
        """The policies (of one subject, if given)."""
        request = gpb.ListPoliciesRequest(subject=subject, include_inactive=include_inactive)
        return [Policy.from_proto(p) for p in (yield self._call(self._gov.ListPolicies, request)).policies]

    @method
    def get_policy(self, policy_id: str) -> Policy:
        """One stored policy."""
        return Policy.from_proto((yield self._call(self._gov.GetPolicy, gpb.GetPolicyRequest(id=policy_id))).policy)

    @method
    def revoke_policy(self, policy_id: str) -> int:
        """Revoke a policy; returns the new policy epoch."""
        epoch = (yield self._call(self._gov.RevokePolicy, gpb.RevokePolicyRequest(id=policy_id))).policy_epoch
        if self.tokens:
            self.tokens.adopt_epoch(epoch)  # this client's next token is current at once
        return epoch

    @iterating
    def audit(self, after_seq: int = 0, *, page_size: int = 500) -> Iterator[AuditEntry]:
        """The audit log from after_seq on, oldest first. Admin only."""
        while True:
            request = gpb.ListAuditRequest(after_seq=after_seq, limit=page_size)
            entries = (yield self._call(self._gov.ListAudit, request)).entries
            for e in entries:
                yield Item(AuditEntry.from_proto(e))
            if len(entries) < page_size:
                return
            after_seq = entries[-1].seq

    @method
    def verify_audit(self) -> tuple[bool, int, int, str]:
        """(ok, entries checked, first bad seq, reason) of the chain and its signed checkpoints (all of it:
        audit_report). Admin only."""
        r = yield self._call(self._gov.VerifyAudit, gpb.VerifyAuditRequest())
        return r.ok, r.entries, r.first_bad_seq, r.reason

    @method
    def audit_report(self) -> AuditReport:
        """verify_audit in full: the chain, its signed checkpoints and the unsigned tail after them. Admin only."""
        return AuditReport.from_proto((yield self._call(self._gov.VerifyAudit, gpb.VerifyAuditRequest())))

    # -- MemStore ---------------------------------------------------------------------------------

    @method
    def publish(self, topic: str, cube_id: str, *, publish_id: str = "") -> tuple[int, bool]:
        """Publish a cube's current version to a topic: (seq, duplicate). A retried call with the same
        publish_id returns the first seq with duplicate=True."""
        r = yield self._call(self._store.Publish, spb.PublishRequest(topic=topic, cube_id=cube_id, publish_id=publish_id))
        return r.seq, r.duplicate

    @iterating
    def publish_stream(self, publishes: Iterable) -> Iterator[tuple[int, bool]]:
        """Publish many events over one stream, at a fraction of publish()'s cost per event: `publishes`
        yields (topic, cube_id) or (topic, cube_id, publish_id) tuples, sent as it yields them (on a
        thread of gRPC's in MemosClient, on the event loop in AsyncMemosClient: it must not block there).
        Yields (seq, duplicate) for each, in order, once its event is durable. The first publish refused
        raises its error after the acknowledgements of those before it; none after it is published. If
        the stream breaks, publish the unacknowledged ones again with their publish_ids: none is
        published twice."""
        source = rq.BatchSource.of(rq.publishes(publishes))
        requests = rq.Replayable(source)
        moves = 0
        while True:
            call = None
            member = self._members.current
            try:
                call = self._store.PublishStream.at(member)(requests.attempt())
                receive = Next(call)
                while (msg := (yield receive)) is not END:
                    requests.commit()
                    for ack in msg.acks:
                        yield Item((ack.seq, ack.duplicate))
                return
            except grpc.RpcError as exc:
                if source.error is not None:
                    raise source.error from None
                if self._unsent(member, exc, moves):  # no daemon received any: at the next one
                    moves += 1
                    continue
                # Refused for a stale token before the daemon acknowledged anything: send them all again.
                if requests.committed or not (yield self._stale(exc)):
                    raise self._broken(exc, member, "publish_stream (the unacknowledged publishes)") from None
            finally:
                if call is not None:
                    call.cancel()  # a caller leaving early ends the stream; after its end, a no-op

    @method
    def retract(self, topic: str, cube_id: str, *, publish_id: str = "") -> tuple[int, bool]:
        """Retract a cube from a topic; its subscribers lose the read access publishing gave them."""
        r = yield self._call(self._store.Retract, spb.RetractRequest(topic=topic, cube_id=cube_id, publish_id=publish_id))
        return r.seq, r.duplicate

    def subscribe(self, topic: str, after_seq: int = 0, *, live_only: bool = False, durable_name: str = "",
                  heartbeat_seconds: int = 0, ack_timeout_seconds: int = 0, heartbeats: bool = False,
                  resume_for: float = 60.0) -> Subscription:
        """Events of a topic (or "prefix/**") after after_seq, then live ones; resumes by itself."""
        position = _Position(topic, after_seq, live_only, durable_name, heartbeat_seconds, ack_timeout_seconds)
        return self._subscription(position, heartbeats=heartbeats, resume_for=resume_for)

    @method
    def ack(self, durable_name: str, topic: str, seq: int) -> int:
        """Acknowledge a durable subscription's events on a topic up to seq."""
        r = yield self._call(self._store.Ack, spb.AckRequest(durable_name=durable_name, topic=topic, seq=seq))
        return r.acked_seq

    @method
    def topics(self, prefix: str = "") -> list[Topic]:
        """The topics (under a prefix, if given): owner, first and last seq, retention."""
        r = yield self._call(self._store.ListTopics, spb.ListTopicsRequest(prefix=prefix))
        return [Topic.from_proto(t) for t in r.topics]

    @method
    def set_retention(self, topic: str, *, max_age_seconds: int = 0, max_events: int = 0) -> Topic:
        """Keep a topic's events for at most max_age_seconds and max_events (0: no limit)."""
        request = spb.SetRetentionRequest(topic=topic, max_age_seconds=max_age_seconds, max_events=max_events)
        return Topic.from_proto((yield self._call(self._store.SetRetention, request)))


def _policy_id(document: bytes) -> str | None:
    try:
        found = json.loads(document).get("id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


class MemosClient(SyncSteps, ClientMethods):
    """Talks to memosd at `addr` (else $MEMOS_ADDR, else the default socket) as the agent whose key is
    `key` (a path or AgentKey; else $MEMOS_KEY, else the default data directory's admin key).
    Several addresses ("unix:/a.sock,host2:7777" or a list: a cluster's daemons) are failed over in
    order (memos_client.failover). Use as a context manager."""

    _open_channel = staticmethod(sync_channel)

    def _subscription(self, position: _Position, **options) -> Subscription:
        return Subscription(self, position, **options)

    def close(self) -> None:
        """Close the channels; calls in progress end."""
        for channel in self._members.close():
            channel.close()

    def __enter__(self) -> MemosClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stale(self, exc: grpc.RpcError) -> bool:
        """True when a call was refused only for a stale token; the current epoch is then adopted for a retry."""
        return bool(self.tokens and self.tokens.learn_epoch(exc))
