"""Validators for subscription histories, after etcd's watch validators: ordered, unique, reliable."""

import asyncio
import contextlib
import inspect
import threading

import pytest

from memos_client import MemosClient
from memos_client.models import Event, Heartbeat
from memos_client.subscription import _Position

PUBLISH_PATHS = ("unary", "stream")
DELIVERY_PATHS = ("same-host", "grpc")


def parametrize_paths(metafunc) -> None:
    """pytest_generate_tests of the MemStore test modules, their bodies unchanged: each test that publishes runs
    once with MemosClient.publish as the unary Publish and once over PublishStream; each that subscribes, once
    with its events over the same-host socket (the clients' default on a Unix socket) and once over gRPC."""
    source = inspect.getsource(metafunc.function)
    if "publish" in source:
        metafunc.fixturenames.append("publish_path")
        metafunc.parametrize("publish_path", PUBLISH_PATHS, indirect=True)
    if "subscribe(" in source:
        metafunc.fixturenames.append("delivery_path")
        metafunc.parametrize("delivery_path", DELIVERY_PATHS, indirect=True)


def _publish_over_stream(self, topic: str, cube_id: str, *, publish_id: str = "") -> tuple[int, bool]:
    acks = self.publish_stream([(topic, cube_id, publish_id)])
    try:
        return next(acks)
    finally:
        acks.close()


@pytest.fixture
def publish_path(request, monkeypatch):
    """Which path MemosClient.publish takes in this test (see parametrize_paths)."""
    if request.param == "stream":
        monkeypatch.setattr(MemosClient, "publish", _publish_over_stream)
    return request.param


@pytest.fixture
def delivery_path(request, monkeypatch):
    """Which path every subscription's events take in this test (see parametrize_paths)."""
    if request.param == "grpc":
        ask = _Position.request
        monkeypatch.setattr(_Position, "request", lambda self, same_host: ask(self, False))
    return request.param


def check_history(items, *, start: dict[str, int] | None = None) -> dict[str, int]:
    """Assert a stream's items are in order per topic, without duplicates or gaps, and that no heartbeat
    claims more than was delivered. Returns the last seq per topic."""
    last = dict(start or {})
    for item in items:
        if isinstance(item, Heartbeat):
            for topic, seq in item.delivered.items():
                assert seq <= last.get(topic, seq if topic not in last else 0), (
                    f"heartbeat claims {topic}@{seq} but only {last.get(topic)} was delivered")
            continue
        assert isinstance(item, Event)
        expected = last.get(item.topic, 0) + 1
        assert item.seq == expected, f"{item.topic}: got seq {item.seq}, expected {expected} (gap, duplicate or reorder)"
        last[item.topic] = item.seq
    return last


def collect(sub, n, timeout=20.0):
    """The first n items of a subscription, read on a thread (so a hang fails instead of blocking)."""
    items, done = [], threading.Event()

    def read():
        try:
            for item in sub:
                items.append(item)
                if len(items) >= n:
                    break
        except Exception as exc:  # noqa: BLE001 - handed to the test
            items.append(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), f"only {len(items)} of {n} items arrived"
    sub.close()
    return items


async def cancel_all(tasks) -> None:
    """Cancel in-process subscription tasks and wait until each has ended."""
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
