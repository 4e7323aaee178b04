"""The one body per method of both clients (memos_client.steps): each driver runs it as plain code would."""

import asyncio
import threading

import pytest

from memos_client import InvalidArgument, NotFound
from memos_client.steps import END, AsyncSteps, Item, Next, Offload, SyncSteps, iterating, method


class Refused(Exception):
    pass


class _Stream:
    """A response stream of two messages, then a failure: next() for the sync driver, read() for asyncio's."""

    def __init__(self):
        self.messages = ["a", "b"]
        self.cancelled = False

    def __next__(self):
        if not self.messages:
            raise Refused("stream broke")
        return self.messages.pop(0)

    async def read(self):
        return next(self)

    def cancel(self):
        self.cancelled = True


class _Bodies:
    def __init__(self):
        self.stream = _Stream()
        self.log = []

    @method
    def collect(self):
        """Reads the stream until it breaks; the error arrives at the yield, inside the body's try."""
        got = []
        try:
            while (message := (yield Next(self.stream))) is not END:
                got.append(message)
        except Refused as exc:
            got.append(f"caught: {exc}")
        return got

    @method
    def offloaded(self):
        return (yield Offload(threading.get_ident))

    @iterating
    def events(self):
        try:
            while (message := (yield Next(self.stream))) is not END:
                yield Item(message)
        finally:
            self.stream.cancel()


class _Sync(SyncSteps, _Bodies):
    pass


class _Async(AsyncSteps, _Bodies):
    pass


def test_an_error_of_a_step_is_raised_in_the_body_at_its_yield():
    assert _Sync().collect() == ["a", "b", "caught: stream broke"]
    assert asyncio.run(_Async().collect()) == ["a", "b", "caught: stream broke"]


def test_leaving_an_iteration_early_ends_the_bodys_stream_at_once():
    sync = _Sync()
    events = iter(sync.events())
    assert next(events) == "a" and not sync.stream.cancelled
    events.close()
    assert sync.stream.cancelled

    async def go():
        aio = _Async()
        events = aio.events()
        assert await events.__anext__() == "a" and not aio.stream.cancelled
        await events.aclose()
        return aio.stream.cancelled

    assert asyncio.run(go())


def test_blocking_work_runs_in_place_for_the_sync_client_and_on_a_thread_for_asyncio():
    assert _Sync().offloaded() == threading.get_ident()

    async def go():
        return threading.get_ident(), await _Async().offloaded()

    loop_thread, worker = asyncio.run(go())
    assert worker != loop_thread


def test_an_async_method_runs_when_awaited_and_iterates_as_the_sync_one(client, aclient_factory):
    client.put("audited note", "agents/a/n")

    async def go():
        async with aclient_factory() as c:
            pending = c.search("x", mode="nope")  # nothing runs yet: the error comes with the await
            with pytest.raises(InvalidArgument, match="mode"):
                await pending
            with pytest.raises(NotFound):
                [job async for job in c.watch_job("no-such-job")]
            return [e.seq async for e in c.audit(page_size=1)]

    seqs = asyncio.run(go())
    assert len(seqs) >= 2 and seqs == [e.seq for e in client.audit(page_size=1)][:len(seqs)]
    with pytest.raises(NotFound):
        list(client.watch_job("no-such-job"))
