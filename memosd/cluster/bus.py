"""The bus: a NATS core connection carrying a cluster's notices between its daemons, reconnecting by itself."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from datetime import UTC, datetime
from importlib.util import find_spec
from urllib.parse import urlsplit, urlunsplit

from memosd.errors import FailedPrecondition

log = logging.getLogger("memosd.cluster")
# Seconds between attempts to reach a NATS server that went away; pings find a silent one within about
# PING_INTERVAL * MAX_PINGS_OUT.
RECONNECT_WAIT = 1
PING_INTERVAL = 5
MAX_PINGS_OUT = 2
CONNECT_TIMEOUT = 2
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# A notice is a few names and numbers; anything larger did not come from a member.
MAX_NOTICE_BYTES = 16 * 1024

Handler = Callable[[dict], object]


def shown(url: str) -> str:
    """The bus URL without a password or token, for status and logs."""
    out = []
    for one in url.split(","):
        parts = urlsplit(one.strip())
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        out.append(urlunsplit((parts.scheme, netloc, "", "", "")))
    return ",".join(out)


class Bus:
    """Notices between the members of one cluster over NATS core: notify(kind, payload) sends one to every other
    member, on(kind, callback) receives them. Notices are news, not data: one lost while the bus is down costs
    latency only, since members catch up from the vault (every poll_interval seconds, which describe() names).

    Subjects are memosd.<cluster id>.<kind>, so clusters sharing a NATS server never hear each other."""

    def __init__(self, url: str, cluster_id: str, *, poll_interval: float, name: str = "memosd", clock=time.time,
                 tls_ca: str = "", tls_cert: str = "", tls_key: str = ""):
        if find_spec("nats") is None:
            raise FailedPrecondition("bus_url needs the NATS client: pip install 'memosd[cluster]' (nats-py)")
        self.url = url
        self.shown_url = shown(url)
        # One subject token: NATS splits subjects at dots and forbids spaces and wildcards in them.
        self.prefix = f"memosd.{re.sub(r'[^A-Za-z0-9_-]', '_', cluster_id)}."
        self.poll_interval = poll_interval
        self.name = name
        self.clock = clock
        self.connected = False
        self.down_since: float = clock()  # down until the first connection
        self.ever_connected = False
        self.sent = 0
        self.received = 0
        self._handlers: dict[str, list[Handler]] = {}
        self._watchers: list[Callable[[bool], None]] = []
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_ready = asyncio.Event()
        self._nc: Any = None  # nats.aio.client.Client, imported when connecting
        self._tasks: list[asyncio.Task] = []
        self._warned = False
        self.refused = ""  # why the last server was refused (a tls:// URL answered by a server without TLS)
        self._tls = tls_context(tls_ca, tls_cert, tls_key) if _wants_tls(url) else None

    # -- what the daemon's parts use -----------------------------------------------------------

    def on(self, kind: str, callback: Handler) -> None:
        """Call callback(payload) for every notice of this kind another member sends (it may be a coroutine)."""
        _check_kind(kind)
        self._handlers.setdefault(kind, []).append(callback)

    def watch(self, callback: Callable[[bool], None]) -> None:
        """Call callback(connected) whenever the connection comes up or goes down."""
        self._watchers.append(callback)

    def notify(self, kind: str, payload: dict) -> None:
        """Send a notice to the other members, after the commit it tells of; never blocks, never fails (a notice
        that cannot go out while the bus is down is dropped: the others catch up from the vault)."""
        _check_kind(kind)
        if not self.connected and self._nc is None:
            return
        self._outbox.append((self.prefix + kind, json.dumps(payload, separators=(",", ":")).encode()))
        self._outbox_ready.set()

    def describe(self) -> str:
        """One line for status: where the bus is, or since when it is down and how the daemon copes."""
        if self.connected:
            return f"bus connected to {self.shown_url}"
        since = datetime.fromtimestamp(self.down_since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        what = "down" if self.ever_connected else "not reached yet"
        why = f" ({self.refused})" if self.refused else ""
        return (f"bus {self.shown_url} {what} since {since}{why}: catching up from the vault every"
                f" {self.poll_interval:g} s")

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, waiting a moment for the first connection; past that it goes on in the background: a daemon
        whose bus is down at start serves all the same."""
        self._tasks = [asyncio.ensure_future(self._connect()), asyncio.ensure_future(self._send_loop())]
        self._tasks[0].add_done_callback(self._connect_ended)
        with contextlib.suppress(TimeoutError, Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await asyncio.shield(self._tasks[0])

    def _connect_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("bus %s: giving up connecting (%s); catching up from the vault every %g s", self.shown_url,
                      task.exception(), self.poll_interval)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - already logged where it failed; closing goes on
                pass
        self._tasks = []
        self._watchers = []  # closing is not the bus going down
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                # Bounded: a client whose connect() was cancelled part-way may wait on a server that never
                # answers, and a daemon's shutdown must not wait with it.
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await nc.close()
            except Exception as exc:  # noqa: BLE001 - a connection that fails while closing is closed enough
                log.debug("closing the bus connection: %s", exc or type(exc).__name__)
        self._set(False)

    async def _connect(self) -> None:
        nc = _client_class()()
        self._nc = nc
        tls = {"tls": self._tls} if self._tls is not None else {}
        # connect() itself keeps trying until a server answers (max_reconnect_attempts=-1); no_echo: a member
        # never hears its own notices, it knows its own commits already.
        await nc.connect(
            [s.strip() for s in self.url.split(",")], name=self.name, no_echo=True, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT, connect_timeout=CONNECT_TIMEOUT,
            ping_interval=PING_INTERVAL, max_outstanding_pings=MAX_PINGS_OUT,
            disconnected_cb=self._disconnected, reconnected_cb=self._reconnected, error_cb=self._error,
            closed_cb=self._disconnected, **tls)
        await nc.subscribe(self.prefix + ">", cb=self._message)
        await nc.flush()  # the server has the subscription: a notice sent from now on reaches us
        self._set(True)

    async def _send_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            nc = self._nc
            while self._outbox and nc is not None:
                subject, data = self._outbox.popleft()
                try:
                    await nc.publish(subject, data)
                    self.sent += 1
                except Exception as exc:  # noqa: BLE001 - a notice lost is latency lost; the vault has the event
                    log.debug("bus notice on %s not sent: %s", subject, exc)

    # -- nats-py's callbacks -------------------------------------------------------------------

    async def _message(self, msg) -> None:
        kind = msg.subject[len(self.prefix):]
        handlers = self._handlers.get(kind)
        if not handlers or len(msg.data) > MAX_NOTICE_BYTES:
            return
        try:
            payload = json.loads(msg.data)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            log.debug("bus: a %s notice that is not JSON, ignored", kind)  # anyone on NATS may send one: no log flood
            return
        if not isinstance(payload, dict):
            return
        self.received += 1
        for handler in handlers:
            try:
                result = handler(payload)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one bad handler or notice must not stop the others
                log.exception("bus: handling a %s notice failed", kind)

    async def _disconnected(self) -> None:
        self._set(False)

    async def _reconnected(self) -> None:
        self._set(True)

    async def _error(self, exc: Exception) -> None:
        if isinstance(exc, NoTls):
            # Refused before anything was sent: said at ERROR once per outage, and in status for as long as it lasts.
            if not self.refused:
                log.error("bus %s: %s; catching up from the vault every %g s", self.shown_url, exc,
                          self.poll_interval)
            self.refused, self._warned = str(exc), True
        elif not self._warned:
            log.warning("bus %s: %s; catching up from the vault every %g s until it is back", self.shown_url,
                        exc or type(exc).__name__, self.poll_interval)
            self._warned = True
        else:
            log.debug("bus %s: %s", self.shown_url, exc)

    def _set(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            self.ever_connected, self._warned, self.refused = True, False, ""
            log.info("bus connected to %s", self.shown_url)
        elif self._tasks:
            self.down_since = self.clock()
            log.warning("bus %s down: catching up from the vault every %g s", self.shown_url, self.poll_interval)
        for watcher in self._watchers:
            watcher(connected)


def _wants_tls(url: str) -> bool:
    return any(one.strip().startswith("tls://") for one in url.split(","))


def tls_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """The client side of the bus's TLS: the server's certificate checked against ca (or the system's CAs) and its
    name, with a client certificate where one is configured."""
    try:
        context = ssl.create_default_context(cafile=ca or None)
        if cert:
            context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise FailedPrecondition(f"bus TLS: cannot load {'bus_tls_ca' if ca else 'the system CAs'}"
                                 f"{' or bus_tls_cert/bus_tls_key' if cert else ''}: {exc}") from None
    return context


_CLIENT: type | None = None


def _client_class() -> type:
    """nats-py's client, refusing a tls:// server whose INFO does not require TLS. nats-py itself upgrades to TLS
    only when the INFO line asks for it, so whoever can rewrite that plaintext line could keep the link in
    plaintext; this checks the INFO before the CONNECT (which may carry a password) goes out, at every connection,
    the first and each reconnection."""
    global _CLIENT
    if _CLIENT is None:
        import nats.aio.client
        import nats.errors

        class NoTlsError(NoTls, nats.errors.Error):
            pass

        class Client(nats.aio.client.Client):
            async def _process_info(self, info, initial_connection=False):
                server = self._current_server
                if initial_connection and server is not None and server.uri.scheme == "tls" \
                        and not info.get("tls_required"):
                    raise NoTlsError(f"refused {server.uri.hostname}:{server.uri.port}: a tls:// server that"
                                     " offers no TLS (its INFO does not require TLS); the bus never runs in"
                                     " plaintext on a tls:// URL")
                await super()._process_info(info, initial_connection)

        _CLIENT = Client
    return _CLIENT


class NoTls(Exception):
    """A server reached on a tls:// URL that offers no TLS."""


def _check_kind(kind: str) -> None:
    if not _KIND.fullmatch(kind):
        raise ValueError(f"bus notice kind {kind!r}: a short lowercase word")
