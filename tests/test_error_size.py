"""Errors quote a short prefix of what they were given: huge values get a short message the client receives
(not RESOURCE_EXHAUSTED from gRPC's 16 KiB metadata limit), and the daemon's log stays small and unflooded."""

import io
import json
import logging

import pytest

from memos_client import InvalidArgument, MemosClient, NotFound, PermissionDenied
from memos_client.auth import AgentKey, sign_policy
from memos_mip.bounds import quote
from memosd.logs import RateLimit, log_handler

HUGE = "a" * (1300 << 10)  # 1.3 MiB
NAMESPACE = "agents/" + HUGE


@pytest.fixture
def requests_log():
    """The request log at INFO, as `memosd serve --log-level info` writes it (the daemon's own handler)."""
    stream = io.StringIO()
    handler = log_handler(stream)
    logger, root = logging.getLogger("memosd.requests"), logging.getLogger()
    level = logger.level
    logger.setLevel(logging.INFO)
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)
    logger.setLevel(level)


def _short(error) -> str:
    message = str(error)
    assert len(message.encode()) <= 1024, message[:200]
    return message


def test_a_huge_namespace_on_put_is_a_short_invalid_argument_the_client_receives(client):
    with pytest.raises(InvalidArgument) as info:
        client.put("x", NAMESPACE)
    assert "'agents/aaaa" in _short(info.value) and "(1.3 MiB)" in str(info.value)


def test_twenty_puts_of_a_huge_namespace_log_a_bounded_amount(client, caplog):
    caplog.set_level(logging.INFO, logger="memosd.requests")
    for _ in range(20):
        with pytest.raises(InvalidArgument):
            client.put("x", NAMESPACE)
    lines = [r.getMessage() for r in caplog.records if r.name == "memosd.requests"]
    lines = [line for line in lines if "VaultService/Put" in line]  # not the client's epoch look-up
    assert len(lines) == 20
    assert sum(map(len, lines)) < 20 * 2048


def test_repeated_failures_are_rate_limited_in_the_log(client, requests_log):
    for _ in range(20):
        with pytest.raises(InvalidArgument):
            client.put("x", NAMESPACE)
    client.put("fine", "agents/admin/notes")  # a different line passes
    lines = [json.loads(line) for line in requests_log.getvalue().splitlines()]
    failed = [line for line in lines if line.get("status") == "INVALID_ARGUMENT"]
    assert len(failed) == RateLimit.PER_INTERVAL
    assert "similar lines suppressed" in failed[-1]["note"]
    assert any(line.get("status") == "OK" for line in lines)
    assert len(requests_log.getvalue()) < 20 * 2048


def test_huge_values_in_other_fields_and_rpcs_get_short_errors(client, tmp_path):
    calls = {
        "tag": (InvalidArgument, lambda: client.put("x", "agents/admin/notes", tags=[HUGE])),
        "cube id": (InvalidArgument, lambda: client.get(HUGE)),
        "namespace filter": (InvalidArgument, lambda: list(client.list(NAMESPACE))),
        "agent name": (InvalidArgument, lambda: client.add_agent(HUGE)),
        "topic": (InvalidArgument, lambda: client.publish(NAMESPACE, "01JAAAAAAAAAAAAAAAAAAAAAAA")),
        "policy subject": (InvalidArgument, lambda: client.grant("agent:" + "b" * 60_000, ["read"],
                                                                 ["agents/admin/**"])),
        "policy namespace": (InvalidArgument, lambda: client.grant("agent:bob", ["read"], [NAMESPACE])),
        "page token": (InvalidArgument, lambda: client.list_page("agents/admin", page_token=HUGE)),
        "job id": (NotFound, lambda: client.get_job(HUGE)),
    }
    for what, (error, call) in calls.items():
        with pytest.raises(error) as info:
            call()
        assert len(str(info.value).encode()) <= 1024, f"{what}: {str(info.value)[:200]}"


def test_a_long_message_is_cut_at_the_error_boundary(client, daemon, tmp_path):
    """No single value is huge here, but the message lists 500 of them: the status detail is capped."""
    client.add_agent("alice", out=str(tmp_path / "alice.key"))
    namespaces = [f"teams/t{i}/" + "n" * 60 for i in range(500)]
    document, signature = sign_policy(AgentKey.load(tmp_path / "alice.key"), subject="agent:alice",
                                      actions=["read"], namespaces=namespaces)
    assert len(document) > 32 << 10
    with MemosClient(daemon.address, key=str(tmp_path / "alice.key")) as alice:
        with pytest.raises(PermissionDenied, match="may not grant read on teams/t") as info:
            alice.put_policy(document, signature)
    assert str(info.value).endswith("...")
    _short(info.value)


def test_quote_keeps_a_prefix_and_says_how_big_the_value_was():
    assert quote("agents/alice") == "'agents/alice'"
    assert quote(NAMESPACE) == repr("agents/" + "a" * 57)[:-1] + "...' (1.3 MiB)"
    assert quote(b"\x00" * 100, 4) == "b'\\x00\\x00\\x00\\x00...' (100 bytes)"
    assert quote(list(range(1000)), 10) == "[0, 1, 2, ... (4890 characters)"
    assert quote(42) == "42"


def test_a_log_line_quoting_something_huge_is_cut(requests_log):
    logging.getLogger("memosd.requests").warning("could not store %s", NAMESPACE)
    try:
        raise ValueError(NAMESPACE)
    except ValueError:
        logging.getLogger("memosd.requests").exception("failed")
    first, second = map(json.loads, requests_log.getvalue().splitlines())
    assert first["msg"].startswith("could not store agents/aaaa") and first["msg"].endswith("...")
    assert "Traceback" in second["exc"]
    assert len(requests_log.getvalue()) < 20_000


def test_the_rate_limit_lets_a_few_through_then_summarises():
    now = [0.0]
    limit = RateLimit(per_interval=3, interval=10, clock=lambda: now[0])
    record = lambda msg: logging.LogRecord("memosd.x", logging.WARNING, __file__, 1, msg, (), None)  # noqa: E731
    passed = [r for r in (record("same") for _ in range(10)) if limit.filter(r)]
    assert len(passed) == 3 and "suppressed" in passed[-1].note
    assert limit.filter(record("other"))
    now[0] = 11
    after = record("same")
    assert limit.filter(after) and after.note == "7 similar lines suppressed in the last 10 s"
