"""Completeness tests that pin the boundaries: RPCs, clients, errors, imports."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import grpc
import pytest

import memos_client
import memosd.errors
from memos_client import AsyncMemosClient, MemosClient
from memosd.server.app import SERVICES
from memosd.server.rpc import service_handler
from memosd.server.status import STATUS_CODES, error_named, status_for

ROOT = Path(__file__).resolve().parent.parent
# Which client method wraps each RPC.
CLIENT_METHODS = {
    "Put": "put", "PutStream": "put_many", "Get": "get", "Update": "update", "Delete": "delete",
    "List": "list_page", "Search": "search", "History": "history", "Status": "status",
    "WhoAmI": "whoami", "AddAgent": "add_agent", "ListAgents": "list_agents", "RevokeAgent": "revoke_agent",
    "PutPolicy": "put_policy", "ListPolicies": "list_policies", "GetPolicy": "get_policy",
    "RevokePolicy": "revoke_policy", "ListAudit": "audit", "VerifyAudit": "verify_audit",
    "Publish": "publish", "PublishStream": "publish_stream", "Retract": "retract", "Subscribe": "subscribe", "Ack": "ack", "ListTopics": "topics",
    "SetRetention": "set_retention",
    "Backup": "backup", "Export": "export", "Import": "import_bundle",
    "Upload": "upload_blob", "GetUploadStatus": "upload_status", "Download": "download_blob", "OpenLocal": "open_local",
    "PutActivation": "put_activation", "FindByPrefix": "find_kv", "BuildFromPlaintext": "build_kv",
    "GetJob": "get_job", "WatchJob": "watch_job", "CancelJob": "cancel_job", "ListJobs": "list_jobs",
    "PutAdapter": "put_adapter", "Distill": "distill", "Plan": "plan",
}


def _rpcs():
    return [(s.full_name, m.name) for s in SERVICES for m in s.methods]


def _servicer_class(service_name: str):
    """By convention memos.v1.FooService is served by memosd.server.foo_service.FooService."""
    short = service_name.rsplit(".", 1)[1]
    module = importlib.import_module(f"memosd.server.{re.sub(r'(?<!^)(?=[A-Z])', '_', short).lower()}")
    return getattr(module, short)


def test_every_rpc_is_implemented_by_a_servicer():
    for service, method in _rpcs():
        assert callable(getattr(_servicer_class(service), method, None)), f"{service}.{method} not implemented"
    for s in SERVICES:
        cls = _servicer_class(s.full_name)
        service_handler(s, cls.__new__(cls), governance=None)


def test_missing_servicer_method_fails_at_startup():
    class Partial:
        async def Get(self, request, context): ...

    with pytest.raises(TypeError, match="does not implement"):
        service_handler(SERVICES[0], Partial(), governance=None)


def test_every_rpc_is_wrapped_by_both_clients():
    for _, method in _rpcs():
        name = CLIENT_METHODS[method]
        assert callable(getattr(MemosClient, name)), name
        assert callable(getattr(AsyncMemosClient, name)), name
    sync = {n for n, _ in inspect.getmembers(MemosClient, inspect.isfunction) if not n.startswith("_")}
    aio = {n for n, _ in inspect.getmembers(AsyncMemosClient) if not n.startswith("_")}
    assert sync <= aio, f"async client lacks {sync - aio}"


# The only public methods the two clients write each their own way: how a client is closed.
PER_CLIENT = {"close"}


def test_both_clients_share_one_documented_body_per_method():
    # Each method's logic (request, call, conversion) is written once, in memos_client.steps' style: the
    # asyncio client's method is the very function of the sync client, so the two cannot drift apart.
    names = {n for n, _ in inspect.getmembers(MemosClient, inspect.isfunction) if not n.startswith("_")}
    assert set(CLIENT_METHODS.values()) <= names
    for name in sorted(names - PER_CLIENT):
        assert getattr(AsyncMemosClient, name) is getattr(MemosClient, name), f"{name} is written twice"
    for name in sorted(names):
        for cls in (MemosClient, AsyncMemosClient):
            assert inspect.getdoc(getattr(cls, name)), f"{cls.__name__}.{name} has no docstring"


def test_every_daemon_error_has_a_status_and_a_client_twin():
    classes = [c for c in vars(memosd.errors).values() if isinstance(c, type) and issubclass(c, memosd.errors.MemosError)]
    for cls in classes:
        assert cls in STATUS_CODES, f"{cls.__name__} has no status code"
        code = STATUS_CODES[cls]
        if cls is memosd.errors.MemosError:
            continue
        # The client raises the class the daemon names on the wire: its own, or the one it passes for (Hidden
        # for NotFound), which must answer with the same status.
        if cls.wire_name is not None:
            assert STATUS_CODES[getattr(memosd.errors, cls.wire_name)] is code, cls.__name__
        twin = getattr(memos_client, cls.wire_name or cls.__name__)
        assert twin.code == code.name, f"client {twin.__name__} maps to {twin.code}, daemon sends {code.name}"
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)



def test_an_error_without_its_own_row_takes_its_parents_status():
    class Gone(memosd.errors.NotFound):
        """A subclass defined after the table was written."""

    class Mismatched(memosd.errors.ModelMismatch):
        """Two levels below FailedPrecondition."""

    assert status_for(Gone("cube 1 is gone")) is grpc.StatusCode.NOT_FOUND
    assert status_for(Mismatched("wrong model")) is grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(memosd.errors.StaleToken("old epoch")) is grpc.StatusCode.UNAUTHENTICATED


def test_every_bundle_error_kind_names_a_row_of_the_table():
    # BundleError (a shared format's error) names its class by kind; the table resolves the name, so a
    # misspelt or unmapped kind would reach the caller as a bare MemosError (UNKNOWN): none may.
    raised = set()
    for path in [*(ROOT / "memosd").rglob("*.py"), *(ROOT / "memos_mip").glob("*.py"),
                 *(ROOT / "clients" / "python").rglob("*.py")]:
        raised |= set(re.findall(r"BundleError\(\s*\"(\w+)\"", path.read_text()))
    assert {"InvalidArgument", "DataLoss", "ResourceExhausted"} <= raised
    for kind in raised:
        cls = error_named(kind)
        assert cls is not memosd.errors.MemosError and cls.__name__ == kind and cls in STATUS_CODES, kind
    assert error_named("NoSuchError") is memosd.errors.MemosError



# A lifecycle state, visibility or event kind compared with a bare number, in SQL or in Python.
_BARE_ENUM = re.compile(r"\b(?:state|visibility|kind)\s*(?:=|==|!=|<>)\s*\d|\b(?:state|kind)\s+(?:NOT\s+)?IN\s*\(\s*\d"
                        r"|visibility\W+1\)\)\s*==\s*\d", re.IGNORECASE)


def test_lifecycle_states_are_named_from_their_enum_never_by_number():
    # A state spelt `4` in one query and LifecycleState.DELETED in another drifts apart unseen when one changes.
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in sorted((ROOT / "memosd").rglob("*.py")) if not path.name.endswith("_pb2.py")
             for n, line in enumerate(path.read_text().splitlines(), 1) if _BARE_ENUM.search(line)]
    assert not found, "bare enum numbers:\n" + "\n".join(found)


def test_memstore_reads_cubes_through_the_vault():
    for path in (ROOT / "memosd" / "store").glob("*.py"):
        assert not re.search(r"\bFROM cubes\b", path.read_text()), f"{path.name} queries MemVault's table itself"



def test_tests_wait_on_conditions_never_on_a_guessed_sleep():
    # A sleep standing in for a condition flakes on a slow machine and wastes time on a fast one: tests wait
    # with tests/timing.py (a polled condition with a deadline, or an injected clock). A sleep that paces
    # work, rather than waiting for something, says so on its line.
    sleep = re.compile(r"\b(?:time|asyncio)\.sleep\(")
    found = [f"{path.name}:{n}: {line.strip()}"
             for path in sorted((ROOT / "tests").glob("*.py")) if path.name != "timing.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if sleep.search(line) and "not a wait" not in line]
    assert not found, "sleeps standing in for a condition:\n" + "\n".join(found)


def _imports(path: Path) -> set[str]:
    """Top-level packages a file imports, and memos_mip.v1 (the generated protobuf code) where it does."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
            names |= {"memos_mip.v1" for a in node.names if a.name.startswith("memos_mip.v1")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("memos_mip.v1") or (node.module == "memos_mip"
                                                          and any(a.name == "v1" for a in node.names)):
                names.add("memos_mip.v1")
    return names


def test_only_server_imports_grpc_and_only_runtime_imports_torch():
    for path in (ROOT / "memosd").rglob("*.py"):
        rel = path.relative_to(ROOT / "memosd").parts
        found = _imports(path)
        if rel[0] != "server":
            assert not found & {"grpc", "grpc_health", "grpc_reflection", "memos_mip.v1"}, f"{path} imports gRPC"
        if rel[0] != "runtime":
            assert not found & {"torch", "transformers", "peft"}, f"{path} imports torch/transformers/peft at top level"


def test_every_proto_message_and_field_is_commented():
    for proto in (ROOT / "protos").rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            declares = re.match(r"(message|enum|service|rpc)\s", stripped) or re.match(
                r"(repeated |optional )?[\w.<>, ]+\s+\w+\s*=\s*\d+;", stripped)
            if declares and not stripped.startswith("//"):
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1} has no comment: {stripped}"
