"""The MCP tools: each validates its arguments, makes one governed daemon call as the agent, and says what happened."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from mcp_types import CallToolResult, Tool, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from memos_client.aio import AsyncMemosClient
from memos_client.mcp import convert
from memos_client.mcp.feed import read_feed
from memos_client.models import Kind

# Bounds on what a model may send: well above the daemon's own limits (which it reports, as such), low enough
# that a runaway argument never becomes a multi-megabyte gRPC message.
MAX_TEXT = 1_000_000
MAX_NAME = 1024
MAX_TAGS = 64
ID = Field(min_length=1, max_length=64, description="a cube id, as memory_add or memory_search returned it")
KindName = Literal["plaintext", "activation", "parametric"]


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AddArgs(Args):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="the memory itself, self-contained: who, what, when")
    namespace: str = Field("", max_length=MAX_NAME, description="where to store it, e.g. agents/alice/notes; "
                           "default: your own agents/<you>/notes")
    tags: list[str] = Field([], max_length=MAX_TAGS, description="short labels to filter by later, e.g. [\"travel\"]")
    metadata: dict[str, Any] = Field({}, description="JSON fields kept with the memory, e.g. {\"speaker\": \"bob\"}")


class SearchArgs(Args):
    query: str = Field(min_length=1, max_length=4096, description="what you want to recall, in plain words")
    limit: int = Field(10, ge=1, le=100, description="at most this many hits (default 10)")
    namespace_prefix: str = Field("", max_length=MAX_NAME, description="only under this namespace, e.g. agents/alice")
    tags: list[str] = Field([], max_length=MAX_TAGS, description="only memories carrying all these tags")
    kind: KindName = Field("plaintext", description="memory kind (default plaintext)")


class GetArgs(Args):
    id: str = ID
    version: int = Field(0, ge=0, description="an older version; 0 (default) for the current one")


class UpdateArgs(Args):
    id: str = ID
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT, description="the new text (omit to keep it)")
    tags: list[str] | None = Field(None, max_length=MAX_TAGS, description="the new tags, replacing the old (omit to keep)")
    metadata: dict[str, Any] | None = Field(None, description="the new metadata, replacing the old (omit to keep)")
    expected_version: int = Field(0, ge=0, description="fail instead of overwriting if the current version is not this "
                                  "one (0: no check)")


class DeleteArgs(Args):
    id: str = ID


class ListArgs(Args):
    namespace: str = Field("", max_length=MAX_NAME, description="a namespace prefix, e.g. agents/alice; default: "
                           "everything you may read")
    tags: list[str] = Field([], max_length=MAX_TAGS, description="only memories carrying all these tags")
    kind: KindName | None = Field(None, description="only memories of this kind")
    page_size: int = Field(20, ge=1, le=100, description="memories per page (default 20)")
    page_token: str = Field("", max_length=4096, description="next_page_token of the previous page; empty for the first")


class ShareArgs(Args):
    subject: str = Field(min_length=1, max_length=MAX_NAME, description="who may read: an agent name (bob), "
                         "agent:NAME or group:NAME")
    namespace: str = Field(min_length=1, max_length=MAX_NAME, description="a namespace you own, e.g. "
                           "agents/alice/shared, or agents/alice/shared/** for it and everything below")
    expires_in_seconds: int = Field(0, ge=0, le=10 * 365 * 86400, description="the share lapses after this many "
                                    "seconds; 0 (default) for no expiry")


class UnshareArgs(Args):
    policy_id: str = Field(min_length=1, max_length=64, description="the policy_id memory_share returned")


class PublishArgs(Args):
    topic: str = Field(min_length=1, max_length=MAX_NAME, description="the topic, e.g. teams/research/summaries")
    id: str = ID
    publish_id: str = Field("", max_length=256, description="an idempotency key: publishing again with it is a no-op")


class FeedArgs(Args):
    topic: str = Field(min_length=1, max_length=MAX_NAME, description="a topic, or prefix/** for every topic under it")
    cursor: str = Field("", max_length=65536, description="next_cursor from your previous memory_feed call; empty "
                        "to read from the oldest event kept")
    limit: int = Field(20, ge=1, le=100, description="at most this many events (default 20)")
    wait_seconds: float = Field(0, ge=0, le=60, description="when nothing is new, wait up to this long for an event")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    args: type[Args]
    description: str
    run: Callable[[AsyncMemosClient, Any], Awaitable[CallToolResult]]
    read_only: bool = False

    def tool(self) -> Tool:
        return Tool(name=self.name, description=self.description, input_schema=_schema(self.args),
                    annotations=ToolAnnotations(read_only_hint=self.read_only, open_world_hint=False,
                                                destructive_hint=self.name in {"memory_delete", "memory_update"}))


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema without pydantic's generated titles (noise in a model's context)."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    return strip(model.model_json_schema())


# ---- the calls ----------------------------------------------------------------------------------------------


async def _add(client: AsyncMemosClient, a: AddArgs) -> CallToolResult:
    cube = await client.put(a.text, a.namespace or None, tags=a.tags, metadata=a.metadata)
    return convert.result(f"stored as {cube.id} in {cube.namespace} (version {cube.version})",
                          {"id": cube.id, "namespace": cube.namespace, "version": cube.version})


async def _search(client: AsyncMemosClient, a: SearchArgs) -> CallToolResult:
    hits = await client.search(a.query, a.namespace_prefix or None, limit=a.limit, tags=a.tags, kinds=[Kind[a.kind.upper()]])
    return convert.result(convert.hits_text(hits, a.query), {"hits": [convert.hit(h) for h in hits]})


async def _get(client: AsyncMemosClient, a: GetArgs) -> CallToolResult:
    cube = await client.get(a.id, a.version)
    return convert.result(convert.cube_text(cube), convert.cube(cube))


async def _update(client: AsyncMemosClient, a: UpdateArgs) -> CallToolResult:
    changes = {k: v for k, v in (("text", a.text), ("tags", a.tags), ("metadata", a.metadata)) if v is not None}
    if not changes:
        return convert.error("nothing to update: give text, tags or metadata")
    cube = await client.update(a.id, expected_version=a.expected_version, **changes)
    return convert.result(f"{cube.id} is now version {cube.version}", convert.cube(cube))


async def _delete(client: AsyncMemosClient, a: DeleteArgs) -> CallToolResult:
    version = await client.delete(a.id)
    return convert.result(f"deleted {a.id} (its history is kept as version {version})",
                          {"id": a.id, "deleted": True, "version": version})


async def _list(client: AsyncMemosClient, a: ListArgs) -> CallToolResult:
    kinds = [Kind[a.kind.upper()]] if a.kind else []
    page = await client.list_page(a.namespace or None, page_size=a.page_size, page_token=a.page_token, tags=a.tags,
                                  kinds=kinds)
    lines = [convert.cube_line(c) for c in page.cubes] or ["no memories here that you may read"]
    if page.next_page_token:
        lines.append("more: call memory_list again with page_token=next_page_token")
    return convert.result("\n".join(lines), {"memories": [convert.cube(c) for c in page.cubes],
                                             "next_page_token": page.next_page_token})


async def _share(client: AsyncMemosClient, a: ShareArgs) -> CallToolResult:
    subject = a.subject if ":" in a.subject else f"agent:{a.subject}"
    expires = time.time() + a.expires_in_seconds if a.expires_in_seconds else None
    policy_id = await client.grant(subject, ["read"], [a.namespace], expires_at=expires)
    return convert.result(f"{subject} may now read {a.namespace} (policy {policy_id}; memory_unshare revokes it)",
                          {"policy_id": policy_id, "subject": subject, "namespace": a.namespace})


async def _unshare(client: AsyncMemosClient, a: UnshareArgs) -> CallToolResult:
    await client.revoke_policy(a.policy_id)
    return convert.result(f"revoked {a.policy_id}: it no longer grants anything", {"policy_id": a.policy_id,
                                                                                  "revoked": True})


async def _publish(client: AsyncMemosClient, a: PublishArgs) -> CallToolResult:
    seq, duplicate = await client.publish(a.topic, a.id, publish_id=a.publish_id)
    note = " (already published with this publish_id)" if duplicate else ""
    return convert.result(f"published {a.id} to {a.topic} as event {seq}{note}",
                          {"topic": a.topic, "seq": seq, "duplicate": duplicate})


async def _feed(client: AsyncMemosClient, a: FeedArgs) -> CallToolResult:
    events, positions = await read_feed(client, a.topic, convert.decode_cursor(a.cursor), a.limit, a.wait_seconds)
    cursor = convert.encode_cursor(positions)
    lines = [convert.event_line(e) for e in events] or [f"no new events on {a.topic}"]
    return convert.result("\n".join(lines) + "\n(next_cursor continues from here)",
                          {"events": [convert.event(e) for e in events], "next_cursor": cursor})


TOOLS = {t.name: t for t in (
    ToolSpec("memory_add", AddArgs, "Remember something: store a text memory (a fact, decision, preference, "
             "summary) so that you or agents you share with can recall it later. Returns its id.", _add),
    ToolSpec("memory_search", SearchArgs, "Recall: find the stored memories most relevant to a question or topic, "
             "best first. Use before answering anything that earlier work may have covered. Only returns memories "
             "you may read.", _search, read_only=True),
    ToolSpec("memory_get", GetArgs, "Read one memory in full by its id (search and list show the start of long "
             "texts).", _get, read_only=True),
    ToolSpec("memory_update", UpdateArgs, "Correct or extend a memory: writes a new version (older versions are "
             "kept). Give only what changes.", _update),
    ToolSpec("memory_delete", DeleteArgs, "Forget a memory that is wrong or no longer wanted.", _delete),
    ToolSpec("memory_list", ListArgs, "Browse memories under a namespace, oldest first, a page at a time (use "
             "memory_search to find by meaning).", _list, read_only=True),
    ToolSpec("memory_share", ShareArgs, "Let another agent or a group read memories in a namespace you own. Returns "
             "a policy_id for memory_unshare.", _share),
    ToolSpec("memory_unshare", UnshareArgs, "Withdraw a share made with memory_share; it takes effect at once.",
             _unshare),
    ToolSpec("memory_publish", PublishArgs, "Announce a memory on a topic: agents following the topic receive it "
             "and may read it. Needs publish permission on the topic.", _publish),
    ToolSpec("memory_feed", FeedArgs, "Catch up on a topic: the events (memories published, updated, retracted) "
             "since your last call. Pass back next_cursor each time to see only what is new.", _feed,
             read_only=True),
)}
