"""MCP resources: cubes, namespaces and topics as memos:// URIs, read with the agent's own permissions."""

from __future__ import annotations

import json
from urllib.parse import quote, unquote

from mcp_types import (INVALID_PARAMS, ListResourcesResult, ListResourceTemplatesResult, ReadResourceResult, Resource,
                       ResourceTemplate, TextResourceContents)

from memos_client.aio import AsyncMemosClient
from memos_client.errors import MemosError
from memos_client.mcp import convert
from memos_client.mcp.feed import read_feed
from mcp.shared.exceptions import MCPError

CUBE, NAMESPACE, TOPIC = "memos://cube/", "memos://namespace/", "memos://topic/"
RECENT_EVENTS = 20  # what reading a topic shows of it
NAMESPACE_PAGE = 50


def topic_uri(name: str) -> str:
    return TOPIC + quote(name, safe="/*")


def parse(uri: str) -> tuple[str, str]:
    """("cube" | "namespace" | "topic", its name); an MCPError for any other URI."""
    for prefix, what in ((CUBE, "cube"), (NAMESPACE, "namespace"), (TOPIC, "topic")):
        if uri.startswith(prefix) and len(uri) > len(prefix) and len(uri) < 2048:
            return what, unquote(uri[len(prefix):])
    raise MCPError(INVALID_PARAMS, f"unknown resource {uri[:100]!r}: use memos://cube/ID, memos://namespace/NS or "
                                   "memos://topic/NAME")


async def list_resources(client: AsyncMemosClient) -> ListResourcesResult:
    """The topics this agent may publish or subscribe to, and the namespaces it owns or was granted."""
    resources = [Resource(uri=topic_uri(t.name), name=f"topic {t.name}", mime_type="application/json",
                          description=f"events on {t.name} (subscribe to be told of new ones)")
                 for t in await client.topics("")]
    for ns in await _namespaces(client):
        resources.append(Resource(uri=NAMESPACE + quote(ns, safe="/"), name=f"namespace {ns}",
                                  mime_type="application/json", description=f"the memories in {ns} you may read"))
    return ListResourcesResult(resources=resources)


async def _namespaces(client: AsyncMemosClient) -> list[str]:
    agent, _, _ = await client.whoami()
    found = {f"agents/{agent.name}"}
    subjects = [f"agent:{agent.name}", *(f"group:{g}" for g in agent.groups)]
    for subject in subjects:
        for policy in await client.list_policies(subject):
            if "read" in policy.document.get("actions", ()):
                found.update(ns.removesuffix("/**") for ns in policy.document.get("namespaces", ()))
    return sorted(found)


def templates() -> ListResourceTemplatesResult:
    return ListResourceTemplatesResult(resource_templates=[
        ResourceTemplate(uri_template=CUBE + "{id}", name="memory", mime_type="application/json",
                         description="one memory (cube) by id, its text and header"),
        ResourceTemplate(uri_template=NAMESPACE + "{namespace}", name="namespace", mime_type="application/json",
                         description="the memories under a namespace, oldest first (the first page)"),
        ResourceTemplate(uri_template=TOPIC + "{topic}", name="topic", mime_type="application/json",
                         description="a topic's recent events; subscribe (also to prefix/**) for updates"),
    ])


async def read(client: AsyncMemosClient, uri: str) -> ReadResourceResult:
    what, name = parse(uri)
    try:
        if what == "cube":
            body = convert.cube(await client.get(name))
        elif what == "namespace":
            page = await client.list_page(name, page_size=NAMESPACE_PAGE)
            body = {"namespace": name, "memories": [convert.cube(c) for c in page.cubes],
                    "more": bool(page.next_page_token)}
        else:
            ends = {t.name: t.last_seq for t in await client.topics(name.removesuffix("/**"))}
            start = {n: max(0, last - RECENT_EVENTS) for n, last in ends.items()}
            events, _ = await read_feed(client, name, start, RECENT_EVENTS, 0)
            body = {"topic": name, "events": [convert.event(e) for e in events]}
    except MemosError as exc:
        raise MCPError(INVALID_PARAMS, convert.memos_error(exc).content[0].text) from None  # type: ignore[union-attr]
    return ReadResourceResult(contents=[TextResourceContents(uri=uri, mime_type="application/json",
                                                             text=json.dumps(body, ensure_ascii=False))])
