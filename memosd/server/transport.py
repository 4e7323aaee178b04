"""Where the daemon listens: a Unix socket in a private directory, or TCP (TLS off loopback)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import grpc

from memosd.config import Config, socket_path
from memosd.errors import FailedPrecondition

SOCKET_DIR_MODE = 0o750
SOCKET_MODE = 0o660


def bind(server: grpc.aio.Server, config: Config) -> str:
    """Add the listening port; returns the address clients dial."""
    path = socket_path(config.listen)
    if path is None:
        host = config.listen.rpartition(":")[0]
        if config.tls_cert:
            port = server.add_secure_port(config.listen, _tls_credentials(config))
        else:
            port = server.add_insecure_port(config.listen)
        return f"{host}:{port}"
    _private_dir(path.parent)
    _clear_stale_socket(path)
    server.add_insecure_port(f"unix:{path}")
    return f"unix:{path}"


def restrict(address: str) -> None:
    """Owner and group only on the socket itself; its directory is the first gate."""
    path = socket_path(address)
    if path is not None and path.exists():
        os.chmod(path, SOCKET_MODE)


def _tls_credentials(config: Config) -> grpc.ServerCredentials:
    try:
        key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
        client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    except OSError as exc:
        raise FailedPrecondition(f"cannot read TLS files: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=SOCKET_DIR_MODE)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise FailedPrecondition(f"socket directory {directory} is not a directory owned by this user; remove it"
                                 " or choose another --listen")
    if info.st_mode & stat.S_ISVTX:
        # A shared directory such as /tmp (root's own, when the daemon runs as root): closing it would lock
        # every other user out of it. The socket's own 0660 is the gate there, and the sticky bit keeps
        # others from replacing it.
        return
    os.chmod(directory, SOCKET_DIR_MODE)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a daemon that died; refuse if a live daemon still answers on it."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise FailedPrecondition(f"another memosd is already listening on {path}; stop it or use --listen")
