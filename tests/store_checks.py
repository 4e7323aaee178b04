"""Validators for subscription histories, after etcd's watch validators: ordered, unique, reliable."""

import threading

from memos_client.models import Event, Heartbeat


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
