"""The MCP server's wiring: one agent's daemon client behind the SDK's low-level Server, over stdio or HTTP."""

from __future__ import annotations

import asyncio
import logging
import sys

import grpc
import mcp_types as types
from pydantic import ValidationError

from memos_client.aio import AsyncMemosClient
from memos_client.auth import AgentKey
from memos_client.errors import InvalidArgument, MemosError, Unavailable
from memos_client.mcp import convert, resources
from memos_client.mcp.feed import Follower
from memos_client.mcp.http import loopback, serve_http
from memos_client.mcp.tools import TOOLS
from memos_client.models import Event
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession

log = logging.getLogger("memosctl.mcp")
# Longer than the client channel's longest reconnect backoff (memos_client.channel), so a restarted daemon is found.
RECONNECT_SECONDS = 3.0
MAX_LISTEN_URIS = 64  # topics one session (or one listen stream) may follow
INSTRUCTIONS = ("Long-term memory shared with other agents through memosd. Search it (memory_search) before "
                "answering anything earlier work may have covered; store what is worth keeping (memory_add). You "
                "only ever see memories you may read; other agents see yours only when you share them.")


def _argument_errors(name: str, exc: ValidationError) -> str:
    """Pydantic's errors in a few words each: which argument, what is wrong with it."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e["loc"]) or "arguments"
        if e["type"] == "missing":
            parts.append(f"{where} is required")
        elif e["type"] == "extra_forbidden":
            parts.append(f"{where} is not an argument of {name}")
        else:
            parts.append(f"{where}: {e['msg'].lower()}")
    allowed = ", ".join(TOOLS[name].args.model_fields)
    return f"invalid arguments for {name}: {'; '.join(parts)} (its arguments: {allowed})"


class Bridge:
    """The server's handlers. It keeps no memory of its own: each request becomes a daemon call as the agent."""

    def __init__(self, client: AsyncMemosClient):
        self.client = client
        # Per MCP session (one on stdio, one per client over HTTP): its resource subscriptions, each removed when
        # its follow ends (unsubscribed, its grant revoked, or its session gone: the next notification fails).
        self._follows: dict[ServerSession, dict[str, Follower]] = {}

    def server(self) -> Server:
        return Server("memosd", version=_version(), instructions=INSTRUCTIONS,
                      on_list_tools=self.list_tools, on_call_tool=self.call_tool,
                      on_list_resources=self.list_resources, on_list_resource_templates=self.list_templates,
                      on_read_resource=self.read_resource, on_subscribe_resource=self.subscribe,
                      on_unsubscribe_resource=self.unsubscribe, on_subscriptions_listen=self.listen)

    async def list_tools(self, ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[spec.tool() for spec in TOOLS.values()])

    async def call_tool(self, ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        spec = TOOLS.get(params.name)
        if spec is None:
            return convert.error(f"no tool {params.name[:100]!r}; the tools are {', '.join(TOOLS)}")
        try:
            args = spec.args.model_validate(params.arguments or {})
        except ValidationError as exc:
            return convert.error(_argument_errors(spec.name, exc))
        connected = self._channel_state() is grpc.ChannelConnectivity.READY
        try:
            try:
                return await spec.run(self.client, args)
            except Unavailable:
                # Refused at connect time (the daemon down, or gRPC still backing off after its restart), the call
                # never reached a daemon: once the channel is back, send it again, so the call after a restart works.
                if connected or not await self._reconnected():
                    raise
            return await spec.run(self.client, args)
        except MemosError as exc:
            return convert.memos_error(exc)
        except Exception:  # a bug here must cost one call, never the agent's whole session
            log.exception("tool %s failed", spec.name)
            return convert.error(f"{spec.name} failed inside the MCP server (see its log); try again or report it")

    def _channel_state(self):
        return self.client._channel.get_state(try_to_connect=False)

    async def _reconnected(self) -> bool:
        """Wait a moment for the channel to reach the daemon; False if it does not (the daemon is not there)."""
        channel = self.client._channel
        state = channel.get_state(try_to_connect=True)
        try:
            async with asyncio.timeout(RECONNECT_SECONDS):
                while state is not grpc.ChannelConnectivity.READY:
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            return False
        return True

    async def list_resources(self, ctx, params) -> types.ListResourcesResult:
        try:
            return await resources.list_resources(self.client)
        except MemosError as exc:
            raise _mcp_error(exc) from None

    async def list_templates(self, ctx, params) -> types.ListResourceTemplatesResult:
        return resources.templates()

    async def read_resource(self, ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        return await resources.read(self.client, str(params.uri))

    async def subscribe(self, ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        what, topic = resources.parse(uri)
        if what != "topic":
            raise _mcp_error(InvalidArgument("only topics can be subscribed to: memos://topic/NAME or "
                                             "memos://topic/PREFIX/**"))
        follows = self._follows.setdefault(ctx.session, {})
        if uri in follows:
            return types.EmptyResult()
        if len(follows) >= MAX_LISTEN_URIS:
            raise _mcp_error(InvalidArgument(f"at most {MAX_LISTEN_URIS} subscriptions per session; unsubscribe one, "
                                             "or subscribe to a pattern (memos://topic/PREFIX/**)"))
        session = ctx.session

        async def notify(event: Event) -> None:
            await session.send_resource_updated(uri)

        follower = Follower(self.client, topic, notify)
        try:
            await follower.start()
        except MemosError as exc:
            raise _mcp_error(exc) from None
        follows[uri] = follower

        def forget(_task) -> None:
            if follows.get(uri) is follower:
                del follows[uri]
            if not follows and self._follows.get(session) is follows:
                del self._follows[session]
        assert follower.task is not None
        follower.task.add_done_callback(forget)
        return types.EmptyResult()

    async def unsubscribe(self, ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        follower = self._follows.get(ctx.session, {}).pop(str(params.uri), None)
        if follower is not None:
            follower.stop()
        return types.EmptyResult()

    async def listen(self, ctx, params: types.SubscriptionsListenRequestParams) -> types.SubscriptionsListenResult:
        """The 2026-07-28 protocol's subscriptions: one listen request is one stream of resources/updated for
        the topic URIs it names that this agent may follow (the acknowledgment lists those; the rest are left
        out, as the protocol has it)."""
        from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY, ResourceUpdated, event_to_notification

        meta = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        # One pending "updated" per URI says all a client needs (read it again): bounded by the URIs followed.
        pending: dict[str, None] = {}
        wake = asyncio.Event()

        async def offer(uri: str) -> None:
            pending[uri] = None
            wake.set()

        followers: dict[str, Follower] = {}
        for uri in (params.notifications.resource_subscriptions or [])[:MAX_LISTEN_URIS]:
            try:
                what, topic = resources.parse(uri)
            except Exception:
                continue
            if what == "topic" and uri not in followers:
                followers[uri] = Follower(self.client, topic, lambda _event, uri=uri: offer(uri))
        try:
            # Refused (no subscribe grant) or not a topic: left out of the acknowledgment; the others still go on.
            outcomes = await asyncio.gather(*(f.start() for f in followers.values()), return_exceptions=True)
            honored = [uri for uri, outcome in zip(followers, outcomes) if outcome is None]
            ack = types.SubscriptionsAcknowledgedNotification(params=types.SubscriptionsAcknowledgedNotificationParams(
                notifications=types.SubscriptionFilter(resource_subscriptions=honored or None), _meta=meta))
            await ctx.session.send_notification(ack, related_request_id=ctx.request_id)
            while True:
                await wake.wait()
                wake.clear()
                while pending:
                    uri = next(iter(pending))
                    del pending[uri]
                    await ctx.session.send_notification(event_to_notification(ResourceUpdated(uri=uri), meta),
                                                        related_request_id=ctx.request_id)
        finally:
            for follower in followers.values():
                follower.stop()

    def close(self) -> None:
        for follows in list(self._follows.values()):
            for follower in follows.values():
                follower.stop()


def _mcp_error(exc: MemosError):
    from mcp.shared.exceptions import MCPError

    return MCPError(types.INVALID_PARAMS, convert.memos_error(exc).content[0].text)  # type: ignore[union-attr]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("memosd")
    except PackageNotFoundError:
        return "unknown"


# ---- transports ---------------------------------------------------------------------------------------------


async def _stdio(bridge: Bridge) -> None:
    from mcp.server.stdio import stdio_server

    server = bridge.server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve(target: str | list[str], key: AgentKey | None, timeout: float, http: str | None = None) -> None:
    """Serve MCP until stdin closes (stdio) or the process is stopped (HTTP). The daemon need not be running yet:
    each call says so until it is."""
    host_port = loopback(http) if http else None
    client = AsyncMemosClient(target, key=key, timeout=timeout)
    bridge = Bridge(client)
    try:
        if host_port is None:
            await _stdio(bridge)
        else:
            await serve_http(bridge.server(), *host_port)
    finally:
        bridge.close()
        await client.close()


def run(target: str | list[str], key: AgentKey | None, timeout: float, http: str | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="memosctl mcp: %(levelname)s %(message)s")
    try:
        asyncio.run(serve(target, key, timeout, http))
    except KeyboardInterrupt:
        return 130
    return 0
