"""Where memosd listens and keeps its data by default: one answer for the daemon, client and memosctl."""

from __future__ import annotations

import os
import stat
from pathlib import Path

SOCKET_NAME = "memosd.sock"
# Where the system unit (systemd/memosd.service) keeps its socket and data.
SYSTEM_RUNTIME_DIR = Path("/run/memosd")
SYSTEM_DATA_DIR = Path("/var/lib/memosd")


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
    addr = addr or os.environ.get("MEMOS_ADDR") or f"unix:{client_socket_path()}"
    if addr.startswith("/"):
        return f"unix:{addr}"
    return addr


def client_socket_path() -> Path:
    """This user's daemon if its socket exists, else the system daemon's if that exists, else this
    user's (so that the error names where a hand-started daemon would listen)."""
    user, system = default_socket_path(), SYSTEM_RUNTIME_DIR / SOCKET_NAME
    if not _is_socket(user) and _is_socket(system):
        return system
    return user


def admin_key_path(target: str | None = None) -> Path:
    """The admin key that belongs to the daemon at `target`: the system daemon's for its socket,
    else this user's data directory's."""
    if target and target.removeprefix("unix:").removeprefix("//") == str(SYSTEM_RUNTIME_DIR / SOCKET_NAME):
        return SYSTEM_DATA_DIR / "admin.key"
    return default_data_dir() / "admin.key"


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False
