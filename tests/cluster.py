"""Test helpers: several daemons on one PostgreSQL vault, as a cluster's members are (each its own data directory
and socket, the admin key of the first copied to the others so one key administers them all)."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import replace
from pathlib import Path

from memosd.config import Config
from tests.daemon import make_config, running


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
