"""The descriptor socket: where same-host clients collect, by one-time ticket, the file descriptors that
OpenLocal handed them (see memos_mip.fdpass for the two-message protocol).

Tickets are 16 random bytes, valid once and for a few seconds; governance happened in the gRPC call that
issued them. The socket has the gRPC socket's mode, in the same private directory.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from memos_mip.fdpass import ERROR, MAX_REPLY, OK, TAKE, TICKET_BYTES, exchange_path
from memosd.config import socket_path
from memosd.errors import ResourceExhausted

log = logging.getLogger("memosd.fd_exchange")
TICKET_TTL = 10.0
MAX_PENDING = 256
# Uncollected descriptors one agent may hold, so that no agent can use up the others' share.
MAX_PENDING_PER_AGENT = 32
# How long a connection may take to send its ticket, and how often the accept loop checks for stop().
CONNECTION_TIMEOUT = 2.0
POLL_INTERVAL = 0.25


class FdExchange:
    """Holds descriptors deposited for clients until they collect them, or their ticket expires."""

    def __init__(self, path: Path, *, ttl: float = TICKET_TTL, max_pending: int = MAX_PENDING,
                 max_per_agent: int = MAX_PENDING_PER_AGENT):
        self.path = path
        self.ttl = ttl
        self.max_pending = max_pending
        self.max_per_agent = max_per_agent
        self._pending: dict[bytes, tuple[int, float, str]] = {}
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._handlers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="memosd-fd-exchange")
        self._stopping = threading.Event()

    @classmethod
    def beside(cls, address: str) -> FdExchange | None:
        """The exchange for a daemon listening at `address`; None for TCP (no descriptors cross hosts)."""
        path = socket_path(address)
        return cls(exchange_path(path)) if path is not None else None

    def start(self, mode: int) -> None:
        self.path.unlink(missing_ok=True)  # the gRPC socket's stale-check already ran for this directory
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(str(self.path))
        os.chmod(self.path, mode)
        listener.listen(64)
        listener.settimeout(POLL_INTERVAL)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="memosd-fd-exchange", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._handlers.shutdown(wait=True)
        if self._listener is not None:
            self._listener.close()
            self.path.unlink(missing_ok=True)
        with self._lock:
            for fd, _, _ in self._pending.values():
                os.close(fd)
            self._pending.clear()

    def deposit(self, fd: int, agent: str) -> bytes:
        """Hold `fd` (now owned by the exchange) for whoever presents the returned ticket within the TTL."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            mine = sum(1 for _, _, owner in self._pending.values() if owner == agent)
            if mine >= self.max_per_agent or len(self._pending) >= self.max_pending:
                os.close(fd)
                who = f"agent {agent} has {mine}" if mine >= self.max_per_agent else f"{len(self._pending)} are"
                raise ResourceExhausted(f"{who} descriptors waiting to be collected; collect them, retry in"
                                        f" {self.ttl:.0f} s or use Download")
            ticket = secrets.token_bytes(TICKET_BYTES)
            self._pending[ticket] = (fd, now + self.ttl, agent)
        return ticket

    def _expire(self, now: float) -> None:
        for ticket in [t for t, (_, deadline, _) in self._pending.items() if deadline < now]:
            os.close(self._pending.pop(ticket)[0])

    def _take(self, ticket: bytes) -> int | None:
        with self._lock:
            self._expire(time.monotonic())
            held = self._pending.pop(ticket, None)
        return held[0] if held else None

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stopping.is_set():
                    log.exception("the descriptor socket failed; same-host transfers fall back to gRPC")
                return
            self._handlers.submit(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(CONNECTION_TIMEOUT)
                request = conn.recv(MAX_REPLY)
                if len(request) != 1 + TICKET_BYTES or request[:1] != TAKE:
                    conn.sendall(ERROR + b"expected T and a 16-byte ticket")
                    return
                fd = self._take(request[1:])
                if fd is None:
                    conn.sendall(ERROR + b"unknown, used or expired ticket; call OpenLocal again")
                    return
                try:
                    socket.send_fds(conn, [OK], [fd])
                finally:
                    os.close(fd)  # the message carries its own copy
            except OSError as exc:
                log.debug("descriptor exchange connection failed: %s", exc)
