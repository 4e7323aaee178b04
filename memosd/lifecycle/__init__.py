"""MemLifecycle: expiry sweeps and behaviour metrics, run as background tasks."""

from memosd.lifecycle.tasks import MemLifecycle

__all__ = ["MemLifecycle"]
