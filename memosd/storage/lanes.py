"""Read lanes: point reads run on readers of their own, and the other reads wait in a bounded queue."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from memosd.errors import ResourceExhausted

# Reads a Database lets wait on its scan lane (running ones included) before it refuses more: enough that 64
# busy clients never see a refusal, few enough that a flood is answered at once instead of piling up.
MAX_QUEUED_SCANS = 256


class Lane(enum.Enum):
    """Which readers a read runs on."""

    # A few rows by key (Get, History, blob metadata, what authentication waits for): readers that searches
    # and lists never hold, so that a point read waits only for other point reads.
    POINT = "point"
    # Everything else, searches and lists among them, the default: the shared readers, behind a bounded queue.
    SCAN = "scan"


class ScanQueue:
    """Counts the reads in a lane; admit() refuses one past the bound with ResourceExhausted."""

    def __init__(self, bound: int = MAX_QUEUED_SCANS):
        self.bound = bound
        self._count = 0
        self._lock = threading.Lock()  # a Database may serve loops on several threads (tests, embedders)

    @contextmanager
    def admit(self) -> Iterator[None]:
        with self._lock:
            if self._count >= self.bound:
                raise ResourceExhausted(f"the daemon has {self.bound} searches, lists and other long reads queued;"
                                        " retry in a moment")
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
