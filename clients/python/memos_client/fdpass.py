"""Same-host transfers: file descriptors collected from the daemon's descriptor socket, and payloads mapped
from them without a copy (the socket's protocol is memos_mip.fdpass)."""

from __future__ import annotations

import mmap
import os
import socket
from pathlib import Path

import xxhash

from memos_client.errors import Conflict, DataLoss, FailedPrecondition, InternalError
from memos_mip.fdpass import ERROR, MAX_REPLY, OK, TAKE

EXCHANGE_TIMEOUT = 5.0
# What makes a client stream payloads over gRPC instead: a daemon on another host or in another mount
# namespace (its descriptor socket is out of reach), or one older than OpenLocal (UNIMPLEMENTED).
FALL_BACK = (FailedPrecondition, InternalError)


def unix_path(target: str) -> Path | None:
    """The socket file of a unix: gRPC target; None for TCP."""
    if not target.startswith("unix:"):
        return None
    rest = target[len("unix:"):]
    return Path(rest[2:] if rest.startswith("//") else rest)


def take(path: Path, ticket: bytes, timeout: float = EXCHANGE_TIMEOUT) -> int:
    """Exchange a ticket for its descriptor at the descriptor socket `path`; the caller owns (closes) it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(path))
            conn.sendall(TAKE + ticket)
            reply, fds, _, _ = socket.recv_fds(conn, MAX_REPLY, 1)
        except OSError as exc:
            raise FailedPrecondition(f"cannot reach the daemon's descriptor socket {path}: {exc}") from None
    if reply[:1] == OK and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    message = reply[1:].decode("utf-8", "replace") if reply[:1] == ERROR else "an unreadable reply"
    raise FailedPrecondition(f"the daemon's descriptor socket refused the ticket: {message}")


def map_verified(fd: int, size: int, xxh3_128: str) -> mmap.mmap:
    """A private, copy-on-write mapping of a blob's descriptor (its pages are the page cache's until written,
    so writing to it never reaches the stored blob), checked against the blob's size and XXH3-128."""
    actual = os.fstat(fd).st_size
    if actual != size:  # mapping past the end of a file would fault on first touch: refuse it now
        raise DataLoss(f"the daemon's payload file holds {actual} bytes; the blob has {size}")
    if size == 0:
        raise DataLoss("the blob is empty")
    mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if xxhash.xxh3_128(mapped).hexdigest() != xxh3_128:
        mapped.close()
        raise DataLoss(f"the daemon's payload file does not match its recorded XXH3-128 {xxh3_128}")
    return mapped


def collect(target: str, response, sha256: str | None = None) -> mmap.mmap:
    """The verified mapping an OpenLocal response leads to (see take and map_verified)."""
    if sha256 is not None and response.blob.sha256 != sha256:
        raise Conflict(f"the cube's payload is now {response.blob.sha256}, not {sha256}; read the cube again")
    fd = take(unix_path(target).with_name(response.exchange_socket), response.ticket)
    try:
        return map_verified(fd, response.blob.size, response.xxh3_128)
    finally:
        os.close(fd)
