"""Reading a topic through the daemon's Subscribe: a page of events after a cursor, and following a topic live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from memos_client.aio import AsyncMemosClient
from memos_client.errors import Compacted, MemosError, Unavailable
from memos_client.models import Event, Heartbeat
from memos_client.subscription import AsyncSubscription, _Position

log = logging.getLogger("memosctl.mcp")
# The daemon's shortest heartbeat: an idle stream says within a second that it was accepted and is caught up.
HEARTBEAT_SECONDS = 1
# How long a feed waits, beyond the caller's wait_seconds, for the backlog it knows of to arrive.
FEED_BOUND_SECONDS = 10.0


def _subscription(client: AsyncMemosClient, topic: str, positions: dict[str, int], resume_for: float):
    position = _Position(topic, 0 if topic.endswith("/**") else positions.get(topic, 0), False, "",
                         HEARTBEAT_SECONDS, 0)
    if topic.endswith("/**"):
        position.after = dict(positions)
    return AsyncSubscription(client, position, heartbeats=True, resume_for=resume_for)


def _under(name: str, topic: str) -> bool:
    if not topic.endswith("/**"):
        return name == topic
    base = topic[:-3]
    return name == base or name.startswith(base + "/")


async def _known_ends(client: AsyncMemosClient, topic: str) -> dict[str, int]:
    """The last seq of each topic the subscription covers, as listed now."""
    prefix = topic[:-3] if topic.endswith("/**") else topic
    return {t.name: t.last_seq for t in await client.topics(prefix) if _under(t.name, topic)}


async def read_feed(client: AsyncMemosClient, topic: str, positions: dict[str, int], limit: int,
                    wait_seconds: float) -> tuple[list[Event], dict[str, int]]:
    """Up to `limit` events after `positions` ({topic: last seq seen}), and the positions after them. Returns
    as soon as the backlog listed at the start is read; with nothing new, waits up to wait_seconds for one."""
    positions = dict(positions)
    pending = {name: last for name, last in (await _known_ends(client, topic)).items() if last > positions.get(name, 0)}
    events: list[Event] = []
    caught_up = False
    sub = _subscription(client, topic, positions, resume_for=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(wait_seconds + FEED_BOUND_SECONDS) as bound:
            async for item in sub:
                if isinstance(item, Heartbeat):
                    # The daemon idles: it has sent all there was. Stop, unless asked to wait for something new,
                    # which then may take what is left of wait_seconds.
                    if events or wait_seconds == 0:
                        break
                    if not caught_up:
                        caught_up = True
                        bound.reschedule(min(bound.when() or float("inf"), started + wait_seconds))
                    continue
                events.append(item)
                positions[item.topic] = item.seq
                if pending.get(item.topic, 0) <= item.seq:
                    pending.pop(item.topic, None)
                if len(events) >= limit or (not pending and (wait_seconds == 0 or events)):
                    break
    except TimeoutError:
        if not events and not caught_up:
            raise Unavailable(f"no answer from the daemon on {topic} within {FEED_BOUND_SECONDS:.0f}s; try again") from None
    except Compacted as exc:
        raise Compacted(f"{exc.message}. Call memory_feed without a cursor to start again from the oldest event "
                        "kept") from None
    finally:
        sub.close()
    return events, positions


class Follower:
    """Follows a topic (or pattern) live for a resource subscription, calling `notify(event)` for each event;
    resumes by itself across daemon restarts until stopped."""

    def __init__(self, client: AsyncMemosClient, topic: str, notify: Callable[[Event], Awaitable[None]]):
        self.client, self.topic, self.notify = client, topic, notify
        self.accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = None
        self._sub: AsyncSubscription | None = None

    async def start(self) -> None:
        """Subscribe; raises the daemon's refusal (permission, bad pattern) instead of following."""
        # From the positions listed now, not "live only": an event published once this returns is never missed.
        positions = await _known_ends(self.client, self.topic)
        self.task = asyncio.create_task(self._run(positions), name=f"mcp-follow-{self.topic}")
        try:
            # Accepted (a first event or heartbeat), refused, or the task ended some other way (a bug): never hang.
            await asyncio.wait([self.accepted, self.task], return_when=asyncio.FIRST_COMPLETED)
            if not self.accepted.done():
                self.task.result()  # raises what ended it
                raise MemosError(f"following {self.topic} ended before the daemon accepted it")
            self.accepted.result()
        except BaseException:
            self.stop()
            raise

    async def _run(self, positions: dict[str, int]) -> None:
        while True:
            self._sub = _subscription(self.client, self.topic, positions, resume_for=30.0)
            try:
                async for item in self._sub:
                    if not self.accepted.done():
                        self.accepted.set_result(None)
                    if isinstance(item, Event):
                        positions[item.topic] = item.seq
                        try:
                            await self.notify(item)
                        except Exception:  # the MCP session is gone (an HTTP client left): so is the follow
                            log.debug("stopped following %s: its MCP session is closed", self.topic)
                            return
            except Unavailable as exc:
                if not self.accepted.done():
                    self.accepted.set_exception(exc)
                    return
                # The daemon is gone for longer than the subscription's own resume window: keep trying.
                await asyncio.sleep(1.0)
                continue
            except MemosError as exc:  # refused, or no longer allowed (a revoked grant or key): the follow ends
                if not self.accepted.done():
                    self.accepted.set_exception(exc)
                return
            finally:
                self._sub.close()
            return

    def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
        if self.task is not None:
            self.task.cancel()
