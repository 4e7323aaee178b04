"""The systemd notify protocol, spoken directly: one datagram per message to $NOTIFY_SOCKET.

A Type=notify unit learns from these datagrams that the daemon is ready (READY=1, sent only once the
socket listens), what it is doing (STATUS=...), that its event loop is alive (WATCHDOG=1, every half
WatchdogSec) and that it is shutting down (STOPPING=1). Outside systemd every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("memosd.systemd")


class Notifier:
    """Sends sd_notify messages; a no-op when the environment names no notify socket."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # systemd writes abstract-namespace addresses with a leading "@".
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog = _watchdog_seconds(env)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send WATCHDOG=1 (half of WatchdogSec), or None when no watchdog is set."""
        return self._watchdog / 2 if self._watchdog else None

    def send(self, *fields: str) -> bool:
        """Send one message of KEY=VALUE fields; True if it was handed to the socket."""
        if not self._address:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
            return True
        except OSError as exc:
            # The manager going away must never take the daemon down; say so once.
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self._address.replace("\0", "@"), exc)
                self._failed = True
            return False

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str = "stopping: draining in-flight calls") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping the watchdog from the event loop until cancelled: a wedged loop stops the pings and
        systemd restarts the daemon."""
        interval = self.watchdog_interval
        if interval is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_seconds(env) -> float | None:
    """WatchdogSec as systemd passes it (WATCHDOG_USEC), if it is meant for this process."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6
