"""A real S3 API in the tests: moto's server mode in a subprocess on a free loopback port, standing in for S3,
MinIO or Ceph; each test that uses it gets a bucket of its own.

`blob_config` (and BLOB_STORES for a test module's own `config`) runs a test once per blob store: `file:` and
`s3://`. Helpers here read what a store holds through its own interface, so a test says the same for both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

from tests.daemon import make_config

BLOB_STORES = ["file", "s3"]
# Credentials for the stand-in only; the daemon and the tests take them from the standard AWS chain.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "memosd-test", "AWS_SECRET_ACCESS_KEY": "memosd-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"memosd-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    with pytest.MonkeyPatch.context() as env:
        for key, value in AWS_ENV.items():
            env.setenv(key, value)
        server = start_s3_server()
        try:
            yield server
        finally:
            server.process.terminate()
            server.process.wait(10)


def start_s3_server() -> S3Server:
    """moto's S3 server on a free loopback port, answering; the caller terminates its process."""
    # Port 0: the server binds a free port and says which on stderr, which is read until it does.
    proc = subprocess.Popen([sys.executable, "-u", "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = _announced(proc)
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=10) as health:
            assert health.status == 200
    except BaseException:
        proc.kill()
        raise
    return S3Server(endpoint, proc)


def _announced(proc: subprocess.Popen, log=None) -> str:
    """The endpoint the server says it runs on; its stderr is drained (into the file `log`, if given)."""
    found: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        out = open(log, "a") if log is not None else None  # noqa: SIM115 (open for the thread's life)
        for line in proc.stderr:  # drained to the end, so the server never blocks on a full pipe
            if out is not None:
                out.write(line)
                out.flush()
            match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True, name="moto-stderr").start()
    assert ready.wait(30) and found, "moto's S3 server did not start (is moto[server] installed?)"
    return found[0]


def blob_settings(store: str, request) -> dict:
    """Config overrides that put the daemon's blobs in `store` (a bucket of the test's own for s3)."""
    if store == "file":
        return {}
    server = request.getfixturevalue("s3_server")
    return {"blob_url": f"s3://{server.new_bucket()}/memosd", "s3_endpoint_url": server.endpoint}


@pytest.fixture(params=BLOB_STORES)
def blob_config(request, tmp_path):
    return make_config(tmp_path, **blob_settings(request.param, request))


def stored_bytes(daemon, sha256: str) -> bytes | None:
    """The bytes the daemon's object store holds for sha256, None if it holds none."""
    objects = daemon.server.tensors.blobs.objects
    size = daemon.call(objects.size(sha256))
    return None if size is None else daemon.call(objects.read_all(sha256, size, size))
