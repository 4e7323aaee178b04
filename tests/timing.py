"""Waiting in tests: poll a condition against a deadline, or move an injected clock; never sleep a guess."""

from __future__ import annotations

import asyncio
import time

POLL = 0.01


def wait_for(condition, what: str, timeout: float = 30.0):
    """condition()'s first truthy value, polled until the deadline; past it the test fails with `what`
    (said as the failure: "the import never started")."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} (waited {timeout:g} s)"
        time.sleep(POLL)
    return found


async def until(condition, what: str, timeout: float = 30.0):
    """wait_for on an event loop: condition is a coroutine function, awaited until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (found := await condition()):
        assert time.monotonic() < deadline, f"{what} (waited {timeout:g} s)"
        await asyncio.sleep(POLL)
    return found


class ManualClock:
    """A clock for a component's `clock=` seam: it starts at the real time and moves only when told to."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
