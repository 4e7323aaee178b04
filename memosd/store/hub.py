"""In-process fan-out of committed events to live subscribers, each with a bounded queue."""

from __future__ import annotations

import asyncio
from collections import deque

from memosd.errors import ResourceExhausted, Unavailable
from memosd.governance.policy import Pattern


async def first_of(coroutines) -> None:
    """Wait until the first of several waits finishes; the others are cancelled."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class Subscriber:
    """One open subscription: the events committed since it registered, up to `capacity`."""

    def __init__(self, agent: str, pattern: Pattern, capacity: int):
        self.agent = agent
        self.pattern = pattern
        self.capacity = capacity
        self.queue: deque = deque()
        self.overflowed = False
        self.wakeup = asyncio.Event()
        self.overflow = asyncio.Event()

    def offer(self, record) -> None:
        if self.overflowed:
            return
        if len(self.queue) >= self.capacity:
            # Never drop silently: the stream ends with RESOURCE_EXHAUSTED and its last delivered seq.
            self.overflowed = True
            self.overflow.set()
            self.queue.clear()
        else:
            self.queue.append(record)
        self.wakeup.set()

    def take_all(self, limit: int) -> list:
        """The waiting events, oldest first, up to limit."""
        taken = [self.queue.popleft() for _ in range(min(limit, len(self.queue)))]
        if not self.queue and not self.overflowed:
            self.wakeup.clear()
        return taken


class Hub:
    """Knows the open subscriptions; publishers hand it each event once committed."""

    def __init__(self, *, capacity: int, per_agent_limit: int):
        self.capacity = capacity
        self.per_agent_limit = per_agent_limit
        self._subscribers: set[Subscriber] = set()
        self._per_agent: dict[str, int] = {}
        self.dropped_slow = 0
        self.closing = asyncio.Event()

    def close(self) -> None:
        """The daemon is stopping: open streams end (with their position) so that clients resume elsewhere
        or after the restart, and new ones are refused."""
        self.closing.set()

    def register(self, agent: str, pattern: Pattern) -> Subscriber:
        if self.closing.is_set():
            raise Unavailable("the daemon is shutting down; subscribe again once it is back")
        if self._per_agent.get(agent, 0) >= self.per_agent_limit:
            raise ResourceExhausted(f"agent {agent} has {self.per_agent_limit} open subscriptions, the limit;"
                                    " close one first")
        sub = Subscriber(agent, pattern, self.capacity)
        self._subscribers.add(sub)
        self._per_agent[agent] = self._per_agent.get(agent, 0) + 1
        return sub

    def unregister(self, sub: Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.discard(sub)
            self._per_agent[sub.agent] -= 1
            if sub.overflowed:
                self.dropped_slow += 1

    def deliver(self, record) -> None:
        for sub in self._subscribers:
            if sub.pattern.matches(record.topic):
                sub.offer(record)

    def __len__(self) -> int:
        return len(self._subscribers)

    def queue_depths(self) -> list[int]:
        return [len(s.queue) for s in self._subscribers]
