"""memosctl mcp: serve the agent's memory to an MCP client (stdio, or streamable HTTP on loopback)."""

from __future__ import annotations

from memos_client.cli.common import UsageError
from memos_client.client import MemosClient
from memos_client.errors import InvalidArgument


def add_commands(command) -> None:
    """Register the command with cli.app.build_parser's `command(name, run, help)`."""
    p = command("mcp", _mcp, "serve this agent's memory to an MCP client (Claude, IDEs, ...) over stdio or HTTP")
    p.add_argument("--http", metavar="HOST:PORT", help="streamable HTTP at http://HOST:PORT/mcp instead of stdio; "
                   "loopback only (127.0.0.1, ::1, localhost); port 0 picks a free one")


def _mcp(client: MemosClient, args) -> int:
    from memos_client.mcp.http import loopback

    if args.http:
        try:
            loopback(args.http)
        except InvalidArgument as exc:
            raise UsageError(exc.message) from None
    try:
        from memos_client.mcp import server
    except ImportError as exc:  # the mcp SDK is an optional dependency of the client
        raise UsageError(f"memosctl mcp needs the MCP SDK ({exc.name} is missing): pip install 'memosd[mcp]'") from None
    # The command line's client only resolved the addresses and key; the server makes its own asyncio client.
    return server.run(client.targets, client.tokens.key if client.tokens else None, args.timeout, args.http)
