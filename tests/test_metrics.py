"""Prometheus metrics on an opt-in loopback port, and the same figures in Status and `memosctl status`."""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from memos_client import MemosClient
from memos_client import errors as client_errors
from memos_client.cli import main as memosctl
from memosd.config import load_config
from memosd.errors import InvalidArgument
from memosd.metrics import Histogram, Metrics, render
from tests.daemon import running


def scrape(address: str, path: str = "/metrics") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def value(text: str, name: str, **labels) -> float:
    """The sample of `name` whose labels include these."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, number = line.rpartition(" ")
        base, _, label_text = metric.partition("{")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if base == name and all(found.get(k) == v for k, v in labels.items()):
            return float(number)
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


@pytest.fixture
def metered(config):
    with running(replace(config, metrics_listen="127.0.0.1:0")) as daemon:
        yield daemon


def test_metrics_endpoint_counts_requests_storage_and_denials(metered, tmp_path):
    address = metered.server.metrics_endpoint.address
    with MemosClient(metered.address, key=metered.admin_key) as client:
        client.put_many({"text": "x" * 100, "namespace": "agents/admin/m"} for _ in range(10))
        client.put("héllo", "agents/admin/m")
        with pytest.raises(client_errors.NotFound):
            client.get("01JAAAAAAAAAAAAAAAAAAAAAAA")
        client.add_agent("eve", out=str(tmp_path / "eve.key"))
    with MemosClient(metered.address, key=tmp_path / "eve.key") as eve:
        with pytest.raises(client_errors.PermissionDenied):
            eve.put("not hers", "agents/admin/m")
    status, content_type, text = scrape(address)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert value(text, "memosd_requests_total", service="memos.v1.VaultService", method="PutStream", code="OK") == 1
    assert value(text, "memosd_requests_total", method="Get", code="NOT_FOUND") == 1
    assert value(text, "memosd_requests_total", method="Put", code="PERMISSION_DENIED") == 1
    assert value(text, "memosd_auth_denials_total", code="PERMISSION_DENIED") == 1
    assert value(text, "memosd_request_duration_seconds_count", method="Put") == 2
    assert value(text, "memosd_request_duration_seconds_bucket", method="Put", le="+Inf") == 2
    assert value(text, "memosd_cubes", kind="plaintext", state="active") == 11
    assert value(text, "memosd_cube_bytes", kind="plaintext") == 10 * 100 + len("héllo".encode())
    assert value(text, "memosd_database_bytes") > 0
    assert value(text, "memosd_wal_bytes") >= 0
    assert value(text, "memosd_blob_store_bytes") == 0
    assert value(text, "memosd_subscribers") == 0
    assert value(text, "memosd_slow_subscribers_dropped_total") == 0
    # Every family is declared once, with HELP and TYPE before its samples.
    names = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert len(names) == len({n for n, _ in names}) and ("memosd_request_duration_seconds", "histogram") in names
    assert "agents/" not in text  # no namespace (or anything a caller picks) becomes a label


def test_metrics_endpoint_answers_only_get_metrics(metered):
    address = metered.server.metrics_endpoint.address
    assert scrape(address, "/")[0] == 404
    request = urllib.request.Request(f"http://{address}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 405
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:  # garbage, then a normal scrape
        raw.sendall(b"\x00\xff garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.0 400")
    assert scrape(address)[0] == 200


def test_metrics_endpoint_is_off_by_default_and_loopback_only(daemon):
    assert daemon.server.metrics_endpoint is None
    with pytest.raises(InvalidArgument, match="not loopback"):
        load_config({"metrics_listen": "0.0.0.0:9464"}, env={})
    with pytest.raises(InvalidArgument, match="loopback host:port"):
        load_config({"metrics_listen": "unix:/tmp/m.sock"}, env={})
    assert load_config({}, env={"MEMOSD_METRICS_LISTEN": "127.0.0.1:9464"}).metrics_listen == "127.0.0.1:9464"


def test_status_carries_the_metrics_for_the_admin_only(metered, tmp_path, capsys):
    with MemosClient(metered.address, key=metered.admin_key) as client:
        client.put("one", "agents/admin/s")
        client.add_agent("bob", out=str(tmp_path / "bob.key"))
        m = client.status().metrics
    assert m["usage"] == {"plaintext": 3, "activation": 0, "parametric": 0}
    assert m["metrics_address"] == metered.server.metrics_endpoint.address
    puts = [r for r in m["requests"] if r["method"] == "Put"]
    assert puts == [{"service": "memos.v1.VaultService", "method": "Put", "code": "OK", "count": 1}]
    assert any(x["method"] == "Put" and 0 < x["p50_seconds"] <= x["p99_seconds"] for x in m["latencies"])
    with MemosClient(metered.address, key=tmp_path / "bob.key") as bob:
        assert bob.status().metrics is None

    assert memosctl(["--addr", metered.address, "--key", str(metered.admin_key), "status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^plaintext\s+3 B$", out, re.M)
    assert re.search(r"^VaultService/Put\s+1\s+0\s+<=[\d.]+m?s\s+<=[\d.]+m?s$", out, re.M)
    assert "auth denials 0" in out and f"http://{metered.server.metrics_endpoint.address}/metrics" in out


def test_histogram_quantiles_are_bucket_upper_bounds():
    h = Histogram()
    for seconds in [0.0001] * 98 + [0.3, 20.0]:
        h.observe(seconds)
    assert h.quantile(0.5) == 0.0005 and h.quantile(0.99) == 0.5 and h.count == 100


def test_a_failing_collector_does_not_spoil_the_scrape(caplog):
    metrics = Metrics()

    async def broken():
        raise RuntimeError("disk gone")

    metrics.add_collector("broken", broken)
    metrics.observe_request("/memos.v1.VaultService/Get", "OK", 0.001)
    text = render(asyncio.run(metrics.collect()))
    assert value(text, "memosd_requests_total", method="Get") == 1
    assert "metrics collector broken failed" in caplog.text
