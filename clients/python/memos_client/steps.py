"""One body per client method for both clients: a generator that yields its I/O, run by each client its way."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time

import grpc

# A method body builds its request, yields the call (`r = yield self._call(stub.Get, request)`) and converts
# what comes back. MemosClient's `_call` has the response already and its driver sends it straight back;
# AsyncMemosClient's returns an awaitable, which its driver awaits. The other steps say what differs:
# Next(stream) (the next message, or END), Offload(fn, ...) (blocking work: on a thread in asyncio),
# Sleep(s), and in iterating methods Item(x) (a value for the caller). A step's error is thrown back in at
# its yield, so a body's try/except/finally reads as plain code on both sides.


class Offload:
    """Blocking work (hashing, tensors, files): run in place by MemosClient, on a thread by AsyncMemosClient."""

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn, *args, **kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs


class Next:
    """The next message of a response stream, or END once it is over."""

    __slots__ = ("stream",)

    def __init__(self, stream):
        self.stream = stream


class Sleep:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float):
        self.seconds = seconds


class Item:
    """A value an iterating method hands to its caller."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


END = object()


def method(body):
    """A client method written once as a generator of steps; returns its value (asyncio: an awaitable of it)."""

    @functools.wraps(body)
    def run(self, *args, **kwargs):
        return self._run(body(self, *args, **kwargs))

    return run


def iterating(body):
    """A client method written once as a generator of steps and Items; returns an iterator of the Items'
    values (asyncio: an async iterator)."""

    @functools.wraps(body)
    def run(self, *args, **kwargs):
        return self._iterate(body(self, *args, **kwargs))

    return run


class SyncSteps:
    """Runs step generators in the calling thread (MemosClient)."""

    @staticmethod
    def _perform(step):
        kind = type(step)
        if kind is Next:
            return next(step.stream, END)
        if kind is Offload:
            return step.fn(*step.args, **step.kwargs)
        if kind is Sleep:
            time.sleep(step.seconds)
            return None
        return step  # the result of a call made already

    def _run(self, steps):
        send, value = steps.send, None
        while True:
            try:
                step = send(value)
            except StopIteration as stop:
                return stop.value
            try:
                send, value = steps.send, self._perform(step)
            except BaseException as exc:  # raised in the body, at its yield
                send, value = steps.throw, exc

    def _iterate(self, steps):
        send, value = steps.send, None
        try:
            while True:
                try:
                    step = send(value)
                except StopIteration:
                    return
                if type(step) is Item:
                    send, value = steps.send, None
                    yield step.value
                    continue
                try:
                    send, value = steps.send, self._perform(step)
                except BaseException as exc:
                    send, value = steps.throw, exc
        finally:
            steps.close()  # an iteration left early ends the body's streams (its finally blocks) now

    @staticmethod
    def _requests(iterable):
        """A request stream for a client-streaming call whose items take blocking work to make."""
        return iterable


class AsyncSteps:
    """Runs step generators on the event loop (AsyncMemosClient)."""

    @staticmethod
    async def _perform(step):
        kind = type(step)
        if kind is Next:
            message = await step.stream.read()
            return END if message is grpc.aio.EOF else message
        if kind is Offload:
            return await asyncio.to_thread(step.fn, *step.args, **step.kwargs)
        if kind is Sleep:
            await asyncio.sleep(step.seconds)
            return None
        return (await step) if inspect.isawaitable(step) else step

    async def _run(self, steps):
        send, value = steps.send, None
        while True:
            try:
                step = send(value)
            except StopIteration as stop:
                return stop.value
            try:
                send, value = steps.send, await self._perform(step)
            except BaseException as exc:
                send, value = steps.throw, exc

    async def _iterate(self, steps):
        send, value = steps.send, None
        try:
            while True:
                try:
                    step = send(value)
                except StopIteration:
                    return
                if type(step) is Item:
                    send, value = steps.send, None
                    yield step.value
                    continue
                try:
                    send, value = steps.send, await self._perform(step)
                except BaseException as exc:
                    send, value = steps.throw, exc
        finally:
            steps.close()

    @staticmethod
    async def _requests(iterable):
        """The items of `iterable`, each made on a thread so the event loop keeps serving."""
        items = iter(iterable)
        while (item := await asyncio.to_thread(next, items, END)) is not END:
            yield item
