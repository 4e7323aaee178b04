"""The streamable HTTP transport, on loopback only and for holders of its token: whoever else reaches the port
is refused, since the server acts with the agent's key."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import sys

from memos_client.errors import InvalidArgument

TOKEN_ENV = "MEMOS_MCP_TOKEN"
MIN_TOKEN = 16


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


def http_token() -> tuple[str, bool]:
    """The bearer token requests must carry: $MEMOS_MCP_TOKEN, else a fresh random one; and whether it is fresh."""
    given = os.environ.get(TOKEN_ENV, "")
    if not given:
        return secrets.token_urlsafe(32), True
    if len(given) < MIN_TOKEN or not given.isascii() or not given.isprintable() or " " in given:
        raise InvalidArgument(f"${TOKEN_ENV} must be at least {MIN_TOKEN} printable ASCII characters without spaces")
    return given, False


class BearerOnly:
    """ASGI middleware: an HTTP request without the server's token gets 401 and reaches nothing. A loopback port is
    open to every process of every user on the host; the token is what stands between them and the agent's key."""

    def __init__(self, app, token: str):
        self.app, self._expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            sent = b"".join(v for k, v in scope.get("headers") or [] if k.lower() == b"authorization")
            if not hmac.compare_digest(sent, self._expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body",
                            "body": b"send Authorization: Bearer TOKEN (the token memosctl mcp printed, or $MEMOS_MCP_TOKEN)\n"})
                return
        await self.app(scope, receive, send)


async def serve_http(server, host: str, port: int) -> None:
    """Serve the MCP server's streamable HTTP app on host:port until stopped, announcing its URL (and a fresh token)
    on stderr."""
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    # DNS-rebinding protection for any loopback address (the SDK turns it on by itself for three of them).
    shown = f"[{host}]" if ":" in host else host
    hosts = sorted({f"{shown}:*", "127.0.0.1:*", "localhost:*", "[::1]:*"})
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                         allowed_origins=[f"http://{h}" for h in hosts])
    token, fresh = http_token()
    app = BearerOnly(server.streamable_http_app(host=host, transport_security=security), token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1" if host == "localhost" else host, port))
    sock.listen(128)  # connections made as soon as the URL is printed wait in the backlog for the server to start
    bound = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"memosctl mcp: serving MCP (streamable HTTP) at http://{shown}:{bound}/mcp", file=sys.stderr, flush=True)
    print("memosctl mcp: requests must carry Authorization: Bearer " + (token if fresh else f"${TOKEN_ENV}"),
          file=sys.stderr, flush=True)
    await web.serve(sockets=[sock])
