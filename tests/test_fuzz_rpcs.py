"""Every RPC of every service, fuzzed from its descriptor with admin, agent, missing and garbage tokens."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import traceback
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st

from memos_client import MemosClient, MemosError
from memos_client.auth import AgentKey, TokenSource, b64url, mint_token
from memos_mip.v1 import bundle_pb2, cube_pb2, governance_pb2, parametric_pb2, vault_pb2
from memosd.server.app import SERVICES
from tests.daemon import make_config, running
from tests.fuzz_strategies import DEEP_JSON, Fuzz, all_methods, deep_struct, length_delimited, request_services
from tests.kv_helpers import put_kv

METHODS = all_methods()
PROTOS = Path(__file__).resolve().parent.parent / "protos" / "memos" / "v1"
TOKENS = ("admin", "agent", "none", "garbage")
UNARY_DEADLINE, STREAM_DEADLINE, OPEN_DEADLINE = 5.0, 5.0, 1.0
# Streams that wait for news by design: running out of time there is the client's choice, not a hang.
OPEN_ENDED = {"/memos.v1.StoreService/Subscribe", "/memos.v1.JobService/WatchJob"}
MAX_DETAIL_BYTES = 2048
MAX_LOG_BYTES_PER_CALL = 4096
# MEMOS_FUZZ_SCALE=10 for a longer (still deterministic) hunt than CI's.
SCALE = float(os.environ.get("MEMOS_FUZZ_SCALE", "1"))
EXAMPLES = {who: max(1, int(n * SCALE)) for who, n in {"admin": 24, "agent": 16, "none": 3, "garbage": 6}.items()}
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}

_NS = "agents/admin/notes"


def _draft(**fields) -> bytes:
    return vault_pb2.PutRequest(cube=cube_pb2.CubeDraft(namespace=_NS, text="seed", **fields)).SerializeToString()


# Requests every run tries first (Hypothesis explicit examples): the shapes of holes found before, so that
# each stays fixed whatever the random draws do.
SEEDS = {
    "/memos.v1.VaultService/Put": [
        _draft(ttl_seconds=300_000_000_000), _draft(ttl_seconds=-(2**63)), _draft(tags=["t"] * 10_000),
        _draft(priority=-(2**31)), _draft(tags=["x" * 70_000]),
        vault_pb2.PutRequest(cube=cube_pb2.CubeDraft(namespace=_NS, text="x" * 1_100_000)).SerializeToString(),
        vault_pb2.PutRequest(cube=cube_pb2.CubeDraft(namespace="x" * 70_000, text="t")).SerializeToString(),
        # CubeDraft.metadata (field 4) nested 30 and 2000 lists deep.
        length_delimited(1, length_delimited(1, _NS.encode()) + length_delimited(2, b"t") + length_delimited(4, deep_struct(30))),
        length_delimited(1, length_delimited(1, _NS.encode()) + length_delimited(2, b"t") + length_delimited(4, deep_struct(2000))),
    ],
    "/memos.v1.VaultService/List": [
        vault_pb2.ListRequest(filter=vault_pb2.CubeFilter(tags=["é"] * 1000)).SerializeToString(),
        vault_pb2.ListRequest(page_size=-1, page_token=DEEP_JSON[0]).SerializeToString(),
    ],
    "/memos.v1.VaultService/Search": [
        vault_pb2.SearchRequest(query="x " * 20_000, limit=2**31 - 1).SerializeToString(),
        vault_pb2.SearchRequest(query="seed", filter=vault_pb2.CubeFilter(tags=["t"] * 5000)).SerializeToString(),
    ],
    "/memos.v1.GovernanceService/PutPolicy": [
        governance_pb2.PutPolicyRequest(policy=governance_pb2.SignedPolicy(document=j.encode(), signature=b"s")).SerializeToString()
        for j in DEEP_JSON],
    "/memos.v1.BundleService/Import": [
        bundle_pb2.ImportRequest(data=DEEP_JSON[1].encode()).SerializeToString()],
    "/memos.v1.ParametricService/Distill": [
        parametric_pb2.DistillRequest(namespace=_NS, params=parametric_pb2.DistillParams(
            rank=2**31 - 1, steps=-1, learning_rate=float("nan"))).SerializeToString()],
}


class LogBytes(logging.Handler):
    """Counts the bytes the daemon's loggers write, tracebacks included."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.bytes = 0
        self.last_error = ""
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record):
        self.bytes += len(self.format(record).encode("utf-8", "replace")) + 1
        if record.exc_info and record.exc_info[2] is not None:
            # Where an INTERNAL came from, for the failure message: the innermost frame in memosd.
            frames = [f for f in traceback.extract_tb(record.exc_info[2]) if "/memosd/" in f.filename] or \
                traceback.extract_tb(record.exc_info[2])
            where = f"{frames[-1].filename.rsplit('/memosd/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
            self.last_error = f"{record.exc_info[0].__name__}: {str(record.exc_info[1])[:120]} at memosd/{where}"


class Env:
    """The daemon under fuzz, its callers' token sources and the pool of real targets."""

    def __init__(self, daemon, admin, agent_key, pool, garbage):
        self.daemon, self.admin, self.pool, self.garbage = daemon, admin, pool, garbage
        self.tokens = {"admin": TokenSource(AgentKey.load(daemon.admin_key)), "agent": TokenSource(agent_key)}
        self.channel = grpc.insecure_channel(daemon.address, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        self.logs = LogBytes()

    def metadata(self, who: str, garbage_index: int):
        if who in self.tokens:
            return [self.tokens[who].metadata()]
        if who == "garbage":
            return [("authorization", self.garbage[garbage_index % len(self.garbage)])]
        return []

    def call(self, path: str, method, messages: list[bytes], metadata):
        """Sends the request(s) as raw bytes; returns (status code, details, what came back)."""
        ch, kw = self.channel, dict(request_serializer=None, response_deserializer=None)
        open_ended = path in OPEN_ENDED
        timeout = OPEN_DEADLINE if open_ended else STREAM_DEADLINE if method.server_streaming else UNARY_DEADLINE
        try:
            if not method.server_streaming:
                fn = ch.stream_unary(path, **kw) if method.client_streaming else ch.unary_unary(path, **kw)
                response = fn(iter(messages) if method.client_streaming else messages[0], timeout=timeout, metadata=metadata)
                return grpc.StatusCode.OK, "", [response]
            fn = ch.stream_stream(path, **kw) if method.client_streaming else ch.unary_stream(path, **kw)
            call = fn(iter(messages) if method.client_streaming else messages[0], timeout=timeout, metadata=metadata)
            got = []
            try:
                for response in call:  # a few answers show it works; the rest of a long stream is not the point
                    got.append(response)
                    if len(got) >= 3:
                        call.cancel()
                        break
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.CANCELLED and len(got) >= 3:
                    return grpc.StatusCode.OK, "", got
                raise
            return grpc.StatusCode.OK, "", got
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                for source in self.tokens.values():
                    source.learn_epoch(exc)  # a fuzzed policy change moved the epoch: keep the tokens valid
            return exc.code(), exc.details() or "", []

    def alive_problem(self) -> str | None:
        """None if the daemon still serves: health, a Put and Get, and reading everything back."""
        try:
            stub = health_pb2_grpc.HealthStub(self.channel)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            cube = self.admin.put(f"alive {time.monotonic_ns()}", "agents/admin/alive")
            assert self.admin.get(cube.id).text == cube.text
            # Whatever the fuzzed calls stored must not poison reading it all back.
            assert self.admin.list_page(page_size=1000).total_size >= 1
            assert self.admin.search("alive", limit=5)
        except (AssertionError, grpc.RpcError, MemosError) as exc:
            return f"the daemon is not usable afterwards: {type(exc).__name__}: {str(exc)[:300]}"
        return None


def _garbage_tokens(daemon_id: str) -> list[str]:
    deep = b64url(DEEP_JSON[0].encode()) + "." + b64url(b"sig")
    deep_short = b64url(("[" * 760 + "]" * 760).encode()) + ".AAAA"  # nested as deep as fits under the size cap
    wide = b64url(json.dumps({"sub": "x" * 3000, "aud": daemon_id, "iat": 2**70, "exp": -1, "jti": 1, "epoch": 1e308}).encode())
    return ["Bearer garbage", "Bearer a.b", "Bearer " + deep, "Bearer " + deep_short, "Bearer " + wide + ".AAAA", "Basic dXNlcjpwYXNz",
            "Bearer " + "A" * 6000, "Bearer ..", "bearer " + mint_token(AgentKey.generate("ghost", daemon_id), 1),
            "Bearer " + mint_token(AgentKey.generate("admin", "another-daemon"), 1),
            "Bearer " + mint_token(AgentKey.generate("admin", daemon_id), 1, now=time.time() - 10**6)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with running(make_config(tmp)) as daemon, MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as admin:
        _, agent_path = admin.add_agent("fuzzbot", out=str(tmp / "fuzzbot.key"))
        _, daemon_id, _ = admin.whoami()
        mine = admin.put("admin's note", "agents/admin/notes", tags=["t"])
        kv = put_kv(admin, [1, 2, 3, 4])
        with MemosClient(daemon.address, key=agent_path, timeout=30) as bot:
            theirs = bot.put("fuzzbot's note", "agents/fuzzbot/notes")
        admin.publish("agents/admin/news", mine.id)
        policy = admin.grant("agent:fuzzbot", ["read"], ["agents/admin/notes"])
        pool = {"namespaces": ["agents/admin/notes", "agents/fuzzbot/notes", "agents/admin", "agents/fuzzbot/kv", "agents"],
                "ids": [mine.id, kv.id, theirs.id, policy], "digests": [kv.activation.blob.sha256],
                "topics": ["agents/admin/news", "agents/fuzzbot/news", "agents/**", "agents/admin/*"],
                "names": ["durable1", "d"], "subjects": ["agent:fuzzbot", "agent:admin", "group:x"],
                "fingerprints": [kv.activation.model_fingerprint], "agents": ["newbie", "carol"]}
        e = Env(daemon, admin, AgentKey.load(agent_path), pool, _garbage_tokens(daemon_id))
        memosd_log = logging.getLogger("memosd")
        old_level = memosd_log.level
        memosd_log.setLevel(logging.INFO)  # the one-line-per-call request log is part of what must stay bounded
        memosd_log.addHandler(e.logs)
        try:
            yield e
        finally:
            memosd_log.removeHandler(e.logs)
            memosd_log.setLevel(old_level)
            e.channel.close()


def test_every_method_of_every_service_is_fuzzed():
    declared = {s.full_name for s in request_services()}
    served = {s.full_name for s in SERVICES}
    assert declared == served, "a service is declared but not served, or served but not fuzzed"
    fuzzed = {path for path, _ in METHODS}
    assert fuzzed == {f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods}
    # And the descriptors are the .proto files as written: every `rpc` line there is one fuzzed method.
    in_protos = {f"/memos.v1.{service}/{rpc}" for path in PROTOS.glob("*.proto")
                 for service, body in re.findall(r"service (\w+) \{(.*?)\n\}", path.read_text(), re.S)
                 for rpc in re.findall(r"^\s*rpc (\w+)\(", body, re.M)}
    assert fuzzed == in_protos and len(METHODS) == len(fuzzed)


def _problem(path, who, code, details, log_bytes, last_error="") -> str | None:
    """What is wrong with one answer, or None."""
    if code in NEVER:
        return f"{code.name}: {last_error or details[:300]}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return None if path in OPEN_ENDED else "no answer within the deadline"
    if len(details.encode("utf-8", "replace")) >= MAX_DETAIL_BYTES:
        return f"{len(details)}-char details: {details[:120]}..."
    # An error too big for the trailers reaches the client as this instead of the real status.
    if "Stream removed" in details or "RST_STREAM" in details:
        return f"{code.name}: {details[:300]}"
    if log_bytes >= MAX_LOG_BYTES_PER_CALL:
        return f"one call wrote {log_bytes} bytes of daemon log"
    return None


def _describe(messages: list[bytes]) -> str:
    return " + ".join(f"{len(m)} bytes {m[:48].hex()}{'...' if len(m) > 48 else ''}" for m in messages)


@pytest.mark.parametrize("who", TOKENS)
@pytest.mark.parametrize("path,method", METHODS, ids=[p.split(".")[-1].replace("Service/", ".") for p, _ in METHODS])
def test_fuzz(env, path, method, who):
    fuzz = Fuzz(env.pool, protected={"admin", "fuzzbot"})
    request = fuzz.request(method.input_type)
    messages = st.lists(request, min_size=1, max_size=3) if method.client_streaming else request.map(lambda r: [r])
    problems: dict[str, str] = {}

    # Failures are collected, not raised: the daemon keeps state between examples (a fuzzed Delete removes
    # a pooled cube), so Hypothesis's shrinking and replay would only report flakiness; every distinct
    # problem is listed with the request that showed it first.
    @settings(max_examples=EXAMPLES[who], deadline=None, derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @given(messages=messages, garbage=st.integers(0, 1000))
    def run(messages, garbage):
        before, env.logs.last_error = env.logs.bytes, ""
        code, details, _ = env.call(path, method, messages, env.metadata(who, garbage))
        problem = _problem(path, who, code, details, env.logs.bytes - before, env.logs.last_error)
        if problem is not None:
            problems.setdefault(problem[:60], f"{problem}\n    request: {_describe(messages)}")

    for seed in SEEDS.get(path, ()):
        run = example(messages=[seed], garbage=0)(run)
    run()
    alive = env.alive_problem()
    if alive is not None:
        problems["alive"] = alive
    assert not problems, f"{path} as {who}:\n  " + "\n  ".join(problems.values())
