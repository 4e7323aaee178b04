"""Why a daemon cannot be reached, said in terms a person can act on rather than gRPC's."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

SYSTEM_SOCKET = "/run/memosd/memosd.sock"


def explain(target: str, details: str) -> str:
    """One line: the address tried, what is (or is not) there, and the command that starts the daemon."""
    if target.startswith("unix:") or target.startswith("/"):
        path = target.removeprefix("unix:").removeprefix("//")
        what = _socket_state(Path(path))
    else:
        what = f"nothing answers at {target}" if "refused" in details.lower() or "connect" in details.lower() else \
            f"the daemon at {target} is unavailable"
    if what is None:  # the socket accepts connections: the daemon is there but not serving (starting, stopping)
        return f"memosd at {target} is unavailable ({' '.join(details.split())[:200]}); try again in a moment"
    return f"cannot reach memosd at {target}: {what}; is the daemon running? Start it with: {start_command(target)}"


def _socket_state(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path} does not exist" + ("" if path.parent.is_dir() else " (nor does its directory)")
    except PermissionError:
        return f"{path} cannot be looked at by this user (no search permission on {path.parent})"
    if not stat.S_ISSOCK(mode):
        return f"{path} exists but is not a socket"
    if not os.access(path, os.W_OK):
        return f"{path} exists, but this user may not connect to it (see its group: ls -l {path})"
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return f"{path} exists but nothing listens on it (a daemon that stopped without removing it)"
        except OSError as exc:
            return f"{path} exists but connecting fails ({exc.strerror or exc})"
    return None


def start_command(target: str) -> str:
    """`make run` from a source checkout, systemctl for the system service's socket, else `memosd serve`."""
    from memos_mip.defaults import default_socket_path

    path = target.removeprefix("unix:")
    if path == SYSTEM_SOCKET:
        return "sudo systemctl start memosd"
    if path != str(default_socket_path()):  # make run and a bare memosd serve listen on the default socket
        return f"memosd serve --listen {target}"
    root = Path(__file__).resolve().parents[3]
    if (root / "Makefile").is_file() and (root / "memosd" / "cli.py").is_file():
        return f"make run (in {root})" if Path.cwd() != root else "make run"
    return "memosd serve"
