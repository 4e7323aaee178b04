"""build_server(): the daemon as one object that tests and `memosd serve` start the same way; this module
registers the servicers over the core (memosd.daemon) and owns the transport."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from memos_mip.v1 import admin_pb2, bundle_pb2, daemon_pb2, governance_pb2, store_pb2, vault_pb2
from memosd.config import Config, socket_path
from memosd.daemon import Daemon
from memosd.governance import MemGovernance
from memosd.metrics import Metrics
from memosd.server.admin_service import AdminService
from memosd.server.bundle_service import BundleService
from memosd.bundle.tensor_sink import TensorMemorySink
from memosd.server.metrics_endpoint import MetricsEndpoint
from memosd.server.observability import watch
from memosd.server.daemon_service import DaemonService
from memosd.server.governance_service import GovernanceService
from memosd.server.store_service import StoreService
from memosd.server.tensor_memory import SERVICES as TENSOR_SERVICES, servicers as tensor_servicers
from memosd.server import transport
from memosd.server.fd_exchange import FdExchange
from memosd.server.rpc import service_handler
from memosd.server.vault_service import VaultService

log = logging.getLogger("memosd")
SERVICES = (
    vault_pb2.DESCRIPTOR.services_by_name["VaultService"],
    daemon_pb2.DESCRIPTOR.services_by_name["DaemonService"],
    governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"],
    store_pb2.DESCRIPTOR.services_by_name["StoreService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    bundle_pb2.DESCRIPTOR.services_by_name["BundleService"],
    *TENSOR_SERVICES,
)
# Largest message either way: a full page of cubes at the text limit fits; tensors are chunked streams.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class MemosServer:
    """The running daemon: the core (Daemon) behind its gRPC server, health, reflection and metrics endpoint."""

    def __init__(self, config: Config, governance_type: type[MemGovernance] = MemGovernance):
        self.config = config
        self.core = Daemon(config, governance_type)
        self.address = config.listen
        self.exchange: FdExchange | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()
        self.metrics = Metrics()
        self.metrics_endpoint: MetricsEndpoint | None = None

    # The core's parts, where tests and embedders have always found them.
    vault = property(lambda self: self.core.vault)
    store = property(lambda self: self.core.store)
    governance = property(lambda self: self.core.governance)
    tensors = property(lambda self: self.core.tensors)

    async def start(self) -> None:
        cfg = self.config
        core = self.core
        await core.start()
        vault, gov = core.vault, core.governance
        self.exchange = FdExchange.beside(cfg.listen)
        watch(self.metrics, vault, core.store, core.follower)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        started = time.time()
        servicers = (VaultService(vault, gov), DaemonService(vault, started, cfg.listen, metrics=self.metrics, core=core),
                     GovernanceService(gov), StoreService(core.store, self.exchange), AdminService(cfg.data_dir, gov, core.snapshot),
                     BundleService(vault, gov, cfg.data_dir, TensorMemorySink(vault, core.tensors),
                                   core.tensors.blobs.objects),
                     *tensor_servicers(core.tensors, vault, gov, self.exchange))
        # Each servicer class is named after its service (memos.v1.VaultService -> VaultService).
        by_name = {type(servicer).__name__: servicer for servicer in servicers}
        missing = [d.full_name for d in SERVICES if d.name not in by_name]
        if missing or len(by_name) != len(SERVICES):
            raise TypeError(f"servicers do not match the services: missing {missing}")
        server.add_generic_rpc_handlers(tuple(
            service_handler(descriptor, by_name[descriptor.name], gov, self.metrics.observe_request)
            for descriptor in SERVICES))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [s.full_name for s in SERVICES] + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                                   reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        if cfg.metrics_listen:
            self.metrics_endpoint = MetricsEndpoint(self.metrics, cfg.metrics_listen)
            await self.metrics_endpoint.start()
        self.address = transport.bind(server, cfg)
        if core.members is not None:
            await core.members.set_listen(str(self.address))
        if self.exchange is not None:
            self.exchange.start(transport.SOCKET_MODE)
        await server.start()
        self._server = server
        transport.restrict(self.address)
        for name in ["", *(s.full_name for s in SERVICES)]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("memosd listening on %s (data in %s)", self.address, cfg.data_dir)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, finish in-flight calls (up to grace), flush and close the vault."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        self.core.end_subscriptions()
        await self._server.stop(self.config.shutdown_grace if grace is None else grace)
        self._server = None
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.stop()
        if self.exchange is not None:
            await asyncio.to_thread(self.exchange.stop)
        await self.core.stop()
        path = socket_path(self.address)
        if path is not None:
            path.unlink(missing_ok=True)
        self._stopped.set()
        log.info("memosd stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def build_server(config: Config, governance_type: type[MemGovernance] = MemGovernance) -> MemosServer:
    """The daemon for a config; `await server.start()` binds and serves, `await server.stop()` drains.
    governance_type lets an embedder supply its own MemGovernance (the benchmarks measure against one
    that allows everything)."""
    return MemosServer(config, governance_type)
