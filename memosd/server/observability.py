"""Connects the daemon's parts to its Metrics: the vault's and MemStore's gauges."""

from __future__ import annotations

from memosd.metrics import Metrics, publish_families, subscriber_families
from memosd.vault.usage import VaultUsage


def watch(metrics: Metrics, vault, store=None, follower=None) -> VaultUsage:
    """Register the collectors a scrape (and Status) reads; returns the vault's, which Status shares."""
    usage = VaultUsage(vault)
    metrics.add_collector("vault", usage.families)
    hub = getattr(store, "hub", None)
    if hub is not None:
        async def subscribers():
            return subscriber_families(hub) + publish_families(store.groups)

        metrics.add_collector("store", subscribers)
    if follower is not None:
        async def cluster():
            return follower.families()

        metrics.add_collector("cluster", cluster)
    return usage
