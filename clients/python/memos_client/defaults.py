"""Where memosd listens and keeps its data by default: one answer for the daemon, client and memosctl."""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "memosd.sock"


def default_socket_path() -> Path:
    """systemd's RuntimeDirectory, else $XDG_RUNTIME_DIR/memosd, else /tmp/memosd-UID."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / SOCKET_NAME
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "memosd" / SOCKET_NAME
    return Path(f"/tmp/memosd-{os.getuid()}") / SOCKET_NAME


def default_data_dir() -> Path:
    """systemd's StateDirectory, else $XDG_DATA_HOME/memosd, else ~/.local/share/memosd."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "memosd"


def resolve_addr(addr: str | None = None) -> str:
    """The address to dial: the argument, else $MEMOS_ADDR, else the default socket.

    Accepts "unix:/path", a bare absolute socket path, or "host:port"; returns a gRPC target.
    """
    addr = addr or os.environ.get("MEMOS_ADDR") or f"unix:{default_socket_path()}"
    if addr.startswith("/"):
        return f"unix:{addr}"
    return addr
