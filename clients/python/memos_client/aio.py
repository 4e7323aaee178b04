"""AsyncMemosClient: the asyncio Python client of memosd, with the same methods as MemosClient."""

from __future__ import annotations

from typing import AsyncIterator, Iterable

import grpc

from memos_client import requests as rq
from memos_client.adapter_aio import AsyncParametricMethods
from memos_client.auth import AgentKey, TokenSource, resolve_key, sign_policy
from memos_client.channel import aio_channel
from memos_mip.defaults import resolve_addr
from memos_client.fdpass import unix_path
from memos_client.errors import AlreadyExists, Unauthenticated, from_rpc_error
from memos_client.kv_aio import AsyncTensorMethods
from memos_client.portability import AsyncPortabilityMethods
from memos_client.models import Agent, AuditEntry, AuditReport, Cube, Hit, Page, Policy, Status, Topic
from memos_client.subscription import AsyncSubscription, _Position
from memos_mip.v1 import daemon_pb2, daemon_pb2_grpc, governance_pb2 as gpb, governance_pb2_grpc, vault_pb2, vault_pb2_grpc
from memos_mip.v1 import store_pb2 as spb, store_pb2_grpc


class AsyncMemosClient(AsyncPortabilityMethods, AsyncTensorMethods, AsyncParametricMethods):
    """Talks to memosd at `addr` (else $MEMOS_ADDR, else the default socket) as the agent whose key is
    `key` (else $MEMOS_KEY, else the default data directory's admin key). Use with `async with`."""

    def __init__(self, addr: str | None = None, *, key: "str | AgentKey | None" = None, timeout: float = 30.0,
                 tls_ca: str | None = None, local_transfers: bool = True):
        self.target = resolve_addr(addr)
        self.timeout = timeout
        # Tensor payloads mapped from the daemon's files when it listens on a Unix socket on this host
        # (fetch_payload); turned off, or off by itself once that fails, they stream over gRPC.
        self.local_transfers = local_transfers and unix_path(self.target) is not None
        agent_key = resolve_key(key, self.target)
        self.tokens = TokenSource(agent_key) if agent_key else None
        # Where put() writes when no namespace is given: the caller's own notes.
        self.default_namespace = f"agents/{agent_key.agent}/notes" if agent_key else rq.DEFAULT_NAMESPACE
        self._channel = aio_channel(self.target, self.tokens, tls_ca)
        self._vault = vault_pb2_grpc.VaultServiceStub(self._channel)
        self._daemon = daemon_pb2_grpc.DaemonServiceStub(self._channel)
        self._gov = governance_pb2_grpc.GovernanceServiceStub(self._channel)
        self._store = store_pb2_grpc.StoreServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncMemosClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc, self.target)
            if not (isinstance(error, Unauthenticated) and self.tokens and self.tokens.learn_epoch(exc)):
                raise error from None
        try:  # once more with a token for the daemon's current policy epoch
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None

    async def _stale(self, exc: grpc.RpcError) -> bool:
        """True when a call was refused only for a stale token; the current epoch is then adopted for
        a retry. grpc.aio reports a client stream refused while it was writing a request as INTERNAL
        ("Internal error from Core"), hiding the daemon's status: WhoAmI tells whether the epoch moved on."""
        if self.tokens is None or self.tokens.learn_epoch(exc):
            return self.tokens is not None
        if exc.code() is not grpc.StatusCode.INTERNAL or "memos-error" in dict(exc.trailing_metadata() or ()):
            return False
        try:
            epoch = (await self._gov.WhoAmI(gpb.WhoAmIRequest(), timeout=self.timeout)).policy_epoch
        except grpc.RpcError:
            return False
        if epoch == self.tokens.epoch:
            return False
        self.tokens.adopt_epoch(epoch)
        return True

    async def put(self, text: str, namespace: str | None = None, **fields) -> Cube:
        request = vault_pb2.PutRequest(cube=rq.draft(text, self.default_namespace if namespace is None else namespace, **fields))
        return Cube.from_proto((await self._call(self._vault.Put, request)).cube)

    async def put_many(self, drafts: Iterable, *, batch_size: int = 500, on_batch=None) -> list[str]:
        ids: list[str] = []
        source = rq.BatchSource(drafts, batch_size)
        requests = rq.Replayable(source)
        while True:
            try:
                async for ack in self._vault.PutStream(requests.attempt()):
                    requests.commit()
                    ids.extend(ack.ids)
                    if on_batch:
                        on_batch(ack.acknowledged)
                return ids
            except grpc.RpcError as exc:
                if source.error is not None:
                    raise source.error from None
                if requests.committed or not await self._stale(exc):
                    raise from_rpc_error(exc, self.target) from None

    async def get(self, cube_id: str, version: int = 0) -> Cube:
        resp = await self._call(self._vault.Get, vault_pb2.GetRequest(id=cube_id, version=version))
        return Cube.from_proto(resp.cube)

    async def update(self, cube_id: str, **changes) -> Cube:
        return Cube.from_proto((await self._call(self._vault.Update, rq.update(cube_id, **changes))).cube)

    async def delete(self, cube_id: str) -> int:
        return (await self._call(self._vault.Delete, vault_pb2.DeleteRequest(id=cube_id))).version

    async def list_page(self, namespace: str | None = None, *, page_size: int = 100, page_token: str = "",
                        **filters) -> Page:
        request = vault_pb2.ListRequest(filter=rq.cube_filter(namespace, **filters), page_size=page_size,
                                        page_token=page_token)
        resp = await self._call(self._vault.List, request)
        return Page([Cube.from_proto(c) for c in resp.cubes], resp.next_page_token, resp.total_size)

    async def list(self, namespace: str | None = None, *, page_size: int = 100, **filters) -> AsyncIterator[Cube]:
        token = ""
        while True:
            page = await self.list_page(namespace, page_size=page_size, page_token=token, **filters)
            for cube in page.cubes:
                yield cube
            token = page.next_page_token
            if not token:
                return

    async def search(self, query: str, namespace: str | None = None, *, limit: int = 10, mode: str = "auto",
                     fts: bool = False, **filters) -> list[Hit]:
        request = rq.search(query, limit=limit, mode=mode, fts=fts, namespace=namespace, **filters)
        return [Hit.from_proto(h) for h in (await self._call(self._vault.Search, request)).hits]

    async def history(self, cube_id: str) -> list[Cube]:
        resp = await self._call(self._vault.History, vault_pb2.HistoryRequest(id=cube_id))
        return [Cube.from_proto(c) for c in resp.versions]

    async def status(self) -> Status:
        return Status.from_proto(await self._call(self._daemon.Status, daemon_pb2.StatusRequest()))

    # -- governance -----------------------------------------------------------------------------

    async def whoami(self) -> tuple[Agent, str, int]:
        resp = await self._call(self._gov.WhoAmI, gpb.WhoAmIRequest())
        if self.tokens:
            self.tokens.adopt_epoch(resp.policy_epoch)
        return Agent.from_proto(resp.agent), resp.daemon_id, resp.policy_epoch

    async def add_agent(self, name: str, *, groups=(), out: str | None = None) -> tuple[Agent, str]:
        import os

        path = out or f"{name}.key"
        if os.path.exists(path):
            raise AlreadyExists(f"{path} exists already; choose another --out")
        key = AgentKey.generate(name, "")
        resp = await self._call(self._gov.AddAgent, gpb.AddAgentRequest(name=name, public_key=key.public_bytes,
                                                                         groups=list(groups)))
        key.audience = resp.daemon_id
        return Agent.from_proto(resp.agent), str(key.save(path))

    async def list_agents(self, include_revoked: bool = False) -> list[Agent]:
        resp = await self._call(self._gov.ListAgents, gpb.ListAgentsRequest(include_revoked=include_revoked))
        return [Agent.from_proto(a) for a in resp.agents]

    async def revoke_agent(self, name: str) -> Agent:
        return Agent.from_proto((await self._call(self._gov.RevokeAgent, gpb.RevokeAgentRequest(name=name))).agent)

    async def grant(self, subject: str, actions, namespaces, *, kinds=(), not_before=None, expires_at=None) -> str:
        if self.tokens is None:
            raise Unauthenticated("no agent key: pass key= or set MEMOS_KEY to sign a policy")
        document, signature = sign_policy(self.tokens.key, subject=subject, actions=actions, namespaces=namespaces,
                                          kinds=kinds, not_before=not_before, expires_at=expires_at)
        return await self.put_policy(document, signature)

    async def put_policy(self, document: bytes, signature: bytes) -> str:
        request = gpb.PutPolicyRequest(policy=gpb.SignedPolicy(document=document, signature=signature))
        return (await self._call(self._gov.PutPolicy, request)).id

    async def list_policies(self, subject: str = "", include_inactive: bool = False) -> list[Policy]:
        resp = await self._call(self._gov.ListPolicies, gpb.ListPoliciesRequest(subject=subject,
                                                                                 include_inactive=include_inactive))
        return [Policy.from_proto(p) for p in resp.policies]

    async def get_policy(self, policy_id: str) -> Policy:
        return Policy.from_proto((await self._call(self._gov.GetPolicy, gpb.GetPolicyRequest(id=policy_id))).policy)

    async def revoke_policy(self, policy_id: str) -> int:
        epoch = (await self._call(self._gov.RevokePolicy, gpb.RevokePolicyRequest(id=policy_id))).policy_epoch
        if self.tokens:
            self.tokens.adopt_epoch(epoch)  # this client's next token is current at once
        return epoch

    async def audit(self, after_seq: int = 0, *, page_size: int = 500) -> AsyncIterator[AuditEntry]:
        while True:
            request = gpb.ListAuditRequest(after_seq=after_seq, limit=page_size)
            entries = (await self._call(self._gov.ListAudit, request)).entries
            for e in entries:
                yield AuditEntry.from_proto(e)
            if len(entries) < page_size:
                return
            after_seq = entries[-1].seq

    async def verify_audit(self) -> tuple[bool, int, int, str]:
        r = await self._call(self._gov.VerifyAudit, gpb.VerifyAuditRequest())
        return r.ok, r.entries, r.first_bad_seq, r.reason

    async def audit_report(self) -> AuditReport:
        """verify_audit in full: the chain, its signed checkpoints and the unsigned tail after them. Admin only."""
        return AuditReport.from_proto(await self._call(self._gov.VerifyAudit, gpb.VerifyAuditRequest()))

    # -- MemStore ---------------------------------------------------------------------------------

    async def publish(self, topic: str, cube_id: str, *, publish_id: str = "") -> tuple[int, bool]:
        """Publish a cube's current version to a topic: (seq, duplicate). A retried call with the same
        publish_id returns the first seq with duplicate=True."""
        r = await self._call(self._store.Publish, spb.PublishRequest(topic=topic, cube_id=cube_id, publish_id=publish_id))
        return r.seq, r.duplicate

    async def retract(self, topic: str, cube_id: str, *, publish_id: str = "") -> tuple[int, bool]:
        """Retract a cube from a topic; its subscribers lose the read access publishing gave them."""
        r = await self._call(self._store.Retract, spb.RetractRequest(topic=topic, cube_id=cube_id, publish_id=publish_id))
        return r.seq, r.duplicate

    def subscribe(self, topic: str, after_seq: int = 0, *, live_only: bool = False, durable_name: str = "",
                  heartbeat_seconds: int = 0, ack_timeout_seconds: int = 0, heartbeats: bool = False,
                  resume_for: float = 60.0) -> AsyncSubscription:
        """Events of a topic (or "prefix/**") after after_seq, then live ones; resumes by itself."""
        position = _Position(topic, after_seq, live_only, durable_name, heartbeat_seconds, ack_timeout_seconds)
        return AsyncSubscription(self, position, heartbeats=heartbeats, resume_for=resume_for)

    async def ack(self, durable_name: str, topic: str, seq: int) -> int:
        """Acknowledge a durable subscription's events on a topic up to seq."""
        r = await self._call(self._store.Ack, spb.AckRequest(durable_name=durable_name, topic=topic, seq=seq))
        return r.acked_seq

    async def topics(self, prefix: str = "") -> list[Topic]:
        r = await self._call(self._store.ListTopics, spb.ListTopicsRequest(prefix=prefix))
        return [Topic.from_proto(t) for t in r.topics]

    async def set_retention(self, topic: str, *, max_age_seconds: int = 0, max_events: int = 0) -> Topic:
        request = spb.SetRetentionRequest(topic=topic, max_age_seconds=max_age_seconds, max_events=max_events)
        return Topic.from_proto(await self._call(self._store.SetRetention, request))
