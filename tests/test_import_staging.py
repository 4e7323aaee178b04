"""Import staging on disk: removed on every ending (cancel included), bounded per agent and by free disk,
and swept at start-up after a daemon was killed mid-import."""

import hashlib
import io
import tarfile
import threading
from dataclasses import replace

import grpc
import pytest

from memos_client import MemosClient, ResourceExhausted
from memos_client.auth import AgentKey, TokenSource
from memos_client.channel import sync_channel
from memos_mip.v1 import bundle_pb2, bundle_pb2_grpc
from memosd.limits import Limits
from tests.bundle_helpers import write_bundle
from tests.daemon import make_config, running
from tests.timing import wait_for


def _staging(data_dir):
    return sorted(p for p in data_dir.iterdir() if p.name.startswith(".import-"))


def _slow_tar(path, files: int = 48, size: int = 4 << 20):
    """A small gzip tar that unpacks to many files of zeros: extraction takes a while."""
    zeros = bytes(size)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for i in range(files):
            info = tarfile.TarInfo(f"tensors/{hashlib.sha256(bytes([i])).hexdigest()}.safetensors")
            info.size = size
            tar.addfile(info, io.BytesIO(zeros))
    return path


def _stub(daemon, key):
    channel = sync_channel(daemon.address, TokenSource(AgentKey.load(key)))
    return channel, bundle_pb2_grpc.BundleServiceStub(channel)


def _held(data: bytes, release: threading.Event, namespace="agents/bob/in"):
    """An Import stream that sends its start and data, then waits (the import stays in progress)."""
    def requests():
        yield bundle_pb2.ImportRequest(start=bundle_pb2.ImportStart(namespace=namespace))
        if data:
            yield bundle_pb2.ImportRequest(data=data)
        release.wait(30)
    return requests()


def test_an_import_cancelled_while_it_unpacks_leaves_no_staging(daemon, tmp_path):
    data = _slow_tar(tmp_path / "slow.tar.gz").read_bytes()
    channel, stub = _stub(daemon, daemon.admin_key)
    with channel:
        for _ in range(3):
            def requests():
                yield bundle_pb2.ImportRequest(start=bundle_pb2.ImportStart(namespace="teams/x"))
                for at in range(0, len(data), 1 << 20):
                    yield bundle_pb2.ImportRequest(data=data[at:at + (1 << 20)])
            call = stub.Import.future(requests())
            wait_for(lambda: any((p / "bundle" / "tensors").is_dir() for p in _staging(daemon.config.data_dir)),
                     "the import never started unpacking")
            call.cancel()
            wait_for(lambda: not _staging(daemon.config.data_dir), "a cancelled import left its staging directory")
            with pytest.raises(grpc.FutureCancelledError):
                call.result()


@pytest.fixture
def bounded(tmp_path):
    limits = replace(Limits(), max_imports_per_agent=2, max_import_staging_bytes=1 << 20)
    with running(make_config(tmp_path, limits=limits)) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key) as admin:
            admin.add_agent("bob", out=str(tmp_path / "bob.key"))
            admin.add_agent("alice", out=str(tmp_path / "alice.key"))
        yield daemon, tmp_path


def test_concurrent_imports_per_agent_are_bounded(bounded):
    daemon, tmp = bounded
    write_bundle(tmp / "small", cubes=2, namespace="agents/bob/in")
    release = threading.Event()
    channel, stub = _stub(daemon, tmp / "bob.key")
    with channel, MemosClient(daemon.address, key=tmp / "bob.key") as bob:
        held = [stub.Import.future(_held(b"", release)) for _ in range(2)]
        wait_for(lambda: len(_staging(daemon.config.data_dir)) == 2, "the two imports never started")
        with pytest.raises(ResourceExhausted, match="agent bob has 2 imports in progress; at most 2"):
            bob.import_bundle(tmp / "small", "agents/bob/in")
        with MemosClient(daemon.address, key=tmp / "alice.key") as alice:  # one agent's imports, not everyone's
            alice.import_bundle(tmp / "small", "agents/alice/in")
        release.set()
        for call in held:
            with pytest.raises(grpc.RpcError):
                call.result(30)
        wait_for(lambda: not _staging(daemon.config.data_dir), "finished imports left their staging directories")
        assert bob.import_bundle(tmp / "small", "agents/bob/in").cubes == 2


def test_bytes_staged_per_agent_are_bounded(bounded):
    daemon, tmp = bounded
    release = threading.Event()
    channel, stub = _stub(daemon, tmp / "bob.key")
    with channel:
        first = stub.Import.future(_held(bytes(768 << 10), release))
        wait_for(lambda: any((p / "bundle.tar").exists() and (p / "bundle.tar").stat().st_size == 768 << 10
                             for p in _staging(daemon.config.data_dir)), "the first import never staged its bytes")
        second = stub.Import.future(_held(bytes(512 << 10), release))
        with pytest.raises(grpc.RpcError) as info:
            second.result(30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 1048576 bytes (max_import_staging_bytes)" in info.value.details()
        release.set()
        with pytest.raises(grpc.RpcError):
            first.result(30)


def test_an_import_needs_free_disk(tmp_path):
    write_bundle(tmp_path / "small", cubes=1, namespace="teams/x")
    limits = replace(Limits(), min_free_disk_bytes=1 << 62)
    with running(make_config(tmp_path, limits=limits)) as daemon:
        with MemosClient(daemon.address, key=daemon.admin_key) as admin:
            with pytest.raises(ResourceExhausted, match="bytes free; imports leave at least"):
                admin.import_bundle(tmp_path / "small", "teams/x")
        assert not _staging(daemon.config.data_dir)


def test_staging_left_by_a_killed_import_is_removed_at_start(tmp_path):
    config = make_config(tmp_path)
    leftover = config.data_dir / ".import-0123456789ab"
    (leftover / "bundle" / "tensors").mkdir(parents=True)
    (leftover / "bundle.tar").write_bytes(bytes(1 << 20))
    (leftover / "bundle" / "tensors" / "x.safetensors").write_bytes(b"partial")
    with running(config) as daemon:
        assert not _staging(daemon.config.data_dir)
