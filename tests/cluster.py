"""Test helpers: several daemons on one PostgreSQL vault, as a cluster's members are (each its own data directory
and socket, the admin key of the first copied to the others so one key administers them all): in this process
(running_members) or as `memosd serve` processes with their own PostgreSQL and NATS (ProcessCluster, which
`make cluster` and the cluster benchmarks run)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from memosd.config import Config
from tests.daemon import make_config, running, wait_serving


def member_configs(tmp: Path, vault_url: str, count: int, **overrides) -> list[Config]:
    """Configs for `count` daemons sharing vault_url, each with its own data directory and socket."""
    return [replace(make_config(tmp / f"member{i}"), vault_url=vault_url, **overrides) for i in range(count)]


def share_admin_key(first: Config, other: Config) -> None:
    """Give another member the admin key the first one created (it lives in the data directory)."""
    other.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy2(first.data_dir / "admin.key", other.data_dir / "admin.key")


@contextlib.contextmanager
def running_members(configs: list[Config]):
    """Start the members in order (the first creates the admin key the others are given); stop them all."""
    with contextlib.ExitStack() as stack:
        daemons = []
        for config in configs:
            if daemons:
                share_admin_key(configs[0], config)
            daemons.append(stack.enter_context(running(config)))
        yield daemons


class ProcessCluster:
    """A PostgreSQL server and a NATS server of its own, and `count` members as `memosd serve` processes under
    `root`: members[i] = (listen address, admin key path, pid). storage: extra flags for init and serve (e.g. the
    blob store's). stop() ends it all."""

    def __init__(self, root: Path, count: int, *, storage: tuple[str, ...] = (), log_level: str = "warning",
                 env: dict | None = None):
        from tests.nats_server import NatsServer
        from tests.pg_server import PostgresServer

        self.pg, self.nats = PostgresServer(), NatsServer()
        self.procs: list[subprocess.Popen] = []
        self.members: list[tuple[str, str, int]] = []
        try:
            self.pg.start()
            self.vault_url = self.pg.create_database("memosd")
            self.nats.start()
            flags = ("--vault-url", self.vault_url, *storage)
            first = root / "member0"
            subprocess.run([sys.executable, "-m", "memosd.cli", "init", "--data-dir", str(first), *flags],
                           check=True, capture_output=True, env=env)
            for i in range(count):
                data, listen = root / f"member{i}", f"unix:{root}/member{i}.sock"
                if i:
                    data.mkdir(mode=0o700)
                    shutil.copy2(first / "admin.key", data / "admin.key")  # one admin key for the cluster
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(data), "--listen", listen, *flags,
                     "--bus-url", self.nats.url, "--log-level", log_level], env=env))
                wait_serving(listen)
                self.members.append((listen, str(data / "admin.key"), self.procs[-1].pid))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.nats.kill()
        self.pg.stop()
        self.pg.remove()
