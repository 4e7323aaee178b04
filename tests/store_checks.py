"""Validators for subscription histories, after etcd's watch validators: ordered, unique, reliable."""

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
