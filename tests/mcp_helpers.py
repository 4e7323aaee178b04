"""Test helpers: the real `memosctl mcp` as a child process, driven by the MCP SDK's own client."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from mcp import ClientSession, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[1]
MEMOSCTL = [sys.executable, "-m", "memos_client.cli"]


def server_env(addr: str, key: Path | str) -> dict[str, str]:
    """The agent's address and key, as for any memosctl command, and this checkout's code."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python"), os.environ.get("PYTHONPATH", "")])
    return {"MEMOS_ADDR": addr, "MEMOS_KEY": str(key), "PYTHONPATH": path}


@contextlib.asynccontextmanager
async def mcp_session(addr: str, key: Path | str, *, on_message=None, modern: bool = False):
    """An initialized ClientSession with `memosctl mcp` over stdio, as agent `key`: through the handshake
    (initialize), or with modern=True the 2026-07-28 protocol (server/discover, no handshake)."""
    params = StdioServerParameters(command=MEMOSCTL[0], args=[*MEMOSCTL[1:], "mcp"], env=server_env(addr, key))
    # The server's log goes to the test's stderr: pytest shows it with a failure.
    async with stdio_client(params, errlog=sys.stderr) as (read, write):
        async with ClientSession(read, write, message_handler=on_message) as session:
            await (session.discover() if modern else session.initialize())
            yield session


async def call(session: ClientSession, tool: str, **arguments):
    """(structured content, text, is_error) of a tool call."""
    r = await session.call_tool(tool, arguments)
    return r.structured_content, r.content[0].text if r.content else "", r.is_error


def memosctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*MEMOSCTL, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
