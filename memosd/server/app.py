"""build_server(): the daemon as one object that tests and `memosd serve` start the same way."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from memos_mip.v1 import admin_pb2, bundle_pb2, daemon_pb2, governance_pb2, store_pb2, vault_pb2
from memosd.config import Config, socket_path
from memosd.governance import MemGovernance
from memosd.governance.schema import migrations as governance_migrations
from memosd.lifecycle import MemLifecycle
from memosd.metrics import Metrics
from memosd.server.admin_service import AdminService
from memosd.server.bundle_service import BundleService
from memosd.bundle.tensor_sink import TensorMemorySink
from memosd.server.metrics_endpoint import MetricsEndpoint
from memosd.server.observability import watch
from memosd.server.daemon_service import DaemonService
from memosd.server.governance_service import GovernanceService
from memosd.server.store_service import StoreService
from memosd.server.tensor_memory import SERVICES as TENSOR_SERVICES, TensorMemory
from memosd.server import transport
from memosd.server.fd_exchange import FdExchange
from memosd.server.rpc import service_handler
from memosd.server.vault_service import VaultService
from memosd.store import MemStore
from memosd.store.hub import Hub
from memosd.store.schema import migrations as store_migrations
from memosd.vault import MemVault
from memosd.vault.db import Database
from memosd.vault.schema import migrations as vault_migrations

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
    """The running daemon: gRPC server, MemVault and background lifecycle tasks."""

    def __init__(self, config: Config, governance_type: type[MemGovernance] = MemGovernance):
        self.config = config
        self._governance_type = governance_type
        self.address = config.listen
        self.vault: MemVault | None = None
        self.store: MemStore | None = None
        self.tensors: TensorMemory | None = None
        self.exchange: FdExchange | None = None
        self.governance: MemGovernance | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._lifecycle: MemLifecycle | None = None
        self._stopped = asyncio.Event()
        self.metrics = Metrics()
        self.metrics_endpoint: MetricsEndpoint | None = None

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        embedder = None
        if cfg.embedding_model:
            from memosd.runtime.embedder import Embedder

            embedder = Embedder(cfg.embedding_model, threads=cfg.embedding_threads or None)
        db, self.governance = await open_storage(cfg, self._governance_type)
        gov = self.governance
        self.vault = MemVault(cfg.data_dir, db=db, limits=cfg.limits, embedder=embedder, audit=gov.audit_write)
        await self.vault.start()
        self.store = MemStore(db, gov, hub=Hub(capacity=cfg.subscriber_queue, per_agent_limit=cfg.subscriptions_per_agent),
                              default_max_events=cfg.topic_max_events, default_max_age=cfg.topic_max_age)
        await self.store.start()
        self.exchange = FdExchange.beside(cfg.listen)
        self.tensors = TensorMemory(cfg, self.vault, gov, self.exchange)
        await self.tensors.start()
        self._lifecycle = MemLifecycle(self.vault, store=self.store, sweep_interval=cfg.sweep_interval,
                                       flush_interval=cfg.access_flush_interval)
        self._lifecycle.start()
        gov.signer.start(cfg.audit_checkpoint_entries, cfg.audit_checkpoint_interval)
        watch(self.metrics, self.vault, self.store)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        started = time.time()
        servicers = (VaultService(self.vault, gov), DaemonService(self.vault, started, cfg.listen, metrics=self.metrics),
                     GovernanceService(gov), StoreService(self.store), AdminService(cfg.data_dir, db, gov),
                     BundleService(self.vault, gov, cfg.data_dir, TensorMemorySink(self.vault, self.tensors)),
                     *self.tensors.servicers())
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
        self.store.hub.close()  # subscriptions never end by themselves: end them now, with their positions
        await self._server.stop(self.config.shutdown_grace if grace is None else grace)
        self._server = None
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.stop()
        await self._lifecycle.stop()
        if self.exchange is not None:
            await asyncio.to_thread(self.exchange.stop)
        await self.tensors.stop()
        await self.governance.signer.stop()  # after the last write: the head it signs is the final one
        await self.vault.close()
        path = socket_path(self.address)
        if path is not None:
            path.unlink(missing_ok=True)
        self._stopped.set()
        log.info("memosd stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def open_storage(config: Config, governance_type=MemGovernance) -> tuple[Database, MemGovernance]:
    """The data directory's database (migrated) and governance (admin key created on first use)."""
    db = Database(config.data_dir / "memos.db", migrations=(vault_migrations, governance_migrations, store_migrations))
    governance = governance_type(db, config.data_dir,
                                 audit_key=Path(config.audit_key).expanduser() if config.audit_key else None)
    await governance.start()
    return db, governance


def build_server(config: Config, governance_type: type[MemGovernance] = MemGovernance) -> MemosServer:
    """The daemon for a config; `await server.start()` binds and serves, `await server.stop()` drains.
    governance_type lets an embedder supply its own MemGovernance (the benchmarks measure against one
    that allows everything)."""
    return MemosServer(config, governance_type)
