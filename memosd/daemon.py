"""Daemon: builds, owns, starts and stops the core (storage, governance, vault, MemStore, tensor memory, lifecycle)."""

from __future__ import annotations

import logging
from pathlib import Path

from memosd import __version__
from memosd.cluster.members import Membership
from memosd.cluster.bus import Bus
from memosd.cluster.follower import Follower
from memosd.config import Config
from memosd.governance import MemGovernance
from memosd.lifecycle import MemLifecycle
from memosd.scheduler.distill import ParametricPromoter
from memosd.scheduler.jobs import JobManager, run_id
from memosd.scheduler.plan import MemPlanner
from memosd.scheduler.promote import ActivationPromoter
from memosd.store import MemStore
from memosd.store.hub import Hub
from memosd.vault import MemVault
from memosd.vault.activation import ActivationVault
from memosd.vault.blobs import BlobStore
from memosd.errors import FailedPrecondition
from memosd.storage import Database, missing_modules, open_database
from memosd.storage.objects import open_object_store
from memosd.storage.objects.copies import RemoteCopies, remote_copies
from memosd.storage.urls import redact
from memosd.vault.parametric import ParametricVault

log = logging.getLogger("memosd")


class TensorMemory:
    """The parts of the daemon that deal in tensors: the blob store, activation and parametric cubes, jobs, the
    plaintext -> activation and plaintext -> parametric promoters and the query planner; started after the vault,
    stopped before it closes."""

    def __init__(self, config: Config, vault: MemVault, governance: MemGovernance, member: str = ""):
        objects = open_object_store(config.blob_url, config.data_dir, s3_endpoint_url=config.s3_endpoint_url,
                                    cache_bytes=config.limits.blob_cache_bytes)
        self.blobs = BlobStore(config.data_dir, vault.db, objects=objects, max_blob_bytes=config.limits.max_blob_bytes,
                               max_pending_uploads=config.limits.max_pending_uploads)
        self.activations = ActivationVault(vault, self.blobs, audit=governance.audit_write)
        self.jobs = JobManager(db=vault.db, member=member, lease=config.job_lease)
        model = None
        if config.activation_model:
            from memosd.runtime.causal_lm import CausalLM  # checks the path only; torch loads on the first build

            model = CausalLM(config.activation_model, config.activation_dtype)
        self.promoter = ActivationPromoter(self.activations, self.blobs, self.jobs, model, governance)
        self.parametric = ParametricVault(vault, self.blobs, audit=governance.audit_write)
        trainer = None
        base = config.parametric_model or config.activation_model
        if base:
            from memosd.runtime.lora import LoraTrainer  # checks the path only; torch loads on the first job

            trainer = LoraTrainer(base, config.parametric_dtype if config.parametric_model else config.activation_dtype)
        self.distiller = ParametricPromoter(vault, self.parametric, self.blobs, self.jobs, trainer, governance)
        self.planner = MemPlanner(vault, self.activations, self.parametric)

    async def start(self) -> None:
        await self.blobs.start()
        await self.jobs.start()

    async def stop(self) -> None:
        await self.jobs.stop()
        await self.blobs.stop()


class Daemon:
    """The daemon without its transport: what `memosd serve` runs and the servicers are handed.
    start() opens and starts the parts in dependency order; stop() stops them in reverse, after the last call."""

    def __init__(self, config: Config, governance_type: type[MemGovernance] = MemGovernance):
        self.config = config
        self._governance_type = governance_type
        self.db: Database | None = None
        self.governance: MemGovernance | None = None
        self.vault: MemVault | None = None
        self.store: MemStore | None = None
        self.tensors: TensorMemory | None = None
        self.lifecycle: MemLifecycle | None = None
        self.members: Membership | None = None
        # Who holds a job's or a sweep's lease: this member (its id kept in the data directory) in this run of it,
        # so that a member restarted after kill -9 never takes its last run's leases for its own.
        self.member_id = ""
        self.bus: Bus | None = None  # the cluster's NATS bus, with bus_url
        self.follower: Follower | None = None  # MemStore across daemons, on a PostgreSQL vault
        self.copies: RemoteCopies | None = None  # a backup's way to the blobs of a remote object store

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        embedder = None
        if cfg.embedding_model:
            from memosd.runtime.embedder import Embedder

            embedder = Embedder(cfg.embedding_model, threads=cfg.embedding_threads or None,
                                precision=cfg.embedding_precision, runtime=cfg.embedding_runtime)
        self.db, self.governance = await open_storage(cfg, self._governance_type, serving=True)
        gov = self.governance
        self.members = Membership(self.db, cfg.data_dir, version=__version__, interval=cfg.member_heartbeat_interval)
        await self.members.start(cfg.listen)
        self.member_id = run_id(self.members.id)
        gov.start_polling(cfg.governance_poll_interval)
        self.vault = MemVault(cfg.data_dir, db=self.db, limits=cfg.limits, embedder=embedder, audit=gov.audit_write)
        await self.vault.start()
        self.store = MemStore(self.db, gov, hub=Hub(capacity=cfg.subscriber_queue,
                                                    per_agent_limit=cfg.subscriptions_per_agent),
                              default_max_events=cfg.topic_max_events, default_max_age=cfg.topic_max_age,
                              holder=self.member_id, member=self.members.id)
        await self.store.start()
        await self._join_cluster()
        self.tensors = TensorMemory(cfg, self.vault, gov, member=self.member_id)
        await self.tensors.start()
        self.copies = remote_copies(self.tensors.blobs.objects)
        self.lifecycle = MemLifecycle(self.vault, store=self.store, sweep_interval=cfg.sweep_interval,
                                      flush_interval=cfg.access_flush_interval, member=self.member_id)
        self.lifecycle.start()
        gov.signer.start(cfg.audit_checkpoint_entries, cfg.audit_checkpoint_interval)

    async def _join_cluster(self) -> None:
        """On PostgreSQL other daemons may share the vault: follow their commits, over the bus when there is one
        (a daemon on a PostgreSQL vault without a bus works alone, or with others by polling the vault)."""
        cfg = self.config
        if self.db is None or self.db.engine != "postgresql" or self.store is None or self.governance is None:
            return
        if cfg.bus_url:
            self.bus = bus = Bus(cfg.bus_url, self.governance.daemon_id, poll_interval=cfg.cluster_poll_interval,
                                 name=f"memosd {self.member_id}", tls_ca=cfg.bus_tls_ca, tls_cert=cfg.bus_tls_cert,
                                 tls_key=cfg.bus_tls_key)
            # Governance news: a change committed here is told to the others, which reload at once rather than
            # at their next poll (the poll stays: it is what keeps them right while the bus is down).
            gov = self.governance
            gov.on_change(lambda version: bus.notify("governance", {"version": version}))
            bus.on("governance", lambda _payload: gov.refresh())
        self.follower = Follower(self.store, self.bus, poll_interval=cfg.cluster_poll_interval)
        await self.follower.start()
        if self.bus is not None:
            await self.bus.start()

    def cluster_state(self) -> str:
        """One line for status: the bus's state, or how other daemons' commits are found (empty on SQLite)."""
        return self.follower.describe() if self.follower is not None else ""

    def end_subscriptions(self) -> None:
        """Subscriptions never end by themselves: end them (with their positions) so the transport can drain."""
        if self.store is not None:
            self.store.hub.close()

    def snapshot(self):
        """A consistent copy of the data directory for an online backup; blocking, run it on a thread."""
        from memosd.storage.sqlite.backup import take_snapshot

        if self.db is not None and self.db.engine != "sqlite":
            raise FailedPrecondition(f"a backup copies the embedded SQLite vault; this daemon's vault is on"
                                     f" {self.db.engine}: back it up with pg_dump (and the bucket's own versioning"
                                     " or replication for S3 blobs)")
        return take_snapshot(self.config.data_dir, copies=self.copies)

    async def stop(self) -> None:
        """After the transport has stopped: background tasks, tensor memory, the audit signer, then the vault."""
        if self.vault is None:
            return
        assert self.lifecycle and self.tensors and self.governance, "start() sets them with the vault"
        await self.lifecycle.stop()
        if self.bus is not None:
            await self.bus.close()  # first: a notice arriving now would start a read of a closing vault
        if self.follower is not None:
            await self.follower.stop()
        if self.store is not None:
            await self.store.stop()
        await self.tensors.stop()
        await self.governance.stop_polling()
        if self.members is not None:
            await self.members.stop()
        await self.governance.signer.stop()  # after the last write: the head it signs is the final one
        await self.vault.close()


async def open_storage(config: Config, governance_type=MemGovernance, *, create: bool = False,
                       serving: bool = False) -> tuple[Database, MemGovernance]:
    """The vault's database (migrated; create: make a PostgreSQL schema, as `memosd init` does) and governance
    (admin key created on first use). serving: refuse an engine that lacks record modules the core needs."""
    db = open_database(config.data_dir, url=config.vault_url, create=create)
    if db.engine == "postgresql":
        # Governance would give a half-copied vault a daemon id and an admin of its own: refuse it instead.
        from memosd.storage.postgres.copy import unfinished

        source = await db.read(unfinished)
        if source:
            db.close()
            raise FailedPrecondition(f"a migration of vault {source} into {redact(config.vault_url)} has not finished:"
                                     " run `memosd migrate` again to complete it")
    missing = missing_modules(db) if serving else ()
    if missing:
        db.close()
        raise FailedPrecondition(
            f"the {db.engine} vault ({redact(config.vault_url)}) cannot serve yet: this memosd's {db.engine} engine"
            f" lacks the {', '.join(missing)} records; serve with vault_url = \"sqlite:\" for now")
    governance = governance_type(db, config.data_dir,
                                 audit_key=Path(config.audit_key).expanduser() if config.audit_key else None)  # noqa: ASYNC240
    await governance.start()
    return db, governance
