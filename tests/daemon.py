"""Test helpers: run the real daemon (build_server, as `memosd serve` does) in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memosd.config import Config
from memosd.server import build_server


class RunningDaemon:
    """A daemon serving on its own event loop thread; stop() drains it like SIGTERM does."""

    def __init__(self, config: Config):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server = build_server(config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-daemon", daemon=True)
        self._thread.start()
        self.call(self.server.start())
        self.address = self.server.address

    def call(self, coro, timeout: float = 60):
        """Run a coroutine on the daemon's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def admin_key(self) -> Path:
        return self.config.data_dir / "admin.key"

    @property
    def vault(self):
        return self.server.vault

    def stop(self) -> None:
        self.call(self.server.stop(grace=2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def make_config(tmp: Path, **overrides) -> Config:
    # Socket paths are limited to 107 bytes; pytest's tmp paths can be long, so sockets go in /tmp.
    sock_dir = Path(os.environ.get("MEMOS_TEST_SOCKET_DIR", "/tmp")) / f"memosd-test-{os.getpid()}-{time.monotonic_ns()}"
    base = Config(data_dir=tmp / "data", listen=f"unix:{sock_dir}/memosd.sock", sweep_interval=3600,
                  access_flush_interval=3600, shutdown_grace=2)
    return replace(base, **overrides)


@contextlib.contextmanager
def running(config: Config):
    daemon = RunningDaemon(config)
    try:
        yield daemon
    finally:
        daemon.stop()


def wait_serving(target: str, timeout: float = 30) -> None:
    """Block until the daemon at target answers health checks with SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon at {target} did not become SERVING")


def admin_channel(target: str, data_dir: Path):
    """A raw gRPC channel that carries the admin's token, for tests that speak the protocol directly."""
    from memos_client.auth import AgentKey, TokenSource
    from memos_client.channel import sync_channel

    return sync_channel(target, TokenSource(AgentKey.load(data_dir / "admin.key")))


def spawn_daemon(config: Config, *extra: str) -> subprocess.Popen:
    """`memosd serve` as a real child process (for kill -9 and signal tests)."""
    cmd = [sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(config.data_dir), "--listen", config.listen,
           "--log-level", "warning", *extra]
    if config.vault_url != "sqlite:":
        cmd += ["--vault-url", config.vault_url]
    if config.bus_url:
        cmd += ["--bus-url", config.bus_url]
    if config.blob_url != "file:":
        cmd += ["--blob-url", config.blob_url, "--s3-endpoint-url", config.s3_endpoint_url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_serving(config.listen)
    except Exception as exc:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"memosd did not start: {err.decode()[-2000:]}") from exc
    return proc
