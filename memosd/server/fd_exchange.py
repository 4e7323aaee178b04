"""The descriptor socket: where same-host clients collect, by one-time ticket, the file descriptors that
OpenLocal handed them (see memos_mip.fdpass for the two-message protocol).

Tickets are 16 random bytes, valid once and for a few seconds; governance happened in the gRPC call that
issued them. The socket has the gRPC socket's mode, in the same private directory.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import selectors
import socket
import threading
import time
from pathlib import Path

from memos_mip.fdpass import ERROR, MAX_REPLY, OK, TAKE, TICKET_BYTES, exchange_path
from memosd.config import socket_path
from memosd.errors import ResourceExhausted

log = logging.getLogger("memosd.fd_exchange")
TICKET_TTL = 10.0
MAX_PENDING = 256
# Uncollected descriptors one agent may hold, so that no agent can use up the others' share.
MAX_PENDING_PER_AGENT = 32
# How long a connection may take to send its ticket, and how often the loop checks for stop(). Connecting takes
# no token: one loop waits on every connection at once, so a connection that sends nothing holds up no other.
CONNECTION_TIMEOUT = 2.0
POLL_INTERVAL = 0.25
# Connections yet to send their ticket; past this, the one waiting longest is closed (a client sends its ticket
# as soon as it connects, so it is never the one waiting longest for long).
MAX_WAITING = 64
# What accept() answers when the process is out of descriptors or memory: the loop goes on (the next accept may
# succeed) instead of ending same-host transfers for good.
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


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
        listener.setblocking(False)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="memosd-fd-exchange", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
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
        assert self._listener is not None  # start() binds it before starting this thread
        waiting: dict[socket.socket, float] = {}  # connections yet to send their ticket, by deadline
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    for key, _ in selector.select(POLL_INTERVAL):
                        if key.fileobj is self._listener:
                            if not self._admit(selector, waiting):
                                return
                        elif key.fileobj in waiting:  # not closed earlier in this round to make room
                            conn = key.fileobj
                            assert isinstance(conn, socket.socket)
                            selector.unregister(conn)
                            del waiting[conn]
                            with conn:
                                self._serve(conn)
                    now = time.monotonic()
                    for conn in [c for c, deadline in waiting.items() if deadline < now]:
                        _drop(selector, waiting, conn)
            finally:
                for conn in list(waiting):
                    _drop(selector, waiting, conn)

    def _admit(self, selector: selectors.BaseSelector, waiting: dict[socket.socket, float]) -> bool:
        """Accept one connection (one per round, so that those waiting are read between); False if the socket failed."""
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return True  # another round took it
        except OSError as exc:
            if exc.errno in _TRANSIENT and waiting:
                _drop(selector, waiting, next(iter(waiting)))
                return True
            if exc.errno in _TRANSIENT:
                log.warning("the descriptor socket cannot accept a connection: %s", exc)
                time.sleep(POLL_INTERVAL)  # the listener stays readable: do not spin
                return True
            if not self._stopping.is_set():
                log.exception("the descriptor socket failed; same-host transfers fall back to gRPC")
            return False
        if len(waiting) >= MAX_WAITING:
            _drop(selector, waiting, next(iter(waiting)))  # the one waiting longest (dicts keep their order)
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
        waiting[conn] = time.monotonic() + CONNECTION_TIMEOUT
        return True

    def _serve(self, conn: socket.socket) -> None:
        """Answer a connection whose request has arrived (a SOCK_SEQPACKET message comes whole); never blocks: a
        reply the peer's queue cannot take is dropped."""
        try:
            request = conn.recv(MAX_REPLY)
            if len(request) != 1 + TICKET_BYTES or request[:1] != TAKE:
                conn.send(ERROR + b"expected T and a 16-byte ticket")
                return
            fd = self._take(request[1:])
            if fd is None:
                conn.send(ERROR + b"unknown, used or expired ticket; call OpenLocal again")
                return
            try:
                socket.send_fds(conn, [OK], [fd])
            finally:
                os.close(fd)  # the message carries its own copy
        except OSError as exc:
            log.debug("descriptor exchange connection failed: %s", exc)


def _drop(selector: selectors.BaseSelector, waiting: dict[socket.socket, float], conn: socket.socket) -> None:
    selector.unregister(conn)
    del waiting[conn]
    conn.close()
