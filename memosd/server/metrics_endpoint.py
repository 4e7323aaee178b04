"""The opt-in Prometheus endpoint: GET /metrics over plain HTTP/1.0 on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from memosd.config import check_metrics_listen
from memosd.errors import FailedPrecondition
from memosd.metrics import Metrics, render

log = logging.getLogger("memosd.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT = 5.0


class MetricsEndpoint:
    """Serves `metrics` at http://HOST:PORT/metrics until stopped."""

    def __init__(self, metrics: Metrics, listen: str):
        self.listen = check_metrics_listen(listen)  # loopback only: the endpoint has no authentication
        self.metrics = metrics
        self.address = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        try:
            self._server = await asyncio.start_server(self._serve, host.strip("[]"), int(port),
                                                      limit=MAX_REQUEST_BYTES)
        except OSError as exc:
            raise FailedPrecondition(f"cannot listen for metrics on {self.listen}: {exc.strerror}") from None
        sock = self._server.sockets[0].getsockname()
        self.address = self.metrics.address = f"{host}:{sock[1]}"
        log.info("metrics on http://%s/metrics", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.metrics.address = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._answer(reader), READ_TIMEOUT)
        except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError, ConnectionError):
            status, body = "400 Bad Request", "bad request\n"
        try:
            data = body.encode()
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(data)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        request = (await reader.readline()).decode("latin-1").split()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # headers: nothing in them changes the answer
        if len(request) != 3 or not request[2].startswith("HTTP/"):
            return "400 Bad Request", "bad request\n"
        method, target = request[0], request[1].split("?")[0]
        if method != "GET":
            return "405 Method Not Allowed", "only GET\n"
        if target != "/metrics":
            return "404 Not Found", "memosd serves /metrics only\n"
        return "200 OK", render(await self.metrics.collect())
