"""The streamable HTTP transport, on loopback only: whoever reaches it acts with the agent's key."""

from __future__ import annotations

import ipaddress
import socket
import sys

from memos_client.errors import InvalidArgument


def loopback(addr: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT (or [v6]:PORT) on a loopback address; InvalidArgument for anything else, since
    whoever reaches the server acts with the agent's key."""
    host, sep, port_text = addr.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text) if sep else -1
    except ValueError:
        port = -1
    if not host or not 0 <= port <= 65535:
        raise InvalidArgument(f"--http takes HOST:PORT on a loopback address, e.g. 127.0.0.1:8765, not {addr[:100]!r}")
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise InvalidArgument(f"--http {addr[:100]}: the MCP server listens on loopback only (127.0.0.1, ::1 or "
                              "localhost): whoever reaches it acts with this agent's key")
    return host, port


async def serve_http(server, host: str, port: int) -> None:
    """Serve the MCP server's streamable HTTP app on host:port until stopped, announcing its URL on stderr."""
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    # DNS-rebinding protection for any loopback address (the SDK turns it on by itself for three of them).
    shown = f"[{host}]" if ":" in host else host
    hosts = sorted({f"{shown}:*", "127.0.0.1:*", "localhost:*", "[::1]:*"})
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                         allowed_origins=[f"http://{h}" for h in hosts])
    app = server.streamable_http_app(host=host, transport_security=security)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1" if host == "localhost" else host, port))
    bound = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"memosctl mcp: serving MCP (streamable HTTP) at http://{shown}:{bound}/mcp", file=sys.stderr, flush=True)
    await web.serve(sockets=[sock])
